"""Chunks of tiny python subtasks (batchq.core.chunks) on a real Redis and a real worker:
each member keeps its own result, timeout, retry, progress events and task events."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from batchq.core import chunks
from batchq.models import FailurePolicy, ResultState
from batchq.protocol import CHUNK_TASK, RUN_TASK
from batchq.run.orchestrator import Orchestrator, RunOptions
from batchq.settings import load_settings
from batchq.store.state import StateStore
from batchq.transport.app import create_app
from tests.servers import module_worker

pytestmark = pytest.mark.integration

CALLABLES = "tests.fixtures_pkg.callables"
WORKER_ENV = {"BATCHQ_PYTHON_ALLOW": "tests.fixtures_pkg", "BATCHQ_RETRY_BACKOFF_S": "0.1"}


@pytest.fixture(scope="module")
def stack(redis_target: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with module_worker(redis_target.url, tmp_path_factory, WORKER_ENV) as url:
        yield url


class TaskEvents:
    """Every task event on the broker, as Flower receives them."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self.receiver: Any = None
        self.thread = threading.Thread(target=self._capture, daemon=True)

    def _capture(self) -> None:
        with self.app.connection_for_read() as conn:
            self.receiver = self.app.events.Receiver(
                conn, handlers={"*": self.seen.append}, app=self.app
            )
            self.ready.set()
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def __enter__(self) -> TaskEvents:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.receiver.should_stop = True
        self.thread.join(10)

    def of(self, task_id: str) -> list[str]:
        return [e["type"] for e in self.seen if e.get("uuid") == task_id]


def test_members_of_a_chunk_keep_their_own_result_timeout_retry_and_task_events(
    stack: str,
    make_feature: Any,
    subtask_data: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(chunks, "MIN_MESSAGES", 2)  # chunk even this small batch
    root = make_feature(
        [
            subtask_data("01", callable_=f"{CALLABLES}:write_deliverable", timeout_s=60),
            subtask_data("02", callable_=f"{CALLABLES}:raises", timeout_s=60),
            subtask_data("03", callable_=f"{CALLABLES}:sleeps_past_timeout", timeout_s=1),
            subtask_data("04", callable_=f"{CALLABLES}:fails_once", retries=1, timeout_s=60),
            subtask_data("05", callable_=f"{CALLABLES}:write_deliverable", timeout_s=60),
            subtask_data("06", callable_=f"{CALLABLES}:write_deliverable", timeout_s=60),
            subtask_data("07", callable_=f"{CALLABLES}:write_deliverable", timeout_s=60),
        ]
    )
    (root / "out").mkdir()
    settings = load_settings(
        root, redis_url=stack, python_allow=["tests.fixtures_pkg"], chunk_max=3, stall_s=30.0
    )
    app = create_app(settings)
    store = StateStore.from_url(stack)
    published: list[Any] = []
    try:
        with TaskEvents(app) as events:
            orchestrator = Orchestrator(root, "feat", settings, app, store)
            run = orchestrator.run(
                RunOptions(policy=FailurePolicy.CONTINUE, on_submit=published.append)
            )
            run_id = run.run_id
            # Events may trail the report: 6 chunked members, 2 chunks, 07 alone and
            # the chord callback each end with a task-succeeded (the callback with a
            # task-retried when it left the report to this orchestrator).
            ended = ("task-succeeded", "task-retried")
            for _ in range(100):
                if sum(1 for e in events.seen if e["type"] in ended) >= 10:
                    break
                threading.Event().wait(0.1)
        recorded = store.results(run_id, [f"0{i}" for i in range(1, 8)])
    finally:
        store.close()

    (report,) = run.reports
    by_seq = {r.seq: r for r in report.results}
    assert by_seq["01"].result is ResultState.COMPLETED
    assert by_seq["02"].result is ResultState.FAILED and "boom" in (by_seq["02"].error or "")
    assert by_seq["03"].result is ResultState.TIMED_OUT  # its own 1 s, inside the chunk
    assert by_seq["04"].result is ResultState.COMPLETED and by_seq["04"].attempts == 2
    assert {by_seq[s].result for s in ("05", "06", "07")} == {ResultState.COMPLETED}
    assert (root / "out" / "04.txt").exists()
    assert {seq: r.result for seq, r in recorded.items()} == {
        seq: r.result for seq, r in by_seq.items()
    }

    # Seven members went out as two chunks of three and 07 alone.
    received = [e for e in events.seen if e["type"] == "task-received"]
    chunk_ids = {e["uuid"] for e in received if e.get("name") == CHUNK_TASK}
    members = [e for e in received if e.get("name") == RUN_TASK]
    assert len(chunk_ids) == 2
    sent = {e["uuid"] for e in events.seen if e["type"] == "task-sent"}
    assert chunk_ids <= sent  # the producer's task-sent events, sent as one task-multi
    assert len(members) == 7
    assert {e["parent_id"] for e in members if e["parent_id"] in chunk_ids} == chunk_ids
    assert sorted(e["args"].split()[2] for e in members) == [f"seq=0{i}" for i in range(1, 8)]
    assert all(e["args"].startswith("feature=") for e in members)
    # Each member's own lifecycle, as Flower shows it: failed and timed-out ones end
    # task-failed (Flower's FAILURE), the rest task-succeeded.
    ends = {member["args"].split()[2]: events.of(member["uuid"])[-1] for member in members}
    assert ends == {
        f"seq=0{i}": "task-failed" if i in (2, 3) else "task-succeeded" for i in range(1, 8)
    }
    assert published and published[0].expected == [f"0{i}" for i in range(1, 8)]


def test_a_small_batch_of_callables_known_to_be_tiny_shares_one_message(
    stack: str,
    make_feature: Any,
    subtask_data: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first feature teaches batchq the callable is tiny; the next one, new to it,
    goes out as one chunk (still a chord, whose callback runs)."""
    monkeypatch.setattr(chunks, "TINY_S", 30.0)  # what counts as tiny on a loaded CI box
    subs = [subtask_data(f"0{i}", callable_=f"{CALLABLES}:quick", timeout_s=60) for i in (1, 2, 3)]
    root = make_feature(subs, name="first")
    make_feature(subs, name="second", root=root)
    (root / "out").mkdir()
    settings = load_settings(root, redis_url=stack, python_allow=["tests.fixtures_pkg"])
    app = create_app(settings)
    store = StateStore.from_url(stack)
    try:
        with TaskEvents(app) as events:
            first = Orchestrator(root, "first", settings, app, store).run()
            second = Orchestrator(root, "second", settings, app, store).run()
            for _ in range(100):  # 3 + 2 task-succeeded, and the two chord callbacks
                # received (each may leave its report to the live orchestrator: retried)
                succeeded = sum(1 for e in events.seen if e["type"] == "task-succeeded")
                callbacks = len(
                    {
                        e["uuid"]
                        for e in events.seen
                        if e["type"] == "task-received"
                        and e.get("name") == "batchq.aggregate_batch"
                    }
                )
                if succeeded >= 5 and callbacks >= 2:
                    break
                threading.Event().wait(0.1)
    finally:
        store.close()
    assert first.ok and second.ok
    received = [e for e in events.seen if e["type"] == "task-received"]
    (chunk,) = [e for e in received if e.get("name") == CHUNK_TASK]
    assert chunk["args"].startswith("feature=second batch=1 seq=01..03 run=")
    assert chunk["args"].endswith(" subtasks=3")
    children = [
        e for e in received if e.get("parent_id") == chunk["uuid"] and e.get("name") == RUN_TASK
    ]
    assert sorted(e["args"].split()[2] for e in children) == ["seq=01", "seq=02", "seq=03"]
    alone = [e for e in received if e.get("name") == RUN_TASK and "feature=first" in e["args"]]
    assert len(alone) == 3  # before anything was known, each in a message of its own
    # one callback per chord; a retried one is received again under the same id
    callbacks = {e["uuid"] for e in received if e.get("name") == "batchq.aggregate_batch"}
    assert len(callbacks) == 2


def test_a_callable_is_judged_by_its_longest_recent_run(stack: str) -> None:
    from batchq.models import SubtaskResult
    from batchq.store.state import CALLABLE_RUNS

    store = StateStore.from_url(stack, prefix="learned-test:")
    spec = "tests.fixtures_pkg.callables:judged"

    def record(seq: str, seconds: float) -> None:
        result = SubtaskResult(
            feature="f", run_id="r", batch=1, seq=seq, title="t",
            result=ResultState.COMPLETED, duration_s=seconds,
        )  # fmt: skip
        assert store.record_result(result, "fkey", "w", spec)

    try:
        assert store.create_run("r0", {"feature": "f"}, "", [spec]).callables == {}
        record("01", 2.0)
        for i in range(CALLABLE_RUNS - 1):
            record(f"1{i}", 0.001)
        assert store.create_run("r1", {"feature": "f"}, "", [spec]).callables == {spec: 2.0}
        record("99", 0.002)  # the slow run falls out of the window
        assert store.create_run("r2", {"feature": "f"}, "", [spec]).callables == {spec: 0.002}
    finally:
        store.close()
