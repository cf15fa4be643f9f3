"""A coding agent delegated to the way the seed does it, on a real Redis and worker.

The fake coding agent is a Python script in the workspace (the sandbox hides the rest
of /tmp). It does what the prompt asks: writes its deliverable (a copy of the prompt
it got, so the test can read what a real agent would have read), leaves the task files
alone, and ends with a ``SUMMARY:`` line followed by a chatty last line. The summary
must land in the subtask file and in the batch report, and the prompt must name the
batch's sibling and the subtask's own file.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchq.cli.render import render_markdown
from batchq.errors import PolicyError
from batchq.files.taskfiles import load_feature
from batchq.protocol import DEFAULT_QUEUES
from batchq.run.orchestrator import Orchestrator
from batchq.settings import load_settings
from batchq.store.state import StateStore
from batchq.transport.app import create_app
from tests.servers import module_worker

pytestmark = pytest.mark.integration

CODER = textwrap.dedent(
    """
    import pathlib, sys
    prompt_file, seq = sys.argv[1], sys.argv[2]
    prompt = pathlib.Path(prompt_file).read_text(encoding="utf-8")
    out = pathlib.Path("src") / f"endpoint_{seq}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(prompt, encoding="utf-8")
    print("thinking...")
    print("SUMMARY: " + {"01": "added login endpoint", "02": "added logout endpoint"}[seq])
    print("Goodbye! Let me know if you need anything else.")
    """
)
AGENT = {
    "command": f"{shlex.quote(sys.executable)} {{workspace}}/coder.py {{prompt_file}} {{seq}}",
    "network": False,
}


@pytest.fixture(scope="module")
def stack(redis_target: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"BATCHQ_AGENTS": json.dumps({"Coder": AGENT}), "BATCHQ_HEARTBEAT_S": "1"}
    with module_worker(
        redis_target.url, tmp_path_factory, env, (*DEFAULT_QUEUES, "batchq.Coder")
    ) as url:
        yield url


@pytest.fixture
def orchestrator(stack: str) -> Iterator[Callable[..., Orchestrator]]:
    stores: list[StateStore] = []

    def make(root: Path, **overrides: Any) -> Orchestrator:
        values: dict[str, Any] = {"redis_url": stack, "agents": {"Coder": AGENT}, "stall_s": 60.0}
        settings = load_settings(root, **{**values, **overrides})
        store = StateStore.from_url(stack, prefix=settings.key_prefix)
        stores.append(store)
        return Orchestrator(root, "feat", settings, create_app(settings), store)

    yield make
    for store in stores:
        store.close()


def test_a_coding_agents_summary_line_lands_in_the_subtask_file_and_the_report(
    make_feature, subtask_data, orchestrator
):
    root = make_feature(
        [
            subtask_data("01", agent="Coder", deliverables=["src/endpoint_01.md"]),
            subtask_data("02", agent="Coder", deliverables=["src/endpoint_02.md"]),
        ]
    )
    (root / "coder.py").write_text(CODER)

    result = orchestrator(root).run()

    assert result.ok, result.reports
    (report,) = result.reports
    summaries = {r.seq: r.summary for r in report.results}
    assert summaries == {"01": "added login endpoint", "02": "added logout endpoint"}
    # The report's own "Summary:" line (its bullet style belongs to the renderer).
    shown = [line.strip().removeprefix("- ") for line in render_markdown(report).splitlines()]
    assert "Summary: added login endpoint" in shown
    assert "Summary: added logout endpoint" in shown
    files = {s.seq: s for s in load_feature(root, "feat").subtasks}
    assert files["01"].completion_summary == "added login endpoint"
    assert files["02"].completion_summary == "added logout endpoint"
    saved = json.loads(
        (root / ".tmp/tasks/feat/.batchq/reports" / f"{result.run_id}-001.json").read_text()
    )
    assert {r["seq"]: r["summary"] for r in saved["results"]} == summaries

    # What the agent read: its batch, its sibling's deliverable, its own file, the rule.
    prompt = (root / "src" / "endpoint_01.md").read_text()
    assert "- Batch 1 running in parallel with subtask 02." in prompt
    assert "- 02 - Subtask 02: `src/endpoint_02.md`" in prompt
    assert "defined in `.tmp/tasks/feat/subtask_01.json`" in prompt
    assert "- Objective: test" in prompt
    assert f"- Workspace (project root): `{root}`" in prompt
    assert "Do not create, edit or delete anything under `.tmp/tasks/`" in prompt


def two_coders(make_feature: Any, subtask_data: Any) -> Path:
    root = make_feature(
        [
            subtask_data(seq, agent="Coder", deliverables=[f"src/endpoint_{seq}.md"])
            for seq in ("01", "02")
        ]
    )
    (root / "coder.py").write_text(CODER)
    return root


def test_run_cuts_batches_at_max_batch_and_each_prompt_says_it_runs_alone(
    make_feature, subtask_data, orchestrator
):
    root = two_coders(make_feature, subtask_data)
    result = orchestrator(root, max_batch=1).run()
    assert result.ok, result.reports
    assert [[r.seq for r in report.results] for report in result.reports] == [["01"], ["02"]]
    prompt = (root / "src" / "endpoint_02.md").read_text()
    assert "- Batch 2: no other subtask runs beside this one." in prompt


def test_run_refuses_a_protected_prompt_template_before_anything_runs(
    make_feature, subtask_data, orchestrator
):
    root = two_coders(make_feature, subtask_data)
    (root / ".tmp/tasks/feat/prompt.md").write_text("{completion}\n")
    agent = {**AGENT, "prompt_template": ".tmp/tasks/feat/prompt.md"}
    expected = re.escape("prompt_template: .tmp/tasks/feat/prompt.md: a protected path")
    with pytest.raises(PolicyError, match=expected):
        orchestrator(root, agents={"Coder": agent}).run()
    assert {s.seq: s.status.value for s in load_feature(root, "feat").subtasks} == {
        "01": "pending",
        "02": "pending",
    }
    assert not (root / "src").exists()
