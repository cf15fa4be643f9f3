"""Redis restarts mid-batch: with AOF the run goes on to its report; without
persistence it ends with a clear failure by the stall deadline. Never a hang.

Each test runs its own redis-server (never the session's), so these skip against an
external ``BATCHQ_TEST_REDIS_URL``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batchq.files.taskfiles import load_feature
from batchq.local.embedded import RedisServer
from batchq.models import BatchStatus, ResultState, RunMode
from batchq.run.orchestrator import RunOptions
from batchq.store.state import Event
from tests.reliability.faults import (
    FAST_TIMEOUT_S,
    audit,
    client_for,
    json_files_valid,
    marked,
    record_figures,
    wait_drained,
)

pytestmark = pytest.mark.reliability

FIRST = ["01", "02", "03", "04"]
OUTAGE_S = 2.0
"""How long Redis stays down: a fault parameter, not a timing assertion."""


def _feature(make_feature: Any, subtask_data: Any) -> Path:
    return make_feature(
        [
            *(subtask_data(s, command=marked(s, 2.0), timeout_s=FAST_TIMEOUT_S) for s in FIRST),
            subtask_data("05", command=marked("05", 0.1), depends_on=FIRST, timeout_s=3),
        ]
    )


class Blip:
    """Takes Redis down once, on the first ``started`` event, from another thread so
    the producer and the workers see the outage."""

    def __init__(self, server: RedisServer, *, graceful: bool) -> None:
        self.server, self.graceful = server, graceful
        self.thread: threading.Thread | None = None

    def handler(self) -> Callable[[list[Event]], None]:
        def handle(events: list[Event]) -> None:
            if self.thread is None and any(e.kind == "started" for e in events):
                self.thread = threading.Thread(target=self._blip, name="redis-blip")
                self.thread.start()

        return handle

    def _blip(self) -> None:
        self.server.stop(graceful=self.graceful)  # TERM writes the AOF; KILL loses all
        time.sleep(OUTAGE_S)
        self.server.start()

    def join(self) -> None:
        assert self.thread is not None, "the fault was never injected"
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()


def test_a_graceful_restart_of_redis_with_aof_lets_the_run_finish(
    private_redis, start_worker, orchestrator, make_feature, subtask_data
):
    server = private_redis(aof=True)
    start_worker(server.url, concurrency=4)
    root = _feature(make_feature, subtask_data)
    blip = Blip(server, graceful=True)
    result = orchestrator(root, server.url, stall_s=30.0).run(RunOptions(on_events=blip.handler()))
    blip.join()
    assert result.ok, [r.discrepancies for r in result.reports]
    assert [r.status for r in result.reports] == [BatchStatus.COMPLETED] * 2
    client = client_for(server.redis_py_url)
    try:
        wait_drained(client)
        found = audit(client, result.run_id, [*FIRST, "05"], root)
    finally:
        client.close()
    record_figures("redis restarted with AOF", found)
    found.assert_clean()
    assert {s.status.value for s in load_feature(root, "feat").subtasks} == {"completed"}
    json_files_valid(root)


def test_a_flow_run_rides_out_a_graceful_restart_of_redis(
    private_redis, start_worker, orchestrator, make_feature, subtask_data
):
    server = private_redis(aof=True)
    start_worker(server.url, concurrency=4)
    root = _feature(make_feature, subtask_data)
    blip = Blip(server, graceful=True)
    options = RunOptions(mode=RunMode.FLOW, on_events=blip.handler())
    result = orchestrator(root, server.url, stall_s=30.0).run(options)
    blip.join()
    assert result.ok, [r.discrepancies for r in result.reports]
    assert [r.status for r in result.reports] == [BatchStatus.COMPLETED] * 2
    assert {s.status.value for s in load_feature(root, "feat").subtasks} == {"completed"}
    json_files_valid(root)


def test_redis_restarted_empty_ends_the_run_with_a_clear_failure_by_the_stall_deadline(
    private_redis, start_worker, orchestrator, make_feature, subtask_data
):
    server = private_redis(aof=False)
    start_worker(server.url, concurrency=4)
    root = _feature(make_feature, subtask_data)
    blip = Blip(server, graceful=False)
    inject, said_finished = blip.handler(), set()

    def handle(events: list[Event]) -> None:
        said_finished.update(e.seq for e in events if e.kind == "finished" and e.data)
        inject(events)

    result = orchestrator(root, server.url, stall_s=5.0).run(RunOptions(on_events=handle))
    blip.join()
    assert not result.ok
    (report,) = result.reports  # the next batch never starts
    assert report.forced
    assert report.missing, "the lost members are named"
    reason = " ".join(report.discrepancies)
    assert "stalled" in reason and "never reported" in reason
    assert "gone from Redis" in reason
    json_files_valid(root)
    feature = load_feature(root, "feat").by_seq()
    assert feature["05"].status.value == "pending"
    for seq in report.missing:
        block = feature[seq].batchq
        assert feature[seq].status.value == "blocked"
        assert block is not None and block.result is ResultState.FAILED
        assert "no result before the batch deadline" in (block.error or "")
        # Report, progress lines and file agree: no completion is left on a failed file,
        # and a member whose progress line said it finished is named as lost state.
        assert feature[seq].completed_at is None and feature[seq].completion_summary is None
        if seq in said_finished:
            assert f"{seq}: its progress event said " in reason
    # What the workers still recorded after the restart is never recorded twice.
    client = client_for(server.redis_py_url)
    try:
        found = audit(client, result.run_id, FIRST, root)
    finally:
        client.close()
    assert found.doubly_recorded == []
    assert set(found.lost) == set(report.missing)
