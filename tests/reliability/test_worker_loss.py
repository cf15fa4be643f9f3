"""Worker loss: a pool child or a whole worker SIGKILLed mid-subtask loses nothing.

SPEC 3 Delivery: ``acks_late`` + ``reject_on_worker_lost`` requeue the message of a
lost pool child at once (celery/worker/request.py ``on_failure``: a
``WorkerLostError`` with ``reject_on_worker_lost`` rejects with ``requeue=True`` and
records no failure, so the chord is not failed); a whole lost worker's unacked
messages are restored by a surviving worker after the visibility timeout. The claim
keeps a redelivered copy from running while the first still holds it, a recorded
completion is never rerun, and a start counter caps a subtask that kills its worker
every time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchq.agents.sandbox import bwrap_status
from batchq.files.taskfiles import load_feature
from batchq.models import BatchStatus, ResultState
from batchq.run.orchestrator import Orchestrator, RunOptions
from batchq.store.state import Event
from tests.reliability.faults import (
    FAST_TIMEOUT_S,
    Fleet,
    NamedWorkers,
    audit,
    client_for,
    json_files_valid,
    kill_pool_child,
    marked,
    pool_pid,
    record_figures,
    wait_drained,
)
from tests.servers import RedisTarget

pytestmark = pytest.mark.reliability

SEQS = ["01", "02", "03", "04"]
TRIALS = range(5)


@pytest.fixture(scope="module")
def fleet(redis_target: RedisTarget, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Two prefork workers (2 slots each) with quick-redelivery settings, for the module."""
    group = Fleet(redis_target.url, tmp_path_factory.mktemp("fleet"))
    try:
        group.add()
        group.add()
        yield group
    finally:
        group.stop()


def _feature(make_feature: Any, subtask_data: Any) -> Path:
    return make_feature(
        [subtask_data(s, command=marked(s), timeout_s=FAST_TIMEOUT_S) for s in SEQS]
    )


def _killer(
    victim: str, on_start: Callable[[Event], None], *, after: list[str] | None = None
) -> Callable[[list[Event]], None]:
    """An event handler that acts once, on the victim's first ``started`` event, or
    later, once every seq of ``after`` has started too."""
    started: dict[str, Event] = {}
    fired: list[bool] = []

    def handle(events: list[Event]) -> None:
        for event in events:
            if event.kind == "started":
                started.setdefault(event.seq, event)
        if fired or victim not in started or not set(after or []) <= set(started):
            return
        fired.append(True)
        on_start(started[victim])

    return handle


def _check_run(
    redis_target: RedisTarget, orch: Orchestrator, result: Any, root: Path, scenario: str
) -> None:
    client = client_for(redis_target.redis_py_url)
    try:
        wait_drained(client)
        found = audit(client, result.run_id, SEQS, root)
    finally:
        client.close()
    record_figures(scenario, found, restarted_seqs=found.restarted)
    assert result.ok, result.reports
    (report,) = result.reports
    assert report.status is BatchStatus.COMPLETED and report.missing == []
    assert {r.seq: r.result for r in report.results} == dict.fromkeys(SEQS, ResultState.COMPLETED)
    found.assert_clean()
    # The victim really was killed mid-run: it started again on another process.
    assert found.restarted, (found.starts, found.start_marks)
    assert {s.status.value for s in load_feature(root, "feat").subtasks} == {"completed"}
    json_files_valid(root)
    for seq in SEQS:
        assert (root / "out" / f"{seq}.txt").read_text() == f"done-{seq}\n"


@pytest.mark.parametrize("trial", TRIALS)
def test_a_pool_child_killed_mid_subtask_loses_and_doubles_nothing(
    trial, redis_target, fleet, orchestrator, make_feature, subtask_data
):
    workers = fleet.ready()
    root = _feature(make_feature, subtask_data)
    victim = SEQS[trial % len(SEQS)]

    def kill(event: Event) -> None:
        kill_pool_child(pool_pid(str(event.data["worker"])), workers)

    orch = orchestrator(root, redis_target.url)
    result = orch.run(RunOptions(on_events=_killer(victim, kill)))
    _check_run(redis_target, orch, result, root, "pool child SIGKILLed")


@pytest.mark.parametrize("trial", TRIALS)
def test_a_whole_worker_killed_mid_subtask_loses_and_doubles_nothing(
    trial, redis_target, fleet, orchestrator, make_feature, subtask_data
):
    workers = fleet.ready()
    root = _feature(make_feature, subtask_data)
    victim = SEQS[trial % len(SEQS)]
    killed: list[NamedWorkers] = []

    def kill(event: Event) -> None:
        owner = fleet.owner_of(pool_pid(str(event.data["worker"])))
        fleet.lose(owner)  # parent and pool, SIGKILL; a replacement starts meanwhile
        killed.append(owner)

    orch = orchestrator(root, redis_target.url)
    # Only once every member has started: all four messages are then in kombu's
    # unacked set. A worker killed between BRPOP and that bookkeeping loses the
    # message it was fetching (a kombu Redis transport window; the stall deadline
    # covers it: test_lost_member.py).
    result = orch.run(RunOptions(on_events=_killer(victim, kill, after=SEQS)))
    assert len(killed) == 1
    survivor = next(w for w in workers if w is not killed[0])
    assert survivor.children[0].alive()
    _check_run(redis_target, orch, result, root, "whole worker SIGKILLed")


@pytest.mark.skipif(not bwrap_status()[0], reason="bubblewrap does not work here")
def test_a_sandboxed_shell_subtask_cannot_kill_its_worker(
    redis_target, fleet, orchestrator, make_feature, subtask_data
):
    """In its own PID namespace the worker's pool process does not exist for the agent:
    ``kill $PPID`` reaches the sandbox's init, and the subtask just fails."""
    fleet.ready()
    started = len(fleet.every)
    command = 'mkdir -p marks; echo "$(date +%s.%N)" >> marks/02; kill -KILL $PPID; exit 3'
    root = make_feature([subtask_data("02", command=command, timeout_s=FAST_TIMEOUT_S)])
    result = orchestrator(root, redis_target.url).run()
    (report,) = result.reports
    crash = report.results[0]
    assert crash.result is ResultState.FAILED
    assert crash.error_type != "WorkerLost"
    assert "exit code 3" in (crash.error or "")
    assert len((root / "marks" / "02").read_text().splitlines()) == 1  # started once
    assert all(child.alive() for worker in fleet.live for child in worker.children)
    assert len(fleet.every) == started  # no worker was lost and replaced


@pytest.mark.parametrize(
    "how",
    [
        # A python subtask runs in the pool process itself, so it can always kill it
        # (a shell one cannot once sandboxed: see the test above).
        pytest.param(
            {"callable_": "tests.reliability.payloads:kill_own_worker"},
            id="python-kills-its-pool-process",
        ),
    ],
)
def test_a_subtask_that_kills_its_worker_every_time_ends_failed_at_the_cap(
    how, redis_target, fleet, orchestrator, make_feature, subtask_data
):
    fleet.ready()
    root = make_feature(
        [
            subtask_data("01", command=marked("01", 0.2), timeout_s=FAST_TIMEOUT_S),
            subtask_data("02", timeout_s=FAST_TIMEOUT_S, **how),
        ]
    )
    result = orchestrator(root, redis_target.url).run()
    (report,) = result.reports
    assert report.status is BatchStatus.PARTIAL_FAILURE  # the chord still fired
    by_seq = {r.seq: r for r in report.results}
    assert by_seq["01"].result is ResultState.COMPLETED
    crash = by_seq["02"]
    assert crash.result is ResultState.FAILED
    assert crash.error_type == "WorkerLost"
    assert "worker was lost 3 times" in (crash.error or "")
    assert "BATCHQ_MAX_STARTS=3" in (crash.error or "")
    client = client_for(redis_target.redis_py_url)
    try:
        wait_drained(client)
        found = audit(client, result.run_id, ["01", "02"], root)
    finally:
        client.close()
    record_figures("subtask kills its worker every time", found)
    assert found.lost == [] and found.doubly_recorded == []
    assert found.starts["02"] == 3 and len(found.start_marks["02"]) == 3
    block = load_feature(root, "feat").by_seq()["02"]
    assert block.status.value == "blocked"
    assert block.batchq is not None and block.batchq.result is ResultState.FAILED
    json_files_valid(root)
