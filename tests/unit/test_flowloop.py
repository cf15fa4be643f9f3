"""Flow mode's loop (:func:`batchq.run.flowloop.run_flow`) on the in-memory store.

Publishing is replaced by a fake worker pool: each published message is "run" by
recording the result a test chose for its seq, as a worker would. The loop then
reads those results from the stream, publishes what became ready and reports each
planned batch as it closes. No Redis, no Celery worker."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from celery import Celery

from batchq.core import planner
from batchq.files.taskfiles import load_feature
from batchq.models import (
    BatchReport,
    BatchStatus,
    FailurePolicy,
    Feature,
    ResultState,
    SubtaskMessage,
)
from batchq.protocol import BatchState, CancelMode, EventKind
from batchq.run import flowloop, producer
from batchq.store.memory import ManualClock, MemoryStore
from batchq.store.state import Event
from tests.conftest import MakeFeature, subtask
from tests.memrun import record, settings


class Workers:
    """The fake ``publish_each``: records each message's chosen outcome at once
    (``None``: the message is lost, nothing is ever recorded)."""

    def __init__(self, store: MemoryStore, outcomes: Mapping[str, ResultState | None]) -> None:
        self.store, self.outcomes = store, outcomes
        self.published: list[list[str]] = []

    def __call__(self, app: Celery, signatures: list[Any]) -> None:
        messages = [SubtaskMessage.model_validate(sig.args[0]) for sig in signatures]
        self.published.append([m.seq for m in messages])
        for msg in messages:
            assert msg.policy is FailurePolicy.CONTINUE  # flow applies the policy itself
            state = self.outcomes.get(msg.seq, ResultState.COMPLETED)
            if state is not None:
                record(self.store, msg, state)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(clock=ManualClock())


@pytest.fixture
def feature(make_feature: MakeFeature) -> Feature:
    # 01 -> 02 -> 04, and 03 on its own: batches [01, 03], [02], [04].
    root = make_feature(
        [
            subtask("01", command="true"),
            subtask("02", command="true", depends_on=["01"]),
            subtask("03", command="true"),
            subtask("04", command="true", depends_on=["02"]),
        ]
    )
    return load_feature(root, "feat")


def run_flow(
    monkeypatch: pytest.MonkeyPatch,
    store: MemoryStore,
    feature: Feature,
    outcomes: Mapping[str, ResultState | None],
    policy: FailurePolicy = FailurePolicy.GRACEFUL,
    **opts: Any,
) -> tuple[Workers, list[BatchReport], list[Event], str]:
    workers = Workers(store, outcomes)
    monkeypatch.setattr(flowloop, "publish_each", workers)
    plan = planner.plan(feature)
    assert [b.seqs for b in plan.batches] == [["01", "03"], ["02"], ["04"]]
    run = producer.new_run(store, feature, policy)
    reports: list[BatchReport] = []
    events: list[Event] = []
    announced: list[list[str]] = []
    flowloop.run_flow(
        Celery("test-flow", set_as_current=False),
        store,
        run,
        feature,
        plan,
        settings(**opts),
        events.extend,
        reports.append,
        announced.append,
    )
    assert announced == workers.published  # on_publish hears of each publish first
    return workers, reports, events, run.run_id


def test_every_subtask_is_published_when_its_dependencies_complete(
    monkeypatch: pytest.MonkeyPatch, store: MemoryStore, feature: Feature
) -> None:
    workers, reports, events, run_id = run_flow(monkeypatch, store, feature, {})
    assert [sorted(p) for p in workers.published] == [["01", "03"], ["02"], ["04"]]
    assert [r.batch for r in reports] == [1, 2, 3]
    assert all(r.status is BatchStatus.COMPLETED for r in reports)
    # A batch that closes while others go on says so; the last one does not.
    assert "go on" in reports[0].next.recommendation and reports[0].next.dependencies_satisfied
    assert store.batch_states(run_id) == {n: BatchState.REPORTED for n in (1, 2, 3)}
    assert [e.kind for e in events].count(EventKind.FINISHED) == 4
    for report in reports:
        assert store.report(run_id, report.batch) == report


def test_a_failure_skips_its_dependents_and_the_rest_goes_on(
    monkeypatch: pytest.MonkeyPatch, store: MemoryStore, feature: Feature
) -> None:
    workers, reports, _, run_id = run_flow(monkeypatch, store, feature, {"01": ResultState.FAILED})
    assert [sorted(p) for p in workers.published] == [["01", "03"]]
    by_batch = {r.batch: r for r in reports}
    assert by_batch[1].status is BatchStatus.PARTIAL_FAILURE and by_batch[1].failed == 1
    assert [s.seq for s in by_batch[2].skipped] == ["02"]
    assert [s.seq for s in by_batch[3].skipped] == ["04"]
    assert by_batch[3].missing == []  # skipped, not lost
    assert store.cancel_mode(run_id, 2) is None  # graceful: nothing to stop


def test_terminate_stops_what_runs_and_skips_what_never_started(
    monkeypatch: pytest.MonkeyPatch, store: MemoryStore, feature: Feature
) -> None:
    workers, reports, _, run_id = run_flow(
        monkeypatch, store, feature, {"01": ResultState.FAILED}, FailurePolicy.TERMINATE
    )
    # 01's failure is read while 03 is still in flight: its batch gets the flag.
    assert workers.published == [["01", "03"]]
    assert store.cancel_mode(run_id, 1) == CancelMode.TERMINATE
    # Batches 2 and 3 never had a message out: skipped, with nothing to stop.
    assert store.cancel_mode(run_id, 2) is None and store.cancel_mode(run_id, 3) is None
    by_batch = {r.batch: r for r in reports}
    assert [s.seq for s in by_batch[2].skipped] == ["02"]
    assert "01" in by_batch[2].skipped[0].reason
    assert all(r.status is BatchStatus.PARTIAL_FAILURE for r in reports)


def test_a_lost_message_stalls_and_every_open_batch_is_forced(
    monkeypatch: pytest.MonkeyPatch, store: MemoryStore, feature: Feature
) -> None:
    _, reports, _, run_id = run_flow(monkeypatch, store, feature, {"03": None}, stall_s=0.3)
    by_batch = {r.batch: r for r in reports}
    assert by_batch[1].forced and by_batch[1].missing == ["03"]
    assert any("never reported: 03" in d for d in by_batch[1].discrepancies)
    # 02 and 04 completed before the deadline; their batches closed normally.
    assert not by_batch[2].forced and not by_batch[3].forced
    assert store.batch_state(run_id, 1) == BatchState.FORCED
