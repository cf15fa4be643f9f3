"""Batch mode through the real tasks, in-process: ``batchq.run_subtask`` for shell and
python subtasks, retries, the report, the files mirrored, batch after batch.

Kind: in-process threads worker (``conftest.py``). What is checked here is task,
chord and report logic, which does not depend on the pool: the same messages, the
same Redis records, the same report function. The python subtasks never rely on a
timeout (no ``SIGALRM`` in a worker thread) and only one is in flight at a time
(``redirect_stdout`` is process-wide). Shell timeouts are the agent's own deadline,
so they are checked here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batchq.files.taskfiles import load_feature
from batchq.models import BatchStatus, FailurePolicy, ResultState
from batchq.run.orchestrator import RunOptions
from tests.inprocess.conftest import CALLABLES, MakeOrchestrator


def statuses(root: Path, name: str = "feat") -> dict[str, str]:
    return {s.seq: s.status.value for s in load_feature(root, name).subtasks}


def raw(root: Path, seq: str, name: str = "feat") -> dict[str, Any]:
    path = root / ".tmp" / "tasks" / name / f"subtask_{seq}.json"
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def write(seq: str, before: str = "") -> str:
    return f"{before}mkdir -p out && echo done-{seq} > out/{seq}.txt && echo wrote {seq}"


def test_a_feature_runs_batch_after_batch_to_all_completed(
    make_feature: Any, subtask_data: Any, orchestrator: MakeOrchestrator
) -> None:
    root = make_feature(
        [
            subtask_data("01", command=write("01")),
            subtask_data("02", command=write("02")),
            subtask_data("03", callable_=f"{CALLABLES}:write_deliverable", deliverables=["03.txt"]),
            subtask_data("04", command=write("04"), depends_on=["01", "02", "03"]),
        ]
    )
    result = orchestrator(root).run()

    assert result.ok, result.reports
    assert [r.batch for r in result.reports] == [1, 2]
    first, second = result.reports
    assert first.status is BatchStatus.COMPLETED
    assert (first.total, first.completed, first.failed, first.success_rate) == (3, 3, 0, 100.0)
    assert first.next.batch == 2 and first.next.seqs == ["04"]
    assert first.next.dependencies_satisfied
    assert all(r.worker for r in first.results)  # recorded by the worker, not the producer
    assert all(d.verified for r in first.results for d in r.deliverables)
    assert [r.seq for r in second.results] == ["04"]  # a batch of one: no chord
    assert statuses(root) == dict.fromkeys(["01", "02", "03", "04"], "completed")
    assert (root / "out" / "04.txt").read_text() == "done-04\n"
    assert (root / "03.txt").read_text().startswith("feat/03: ")
    task = json.loads((root / ".tmp/tasks/feat/task.json").read_text())
    assert task["status"] == "completed" and task["completed_count"] == 4
    assert raw(root, "01")["completion_summary"] == "wrote 01"
    assert raw(root, "03")["batchq"]["result"] == "completed"
    saved = sorted((root / ".tmp/tasks/feat/.batchq/reports").glob("*.json"))
    assert [p.name for p in saved] == [f"{result.run_id}-001.json", f"{result.run_id}-002.json"]


def test_a_failed_subtask_blocks_the_next_batch_and_keeps_its_siblings_results(
    make_feature: Any, subtask_data: Any, orchestrator: MakeOrchestrator
) -> None:
    root = make_feature(
        [
            subtask_data("01", command=write("01")),
            subtask_data("02", command="echo about to fail; echo boom >&2; exit 3"),
            subtask_data("03", command=write("03")),
            subtask_data("04", command=write("04"), depends_on=["01", "02", "03"]),
        ]
    )
    result = orchestrator(root).run(RunOptions(policy=FailurePolicy.CONTINUE))

    assert not result.ok
    (report,) = result.reports
    assert report.status is BatchStatus.PARTIAL_FAILURE
    by_seq = {r.seq: r for r in report.results}
    assert by_seq["02"].result is ResultState.FAILED
    assert "boom" in by_seq["02"].output_tail
    assert by_seq["01"].result is by_seq["03"].result is ResultState.COMPLETED
    assert not report.next.dependencies_satisfied
    assert statuses(root) == {
        "01": "completed",
        "02": "blocked",
        "03": "completed",
        "04": "pending",
    }
    block = raw(root, "02")["batchq"]
    assert block["result"] == "failed" and block["run_id"] == result.run_id
    assert "boom" in Path(block["log"]).read_text()


def test_outcomes_a_worker_decides_missing_deliverable_verify_timeout_and_retry(
    make_feature: Any, subtask_data: Any, orchestrator: MakeOrchestrator
) -> None:
    """Four outcomes in one batch (one chord): each is the worker's own verdict."""
    retry = "test -f out/marker || { mkdir -p out; touch out/marker; exit 75; }; " + write("04")
    root = make_feature(
        [
            subtask_data("01", command="echo I forgot", deliverables=["src/a.py"]),
            subtask_data("02", command=write("02"), verify="grep nope out/02.txt"),
            subtask_data("03", command="sleep 30", timeout_s=1),
            subtask_data("04", command=retry, retries=2),
        ]
    )
    (report,) = orchestrator(root).run(RunOptions(policy=FailurePolicy.CONTINUE)).reports

    by_seq = {r.seq: r for r in report.results}
    assert by_seq["01"].result is ResultState.FAILED
    assert by_seq["01"].error == "deliverable missing: src/a.py"
    assert by_seq["02"].result is ResultState.FAILED
    assert (by_seq["02"].error or "").startswith("verify failed")
    assert by_seq["03"].result is ResultState.TIMED_OUT
    assert by_seq["04"].result is ResultState.COMPLETED and by_seq["04"].attempts == 2
    assert (report.completed, report.failed) == (1, 3)
    assert statuses(root) == {"01": "blocked", "02": "blocked", "03": "blocked", "04": "completed"}
    assert raw(root, "03")["batchq"]["result"] == "timed_out"


def test_a_python_callables_own_failure_is_a_failed_result_not_a_failed_chord(
    make_feature: Any, subtask_data: Any, orchestrator: MakeOrchestrator
) -> None:
    root = make_feature(
        [
            subtask_data("01", callable_=f"{CALLABLES}:raises"),
            subtask_data("02", command=write("02")),
        ]
    )
    (report,) = orchestrator(root).run(RunOptions(policy=FailurePolicy.CONTINUE)).reports

    by_seq = {r.seq: r for r in report.results}
    assert by_seq["01"].result is ResultState.FAILED
    assert by_seq["01"].error_type == "ValueError" and "boom" in (by_seq["01"].error or "")
    assert by_seq["02"].result is ResultState.COMPLETED
    assert not report.forced and report.missing == []


def test_a_task_file_rewritten_after_a_finished_run_runs_again(
    make_feature: Any, subtask_data: Any, orchestrator: MakeOrchestrator
) -> None:
    """A run that ended on its own is settled: the next run never adopts it, so a file
    the user writes anew (no ``batchq`` block) runs again instead of taking the old
    result (and its old run id) back."""
    root = make_feature(
        [subtask_data("01", command="echo run >> runs.log", deliverables=["runs.log"])]
    )
    first = orchestrator(root).run()
    assert first.ok, first.reports
    assert statuses(root) == {"01": "completed"}
    fresh = subtask_data("01", command="echo run >> runs.log", deliverables=["runs.log"])
    path = root / ".tmp/tasks/feat/subtask_01.json"
    path.write_text(json.dumps(fresh, indent=2) + "\n", encoding="utf-8")

    second = orchestrator(root).run()

    assert second.ok, second.reports
    assert (root / "runs.log").read_text() == "run\nrun\n"  # it ran again
    assert raw(root, "01")["batchq"]["run_id"] == second.run_id


def test_members_recorded_before_the_report_failed_are_in_their_files(
    make_feature: Any,
    subtask_data: Any,
    orchestrator: MakeOrchestrator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A small batch's last rewrite waits for its report; when building the report
    raises (Redis gone, say), the members' recorded results are written all the same."""
    from batchq.run import producer

    def unreachable(*_: Any, **__: Any) -> Any:
        raise ConnectionError("the store went away")

    monkeypatch.setattr(producer, "report_from_store", unreachable)
    root = make_feature(
        [subtask_data("01", command=write("01")), subtask_data("02", command=write("02"))]
    )
    with pytest.raises(ConnectionError, match="went away"):
        orchestrator(root).run()
    assert statuses(root) == {"01": "completed", "02": "completed"}
    assert raw(root, "01")["completion_summary"] == "wrote 01"
