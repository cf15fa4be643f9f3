"""The seed format, byte for byte: one golden file per kind of batch report.

Orchestrators parse these reports line by line, so any change to the Markdown must be a
deliberate one: regenerate with ``UPDATE_GOLDEN=1`` and review the diff of
``tests/unit/golden/``. The reports are built by :func:`batchq.core.report.build` from
fixed results and fixed times, as the workers' results would be.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from batchq.cli.render import render_markdown
from batchq.core import report
from batchq.models import (
    BatchReport,
    DeliverableCheck,
    PlannedBatch,
    ResultState,
    SubtaskResult,
)

GOLDEN = Path(__file__).parent / "golden"
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
NEXT = PlannedBatch(
    number=2, level=2, seqs=["04"], parallel=True, after=1, depends_on=["01", "02", "03"]
)


def result(seq: str, title: str, state: ResultState, **kw: Any) -> SubtaskResult:
    fields: dict[str, Any] = {"batch": 1, "duration_s": 2.0, "worker": "batchq-1@host"}
    fields.update(kw)
    return SubtaskResult(
        feature="auth-system", run_id="r1", seq=seq, title=title, result=state, **fields
    )


def done(seq: str, title: str, *paths: str, batch: int = 1) -> SubtaskResult:
    return result(
        seq,
        title,
        ResultState.COMPLETED,
        summary=f"{title}: done",
        deliverables=[DeliverableCheck(path=p, verified=True) for p in paths],
        batch=batch,
    )


def built(results: list[SubtaskResult], expected: list[str], **kw: Any) -> BatchReport:
    values: dict[str, Any] = {
        "feature": "auth-system",
        "run_id": "r1",
        "batch": 1,
        "results": results,
        "expected": expected,
        "next_batch": NEXT,
        "submitted_at": T0,
        "finished_at": T0 + timedelta(seconds=4),
    }
    values.update(kw)
    return report.build(**values)


def all_completed() -> BatchReport:
    return built(
        [
            done("01", "Setup project structure", "package.json", "src/"),
            done("02", "Configure database", "src/db.ts"),
            done("03", "Install dependencies", "package-lock.json"),
        ],
        ["01", "02", "03"],
    )


def partial_failure() -> BatchReport:
    return built(
        [
            done("01", "Setup project structure", "package.json", "src/"),
            result(
                "02",
                "Configure database",
                ResultState.FAILED,
                error="deliverable missing: src/db.ts",
                deliverables=[DeliverableCheck(path="src/db.ts", verified=False)],
                output_tail="connecting\nno database\n",
                log_path=".tmp/tasks/auth-system/.batchq/logs/r1/02.log",
            ),
            result(
                "03", "Install dependencies", ResultState.CANCELLED, error="cancelled before start"
            ),
        ],
        ["01", "02", "03"],
    )


def cancelled() -> BatchReport:
    return built(
        [
            result("01", "Setup project structure", ResultState.CANCELLED, duration_s=1.0),
            result("02", "Configure database", ResultState.CANCELLED, duration_s=1.5),
        ],
        ["01", "02"],
    )


def flow_with_skipped() -> BatchReport:
    """Flow mode's batch 3: 06 (batch 2) failed, so its dependent 07 never ran."""
    return built(
        [done("08", "Write docs", "docs/auth.md", batch=3)],
        ["07", "08"],
        batch=3,
        next_batch=None,
        skipped={"07": "depends on 06, which failed"},
        causes={"07": "06"},
        titles={"07": "Deploy", "08": "Write docs"},
    )


KINDS = {
    "all_completed": all_completed,
    "partial_failure": partial_failure,
    "cancelled": cancelled,
    "flow_with_skipped": flow_with_skipped,
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_report_matches_its_golden_file(kind: str) -> None:
    text = render_markdown(KINDS[kind]()) + "\n"
    path = GOLDEN / f"{kind}.md"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


def test_the_all_completed_report_opens_with_the_seed_skeleton() -> None:
    lines = (GOLDEN / "all_completed.md").read_text(encoding="utf-8").splitlines()
    skeleton = [
        "## Batch 1 Execution Complete",
        "Feature: auth-system",
        "Batch: 1",
        "Subtasks: 01, 02, 03",
        "Status: ✅ ALL COMPLETED",
        "### Individual Results:",
        "✅ Subtask 01 - Setup project structure",
        "   - Status: completed",
        "   - Deliverables: package.json, src/",
        "   - Summary: Setup project structure: done",
    ]
    assert [line for line in lines if line][: len(skeleton)] == skeleton
    stats = lines.index("### Batch Statistics:")
    assert lines[stats + 1 : stats + 5] == [
        "- Total tasks: 3",
        "- Completed: 3",
        "- Failed: 0",
        "- Success rate: 100%",
    ]
    steps = lines.index("### Next Steps:")
    assert lines[steps + 1 : steps + 3] == [
        "Batch 1 complete. Ready to proceed to Batch 2 (subtask 04).",
        "Batch 2 depends on: 01, 02, 03 (all now satisfied).",
    ]
