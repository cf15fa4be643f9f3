"""Golden files: the whole prompt a coding agent gets for the seed's auth-system example.

The prompt is built the way a run builds it: the example is loaded and planned, each
batch's brief and each member's message are made by the producer's own code, the
message goes through JSON as on the wire, and the worker's delegation renders it. The
workspace path is replaced by ``<workspace>`` so the files do not depend on the
checkout. Set ``UPDATE_GOLDEN=1`` to rewrite them after an intended change, and
review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from batchq.agents.prompt import render_prompt
from batchq.agents.prompttemplate import DEFAULT_TEMPLATE
from batchq.core import planner
from batchq.executor.runner import delegation_for
from batchq.files.taskfiles import load_feature
from batchq.models import FailurePolicy, Run, SubtaskMessage
from batchq.settings import load_settings
from batchq.transport.publish import Brief, message

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "auth-system"
GOLDEN = Path(__file__).parent / "golden"
CONTEXT = "Target Python 3.11 and the standard library only; keep functions small.\n"


def rendered(seq: str) -> str:
    """Subtask ``seq`` of the example, delegated to a coding agent (``CoderAgent``)."""
    settings = load_settings(EXAMPLE)
    feature = load_feature(EXAMPLE, "auth-system")
    plan = planner.plan_for(feature, settings)
    batch = next(b for b in plan.batches if seq in b.seqs)
    by_seq = feature.by_seq()
    members = [by_seq[s] for s in batch.seqs]
    brief = Brief.of(feature, members, dict.fromkeys(batch.seqs, "CoderAgent"))
    run = Run(
        run_id="20261201T120000-0000abcd",
        feature=feature.name,
        feature_key="auth-system@0000000000",
        root=EXAMPLE,
        token="t" * 32,
        policy=FailurePolicy.GRACEFUL,
    )
    body = message(run, by_seq[seq], "CoderAgent", batch.number, FailurePolicy.GRACEFUL, brief)
    wire = SubtaskMessage.model_validate(json.loads(json.dumps(body)))
    log = EXAMPLE / ".tmp/tasks/auth-system/.batchq/logs" / run.run_id / f"{seq}.log"
    delegation = delegation_for(wire, EXAMPLE, CONTEXT, log)
    text = render_prompt(delegation, settings.protected_paths, DEFAULT_TEMPLATE)
    return text.replace(str(EXAMPLE), "<workspace>")


@pytest.mark.parametrize("seq", ["01", "04"])
def test_the_auth_system_prompt_matches_its_golden_file(seq: str) -> None:
    golden = GOLDEN / f"prompt_auth_system_{seq}.md"
    text = rendered(seq)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")


def test_the_golden_prompts_carry_what_the_seed_delegation_says() -> None:
    """Independent of the exact wording: the seed's delegation facts are all there."""
    first, last = rendered("01"), rendered("04")
    assert "Batch 1 running in parallel with subtasks 02 and 03." in first
    assert "- 02 - Implement session tokens: `authkit/tokens.py`" in first
    assert "- 03 - Write the auth test suite: `tests/test_authkit.py`" in first
    assert "defined in `.tmp/tasks/auth-system/subtask_01.json`" in first
    assert "Objective: Add password hashing and signed session tokens" in first
    assert "### `docs/architecture.md` (lines 3-6)\n\nWhy: module layout" in first
    assert CONTEXT.strip() in first
    assert "Batch 2: no other subtask runs beside this one." in last
    assert "runs `python3 -c 'import authkit.passwords, authkit.tokens'` there" in last
    for text in (first, last):
        assert "- Workspace (project root): `<workspace>`" in text
        assert "anything under `.tmp/tasks/`" in text
        assert "`SUMMARY: added login endpoint`" in text
