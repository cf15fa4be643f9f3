"""Flow mode's publish loop, in-process: ``Orchestrator`` with ``RunMode.FLOW`` drives
:mod:`batchq.run.flowloop`, which publishes each subtask alone (``publish_each``, no
chord, no callback) the moment its own dependencies are completed, follows the run's
progress stream, and reports each planned batch as it closes.

Kind: in-process threads worker (``conftest.py``), 4 slots: dependents and
independent chains really run side by side. Ordering is proved from the start and
finish times the worker recorded, never from how long anything took. Shell subtasks
only (flow mode runs several messages at once, and two python callables in two
threads would share ``sys.stdout``). Terminate, cancel and stall runs stay in
``tests/integration/test_flow.py``, on a prefork worker.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from batchq.core import planner
from batchq.files.taskfiles import load_feature
from batchq.models import BatchStatus, FailurePolicy, ResultState, RunMode, SubtaskResult
from batchq.protocol import AGGREGATE_TASK, RUN_TASK
from batchq.run.orchestrator import RunOptions, RunResult
from tests.inprocess.conftest import MakeOrchestrator, TaskEvents

FLOW = RunMode.FLOW


def write(seq: str, before: str = "") -> str:
    return f"{before}mkdir -p out && echo done-{seq} > out/{seq}.txt"


def raw(root: Path, seq: str, name: str = "feat") -> dict[str, Any]:
    path = root / ".tmp" / "tasks" / name / f"subtask_{seq}.json"
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def results(result: RunResult) -> dict[str, SubtaskResult]:
    return {r.seq: r for report in result.reports for r in report.results}


def test_a_diamond_and_a_chain_complete_with_every_dependency_finished_first(
    make_feature: Any,
    subtask_data: Any,
    orchestrator: MakeOrchestrator,
    task_events: TaskEvents,
) -> None:
    deps = {"02": ["01"], "03": ["01"], "04": ["02", "03"], "06": ["05"], "07": ["06"]}
    seqs = ("01", "02", "03", "04", "05", "06", "07")
    root = make_feature(
        [subtask_data(s, command=write(s, "sleep 0.1 && "), depends_on=deps.get(s)) for s in seqs],
        name="diamond",
    )
    plan = {b.number: b.seqs for b in planner.plan(load_feature(root, "diamond")).batches}
    result = orchestrator(root, "diamond").run(RunOptions(mode=FLOW))

    assert result.ok, result.reports
    got = results(result)
    assert set(got) == set(itertools.chain(*plan.values())) == set(seqs)
    for seq, needs in deps.items():
        for dep in needs:
            finished, started = got[dep].finished_at, got[seq].started_at
            assert finished is not None and started is not None
            assert finished <= started, f"{seq} started before its dependency {dep} finished"
    # One report per planned batch, holding exactly that batch's members.
    assert {r.batch: [x.seq for x in r.results] for r in result.reports} == plan
    assert all(r.status is BatchStatus.COMPLETED for r in result.reports)
    by_close = sorted(result.reports, key=lambda r: r.finished_at or 0)
    assert by_close[-1].next.recommendation.endswith("All planned batches complete.")
    files = {s.seq: s.status.value for s in load_feature(root, "diamond").subtasks}
    assert files == dict.fromkeys(seqs, "completed")
    assert raw(root, "04", "diamond")["batchq"]["run_id"] == result.run_id
    saved = sorted((root / ".tmp/tasks/diamond/.batchq/reports").glob("*.json"))
    assert len(saved) == len(plan)

    # Every subtask went out as a message of its own: no chord callback in flow mode.
    mine = "diamond"
    assert task_events.wait_for(lambda ev: len(ev.events("task-succeeded", mine)) >= len(seqs))
    sent = task_events.events("task-sent", mine, name=RUN_TASK)
    assert sorted(next(w for w in e["args"].split() if w.startswith("seq=")) for e in sent) == [
        f"seq={s}" for s in seqs
    ]
    assert all(e["queue"] == "batchq.shell" for e in sent)
    assert task_events.events("task-received", mine, name=AGGREGATE_TASK) == []


@pytest.mark.parametrize("policy", [FailurePolicy.GRACEFUL, FailurePolicy.CONTINUE])
def test_a_failure_skips_exactly_its_transitive_dependents_and_says_why(
    make_feature: Any, subtask_data: Any, orchestrator: MakeOrchestrator, policy: FailurePolicy
) -> None:
    root = make_feature(
        [
            subtask_data("01", command="echo boom >&2; exit 1"),
            subtask_data("02", command=write("02"), depends_on=["01"]),
            subtask_data("03", command=write("03"), depends_on=["02"]),
            subtask_data("04", command=write("04")),
            subtask_data("05", command=write("05"), depends_on=["04"]),
        ]
    )
    result = orchestrator(root).run(RunOptions(policy=policy, mode=FLOW))

    assert not result.ok
    got = results(result)
    assert got["01"].result is ResultState.FAILED
    assert got["04"].result is got["05"].result is ResultState.COMPLETED
    skipped = {s.seq: s.reason for r in result.reports for s in r.skipped}
    assert skipped == {
        "02": "depends on 01, which failed",
        "03": "depends on 02, which was skipped (01 failed)",
    }
    for report in result.reports:
        members = {x.seq for x in report.results} | {s.seq for s in report.skipped}
        assert report.ok is not bool(members & {"01", "02", "03"})
        assert report.missing == []
    assert {s.seq: s.status.value for s in load_feature(root, "feat").subtasks} == {
        "01": "blocked",
        "02": "pending",
        "03": "pending",
        "04": "completed",
        "05": "completed",
    }
    block = raw(root, "02")["batchq"]
    assert block["result"] == "cancelled" and block["run_id"] == result.run_id
    assert block["error"] == "skipped: depends on 01, which failed"
