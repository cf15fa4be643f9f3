"""The producer on the in-memory store (:mod:`batchq.run.producer`): a run's record
and token, a batch's registration and messages, and the wait that turns recorded
results into one report. Publishing is replaced by a recorder; the test itself then
records results as the workers would. No Redis, no Celery worker."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from celery import Celery

from batchq import layout
from batchq.core import planner
from batchq.files.taskfiles import load_feature
from batchq.models import (
    BatchStatus,
    DeliverableCheck,
    FailurePolicy,
    Feature,
    PlannedBatch,
    ResultState,
    RunMode,
    SubtaskMessage,
    WriteCheck,
    feature_key,
)
from batchq.protocol import CHUNK_TASK, RUN_TASK, BatchState, CancelMode, EventKind
from batchq.run import producer
from batchq.store.memory import ManualClock, MemoryStore
from tests.conftest import MakeFeature, subtask
from tests.memrun import record, result_of, settings


class Published:
    """What the fake ``publish_batch`` was handed, decoded into worker messages."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[Any], PlannedBatch]] = []

    def __call__(self, app: Celery, signatures: list[Any], run: Any, batch: Any, at: Any) -> None:
        self.calls.append((signatures, batch))

    def messages(self) -> list[SubtaskMessage]:
        out: list[SubtaskMessage] = []
        for signatures, _batch in self.calls:
            for sig in signatures:
                if sig.task == CHUNK_TASK:
                    out += [SubtaskMessage.model_validate(m["message"]) for m in sig.args[0]]
                else:
                    assert sig.task == RUN_TASK
                    out.append(SubtaskMessage.model_validate(sig.args[0]))
        return out


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> Published:
    fake = Published()
    monkeypatch.setattr(producer, "publish_batch", fake)
    return fake


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(clock=ManualClock())


@pytest.fixture
def app() -> Celery:
    return Celery("test-producer", set_as_current=False)


@pytest.fixture
def feature(make_feature: MakeFeature) -> Feature:
    root = make_feature(
        [
            subtask("01", command="true"),
            subtask("02", command="true"),
            subtask("03", command="true", depends_on=["01"]),
        ]
    )
    return load_feature(root, "feat")


def submit_first(
    app: Celery, store: MemoryStore, feature: Feature, **opts: Any
) -> producer.Submission:
    plan = planner.plan(feature)
    run = producer.new_run(store, feature, opts.pop("policy", FailurePolicy.GRACEFUL))
    first = plan.batches[0]
    following = plan.batches[1] if len(plan.batches) > 1 else None
    return producer.submit(app, store, run, feature, first, following, settings(**opts))


def test_new_run_writes_the_token_and_the_run_record(store: MemoryStore, feature: Feature) -> None:
    run = producer.new_run(
        store, feature, FailurePolicy.TERMINATE, "ctx", RunMode.FLOW, WriteCheck.FAIL
    )
    token = layout.token_file(feature.path, run.run_id).read_text().strip()
    assert token == run.token
    info = store.run_info(run.run_id)
    assert info["policy"] == "terminate" and info["mode"] == "flow"
    assert info["write_check"] == "fail" and info["feature"] == "feat"
    assert info["feature_key"] == feature_key("feat", feature.root) == run.feature_key
    assert store.context(run.run_id) == "ctx"
    assert store.recent_runs(run.feature_key) == [run.run_id]


def test_new_run_learns_durations_from_earlier_runs(
    store: MemoryStore, feature: Feature, published: Published
) -> None:
    fkey = feature_key("feat", feature.root)
    earlier = SubtaskMessage.model_validate(
        {
            "feature": "feat",
            "feature_key": fkey,
            "run_id": "earlier",
            "batch": 1,
            "root": str(feature.root),
            "token": "t",
            "agent": "shell",
            "subtask": subtask("02", command="true"),
        }
    )
    record(store, earlier)
    run = producer.new_run(store, feature, FailurePolicy.GRACEFUL)
    assert set(run.learned) == {"02"}


def test_submit_registers_the_batch_and_publishes_one_message_per_member(
    app: Celery, store: MemoryStore, feature: Feature, published: Published
) -> None:
    sub = submit_first(app, store, feature)
    assert sub.expected == ["01", "02"] and sub.stream_from == "0-0"
    record_ = store.batch_record(sub.run.run_id, 1)
    assert record_.expected == ["01", "02"] and record_.state == BatchState.RUNNING
    assert record_.following is not None
    assert PlannedBatch.model_validate_json(record_.following).seqs == ["03"]
    assert record_.declared == {"01": ["out/01.txt"], "02": ["out/02.txt"]}
    messages = published.messages()
    assert sorted(m.seq for m in messages) == ["01", "02"]
    assert {m.token for m in messages} == {sub.run.token}
    assert {m.policy for m in messages} == {FailurePolicy.GRACEFUL}


def test_wait_builds_the_report_once_every_member_is_recorded(
    app: Celery, store: MemoryStore, feature: Feature, published: Published
) -> None:
    sub = submit_first(app, store, feature)
    for msg in published.messages():
        record(store, msg)
    seen: list[str] = []
    report = producer.wait(store, sub, settings(), lambda evs: seen.extend(e.kind for e in evs))
    assert report.status is BatchStatus.COMPLETED
    assert [r.seq for r in report.results] == ["01", "02"]
    assert report.next.seqs == ["03"] and report.next.dependencies_satisfied
    assert store.report(sub.run.run_id, 1) == report
    assert store.batch_state(sub.run.run_id, 1) == BatchState.REPORTED
    assert seen.count(EventKind.FINISHED) == 2
    assert store.report_refs(sub.run.feature_key) == [(sub.run.run_id, 1)]


def test_wait_follows_results_recorded_while_it_waits(
    app: Celery, store: MemoryStore, feature: Feature, published: Published
) -> None:
    sub = submit_first(app, store, feature)
    first, second = sorted(published.messages(), key=lambda m: m.seq)
    record(store, first)
    late = threading.Timer(0.2, lambda: record(store, second, ResultState.FAILED, error="boom"))
    late.start()
    try:
        report = producer.wait(store, sub, settings())
    finally:
        late.join()
    assert report.status is BatchStatus.PARTIAL_FAILURE
    assert (report.completed, report.failed) == (1, 1)
    assert not report.next.dependencies_satisfied


def test_wait_returns_a_report_the_chord_callback_stored_first(
    app: Celery, store: MemoryStore, feature: Feature, published: Published
) -> None:
    sub = submit_first(app, store, feature)
    for msg in published.messages():
        record(store, msg)
    first = producer.report_from_store(store, sub)  # as aggregate_batch would
    assert producer.wait(store, sub, settings()) == first


def test_a_stalled_batch_gets_a_forced_report_naming_the_silent(
    app: Celery, store: MemoryStore, feature: Feature, published: Published
) -> None:
    sub = submit_first(app, store, feature, stall_s=0.3)
    done = [m for m in published.messages() if m.seq == "01"]
    record(store, done[0])
    report = producer.wait(store, sub, settings(stall_s=0.3))
    assert report.forced and report.missing == ["02"]
    assert report.status is BatchStatus.PARTIAL_FAILURE
    assert any("never reported: 02" in d for d in report.discrepancies)
    assert store.batch_state(sub.run.run_id, 1) == BatchState.FORCED
    assert store.cancel_mode(sub.run.run_id, 1) == CancelMode.GRACEFUL  # stop the rest
    # The silent member reports after all: the forced report stands, the new one is late.
    (silent,) = [m for m in published.messages() if m.seq == "02"]
    assert store.record_result(result_of(silent), silent.feature_key, "w")
    assert producer.report_from_store(store, sub) == report
    (late,) = store.late_reports(sub.run.run_id, 1)
    assert late.status is BatchStatus.COMPLETED and late.missing == []


def test_a_live_claim_holds_off_the_stall_deadline(
    app: Celery, store: MemoryStore, feature: Feature, published: Published
) -> None:
    sub = submit_first(app, store, feature, stall_s=0.3)
    one, two = sorted(published.messages(), key=lambda m: m.seq)
    record(store, one)
    # 02 is running (claimed, heartbeat alive): quiet is not a stall while it lasts.
    assert store.begin(two.run_id, 1, "02", "busy", "t", claim_ttl_s=60, max_starts=3) == "run"
    finisher = threading.Timer(
        1.5, lambda: store.record_result(result_of(two, worker="busy"), two.feature_key, "busy")
    )
    finisher.start()
    try:
        report = producer.wait(store, sub, settings(stall_s=0.3))
    finally:
        finisher.join()
    assert not report.forced and report.status is BatchStatus.COMPLETED


def test_report_from_store_stores_once_and_returns_the_first(
    app: Celery, store: MemoryStore, feature: Feature, published: Published
) -> None:
    sub = submit_first(app, store, feature)
    for msg in published.messages():
        record(store, msg)
    first = producer.report_from_store(store, sub)
    forced = producer.report_from_store(store, sub, forced_reason="too late")
    assert forced == first and not forced.forced
    assert store.late_reports(sub.run.run_id, 1) == []


def test_the_report_takes_the_submissions_strings_where_they_are_equal(
    app: Celery, store: MemoryStore, feature: Feature, published: Published
) -> None:
    sub = submit_first(app, store, feature)
    assert sub.declared is not None
    for msg in published.messages():
        copy = "".join(list(msg.subtask.title))  # a new object, as decoding makes one
        result = result_of(msg).model_copy(
            update={
                "title": copy,
                "deliverables": [
                    DeliverableCheck(path="".join(list(p)), verified=True)
                    for p in msg.subtask.deliverables
                ]
                + [DeliverableCheck(path="elsewhere.txt", verified=False)],
            }
        )
        store.begin(msg.run_id, msg.batch, msg.seq, "w", "task", claim_ttl_s=30.0, max_starts=3)
        assert store.record_result(result, msg.feature_key, "w")
    report = producer.wait(store, sub, settings())
    for res in report.results:
        assert res.title == sub.titles[res.seq] and res.title is sub.titles[res.seq]
        mine, other = res.deliverables
        assert mine.path is sub.declared[res.seq][0]
        assert other.path == "elsewhere.txt"  # not declared: left as it was
    assert store.report(sub.run.run_id, 1) == report  # equal values: nothing a reader sees
