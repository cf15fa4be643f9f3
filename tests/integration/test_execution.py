"""Running features end to end on a real redis-server and real prefork workers."""

from __future__ import annotations

import itertools
import json
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchq.agents.sandbox import bwrap_status
from batchq.cli.render import render_markdown
from batchq.core.planner import plan
from batchq.errors import LockedError, PolicyError, UnsafeBatchError
from batchq.files.taskfiles import load_feature
from batchq.models import BatchStatus, FailurePolicy, ResultState, SubtaskStatus, feature_key
from batchq.protocol import DEFAULT_QUEUES
from batchq.run.orchestrator import Orchestrator, RunOptions, RunResult
from batchq.run.producer import new_run, submit, wait
from batchq.settings import Settings, load_settings
from batchq.store.state import StateStore
from batchq.transport.app import create_app
from tests.servers import module_worker

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
SERIAL_AGENT = {"command": "bash {workspace}/record.sh {seq}", "max_concurrency": 1}
WORKER_ENV = {
    "BATCHQ_AGENTS": json.dumps({"OneAtATime": SERIAL_AGENT}),
    "BATCHQ_SHELL_ALLOW": "*",
    "BATCHQ_PYTHON_ALLOW": "tests.fixtures_pkg",
    "BATCHQ_RETRY_BACKOFF_S": "0.2",
    "BATCHQ_HEARTBEAT_S": "1",
}


@pytest.fixture(scope="module")
def stack(redis_target: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One prefork worker with 4 slots for the whole module; strict-ish allow-lists."""
    with module_worker(
        redis_target.url, tmp_path_factory, WORKER_ENV, (*DEFAULT_QUEUES, "batchq.OneAtATime")
    ) as url:
        yield url


Runner = Callable[..., RunResult]


@pytest.fixture
def settings_for(stack: str) -> Callable[..., Settings]:
    def make(root: Path, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": stack,
            "shell_allow": ["*"],
            "python_allow": ["tests.fixtures_pkg"],
            "stall_s": 30.0,
        }
        values.update(overrides)
        return load_settings(root, **values)

    return make


@pytest.fixture
def orchestrator(settings_for: Callable[..., Settings]) -> Iterator[Callable[..., Orchestrator]]:
    stores: list[StateStore] = []

    def make(root: Path, name: str = "feat", **overrides: Any) -> Orchestrator:
        settings = settings_for(root, **overrides)
        store = StateStore.from_url(settings.redis_url or "", prefix=settings.key_prefix)
        stores.append(store)
        return Orchestrator(root, name, settings, create_app(settings), store)

    yield make
    for store in stores:
        store.close()


def statuses(root: Path, name: str = "feat") -> dict[str, str]:
    return {s.seq: s.status.value for s in load_feature(root, name).subtasks}


def raw(root: Path, seq: str, name: str = "feat") -> dict[str, Any]:
    path = root / ".tmp" / "tasks" / name / f"subtask_{seq}.json"
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def write(seq: str, extra: str = "") -> str:
    return f"{extra}mkdir -p out && echo done-{seq} > out/{seq}.txt && echo wrote {seq}"


def test_a_feature_runs_batch_after_batch_to_all_completed(
    make_feature, subtask_data, orchestrator
):
    root = make_feature(
        [
            subtask_data("01", command=write("01")),
            subtask_data("02", command=write("02")),
            subtask_data(
                "03",
                callable_="tests.fixtures_pkg.callables:write_deliverable",
                deliverables=["03.txt"],
            ),
            subtask_data("04", command=write("04"), depends_on=["01", "02", "03"]),
        ]
    )
    result = orchestrator(root).run()
    assert result.ok, result.reports
    assert [r.batch for r in result.reports] == [1, 2]
    first = result.reports[0]
    assert first.status is BatchStatus.COMPLETED
    assert (first.total, first.completed, first.failed, first.success_rate) == (3, 3, 0, 100.0)
    assert first.next.batch == 2 and first.next.seqs == ["04"]
    assert first.next.dependencies_satisfied
    assert all(r.worker for r in first.results)
    assert all(d.verified for r in first.results for d in r.deliverables)
    assert statuses(root) == dict.fromkeys(["01", "02", "03", "04"], "completed")
    assert (root / "out" / "04.txt").read_text() == "done-04\n"
    task = json.loads((root / ".tmp/tasks/feat/task.json").read_text())
    assert task["status"] == "completed" and task["completed_count"] == 4
    assert raw(root, "01")["completion_summary"] == "wrote 01"
    assert raw(root, "01")["batchq"]["result"] == "completed"
    saved = sorted((root / ".tmp/tasks/feat/.batchq/reports").glob("*.json"))
    assert len(saved) == 2


def test_a_failed_subtask_blocks_the_next_batch_and_keeps_sibling_results(
    make_feature, subtask_data, orchestrator
):
    root = make_feature(
        [
            subtask_data("01", command=write("01")),
            subtask_data("02", command="echo about to fail; echo boom >&2; exit 3"),
            subtask_data("03", command=write("03", "sleep 0.5 && ")),
            subtask_data("04", command=write("04"), depends_on=["01", "02", "03"]),
        ]
    )
    result = orchestrator(root).run()
    assert not result.ok
    assert len(result.reports) == 1
    report = result.reports[0]
    assert report.status is BatchStatus.PARTIAL_FAILURE
    by_seq = {r.seq: r for r in report.results}
    assert by_seq["02"].result is ResultState.FAILED
    assert "boom" in by_seq["02"].output_tail
    assert "exit" in (by_seq["02"].error or "") or "3" in (by_seq["02"].error or "")
    assert by_seq["01"].result in (ResultState.COMPLETED, ResultState.CANCELLED)
    assert not report.next.dependencies_satisfied
    files = statuses(root)
    assert files["02"] == "blocked"
    assert files["04"] == "pending"
    block = raw(root, "02")["batchq"]
    assert block["result"] == "failed" and block["run_id"] == result.run_id
    assert Path(block["log"]).is_file()
    assert "boom" in Path(block["log"]).read_text()


def test_run_executes_exactly_the_batches_plan_printed_in_its_order(
    make_feature, subtask_data, orchestrator
):
    """01 parallel, 02 parallel: false, 03 after 01: plan says 01 | 02 | 03, and so
    must the run, each report naming the batch that is submitted next."""
    root = make_feature(
        [
            subtask_data("01", command=write("01")),
            subtask_data("02", command=write("02"), parallel=False),
            subtask_data("03", command=write("03"), depends_on=["01"]),
        ]
    )
    planned = plan(load_feature(root, "feat")).batches
    assert [b.seqs for b in planned] == [["01"], ["02"], ["03"]]
    result = orchestrator(root).run()
    assert result.ok, result.reports
    ran = [[r.seq for r in rep.results] for rep in result.reports]
    assert ran == [b.seqs for b in planned]
    assert [rep.batch for rep in result.reports] == [1, 2, 3]
    assert [(rep.next.batch, rep.next.seqs) for rep in result.reports] == [
        (2, ["02"]),
        (3, ["03"]),
        (None, []),
    ]
    first = render_markdown(result.reports[0]).splitlines()
    assert "Batch 1 complete. Ready to proceed to Batch 2 (subtask 02)." in first
    assert "Batch 2 depends on: nothing." in first
    second = render_markdown(result.reports[1]).splitlines()
    assert "Batch 2 complete. Ready to proceed to Batch 3 (subtask 03)." in second
    assert "Batch 3 depends on: 01 (all now satisfied)." in second


def test_an_explicit_batch_names_the_features_real_next_batch(
    make_feature, subtask_data, orchestrator
):
    root = make_feature(
        [
            *(subtask_data(s, command=write(s)) for s in ("01", "02", "03")),
            subtask_data("04", command=write("04"), depends_on=["01", "02", "03"]),
        ]
    )
    result = orchestrator(root).run_batch(["01", "02", "03"])
    (report,) = result.reports
    assert report.ok
    assert (report.next.batch, report.next.seqs) == (2, ["04"])
    lines = render_markdown(report).splitlines()
    assert "Batch 1 complete. Ready to proceed to Batch 2 (subtask 04)." in lines
    assert "Batch 2 depends on: 01, 02, 03 (all now satisfied)." in lines
    assert statuses(root)["04"] == "pending"


def test_a_missing_deliverable_fails_the_subtask_with_the_path(
    make_feature, subtask_data, orchestrator
):
    root = make_feature([subtask_data("01", command="echo I forgot", deliverables=["src/a.py"])])
    result = orchestrator(root).run()
    (only,) = result.reports[0].results
    assert only.result is ResultState.FAILED
    assert only.error == "deliverable missing: src/a.py"
    assert statuses(root)["01"] == "blocked"


def test_a_failing_verify_command_fails_the_subtask(make_feature, subtask_data, orchestrator):
    root = make_feature([subtask_data("01", command=write("01"), verify="grep nope out/01.txt")])
    (only,) = orchestrator(root).run().reports[0].results
    assert only.result is ResultState.FAILED
    assert (only.error or "").startswith("verify failed")


def test_a_subtask_past_its_timeout_is_timed_out(make_feature, subtask_data, orchestrator):
    root = make_feature([subtask_data("01", command="sleep 30", timeout_s=1)])
    (only,) = orchestrator(root).run().reports[0].results
    assert only.result is ResultState.TIMED_OUT
    assert raw(root, "01")["batchq"]["result"] == "timed_out"
    assert statuses(root)["01"] == "blocked"


def test_a_temporary_failure_is_retried_until_it_succeeds(make_feature, subtask_data, orchestrator):
    command = "test -f out/marker || { mkdir -p out; touch out/marker; exit 75; }; " + write("01")
    root = make_feature([subtask_data("01", command=command, retries=2)])
    (only,) = orchestrator(root).run().reports[0].results
    assert only.result is ResultState.COMPLETED
    assert only.attempts == 2


def _policy_feature(make_feature: Any, subtask_data: Any) -> Path:
    return make_feature(
        [
            subtask_data("01", command="exit 1"),
            subtask_data("02", command=write("02", "sleep 3 && ")),
            subtask_data("03", command=write("03", "sleep 3 && ")),
            subtask_data("04", command=write("04", "sleep 3 && ")),
            subtask_data("05", command=write("05", "sleep 3 && ")),
            subtask_data("06", command=write("06", "sleep 3 && ")),
        ]
    )


def test_graceful_lets_running_siblings_finish_and_cancels_the_rest(
    make_feature, subtask_data, orchestrator
):
    root = _policy_feature(make_feature, subtask_data)
    report = orchestrator(root).run(RunOptions(policy=FailurePolicy.GRACEFUL)).reports[0]
    by_seq = {r.seq: r for r in report.results}
    assert by_seq["01"].result is ResultState.FAILED
    siblings = [by_seq[s] for s in ("02", "03", "04", "05", "06")]
    assert {r.result for r in siblings} <= {ResultState.COMPLETED, ResultState.CANCELLED}
    # Four slots: at least two members were still queued when 01 failed.
    assert any(r.result is ResultState.CANCELLED for r in siblings)
    for r in siblings:
        if r.result is ResultState.CANCELLED:
            assert "before start" in (r.error or "")
    files = statuses(root)
    for r in siblings:
        expected = "completed" if r.result is ResultState.COMPLETED else "pending"
        assert files[r.seq] == expected


def test_terminate_stops_running_siblings(make_feature, subtask_data, orchestrator):
    root = make_feature(
        [
            subtask_data("01", command="sleep 1; exit 1"),
            subtask_data("02", command=write("02", "sleep 60 && ")),
        ]
    )
    report = orchestrator(root).run(RunOptions(policy=FailurePolicy.TERMINATE)).reports[0]
    by_seq = {r.seq: r for r in report.results}
    assert by_seq["01"].result is ResultState.FAILED
    assert by_seq["02"].result is ResultState.CANCELLED
    assert not (root / "out" / "02.txt").exists()


def test_continue_runs_the_whole_batch(make_feature, subtask_data, orchestrator):
    root = _policy_feature(make_feature, subtask_data)
    report = orchestrator(root).run(RunOptions(policy=FailurePolicy.CONTINUE)).reports[0]
    results = {r.seq: r.result for r in report.results}
    assert results.pop("01") is ResultState.FAILED
    assert set(results.values()) == {ResultState.COMPLETED}
    assert report.status is BatchStatus.PARTIAL_FAILURE
    assert (report.completed, report.failed) == (5, 1)


def _untouched(root: Path) -> dict[str, bytes]:
    folder = root / ".tmp" / "tasks" / "feat"
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.json"))}


def test_an_unknown_agent_is_refused_before_anything_is_enqueued(
    make_feature, subtask_data, orchestrator
):
    root = make_feature([subtask_data("01", command=write("01"), agent="NoSuchAgent")])
    before = _untouched(root)
    orch = orchestrator(root)
    with pytest.raises(PolicyError, match="unknown agent 'NoSuchAgent'"):
        orch.run()
    assert _untouched(root) == before
    assert orch.store.recent_runs("feat") == []


@pytest.mark.parametrize(
    "command",
    ["echo hi; rm -rf x", "echo hi && rm -rf x", "echo hi | sh", "echo $(rm -rf x)"],
)
def test_a_command_outside_the_allow_list_is_refused(
    make_feature, subtask_data, orchestrator, command
):
    root = make_feature([subtask_data("01", command=command)])
    before = _untouched(root)
    with pytest.raises(PolicyError, match=r"not allowed|refused"):
        orchestrator(root, shell_allow=["echo *"]).run()
    assert _untouched(root) == before


def test_a_worker_refuses_a_callable_its_own_allow_list_does_not_cover(
    make_feature, subtask_data, orchestrator
):
    # The producer allows everything; the worker only allows tests.fixtures_pkg.
    root = make_feature([subtask_data("01", callable_="os:getcwd")])
    (only,) = orchestrator(root, python_allow=["*"]).run().reports[0].results
    assert only.result is ResultState.FAILED
    assert only.error_type == "PolicyError"
    assert "not allowed" in (only.error or "")


def test_an_unsafe_explicit_batch_runs_nothing(make_feature, subtask_data, orchestrator):
    root = make_feature(
        [
            subtask_data("01", command=write("01"), deliverables=["src/"]),
            subtask_data("02", command=write("02"), deliverables=["src/a.py"], depends_on=["01"]),
        ]
    )
    before = _untouched(root)
    with pytest.raises(UnsafeBatchError) as info:
        orchestrator(root).run_batch(["01", "02"])
    kinds = {v.kind for v in info.value.violations}
    assert {"dependency_in_batch", "overlap"} <= kinds
    assert _untouched(root) == before


def test_an_explicit_batch_runs_just_its_members(make_feature, subtask_data, orchestrator):
    root = make_feature([subtask_data(s, command=write(s)) for s in ("01", "02", "03")])
    result = orchestrator(root).run_batch(["01", "03"])
    assert result.ok
    assert statuses(root) == {"01": "completed", "02": "pending", "03": "completed"}


def test_a_rerun_resumes_by_resetting_its_own_failed_subtasks(
    make_feature, subtask_data, orchestrator
):
    root = make_feature(
        [
            subtask_data("01", command=write("01")),
            subtask_data("02", command="test -f flag && " + write("02")),
            subtask_data("03", command=write("03"), depends_on=["02"]),
        ]
    )
    first = orchestrator(root).run()
    assert not first.ok
    assert statuses(root) == {"01": "completed", "02": "blocked", "03": "pending"}
    (root / "flag").write_text("go")
    second = orchestrator(root).run()
    assert second.ok
    assert [r.results[0].seq for r in second.reports] == ["02", "03"]
    assert statuses(root) == dict.fromkeys(["01", "02", "03"], "completed")


def test_no_retry_failed_keeps_failed_subtasks_out(make_feature, subtask_data, orchestrator):
    root = make_feature([subtask_data("01", command="exit 1")])
    orchestrator(root).run()
    again = orchestrator(root).run(RunOptions(retry_failed=False))
    assert again.reports == []
    assert statuses(root)["01"] == "blocked"


def test_a_second_orchestrator_of_the_same_feature_is_refused(
    make_feature, subtask_data, orchestrator
):
    root = make_feature([subtask_data("01", command=write("01"))])
    first, second = orchestrator(root), orchestrator(root)
    with first.exclusive(), pytest.raises(LockedError, match="already being run"):
        second.run()


def test_a_worker_without_the_workspace_fails_the_subtask(make_feature, subtask_data, settings_for):
    root = make_feature([subtask_data("01", command=write("01"))])
    settings = settings_for(root)
    store = StateStore.from_url(settings.redis_url or "")
    try:
        feature = load_feature(root, "feat")
        run = new_run(store, feature, FailurePolicy.GRACEFUL)
        (feature.state_dir / "runs" / f"{run.run_id}.token").unlink()
        from batchq.core.planner import plan

        batch = plan(feature).batches[0]
        submission = submit(create_app(settings), store, run, feature, batch, None, settings)
        report = wait(store, submission, settings)
    finally:
        store.close()
    (only,) = report.results
    assert only.result is ResultState.FAILED
    assert only.error_type == "WorkspaceMissing"
    assert "workspace not found" in (only.error or "")


def test_reports_are_kept_in_redis_and_in_the_feature_folder(
    make_feature, subtask_data, orchestrator
):
    root = make_feature(
        [subtask_data("01", command=write("01")), subtask_data("02", command=write("02"))]
    )
    orch = orchestrator(root)
    result = orch.run()
    report = result.reports[0]
    stored = orch.store.report(result.run_id, 1)
    assert stored is not None and stored.results == report.results
    saved = json.loads(
        (root / ".tmp/tasks/feat/.batchq/reports" / f"{result.run_id}-001.json").read_text()
    )
    assert saved["status"] == "completed" and saved["total"] == 2
    assert report.wall_s > 0 and report.work_s > 0
    assert report.discrepancies == []
    assert SubtaskStatus.COMPLETED.value == statuses(root)["02"]


def test_each_subtask_is_published_to_its_agents_queue(make_feature, subtask_data, tmp_path):
    """Routing is what lets `batchq worker --agents` serve a subset: no worker runs
    here, so the messages stay where the producer put them."""
    from batchq.core.planner import plan
    from batchq.local.embedded import RedisServer

    root = make_feature(
        [
            subtask_data("01", command=write("01")),
            subtask_data("02", callable_="tests.fixtures_pkg.callables:write_deliverable"),
        ]
    )
    with RedisServer() as server:
        settings = load_settings(
            root, redis_url=server.url, shell_allow=["*"], python_allow=["tests"]
        )
        store = StateStore.from_url(server.url)
        try:
            feature = load_feature(root, "feat")
            run = new_run(store, feature, FailurePolicy.GRACEFUL)
            submit(
                create_app(settings), store, run, feature, plan(feature).batches[0], None, settings
            )
            client = server.client()
            try:
                assert client.llen("batchq.shell") == 1
                assert client.llen("batchq.python") == 1
                assert client.llen("batchq.control") == 0
            finally:
                client.close()
        finally:
            store.close()


RECORD = """#!/usr/bin/env bash
# A stand-in coding-agent CLI: notes when it runs, then writes its deliverable.
set -e
mkdir -p times out
python3 -c 'import time; print(time.time())' >> "times/$1"
sleep 0.4
echo "done $1" > "out/$1.txt"
python3 -c 'import time; print(time.time())' >> "times/$1"
echo "wrote out/$1.txt"
"""


def test_a_cli_agents_max_concurrency_holds_across_worker_slots(
    make_feature, subtask_data, orchestrator
):
    """Four worker slots, four parallel subtasks, max_concurrency 1: they run one at a
    time. Checked on the intervals the agent itself recorded, not on durations."""
    root = make_feature([subtask_data(s, agent="OneAtATime") for s in ("01", "02", "03", "04")])
    (root / "record.sh").write_text(RECORD)
    result = orchestrator(root, agents={"OneAtATime": SERIAL_AGENT}).run()
    assert result.ok, result.reports
    intervals = sorted(
        tuple(float(x) for x in (root / "times" / s).read_text().split())
        for s in ("01", "02", "03", "04")
    )
    assert len(intervals) == 4
    for (_, end), (start, _) in itertools.pairwise(intervals):
        assert end <= start, intervals
    prompt = next((root / ".tmp/tasks/feat/.batchq/logs" / result.run_id).glob("01.prompt.md"))
    assert "Subtask 01" in prompt.read_text()


def test_status_adds_a_live_line_when_redis_is_configured(
    make_feature, subtask_data, orchestrator, stack, monkeypatch, capsys
):
    from batchq.cli.main import main

    root = make_feature([subtask_data("01", command=write("01"))])
    run_id = orchestrator(root).run().run_id
    monkeypatch.setenv("BATCHQ_REDIS_URL", stack)
    with pytest.raises(SystemExit) as info:
        main(["status", "feat", "--root", str(root)])
    assert info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[3] == "  ✓ 01 - Subtask 01 [completed]"
    assert lines[4] == f"  ⟳ live: run {run_id} batch 1 reported: 1/1 reported, 0 running"


def test_a_run_whose_orchestrator_went_away_is_adopted_not_run_again(
    make_feature, subtask_data, orchestrator
):
    """The orchestrator went away (Ctrl-C with a Redis URL, SIGKILL) while its batch
    went on on the workers: the next run records what they completed, waits for the
    member still running, returns the never-started one to pending, and runs only it."""
    import threading

    from batchq.models import SubtaskResult

    root = make_feature([subtask_data(s, command=write(s)) for s in ("01", "02", "03")])
    orch = orchestrator(root)
    feature = load_feature(root, "feat")
    old = new_run(orch.store, feature, FailurePolicy.GRACEFUL)
    orch.store.start_batch(old.run_id, 1, ["01", "02", "03"], "graceful")

    def result(seq: str) -> SubtaskResult:
        return SubtaskResult(
            feature="feat",
            run_id=old.run_id,
            batch=1,
            seq=seq,
            title=f"Subtask {seq}",
            result=ResultState.COMPLETED,
            summary=f"did {seq} elsewhere",
        )

    assert orch.store.record_result(result("01"), old.feature_key, "elsewhere")
    decision = orch.store.begin(
        old.run_id, 1, "02", "elsewhere", "t-02", claim_ttl_s=30, max_starts=3
    )
    assert decision == "run"
    notes: list[str] = []
    finish = threading.Timer(
        1.5, lambda: orch.store.record_result(result("02"), old.feature_key, "elsewhere")
    )
    finish.start()
    try:
        again = orch.run(RunOptions(on_note=notes.append))
    finally:
        finish.cancel()
    assert again.ok, again.reports
    assert statuses(root) == dict.fromkeys(["01", "02", "03"], "completed")
    # 01 and 02 were never run here (their commands write out/NN.txt); 03 was.
    assert not (root / "out/01.txt").exists() and not (root / "out/02.txt").exists()
    assert (root / "out/03.txt").read_text().strip() == "done-03"
    assert raw(root, "01")["completion_summary"] == "did 01 elsewhere"
    assert [r.seq for r in again.reports[0].results] == ["03"]
    assert any("waiting for 02" in n for n in notes), notes
    assert any(f"adopted the interrupted run {old.run_id}: 2 completed" in n for n in notes)
    # The old batch's report was saved: `batchq report --run` shows it.
    saved = root / ".tmp/tasks/feat/.batchq/reports" / f"{old.run_id}-001.json"
    assert saved.is_file()


def test_a_dead_holder_on_this_host_does_not_hold_the_feature(
    make_feature, subtask_data, orchestrator
):
    """A SIGKILLed orchestrator's lease outlives it; on the same host its pid and start
    time show it is gone, so the next run is not refused for a minute."""
    import subprocess
    import sys

    from batchq.run import holder

    root = make_feature([subtask_data("01", command=write("01"))])
    orch = orchestrator(root)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = holder.Holder(holder.current().host, int(gone.stdout), 1)
    fkey = feature_key("feat", root)
    assert orch.store.acquire_lock(fkey, str(dead), 60.0) is None
    assert orch.run().ok
    # A live holder elsewhere is still refused, with advice that works as printed.
    assert orch.store.acquire_lock(fkey, "elsewhere:1:1", 60.0) is None
    with pytest.raises(LockedError, match=rf"`batchq cancel feat --root {root}`"):
        orch.run()
    orch.store.release_lock(fkey, "elsewhere:1:1")


def test_batchq_cancel_stops_the_running_batch(
    make_feature, subtask_data, orchestrator, stack, monkeypatch, capsys
):
    import threading

    from batchq.cli.main import main
    from batchq.store.state import wait_until

    root = make_feature([subtask_data(s, command=write(s, "sleep 60 && ")) for s in ("01", "02")])
    orch = orchestrator(root)
    outcome: dict[str, RunResult] = {}
    runner = threading.Thread(target=lambda: outcome.setdefault("r", orch.run()))
    runner.start()
    assert wait_until(lambda: statuses(root) == {"01": "in_progress", "02": "in_progress"}, 60)
    monkeypatch.setenv("BATCHQ_REDIS_URL", stack)
    with pytest.raises(SystemExit) as info:
        main(["cancel", "feat", "--root", str(root)])
    assert info.value.code == 0
    assert "Cancelled batch" in capsys.readouterr().out
    runner.join(90)
    assert not runner.is_alive()
    (report,) = outcome["r"].reports
    assert {r.result for r in report.results} == {ResultState.CANCELLED}
    assert statuses(root) == {"01": "pending", "02": "pending"}
    # A cancel is a cancel: nothing failed and nothing is blamed.
    assert report.status is BatchStatus.CANCELLED
    assert (report.failed, report.cancelled) == (0, 2)
    assert report.next.fix == []
    md = render_markdown(report)
    assert "Status: ⊘ CANCELLED" in md and "- Failed: 0" in md and "Fix" not in md


def test_the_chord_callback_aggregates_the_batch_on_a_worker(
    make_feature, subtask_data, settings_for
):
    """The producer usually builds the report first; the chord callback must still run
    (its header is published on the producer's batch, not through chord.apply_async)."""
    from batchq.core.planner import plan

    root = make_feature(
        [subtask_data("01", command=write("01")), subtask_data("02", command=write("02"))]
    )
    settings = settings_for(root)
    store = StateStore.from_url(settings.redis_url or "")
    app = create_app(settings)
    try:
        feature = load_feature(root, "feat")
        run = new_run(store, feature, FailurePolicy.GRACEFUL)
        submission = submit(app, store, run, feature, plan(feature).batches[0], None, settings)
        report = wait(store, submission, settings)
        aggregated = []
        for _ in range(600):  # the callback's own hop comes after the members
            aggregated = [
                e for e in store.events(run.run_id, "0", block_ms=100) if e.kind == "aggregated"
            ]
            if aggregated:
                break
    finally:
        store.close()
    assert report.completed == 2
    (event,) = aggregated
    assert event.batch == 1 and event.data["status"] == "completed"


def test_without_a_waiting_producer_the_chord_callback_builds_and_stores_the_report(
    make_feature, subtask_data, settings_for
):
    """The orchestrator went away after publishing: the callback is the one to report."""
    from batchq.core.planner import plan

    root = make_feature(
        [subtask_data("01", command=write("01")), subtask_data("02", command="exit 3")]
    )
    settings = settings_for(root)
    store = StateStore.from_url(settings.redis_url or "")
    app = create_app(settings)
    try:
        feature = load_feature(root, "feat")
        run = new_run(store, feature, FailurePolicy.CONTINUE)
        submit(app, store, run, feature, plan(feature).batches[0], None, settings)
        events = []
        for _ in range(600):  # reading from "0" never blocks: pace the polls
            events = store.events(run.run_id, "0")
            if any(e.kind == "aggregated" for e in events):
                break
            threading.Event().wait(0.1)
        stored = store.report(run.run_id, 1)
    finally:
        store.close()
    (event,) = [e for e in events if e.kind == "aggregated"]
    assert event.data == {"stored": True, "status": "partial_failure"}
    assert stored is not None and not stored.forced
    assert {r.seq: r.result for r in stored.results} == {
        "01": ResultState.COMPLETED,
        "02": ResultState.FAILED,
    }


def test_an_unexpected_error_in_the_worker_is_a_failed_result_not_a_broken_chord(
    make_feature, subtask_data, orchestrator, tmp_path, monkeypatch
):
    """Two rounds: in the second the callables are known to be tiny, so the batch
    travels as one ``run_chunk`` message (the chunk path) instead of a chord of two."""
    from batchq.core import chunks

    grouped: list[list[int]] = []
    planned = chunks.plan

    def spy(*args: Any, **kwargs: Any) -> list[list[Any]]:
        groups = planned(*args, **kwargs)
        grouped.append([len(g) for g in groups])
        return groups

    monkeypatch.setattr(chunks, "plan", spy)
    for round_ in range(2):
        root = make_feature(
            [
                subtask_data(
                    "01",
                    callable_="tests.fixtures_pkg.callables:breaks_the_worker_next",
                    deliverables=["01.txt"],
                ),
                subtask_data(
                    "02", callable_="tests.fixtures_pkg.callables:quick", deliverables=["02.txt"]
                ),
            ],
            root=tmp_path / f"round{round_}",
        )
        # continue: in a chunk the members run one after the other, and under the
        # default policy 01's failure would cancel 02 before it starts
        result = orchestrator(root).run(RunOptions(policy=FailurePolicy.CONTINUE))
        (report,) = result.reports
        by_seq = {r.seq: r for r in report.results}
        assert by_seq["01"].result is ResultState.FAILED, by_seq["01"]
        assert by_seq["01"].error_type == "RuntimeError"
        assert by_seq["01"].error == (
            "unexpected error on the worker: RuntimeError: injected fault in the worker"
        )
        assert "injected fault" in by_seq["01"].output_tail
        assert by_seq["02"].result is ResultState.COMPLETED
        assert not report.discrepancies
        assert statuses(root) == {"01": "blocked", "02": "completed"}
    assert grouped == [[1, 1], [2]]  # a chord of two messages, then one chunk


def test_a_sandboxed_agent_cannot_mark_itself_done_in_its_task_file(
    make_feature, subtask_data, orchestrator
):
    """The sandbox keeps ``.tmp/tasks/`` read-only: the prompt tells agents to print
    ``SUMMARY:`` instead, and batchq records completion (see test_self_completion.py
    for what happens where no sandbox stops them)."""
    if not bwrap_status()[0]:
        pytest.skip("bubblewrap does not work here")
    cli = f"{sys.executable} -m batchq complete feat 01 my own words --root ."
    root = make_feature([subtask_data("01", command=f"PYTHONPATH={REPO_ROOT} {cli}")])
    before = raw(root, "01")
    result = orchestrator(root).run()
    assert not result.ok
    (report,) = result.reports
    assert report.results[0].result is ResultState.FAILED
    data = raw(root, "01")
    assert data["status"] == "blocked"
    assert data.get("completion_summary") != "my own words"
    assert data["title"] == before["title"]


def _cli(monkeypatch: Any, capsys: Any, stack: str, *args: str) -> tuple[int, str, str]:
    from batchq.cli.main import main

    monkeypatch.setenv("BATCHQ_REDIS_URL", stack)
    monkeypatch.setenv("BATCHQ_SHELL_ALLOW", "*")
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return int(info.value.code or 0), out, err


def test_a_failed_subtask_is_retried_alone_and_its_runs_and_logs_are_listed(
    make_feature, subtask_data, stack, monkeypatch, capsys
):
    fails = "test -e fixed || { echo broke here >&2; exit 1; }; " + write("01")
    root = make_feature(
        [subtask_data("01", command=fails), subtask_data("02", command=write("02"))]
    )
    r = str(root)
    code, out, _ = _cli(monkeypatch, capsys, stack, "run", "feat", "--root", r)
    assert code == 1 and statuses(root)["01"] == "blocked", out
    first = load_feature(root, "feat").by_seq()["01"].batchq
    assert first is not None and first.run_id
    # watch exits with the run's code
    assert _cli(monkeypatch, capsys, stack, "watch", "feat", "--root", r)[0] == 1
    (root / "fixed").touch()
    code, out, err = _cli(monkeypatch, capsys, stack, "batch", "feat", "01", "--root", r)
    assert code == 0, out + err
    assert f"↻ retrying 01: it failed in run {first.run_id}" in err
    assert statuses(root)["01"] == "completed"
    # the agent's full log of either run
    code, out, _ = _cli(
        monkeypatch, capsys, stack, "logs", "feat", "1", "--root", r, "--run", first.run_id
    )
    assert code == 0 and "broke here" in out
    code, out, _ = _cli(monkeypatch, capsys, stack, "logs", "feat", "01", "--root", r)
    assert code == 0 and "wrote 01" in out and "broke here" not in out
    code, _, err = _cli(monkeypatch, capsys, stack, "logs", "feat", "09", "--root", r)
    assert code == 2 and "its subtasks: 01, 02" in err
    code, out, _ = _cli(monkeypatch, capsys, stack, "runs", "feat", "--root", r, "--json")
    rows = json.loads(out)
    assert [(x["status"], x["mode"]) for x in rows] == [("completed", "batch"), ("failed", "batch")]
    assert rows[1]["run_id"] == first.run_id and rows[1]["started"]
    # an unknown run is a usage error naming the runs that have reports
    code, _, err = _cli(
        monkeypatch, capsys, stack, "report", "feat", "--root", r, "--run", "nosuch"
    )
    assert code == 2 and first.run_id in err and "nosuch" in err


def test_a_subtask_blocked_by_hand_is_not_retried_by_batch(
    make_feature, subtask_data, stack, monkeypatch, capsys
):
    root = make_feature([subtask_data("01", command=write("01"), status="blocked")])
    code, _, err = _cli(
        monkeypatch, capsys, stack, "run", "feat", "--root", str(root), "--only", "01"
    )
    assert code == 2 and "blocked, but not by a batchq run" in err
    assert statuses(root) == {"01": "blocked"}
