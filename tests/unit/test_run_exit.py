"""How a finished run maps to the CLI's exit code: failed 1, cancelled 4, else 0."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from batchq.cli.execution import _conclude
from batchq.core import report
from batchq.errors import ExecutionFailed, RunCancelled
from batchq.models import BatchReport, Feature, ResultState, SubtaskResult, TaskFile
from batchq.run.orchestrator import RunResult

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def batch(n: int, *states: ResultState) -> BatchReport:
    results = [
        SubtaskResult(feature="f", run_id="r1", batch=n, seq=f"0{i}", title="t", result=state)
        for i, state in enumerate(states, 1)
    ]
    expected = [r.seq for r in results]
    return report.build(
        feature="f",
        run_id="r1",
        batch=n,
        results=results,
        expected=expected,
        next_batch=None,
        submitted_at=T0,
        finished_at=T0,
    )


def run_of(*reports: BatchReport) -> RunResult:
    feature = Feature(
        name="f",
        root=Path("/p"),
        path=Path("/p/.tmp/tasks/f"),
        task=TaskFile(id="f", name="F"),
        subtasks=[],
    )
    return RunResult("r1", feature, list(reports))


def test_a_cancelled_run_exits_with_its_own_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RunCancelled) as info:
        _conclude(run_of(batch(1, ResultState.CANCELLED, ResultState.CANCELLED)), True)
    assert info.value.exit_code == 4
    assert json.loads(capsys.readouterr().out)["status"] == "cancelled"


def test_a_failure_wins_over_a_cancel() -> None:
    with pytest.raises(ExecutionFailed) as info:
        _conclude(run_of(batch(1, ResultState.FAILED, ResultState.CANCELLED)), False)
    assert info.value.exit_code == 1


def test_a_completed_run_raises_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    _conclude(run_of(batch(1, ResultState.COMPLETED)), True)
    assert json.loads(capsys.readouterr().out) == {
        "event": "run_finished",
        "run_id": "r1",
        "ok": True,
        "status": "completed",
    }
