"""The chord callback's body (:func:`batchq.transport.tasks.aggregate`) on the
in-memory store: the report from the recorded results, stored once, with chord
values that disagree named, chunk values flattened, and the producer's earlier
report (or a forced one) respected. No Redis, no Celery worker."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from batchq.core.report import build
from batchq.models import (
    BatchStatus,
    PlannedBatch,
    ResultState,
    Run,
    SubtaskMessage,
    feature_key,
)
from batchq.protocol import BatchState, EventKind
from batchq.run import producer
from batchq.store.memory import ManualClock, MemoryStore
from batchq.transport.tasks import aggregate
from tests.conftest import subtask
from tests.memrun import message, record

FOLLOWING = PlannedBatch(number=2, level=1, seqs=["03"], parallel=True)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(clock=ManualClock())


@pytest.fixture
def members(tmp_path: Path, store: MemoryStore) -> list[SubtaskMessage]:
    """Batch 1 of a run, registered as ``producer.submit`` would (members 01 and 02)."""
    first = message(tmp_path, subtask("01", command="true"))
    second = message(tmp_path, subtask("02", command="true"), run_id=first.run_id)
    store.start_batch(
        first.run_id,
        1,
        ["01", "02"],
        "graceful",
        FOLLOWING.model_dump_json(),
        {"01": ["out/01.txt"], "02": ["out/02.txt"]},
    )
    return [first, second]


def meta(msg: SubtaskMessage) -> dict[str, object]:
    return {
        "feature": msg.feature,
        "feature_key": feature_key(msg.feature, Path(msg.root)),
        "run_id": msg.run_id,
        "batch": 1,
        "submitted_at": datetime(2026, 1, 1, tzinfo=UTC).isoformat(),
    }


def chord_values(*pairs: tuple[str, str]) -> list[dict[str, object]]:
    return [{"seq": seq, "result": state} for seq, state in pairs]


def aggregated(store: MemoryStore, run_id: str) -> list[dict[str, object]]:
    return [e.data for e in store.events(run_id) if e.kind == EventKind.AGGREGATED]


def test_the_callback_stores_the_report_from_the_records(
    store: MemoryStore, members: list[SubtaskMessage]
) -> None:
    for msg in members:
        record(store, msg)
    run_id = members[0].run_id
    out = aggregate(store, chord_values(("01", "completed"), ("02", "completed")), meta(members[0]))
    assert out == {"batch": 1, "status": "completed"}
    report = store.report(run_id, 1)
    assert report is not None and report.status is BatchStatus.COMPLETED
    assert report.next.seqs == ["03"] and report.discrepancies == []
    assert store.batch_state(run_id, 1) == BatchState.REPORTED
    assert aggregated(store, run_id) == [{"stored": True, "status": "completed"}]


def test_a_chord_value_that_disagrees_with_the_record_is_a_discrepancy(
    store: MemoryStore, members: list[SubtaskMessage]
) -> None:
    record(store, members[0])
    record(store, members[1], ResultState.FAILED, error="boom")
    values = chord_values(("01", "completed"), ("02", "completed"))  # a redelivered copy's
    out = aggregate(store, values, meta(members[0]))
    assert out["status"] == "partial_failure"
    report = store.report(members[0].run_id, 1)
    assert report is not None
    assert report.discrepancies == ["02: the chord got completed, the store recorded failed"]
    assert not report.next.dependencies_satisfied


def test_a_chunk_s_list_of_values_is_flattened(
    store: MemoryStore, members: list[SubtaskMessage]
) -> None:
    record(store, members[0])
    record(store, members[1], ResultState.FAILED, error="boom")
    values: list[object] = [chord_values(("01", "failed"), ("02", "failed"))]
    aggregate(store, values, meta(members[0]))  # type: ignore[arg-type]
    report = store.report(members[0].run_id, 1)
    assert report is not None
    assert report.discrepancies == ["01: the chord got failed, the store recorded completed"]


def test_a_chunk_s_json_list_of_values_is_read_back(
    store: MemoryStore, members: list[SubtaskMessage]
) -> None:
    """What ``run_chunk`` returns: the JSON text of its members' values."""
    record(store, members[0])
    record(store, members[1])
    values: list[object] = [json.dumps(chord_values(("01", "completed"), ("02", "failed")))]
    aggregate(store, values, meta(members[0]))  # type: ignore[arg-type]
    report = store.report(members[0].run_id, 1)
    assert report is not None
    assert report.discrepancies == ["02: the chord got failed, the store recorded completed"]


def test_after_the_producer_reported_the_callback_stores_nothing(
    store: MemoryStore, members: list[SubtaskMessage]
) -> None:
    for msg in members:
        record(store, msg)
    run_id = members[0].run_id
    sub = producer.Submission(
        run=Run(
            run_id,
            "feat",
            feature_key("feat", Path(members[0].root)),
            Path(members[0].root),
            members[0].token,
            members[0].policy,
        ),
        batch=PlannedBatch(number=1, level=0, seqs=["01", "02"], parallel=True),
        expected=["01", "02"],
        next_batch=FOLLOWING,
        submitted_at=datetime.now(UTC),
        stream_from="0-0",
        hard_cap_s=60.0,
    )
    first = producer.report_from_store(store, sub)
    out = aggregate(store, chord_values(("01", "completed")), meta(members[0]))
    assert out == {"batch": 1, "status": "completed"}
    assert store.report(run_id, 1) == first
    assert store.late_reports(run_id, 1) == []  # no late copy that nothing reads
    assert aggregated(store, run_id) == [{"stored": False, "status": "completed"}]


def test_after_a_forced_report_the_callback_s_report_is_kept_as_late(
    store: MemoryStore, members: list[SubtaskMessage]
) -> None:
    run_id = members[0].run_id
    record(store, members[0])
    # The producer's stall deadline forced the report without 02.
    store.store_report(
        build(
            feature="feat",
            run_id=run_id,
            batch=1,
            results=list(store.results(run_id, ["01"]).values()),
            expected=["01", "02"],
            next_batch=FOLLOWING,
            submitted_at=None,
            finished_at=datetime.now(UTC),
            forced=True,
        ),
        meta(members[0])["feature_key"],  # type: ignore[arg-type]
    )
    record(store, members[1])  # the member the deadline gave up on came back
    aggregate(store, chord_values(("01", "completed"), ("02", "completed")), meta(members[0]))
    stored = store.report(run_id, 1)
    assert stored is not None and stored.forced and stored.missing == ["02"]
    (late,) = store.late_reports(run_id, 1)
    assert late.status is BatchStatus.COMPLETED and late.missing == []
    assert aggregated(store, run_id) == [{"stored": False, "status": "completed"}]
    assert EventKind.LATE in [e.kind for e in store.events(run_id)]


def test_while_the_run_s_orchestrator_holds_the_feature_the_report_is_left_to_it(
    store: MemoryStore, members: list[SubtaskMessage]
) -> None:
    """The callback does not build a second report beside the orchestrator's (a worker
    process's memory at 20,000 members); once the lock is no longer the run's
    orchestrator's (it died and its lease lapsed, or it released it), it builds it."""
    from batchq.protocol import RUN_ORCHESTRATOR
    from batchq.transport.tasks import LEFT_FOR_S, LeftToOrchestrator

    for msg in members:
        record(store, msg)
    run_id, fkey = members[0].run_id, str(meta(members[0])["feature_key"])
    store.create_run(run_id, {"feature_key": fkey, RUN_ORCHESTRATOR: "host:1"}, "")
    assert store.acquire_lock(fkey, "host:1", 60.0) is None
    values = chord_values(("01", "completed"), ("02", "completed"))
    with pytest.raises(LeftToOrchestrator) as left:
        aggregate(store, values, meta(members[0]))
    assert left.value.countdown == LEFT_FOR_S
    assert store.report(run_id, 1) is None and aggregated(store, run_id) == []
    assert store.batch_state(run_id, 1) == BatchState.RUNNING

    store.release_lock(fkey, "host:1")
    assert store.acquire_lock(fkey, "host:2", 60.0) is None  # another orchestrator now
    out = aggregate(store, values, meta(members[0]))
    assert out == {"batch": 1, "status": "completed"}
    assert aggregated(store, run_id) == [{"stored": True, "status": "completed"}]


def test_a_report_the_orchestrator_stored_meanwhile_is_found_when_the_callback_looks_again(
    store: MemoryStore, members: list[SubtaskMessage]
) -> None:
    from batchq.protocol import RUN_ORCHESTRATOR

    for msg in members:
        record(store, msg)
    run_id, fkey = members[0].run_id, str(meta(members[0])["feature_key"])
    store.create_run(run_id, {"feature_key": fkey, RUN_ORCHESTRATOR: "host:1"}, "")
    assert store.acquire_lock(fkey, "host:1", 60.0) is None
    store.store_report(
        build(
            feature="feat",
            run_id=run_id,
            batch=1,
            results=list(store.results(run_id, ["01", "02"]).values()),
            expected=["01", "02"],
            next_batch=FOLLOWING,
            submitted_at=None,
            finished_at=datetime.now(UTC),
        ),
        fkey,
    )
    out = aggregate(store, chord_values(("01", "completed")), meta(members[0]))
    assert out == {"batch": 1, "status": "completed"}
    assert aggregated(store, run_id) == [{"stored": False, "status": "completed"}]
