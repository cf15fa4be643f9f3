"""Chord assembly and the report path, in-process: ``publish_batch`` puts a batch's
members on the caller's producer with the ``batchq.aggregate_batch`` callback as their
chord body; ``batchq.run_chunk`` carries several python subtasks in one member; the
producer's ``submit``/``wait`` build the report from the records, and the callback
builds it alone when no producer waits.

Kind: in-process threads worker (``conftest.py``): chord counting and the callback
are the Redis backend's and the worker's, whatever the pool. The chunk's callables
run one after the other in one thread (the lane's one python message at a time), and
none relies on its timeout, which a worker thread cannot arm (``SIGALRM``); member
timeouts inside a chunk stay covered by ``tests/integration/test_chunks.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from batchq.core import chunks, planner
from batchq.files.taskfiles import load_feature
from batchq.models import BatchStatus, FailurePolicy, ResultState
from batchq.protocol import AGGREGATE_TASK, CHUNK_TASK, CONTROL_QUEUE, RUN_TASK, EventKind
from batchq.run.orchestrator import RunOptions
from batchq.run.producer import Submission, new_run, submit, wait
from batchq.settings import Settings
from batchq.store.state import Event, StateStore, wait_until
from tests.inprocess.conftest import CALLABLES, MakeOrchestrator, TaskEvents


def write(seq: str) -> str:
    return f"mkdir -p out && echo done-{seq} > out/{seq}.txt && echo wrote {seq}"


def aggregated(store: StateStore, run_id: str) -> list[Event]:
    return [e for e in store.events(run_id, "0") if e.kind == EventKind.AGGREGATED]


def test_members_of_a_chunk_keep_their_own_result_retry_and_task_events(
    make_feature: Any,
    subtask_data: Any,
    orchestrator: MakeOrchestrator,
    store: StateStore,
    task_events: TaskEvents,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(chunks, "MIN_MESSAGES", 1)  # chunk even this small batch
    # Small budgets (never enforced here) keep the four within one chunk's budget, and
    # an estimate over TINY_S keeps them out of the tiny chunks: whatever other tests
    # taught batchq about these callables, they share exactly one message.
    python: dict[str, Any] = {"timeout_s": 60, "estimate_s": 0.5}
    root = make_feature(
        [
            subtask_data("01", callable_=f"{CALLABLES}:write_deliverable", **python),
            subtask_data("02", callable_=f"{CALLABLES}:raises", **python),
            subtask_data("03", callable_=f"{CALLABLES}:fails_once", retries=1, **python),
            subtask_data(
                "04", callable_=f"{CALLABLES}:write_deliverable", title="Fourth", **python
            ),
            subtask_data("05", command=write("05")),
        ],
        name="chunked",
    )
    (root / "out").mkdir()
    published: list[Submission] = []
    run = orchestrator(root, "chunked", chunk_max=4).run(
        RunOptions(policy=FailurePolicy.CONTINUE, on_submit=published.append)
    )

    (report,) = run.reports
    by_seq = {r.seq: r for r in report.results}
    assert by_seq["01"].result is ResultState.COMPLETED
    assert by_seq["02"].result is ResultState.FAILED and "boom" in (by_seq["02"].error or "")
    assert by_seq["03"].result is ResultState.COMPLETED and by_seq["03"].attempts == 2
    assert by_seq["04"].result is ResultState.COMPLETED
    assert by_seq["04"].summary == "wrote out/04.txt for Fourth"
    assert by_seq["05"].result is ResultState.COMPLETED
    assert (root / "out" / "03.txt").exists()
    recorded = store.results(run.run_id, list(by_seq))
    assert {seq: r.result for seq, r in recorded.items()} == {
        seq: r.result for seq, r in by_seq.items()
    }
    assert published[0].expected == ["01", "02", "03", "04", "05"]

    # The four callables went out as one chunk, 05 alone: a chord of two members,
    # whose callback ran on the control queue. Each chunk member shows in Flower as a
    # run_subtask of its own, child of the chunk, ending in task-succeeded — or, for
    # 02 (its callable raised), in task-failed.
    mine = "chunked"

    def ended(ev: TaskEvents) -> bool:
        return len(ev.events("task-succeeded", mine)) >= 6 and bool(ev.events("task-failed", mine))

    assert task_events.wait_for(ended)
    (chunk,) = task_events.events("task-received", mine, name=CHUNK_TASK)
    assert chunk["args"].startswith("feature=chunked batch=1 seq=01..04 run=")
    members = task_events.events("task-received", mine, name=RUN_TASK)
    children = [e for e in members if e.get("parent_id") == chunk["uuid"]]

    def seq_of(event: dict[str, Any]) -> str:
        return next(w for w in event["args"].split() if w.startswith("seq="))

    assert sorted(seq_of(e) for e in children) == [f"seq=0{i}" for i in range(1, 5)]
    assert [seq_of(e) for e in members if e not in children] == ["seq=05"]
    for member in members:
        last = "task-failed" if seq_of(member) == "seq=02" else "task-succeeded"
        assert task_events.of(member["uuid"])[-1] == last, member["args"]
    sent = {e["uuid"]: e for e in task_events.events("task-sent", mine)}
    alone = next(e for e in members if e not in children)
    assert sent[chunk["uuid"]]["queue"] == "batchq.python"
    assert sent[alone["uuid"]]["queue"] == "batchq.shell"
    (callback,) = task_events.events("task-received", mine, name=AGGREGATE_TASK)
    assert callback["args"] == f"feature=chunked batch=1 run={published[0].run.run_id} members=5"
    # It ran, and either found the report stored or, while the orchestrator still held
    # the feature, left it to it (retried later; see the test below).
    assert task_events.wait_for(
        lambda ev: ev.of(callback["uuid"])[-1:] in (["task-succeeded"], ["task-retried"])
    )
    assert sent[callback["uuid"]]["queue"] == CONTROL_QUEUE


def test_the_producer_reports_first_and_the_chord_callback_still_aggregates(
    make_feature: Any,
    subtask_data: Any,
    lane_app: Celery,
    lane_settings: Settings,
    store: StateStore,
) -> None:
    """``wait`` builds the report as soon as every member is recorded; the chord's
    callback (its header published on the producer's batch, not through
    ``chord.apply_async``) must still fire, and find the report already stored."""
    root = make_feature(
        [subtask_data("01", command=write("01")), subtask_data("02", command=write("02"))]
    )
    feature = load_feature(root, "feat")
    run = new_run(store, feature, FailurePolicy.GRACEFUL)
    batch = planner.plan(feature).batches[0]
    submission = submit(lane_app, store, run, feature, batch, None, lane_settings)
    report = wait(store, submission, lane_settings)

    assert report.status is BatchStatus.COMPLETED and report.completed == 2
    assert not report.forced and report.missing == []
    assert wait_until(lambda: aggregated(store, run.run_id), 30)
    (event,) = aggregated(store, run.run_id)
    assert event.batch == 1 and event.data["status"] == "completed"
    stored = store.report(run.run_id, 1)
    assert stored is not None and stored.status is BatchStatus.COMPLETED
    assert {r.seq for r in stored.results} == {"01", "02"}


def test_without_a_waiting_producer_the_chord_callback_builds_and_stores_the_report(
    make_feature: Any,
    subtask_data: Any,
    lane_app: Celery,
    lane_settings: Settings,
    store: StateStore,
) -> None:
    """The orchestrator went away after publishing: the callback is the one to report."""
    root = make_feature(
        [subtask_data("01", command=write("01")), subtask_data("02", command="exit 3")]
    )
    feature = load_feature(root, "feat")
    run = new_run(store, feature, FailurePolicy.CONTINUE)
    submit(lane_app, store, run, feature, planner.plan(feature).batches[0], None, lane_settings)

    assert wait_until(lambda: aggregated(store, run.run_id), 30)
    (event,) = aggregated(store, run.run_id)
    assert event.data == {"stored": True, "status": "partial_failure"}
    stored = store.report(run.run_id, 1)
    assert stored is not None and not stored.forced
    assert {r.seq: r.result for r in stored.results} == {
        "01": ResultState.COMPLETED,
        "02": ResultState.FAILED,
    }


def test_the_chord_size_is_set_as_celery_sets_it_in_one_round_trip(lane_app: Celery) -> None:
    """publish's pipelined set_chord_size leaves the keys Celery's own leaves: the size
    with the chord expiry, and no counter from an earlier application of the group id."""
    from batchq.transport.publish import _set_chord_size

    backend = lane_app.backend
    client = backend.client
    ours, celerys = "batchq-test-ours", "batchq-test-celerys"
    for group in (ours, celerys):
        client.set(backend.get_key_for_group(group, ".c"), 7)  # a reapplied group's count
    _set_chord_size(backend, ours, 5)
    backend.set_chord_size(celerys, 5)
    for group in (ours, celerys):
        assert client.get(backend.get_key_for_group(group, ".s")) in (b"5", "5")
        assert not client.exists(backend.get_key_for_group(group, ".c"))
    ttl_ours = client.ttl(backend.get_key_for_group(ours, ".s"))
    ttl_celerys = client.ttl(backend.get_key_for_group(celerys, ".s"))
    assert (ttl_ours > 0) == (ttl_celerys > 0)
    assert abs(ttl_ours - ttl_celerys) <= 1


def test_the_callback_leaves_the_report_to_a_live_orchestrator_then_builds_it_once_it_is_gone(
    make_feature: Any,
    subtask_data: Any,
    lane_app: Celery,
    lane_settings: Settings,
    store: StateStore,
    task_events: TaskEvents,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the run's orchestrator holds the feature, the callback builds no second
    report (a worker process's memory); it is retried, and once the lock is no longer
    that orchestrator's, it builds and stores the report itself."""
    from batchq.models import feature_key
    from batchq.transport import tasks

    monkeypatch.setattr(tasks, "LEFT_FOR_S", 0.3)  # the lane's worker runs in this process
    root = make_feature(
        [subtask_data("01", command=write("01")), subtask_data("02", command=write("02"))],
        name="left",
    )
    feature = load_feature(root, "left")
    fkey = feature_key("left", root)
    assert store.acquire_lock(fkey, "test-orchestrator", 60.0) is None
    run = new_run(store, feature, FailurePolicy.GRACEFUL, orchestrator="test-orchestrator")
    submit(lane_app, store, run, feature, planner.plan(feature).batches[0], None, lane_settings)

    def retried(ev: TaskEvents) -> bool:
        return bool(ev.events("task-retried", "left"))

    assert task_events.wait_for(retried)
    assert store.report(run.run_id, 1) is None and aggregated(store, run.run_id) == []
    store.release_lock(fkey, "test-orchestrator")  # the orchestrator is gone
    assert wait_until(lambda: aggregated(store, run.run_id), 30)
    (event,) = aggregated(store, run.run_id)
    assert event.data == {"stored": True, "status": "completed"}
    stored = store.report(run.run_id, 1)
    assert stored is not None and {r.seq for r in stored.results} == {"01", "02"}
