"""Flow mode end to end on a real redis-server and a real prefork worker (4 slots).

Ordering is proved from the start and finish times the workers recorded, never from
how long anything took.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchq.core import planner
from batchq.files.taskfiles import load_feature
from batchq.models import (
    BatchStatus,
    FailurePolicy,
    ResultState,
    RunMode,
    SubtaskResult,
)
from batchq.run.orchestrator import Orchestrator, RunOptions, RunResult
from batchq.settings import load_settings
from batchq.store.state import StateStore
from batchq.transport.app import create_app
from tests.servers import module_worker

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
FLOW = RunMode.FLOW


@pytest.fixture(scope="module")
def stack(redis_target: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One prefork worker with 4 slots for the whole module."""
    with module_worker(
        redis_target.url, tmp_path_factory, {"BATCHQ_SHELL_ALLOW": "*", "BATCHQ_HEARTBEAT_S": "1"}
    ) as url:
        yield url


@pytest.fixture
def run_flow(stack: str) -> Iterator[Callable[..., RunResult]]:
    stores: list[StateStore] = []

    def run(
        root: Path, policy: FailurePolicy = FailurePolicy.GRACEFUL, **overrides: Any
    ) -> RunResult:
        values: dict[str, Any] = {"redis_url": stack, "shell_allow": ["*"], "stall_s": 60.0}
        settings = load_settings(root, **{**values, **overrides})
        store = StateStore.from_url(stack, prefix=settings.key_prefix)
        stores.append(store)
        orch = Orchestrator(root, "feat", settings, create_app(settings), store)
        return orch.run(RunOptions(policy=policy, mode=FLOW))

    yield run
    for store in stores:
        store.close()


def write(seq: str, before: str = "") -> str:
    return f"{before}mkdir -p out && echo done-{seq} > out/{seq}.txt"


def results(result: RunResult) -> dict[str, SubtaskResult]:
    return {r.seq: r for report in result.reports for r in report.results}


def statuses(root: Path) -> dict[str, str]:
    return {s.seq: s.status.value for s in load_feature(root, "feat").subtasks}


def raw(root: Path, seq: str) -> dict[str, Any]:
    path = root / ".tmp" / "tasks" / "feat" / f"subtask_{seq}.json"
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def planned(root: Path) -> dict[int, list[str]]:
    return {b.number: b.seqs for b in planner.plan(load_feature(root, "feat")).batches}


def test_a_diamond_and_a_chain_complete_with_every_dependency_finished_first(
    make_feature, subtask_data, run_flow
):
    deps = {"02": ["01"], "03": ["01"], "04": ["02", "03"], "06": ["05"], "07": ["06"]}
    root = make_feature(
        [
            subtask_data(s, command=write(s, "sleep 0.2 && "), depends_on=deps.get(s))
            for s in ("01", "02", "03", "04", "05", "06", "07")
        ]
    )
    plan = planned(root)
    result = run_flow(root)
    assert result.ok, result.reports
    got = results(result)
    assert set(got) == set(itertools.chain(*plan.values()))
    for seq, needs in deps.items():
        for dep in needs:
            finished, started = got[dep].finished_at, got[seq].started_at
            assert finished is not None and started is not None
            assert finished <= started, f"{seq} started before its dependency {dep} finished"
    # One report per plan batch, holding exactly that batch's members.
    assert {r.batch: [x.seq for x in r.results] for r in result.reports} == plan
    assert all(r.status is BatchStatus.COMPLETED for r in result.reports)
    # No "next batch" to wait for: a report says what goes on, the last one is the end.
    by_close = sorted(result.reports, key=lambda r: r.finished_at or 0)
    last = by_close[-1]
    assert last.next.recommendation == f"Batch {last.batch} complete. All planned batches complete."
    for early in by_close[:-1]:
        assert early.next.recommendation.startswith("Flow mode: batch")
        assert early.next.batch is None
    # Mirrored into the files and saved per batch.
    assert set(statuses(root).values()) == {"completed"}
    assert raw(root, "04")["batchq"]["run_id"] == result.run_id
    saved = sorted((root / ".tmp" / "tasks" / "feat" / ".batchq" / "reports").glob("*.json"))
    assert len(saved) == len(plan)


def test_a_later_batch_starts_before_a_slow_subtask_of_an_earlier_batch_finishes(
    make_feature, subtask_data, run_flow
):
    """03 (batch 1) waits until 02 (batch 2, after 01) has written its file: under
    a batch barrier it could never finish; in flow mode 02 starts as soon as 01 is done."""
    wait_for_02 = (
        "for i in $(seq 300); do test -f out/02.txt && break; sleep 0.1; done; "
        "test -f out/02.txt && " + write("03")
    )
    root = make_feature(
        [
            subtask_data("01", command=write("01")),
            subtask_data("02", command=write("02"), depends_on=["01"]),
            subtask_data("03", command=wait_for_02, timeout_s=60),
        ]
    )
    plan = planned(root)
    assert plan[1] == ["01", "03"] and plan[2] == ["02"]
    result = run_flow(root)
    assert result.ok, result.reports
    got = results(result)
    b_started, c_finished = got["02"].started_at, got["03"].finished_at
    assert b_started is not None and c_finished is not None
    assert b_started < c_finished
    assert got["03"].started_at is not None and got["03"].started_at < b_started


def test_overlapping_deliverables_and_parallel_false_never_overlap_in_time(
    make_feature, subtask_data, run_flow
):
    shared = "mkdir -p out/shared && sleep 0.5 && echo {s} > out/shared/{s}.txt"
    root = make_feature(
        [
            subtask_data("01", command=shared.format(s="01"), deliverables=["out/shared/"]),
            subtask_data("02", command=shared.format(s="02"), deliverables=["out/shared/02.txt"]),
            subtask_data("03", command=shared.format(s="03"), deliverables=["out/shared/03.txt"]),
            subtask_data("04", command=write("04", "sleep 0.5 && "), parallel=False),
            subtask_data("05", command=write("05", "sleep 0.5 && ")),
        ]
    )
    result = run_flow(root)
    assert result.ok, result.reports
    got = results(result)

    def apart(a: str, b: str) -> bool:
        x, y = got[a], got[b]
        assert x.started_at and x.finished_at and y.started_at and y.finished_at
        return x.finished_at <= y.started_at or y.finished_at <= x.started_at

    assert apart("01", "02") and apart("01", "03")
    for other in ("01", "02", "03", "05"):
        assert apart("04", other), f"parallel: false 04 overlapped {other}"


@pytest.mark.parametrize("policy", [FailurePolicy.GRACEFUL, FailurePolicy.CONTINUE])
def test_a_failure_skips_exactly_its_transitive_dependents_and_says_why(
    make_feature, subtask_data, run_flow, policy
):
    root = make_feature(
        [
            subtask_data("01", command="sleep 0.3; echo boom >&2; exit 1"),
            subtask_data("02", command=write("02"), depends_on=["01"]),
            subtask_data("03", command=write("03"), depends_on=["02"]),
            subtask_data("04", command=write("04", "sleep 1 && ")),
            subtask_data("05", command=write("05"), depends_on=["04"]),
        ]
    )
    result = run_flow(root, policy)
    assert not result.ok
    got = results(result)
    assert got["01"].result is ResultState.FAILED
    assert got["04"].result is ResultState.COMPLETED
    assert got["05"].result is ResultState.COMPLETED
    skipped = {s.seq: s.reason for r in result.reports for s in r.skipped}
    assert skipped == {
        "02": "depends on 01, which failed",
        "03": "depends on 02, which was skipped (01 failed)",
    }
    for report in result.reports:
        members = {x.seq for x in report.results} | {s.seq for s in report.skipped}
        broken = members & {"01", "02", "03"}
        assert report.ok is not bool(broken)
        assert report.missing == []
    assert statuses(root) == {
        "01": "blocked",
        "02": "pending",
        "03": "pending",
        "04": "completed",
        "05": "completed",
    }
    block = raw(root, "02")["batchq"]
    assert block["result"] == "cancelled" and block["run_id"] == result.run_id
    assert block["error"] == "skipped: depends on 01, which failed"


def test_terminate_stops_running_subtasks_and_skips_the_rest(make_feature, subtask_data, run_flow):
    root = make_feature(
        [
            subtask_data("01", command="sleep 1; exit 1"),
            subtask_data("02", command=write("02", "sleep 60 && ")),
            subtask_data("03", command=write("03"), depends_on=["02"]),
        ]
    )
    result = run_flow(root, FailurePolicy.TERMINATE)
    assert not result.ok
    got = results(result)
    assert got["01"].result is ResultState.FAILED
    assert got["02"].result is ResultState.CANCELLED
    assert not (root / "out" / "02.txt").exists()
    skipped = {s.seq: s.reason for r in result.reports for s in r.skipped}
    assert skipped == {"03": "not started: 01 failed, policy terminate"}
    assert statuses(root) == {"01": "blocked", "02": "pending", "03": "pending"}


def test_the_cli_runs_in_flow_mode_and_exits_1_on_a_failure(
    make_feature, subtask_data, stack, monkeypatch, capsys
):
    from batchq.cli.main import main

    root = make_feature(
        [
            subtask_data("01", command="exit 1"),
            subtask_data("02", command=write("02"), depends_on=["01"]),
            subtask_data("03", command=write("03")),
        ]
    )
    monkeypatch.setenv("BATCHQ_REDIS_URL", stack)
    monkeypatch.setenv("BATCHQ_SHELL_ALLOW", "*")
    with pytest.raises(SystemExit) as info:
        main(["run", "feat", "--root", str(root), "--mode", "flow"])
    assert info.value.code == 1
    out = capsys.readouterr().out
    assert "## Batch 1 Execution FAILED" in out and "## Batch 2 Execution FAILED" in out
    # 02 never ran: it is skipped, not failed, and the advice names 01, which failed.
    second = out[out.index("## Batch 2 Execution FAILED") :]
    assert "⏭ Subtask 02 - Subtask 02\n   - Status: skipped\n" in second
    assert "   - Reason: depends on 01, which failed" in second
    assert "- Failed: 0\n" in second and "- Skipped: 1\n" in second
    # the advice keeps the --root given, so it works as printed
    assert f"Recommendation: Fix subtask 01, then rerun `batchq run feat --root {root}`." in second
    assert "Fix subtask 02" not in out and "0.0×" not in out
    assert statuses(root)["03"] == "completed"


def test_batchq_cancel_stops_a_flow_run_and_skips_what_never_started(
    make_feature, subtask_data, run_flow, stack, monkeypatch, capsys
):
    import threading

    from batchq.cli.main import main
    from batchq.store.state import wait_until

    root = make_feature(
        [
            subtask_data("01", command=write("01", "sleep 60 && ")),
            subtask_data("02", command=write("02"), depends_on=["01"]),
        ]
    )
    outcome: dict[str, RunResult] = {}
    runner = threading.Thread(target=lambda: outcome.setdefault("r", run_flow(root)))
    runner.start()
    assert wait_until(lambda: statuses(root)["01"] == "in_progress", 60)
    monkeypatch.setenv("BATCHQ_REDIS_URL", stack)
    with pytest.raises(SystemExit) as info:
        main(["cancel", "feat", "--root", str(root)])
    assert info.value.code == 0
    assert "Cancelled batch" in capsys.readouterr().out
    runner.join(90)
    assert not runner.is_alive()
    result = outcome["r"]
    assert not result.ok
    assert results(result)["01"].result is ResultState.CANCELLED
    skipped = {s.seq: s.reason for r in result.reports for s in r.skipped}
    assert skipped == {"02": "depends on 01, which was cancelled"}
    assert statuses(root) == {"01": "pending", "02": "pending"}
    # Nothing failed: both planned batches say cancelled, count nothing failed, blame no one.
    assert {r.status for r in result.reports} == {BatchStatus.CANCELLED}
    assert all(r.failed == 0 and r.next.fix == [] for r in result.reports)


def test_a_stalled_flow_run_gets_forced_reports_and_skips_what_never_started(
    make_feature, subtask_data, run_flow
):
    """01 goes to a queue no worker consumes: nothing moves for stall_s, so the run
    ends with forced reports naming 01 instead of hanging."""
    root = make_feature(
        [
            subtask_data("01", agent="Nobody"),
            subtask_data("02", command=write("02"), depends_on=["01"]),
            subtask_data("03", command=write("03")),
        ]
    )
    nobody = {"Nobody": {"command": "true"}}
    result = run_flow(root, stall_s=3.0, agents=nobody)
    assert not result.ok
    first, second = result.reports
    assert first.forced and first.missing == ["01"]
    assert "stalled" in " ".join(first.discrepancies)
    assert [r.seq for r in first.results] == ["03"] and first.results[0].ok
    assert [s.seq for s in second.skipped] == ["02"]
    assert second.skipped[0].reason.startswith("not started: stalled")
    assert statuses(root) == {"01": "blocked", "02": "pending", "03": "completed"}
    assert "no result before the batch deadline" in raw(root, "01")["batchq"]["error"]
