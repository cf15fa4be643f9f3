"""One behaviour for both stores: every public method of the run-state store, run
against Redis (:class:`StateStore`) and memory (:class:`MemoryStore`) alike.

The memory store exists so unit tests can stand in for Redis; this suite is what
makes that honest. A test here states what Redis does, and the memory store must
do the same (decisions, once-only writes, TTL expiry, stream ids and order).
"""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime

import pytest

from batchq.errors import InputError
from batchq.models import BatchReport, BatchStatus, ResultState, SubtaskResult
from batchq.protocol import BatchState, CancelMode, EventKind
from batchq.store.contract import Store
from batchq.store.state import CALLABLE_RUNS, CONTEXT_LIMIT, Claim, StateStore
from tests.contract.conftest import Harness

RUN = "20260101T000000-abcd"
FKEY = "feat-0123"
STREAM_ID = re.compile(r"^\d+-\d+$")


def result(
    seq: str,
    state: ResultState = ResultState.COMPLETED,
    *,
    batch: int = 1,
    duration_s: float = 1.5,
    attempts: int = 1,
    summary: str = "",
    run_id: str = RUN,
) -> SubtaskResult:
    return SubtaskResult(
        feature="feat",
        run_id=run_id,
        batch=batch,
        seq=seq,
        title=f"Subtask {seq}",
        result=state,
        duration_s=duration_s,
        attempts=attempts,
        summary=summary,
    )


def batch_report(n: int = 1, *, forced: bool = False, marker: str = "") -> BatchReport:
    return BatchReport(
        feature="feat",
        run_id=RUN,
        batch=n,
        status=BatchStatus.COMPLETED,
        results=[result("01", batch=n, summary=marker)],
        total=1,
        completed=1,
        failed=0,
        success_rate=1.0,
        forced=forced,
        submitted_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def begin(store: Store, seq: str = "01", worker: str = "w1", **kw: object) -> str:
    opts: dict[str, object] = {"claim_ttl_s": 30.0, "max_starts": 3, "batch": 1}
    opts.update(kw)
    batch = int(str(opts.pop("batch")))
    return store.begin(RUN, batch, seq, worker, f"task-{worker}", **opts)  # type: ignore[arg-type]


def kinds(store: Store, after: str = "0-0") -> list[str]:
    return [e.kind for e in store.events(RUN, after)]


# --- connection ---------------------------------------------------------------------------


def test_ping_and_close_do_not_raise(store: Store) -> None:
    store.ping("redis://x")
    assert store.run_info(RUN) == {}


# --- runs ---------------------------------------------------------------------------------


def test_create_run_records_fields_context_and_the_feature_s_run_list(store: Store) -> None:
    fields = {"feature": "feat", "feature_key": FKEY, "mode": "batch"}
    learned = store.create_run(RUN, fields, "shared context")
    assert learned.durations == {} and learned.callables == {}
    assert store.run_info(RUN) == fields
    assert store.context(RUN) == "shared context"
    assert store.recent_runs(FKEY) == [RUN]
    assert store.context("unknown") == "" and store.run_info("unknown") == {}


def test_recent_runs_are_newest_first_and_capped_at_twenty(store: Store) -> None:
    for i in range(23):
        store.create_run(f"run-{i:02d}", {"feature_key": FKEY}, "")
    assert store.recent_runs(FKEY) == [f"run-{i:02d}" for i in range(22, 2, -1)]
    assert store.recent_runs(FKEY, 2) == ["run-22", "run-21"]
    assert store.recent_runs("other") == []


def test_a_run_without_a_feature_key_joins_no_list(store: Store) -> None:
    store.create_run(RUN, {"feature": "feat"}, "")
    assert store.run_info(RUN) == {"feature": "feat"}
    assert store.recent_runs(FKEY) == []


def test_settling_a_run_marks_its_record_and_never_creates_one(store: Store) -> None:
    store.create_run(RUN, {"feature": "feat"}, "")
    store.settle_run(RUN)
    assert store.run_info(RUN) == {"feature": "feat", "settled": "1"}
    store.settle_run("unknown")
    assert store.run_info("unknown") == {}


def test_an_oversize_context_is_an_input_error_and_writes_nothing(store: Store) -> None:
    with pytest.raises(InputError, match="--context"):
        store.create_run(RUN, {"feature_key": FKEY}, "x" * (CONTEXT_LIMIT + 1))
    assert store.run_info(RUN) == {} and store.recent_runs(FKEY) == []
    store.create_run(RUN, {"feature_key": FKEY}, "x" * CONTEXT_LIMIT)
    assert len(store.context(RUN)) == CONTEXT_LIMIT


def test_a_new_run_learns_completed_durations_and_callable_maxima(store: Store) -> None:
    store.record_result(result("01", duration_s=2.25), FKEY, "w", "pkg:fn")
    store.record_result(result("02", ResultState.FAILED, duration_s=9.0), FKEY, "w", "pkg:fn")
    store.record_result(result("03", duration_s=0.5), FKEY, "w", "pkg:other")
    learned = store.create_run("run-2", {"feature_key": FKEY}, "", ["pkg:fn", "pkg:never"])
    # A failure teaches no per-seq duration, but every run counts for its callable.
    assert learned.durations == {"01": 2.25, "03": 0.5}
    assert learned.callables == {"pkg:fn": 9.0}


def test_a_callable_keeps_only_its_recent_runs(store: Store) -> None:
    store.record_result(result("00", duration_s=100.0), FKEY, "w", "pkg:fn")
    for i in range(CALLABLE_RUNS):
        store.record_result(result(f"{i + 1:02d}", duration_s=float(i)), FKEY, "w", "pkg:fn")
    learned = store.create_run("run-2", {"feature_key": FKEY}, "", ["pkg:fn"])
    assert learned.callables == {"pkg:fn": float(CALLABLE_RUNS - 1)}  # the 100 s fell off


# --- batches ------------------------------------------------------------------------------


def test_start_batch_registers_what_the_chord_callback_reads(store: Store) -> None:
    newest = store.start_batch(
        RUN, 1, ["01", "02"], "graceful", '{"number": 2}', {"01": ["a.txt"], "02": []}, "fail"
    )
    assert newest == "0-0"  # a fresh run's stream is empty
    record = store.batch_record(RUN, 1)
    assert record.expected == ["01", "02"]
    assert record.following == '{"number": 2}'
    assert record.write_check == "fail"
    assert record.declared == {"01": ["a.txt"], "02": []}
    assert record.state == BatchState.RUNNING
    assert store.batch_members(RUN, 1) == ["01", "02"]
    assert store.batch_state(RUN, 1) == BatchState.RUNNING


def test_an_unknown_batch_reads_as_empty(store: Store) -> None:
    record = store.batch_record(RUN, 9)
    assert (record.expected, record.following, record.write_check) == ([], None, "warn")
    assert record.declared is None and record.state is None
    assert store.batch_members(RUN, 9) == [] and store.batch_state(RUN, 9) is None
    assert store.batch_states(RUN) == {}


def test_start_batch_returns_the_newest_event_so_a_waiter_skips_older_ones(store: Store) -> None:
    store.emit(RUN, "note", 0, "")
    newest = store.last_event_id(RUN)
    assert store.start_batch(RUN, 1, ["01"], "graceful") == newest
    store.emit(RUN, "after", 1, "01")
    assert kinds(store, newest) == ["after"]


def test_start_batches_records_a_whole_plan_and_batch_states_numbers_it(store: Store) -> None:
    store.start_batches(
        RUN, {1: ["01"], 2: ["02", "03"]}, "continue", {1: "next-json"}, {"02": ["b"]}
    )
    assert store.batch_states(RUN) == {1: BatchState.RUNNING, 2: BatchState.RUNNING}
    first, second = store.batch_record(RUN, 1), store.batch_record(RUN, 2)
    assert first.following == "next-json" and second.following is None
    # Each batch gets its own members' declared deliverables, empty when none given.
    assert first.declared == {"01": []} and second.declared == {"02": ["b"], "03": []}
    assert store.batch_record(RUN, 1).write_check == "warn"


# --- begin, claims, attempts --------------------------------------------------------------


def test_begin_runs_once_and_a_second_copy_is_busy(store: Store) -> None:
    assert begin(store, worker="w1") == "run"
    assert begin(store, worker="w2") == "busy"
    info = store.subtask_info(RUN, "01")
    assert info["starts"] == "1" and info["worker"] == "w1" and info["task_id"] == "task-w1"
    assert "started_at" in info
    (started,) = store.events(RUN)
    assert (started.kind, started.batch, started.seq) == (EventKind.STARTED, 1, "01")
    assert started.data["worker"] == "w1" and started.data["attempt"] == 1
    assert store.live_claims(RUN, ["01", "02"]) == ["01"]


def test_begin_after_a_recorded_result_is_done(store: Store) -> None:
    assert begin(store) == "run"
    assert store.record_result(result("01"), FKEY, "w1")
    assert begin(store, worker="w2") == "done"
    store.cancel(RUN, 1, CancelMode.TERMINATE)
    assert begin(store, worker="w2") == "done"  # done wins over the cancel flag


def test_begin_under_a_cancel_flag_is_cancelled_and_starts_nothing(store: Store) -> None:
    store.cancel(RUN, 1, CancelMode.GRACEFUL)
    assert begin(store) == "cancelled"
    assert begin(store, "02", batch=2) == "run"  # another batch's flag is its own
    assert store.subtask_info(RUN, "01") == {}
    assert kinds(store) == ["started"]


def test_begin_is_capped_when_starts_die_without_finishing(store: Store) -> None:
    assert begin(store, max_starts=1) == "run"
    store.release_claim(RUN, "01", "w1")  # the claim lapsed: the worker died
    assert begin(store, worker="w2", max_starts=1) == "capped"
    assert begin(store, worker="w2", max_starts=2) == "run"


def test_end_attempt_counts_a_finish_so_a_retry_is_not_capped(store: Store) -> None:
    assert begin(store, max_starts=1) == "run"
    store.end_attempt(RUN, "01")
    store.release_claim(RUN, "01", "w1")
    assert store.subtask_info(RUN, "01")["finishes"] == "1"
    assert begin(store, max_starts=1, attempt=2) == "run"
    assert store.events(RUN)[-1].data["attempt"] == 2


def test_an_expired_claim_lets_another_copy_run(harness: Harness) -> None:
    store = harness.store
    assert begin(store, claim_ttl_s=0.2) == "run"
    assert begin(store, worker="w2") == "busy"
    harness.pass_time(0.2, lambda: begin(store, worker="w2") == "run")
    assert store.subtask_info(RUN, "01")["starts"] == "2"
    assert store.subtask_info(RUN, "01")["worker"] == "w2"


def test_a_renewed_claim_outlives_its_first_ttl(harness: Harness) -> None:
    store = harness.store
    assert begin(store, claim_ttl_s=0.2) == "run"
    assert store.renew_claim(RUN, "01", "w1", 60.0)
    assert not store.renew_claim(RUN, "01", "w2", 60.0)
    if harness.clock is not None:
        harness.clock.advance(1.0)
    else:
        # A Redis PTTL above the first lease proves the renewal without a timed wait.
        pttl = store.r.pttl(store.keys.claim(RUN, "01"))  # type: ignore[attr-defined]
        assert pttl > 1000
    assert store.live_claims(RUN, ["01"]) == ["01"]
    assert begin(store, worker="w2") == "busy"


def test_renewing_a_lapsed_claim_fails(harness: Harness) -> None:
    store = harness.store
    assert begin(store, claim_ttl_s=0.2) == "run"
    harness.pass_time(0.2, lambda: store.live_claims(RUN, ["01"]) == [])
    assert not store.renew_claim(RUN, "01", "w1", 30.0)


def test_only_the_holder_releases_a_claim(store: Store) -> None:
    assert begin(store) == "run"
    store.release_claim(RUN, "01", "someone-else")
    assert store.live_claims(RUN, ["01"]) == ["01"]
    store.release_claim(RUN, "01", "w1")
    assert store.live_claims(RUN, ["01"]) == []


def test_begin_asked_again_with_its_token_is_run_for_its_own_claim_only(
    harness: Harness,
) -> None:
    """A start whose reply was lost (the connection dropped) is asked again with the
    same token: the copy that holds the claim it took may run, once counted."""
    store = harness.store
    assert begin(store, claim_ttl_s=0.2, token="t1") == "run"
    assert begin(store, claim_ttl_s=0.2, token="t1") == "run"
    assert store.subtask_info(RUN, "01")["starts"] == "1"
    assert kinds(store) == ["started"]
    assert begin(store, worker="w2", token="t1") == "busy"  # not w2's claim
    assert begin(store, token="t2") == "busy"  # another attempt of w1's
    assert begin(store) == "busy"  # no token, no replay
    # Once the claim lapsed, the token proves nothing: a start is counted again.
    harness.pass_time(0.2, lambda: store.live_claims(RUN, ["01"]) == [])
    assert begin(store, token="t1") == "run"
    assert store.subtask_info(RUN, "01")["starts"] == "2"
    assert store.record_result(result("01"), FKEY, "w1")
    assert begin(store, token="t1") == "done"  # a recorded result wins over the token


def test_record_then_begin_records_then_claims_the_next_in_one_call(store: Store) -> None:
    assert begin(store, "01") == "run"
    then = Claim(RUN, 1, "02", "w1", "task-02", 30.0, 3, 2, "tok")
    assert store.record_then_begin(result("01"), FKEY, "w1", "pkg:f", then) == (True, "run")
    assert [(e.kind, e.seq) for e in store.events(RUN)] == [
        ("started", "01"),
        ("finished", "01"),
        ("started", "02"),
    ]
    assert store.events(RUN)[-1].data["attempt"] == 2
    assert store.live_claims(RUN, ["01", "02"]) == ["02"]
    info = store.subtask_info(RUN, "02")
    assert (info["starts"], info["task_id"], info["worker"]) == ("1", "task-02", "w1")
    assert store.create_run("next", {"feature": "f"}, "", ["pkg:f"]).callables == {"pkg:f": 1.5}
    # The same call again (its reply lost): the record is not repeated, the claim is ours.
    assert store.record_then_begin(result("01"), FKEY, "w1", "pkg:f", then) == (False, "run")
    assert store.subtask_info(RUN, "02")["starts"] == "1"
    # The next member's start sees what the plain call would: here a cancel flag.
    store.cancel(RUN, 1, CancelMode.GRACEFUL)
    later = Claim(RUN, 1, "03", "w1", "task-03", 30.0, 3)
    assert store.record_then_begin(result("02"), FKEY, "w1", None, later) == (True, "cancelled")
    assert store.live_claims(RUN, ["02", "03"]) == []


def test_record_then_begin_loads_its_scripts_again_after_redis_forgot_them(
    harness: Harness,
) -> None:
    """A restarted (or SCRIPT FLUSHed) Redis answers NOSCRIPT to the pipelined calls;
    neither ran, and each runs once after its script is loaded again."""
    store = harness.store
    if harness.kind == "redis":
        store.r.script_flush()  # type: ignore[attr-defined]
    then = Claim(RUN, 1, "02", "w1", "task-02", 30.0, 3)
    assert store.record_then_begin(result("01"), FKEY, "w1", None, then) == (True, "run")
    assert kinds(store) == ["finished", "started"]
    assert store.subtask_info(RUN, "01")["finishes"] == "1"


# --- results ------------------------------------------------------------------------------


def test_a_result_is_recorded_once_and_the_first_wins(store: Store) -> None:
    assert begin(store) == "run"
    assert store.record_result(result("01", summary="first", attempts=2), FKEY, "w1")
    assert not store.record_result(result("01", ResultState.FAILED, summary="second"), FKEY, "w1")
    recorded = store.result(RUN, "01")
    assert recorded is not None and recorded.summary == "first" and recorded.ok
    info = store.subtask_info(RUN, "01")
    assert info["finishes"] == "2" and info["attempts"] == "2"  # every finish counts
    finished = [e for e in store.events(RUN) if e.kind == EventKind.FINISHED]
    assert len(finished) == 1
    assert finished[0].seq == "01" and finished[0].data["summary"] == "first"
    assert finished[0].data["result"] == "completed"


def test_recording_frees_only_the_recorder_s_own_claim(store: Store) -> None:
    assert begin(store, "01") == "run" and begin(store, "02") == "run"
    store.record_result(result("01"), FKEY, "w1")
    store.record_result(result("02"), FKEY, "not-the-holder")
    assert store.live_claims(RUN, ["01", "02"]) == ["02"]


def test_results_returns_only_recorded_members(store: Store) -> None:
    store.record_result(result("01"), FKEY, "w")
    store.record_result(result("03", ResultState.TIMED_OUT), FKEY, "w")
    found = store.results(RUN, ["01", "02", "03"])
    assert sorted(found) == ["01", "03"]
    assert found["03"].result is ResultState.TIMED_OUT
    assert store.result(RUN, "02") is None
    assert store.results(RUN, []) == {}


def test_amend_results_overwrites_recorded_results(store: Store) -> None:
    store.record_result(result("01"), FKEY, "w")
    amended = result("01", ResultState.FAILED, summary="undeclared write")
    store.amend_results([amended])
    store.amend_results([])
    assert store.result(RUN, "01") == amended
    assert not store.record_result(result("01"), FKEY, "w")  # still recorded once


# --- cancellation -------------------------------------------------------------------------


def test_cancel_sets_a_mode_and_terminate_is_never_downgraded(store: Store) -> None:
    assert store.cancel_mode(RUN, 1) is None
    store.cancel(RUN, 1, CancelMode.GRACEFUL)
    assert store.cancel_mode(RUN, 1) == CancelMode.GRACEFUL
    store.cancel(RUN, 1, CancelMode.TERMINATE)
    assert store.cancel_mode(RUN, 1) == CancelMode.TERMINATE
    store.cancel(RUN, 1, CancelMode.GRACEFUL)
    assert store.cancel_mode(RUN, 1) == CancelMode.TERMINATE
    assert store.cancel_mode(RUN, 2) is None


# --- reports ------------------------------------------------------------------------------


def test_a_report_is_stored_once(store: Store) -> None:
    store.start_batch(RUN, 1, ["01"], "graceful")
    assert store.store_report(batch_report(marker="first"), FKEY)
    assert not store.store_report(batch_report(marker="second"), FKEY)
    stored = store.report(RUN, 1)
    assert stored is not None and stored.results[0].summary == "first"
    assert store.batch_state(RUN, 1) == BatchState.REPORTED
    assert store.late_reports(RUN, 1) == []  # a repeat after a normal report is dropped
    assert kinds(store) == [EventKind.BATCH_REPORTED]
    assert store.events(RUN)[0].batch == 1 and store.events(RUN)[0].data == {}


def test_a_report_after_a_forced_one_is_kept_as_late(store: Store) -> None:
    store.start_batch(RUN, 1, ["01"], "graceful")
    assert store.store_report(batch_report(forced=True, marker="forced"), FKEY)
    assert store.batch_state(RUN, 1) == BatchState.FORCED
    assert not store.store_report(batch_report(marker="late one"), FKEY)
    assert not store.store_report(batch_report(marker="late two"), FKEY)
    stored = store.report(RUN, 1)
    assert stored is not None and stored.forced
    assert [r.results[0].summary for r in store.late_reports(RUN, 1)] == ["late one", "late two"]
    assert kinds(store) == [EventKind.BATCH_FORCED, EventKind.LATE, EventKind.LATE]


def test_report_refs_are_newest_first(store: Store) -> None:
    for n in (1, 2, 3):
        store.start_batch(RUN, n, ["01"], "graceful")
        store.store_report(batch_report(n), FKEY)
    assert store.report_refs(FKEY) == [(RUN, 3), (RUN, 2), (RUN, 1)]
    assert store.report_refs(FKEY, 1) == [(RUN, 3)]
    assert store.report_refs("other") == []
    assert store.report(RUN, 4) is None


def test_overwrite_report_replaces_the_stored_one_without_a_new_ref(store: Store) -> None:
    store.start_batch(RUN, 1, ["01"], "graceful")
    store.store_report(batch_report(), FKEY)
    checked = batch_report().model_copy(update={"discrepancies": ["files disagree"]})
    store.overwrite_report(checked)
    assert store.report(RUN, 1) == checked
    assert store.report_refs(FKEY) == [(RUN, 1)]


@pytest.fixture
def parted(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> StateStore:
    """Redis only (the parts are how StateStore talks to Redis): a store that sends and
    reads every report in parts of 64 bytes, however small, so each member is one part
    or more."""
    if harness.kind != "redis":
        pytest.skip("the parts are how StateStore talks to Redis")
    assert isinstance(harness.store, StateStore)
    monkeypatch.setattr("batchq.store.state.REPORT_PART", 64)
    monkeypatch.setattr("batchq.store.state.WHOLE_UPTO", 0)
    return harness.store


def test_a_report_sent_in_many_parts_is_stored_whole_and_leaves_no_staging_key(
    parted: StateStore,
) -> None:
    """Each way a report in parts can end: stored, dropped as a repeat, kept as late,
    overwritten. What is read back is the report, and no staged part is left."""
    store = parted

    def big(n: int, *, forced: bool = False, marker: str = "") -> BatchReport:
        members = [result(f"{i:02d}", batch=n, summary=f"{marker} é {i}") for i in range(1, 13)]
        return batch_report(n, forced=forced, marker=marker).model_copy(
            update={"results": members, "total": 12, "completed": 12}
        )

    store.start_batch(RUN, 1, [f"{i:02d}" for i in range(1, 13)], "graceful")
    first = big(1, marker="first")
    assert store.store_report(first, FKEY)
    assert not store.store_report(big(1, marker="again"), FKEY)
    assert store.report(RUN, 1) == first
    checked = first.model_copy(update={"discrepancies": ["files disagree"]})
    store.overwrite_report(checked)
    assert store.report(RUN, 1) == checked
    store.start_batch(RUN, 2, ["01"], "graceful")
    assert store.store_report(big(2, forced=True, marker="forced"), FKEY)
    assert not store.store_report(big(2, marker="late"), FKEY)
    assert store.late_reports(RUN, 2) == [big(2, marker="late")]
    assert list(store.r.scan_iter(f"{store.keys.p}*staged*")) == []
    assert 0 < store.r.ttl(store.keys.report(RUN, 1)) <= store.ttl


def test_a_report_replaced_while_it_is_read_in_parts_is_read_again_never_mixed(
    parted: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = parted
    store.start_batch(RUN, 1, ["01"], "graceful")
    first = batch_report(marker="first " * 40)
    store.store_report(first, FKEY)
    checked = first.model_copy(update={"discrepancies": ["files disagree " * 20]})
    real = BatchReport.from_json_parts
    reads = 0

    def read(parts: object) -> BatchReport | None:
        nonlocal reads
        reads += 1
        if reads == 1:  # another process replaces it after the first part was read
            iterator = iter(parts)  # type: ignore[call-overload]
            head = next(iterator)
            store.overwrite_report(checked)
            return real([head, *iterator])
        return real(parts)  # type: ignore[arg-type]

    monkeypatch.setattr(BatchReport, "from_json_parts", read)
    assert store.report(RUN, 1) == checked
    assert reads == 2


# --- the progress stream ------------------------------------------------------------------


def test_events_are_read_in_order_after_an_id(store: Store) -> None:
    for i in range(5):
        store.emit(RUN, "note", 1, f"{i:02d}", index=i, text="x")
    events = store.events(RUN)
    ids = [e.id for e in events]
    assert all(STREAM_ID.match(i) for i in ids)
    as_pairs = [tuple(map(int, i.split("-"))) for i in ids]
    assert as_pairs == sorted(as_pairs) and len(set(ids)) == 5  # strictly increasing
    assert [e.data["index"] for e in events] == [0, 1, 2, 3, 4]
    assert events[0].data == {"index": 0, "text": "x"}
    assert [e.seq for e in store.events(RUN, ids[2])] == ["03", "04"]
    assert store.events(RUN, ids[-1]) == []
    assert [e.seq for e in store.events(RUN, count=2)] == ["00", "01"]
    assert store.last_event_id(RUN) == ids[-1]


def test_an_empty_stream(store: Store) -> None:
    assert store.events(RUN) == []
    assert store.events(RUN, block_ms=20) == []  # waits, then nothing
    assert store.last_event_id(RUN) == "0-0"
    assert store.seconds_since_last_event(RUN) == float("inf")


def test_a_blocking_read_wakes_on_a_new_event(store: Store) -> None:
    store.emit(RUN, "before", 1, "")
    after = store.last_event_id(RUN)
    writer = threading.Timer(0.1, lambda: store.emit(RUN, "wake", 1, "01"))
    writer.start()
    try:
        events = store.events(RUN, after, block_ms=30_000)
    finally:
        writer.join()
    assert [e.kind for e in events] == ["wake"]


def test_seconds_since_last_event_is_the_newest_event_s_age(harness: Harness) -> None:
    store = harness.store
    store.emit(RUN, "note", 1, "")
    if harness.clock is not None:
        harness.clock.advance(5.0)
        assert store.seconds_since_last_event(RUN) == pytest.approx(5.0, abs=0.002)
    else:
        age = store.seconds_since_last_event(RUN)
        assert 0.0 <= age < float("inf")


def test_events_of_other_runs_are_apart(store: Store) -> None:
    store.emit(RUN, "mine", 1, "")
    store.emit("other-run", "theirs", 1, "")
    assert kinds(store) == ["mine"]


# --- feature lock ------------------------------------------------------------------------


def test_the_feature_lock_has_one_holder(store: Store) -> None:
    assert store.lock_holder(FKEY) is None
    assert store.acquire_lock(FKEY, "orch-1", 30.0) is None
    assert store.acquire_lock(FKEY, "orch-2", 30.0) == "orch-1"
    assert store.lock_holder(FKEY) == "orch-1"
    assert store.renew_lock(FKEY, "orch-1", 30.0)
    assert not store.renew_lock(FKEY, "orch-2", 30.0)
    store.release_lock(FKEY, "orch-2")
    assert store.lock_holder(FKEY) == "orch-1"
    store.release_lock(FKEY, "orch-1")
    assert store.lock_holder(FKEY) is None
    assert store.acquire_lock(FKEY, "orch-2", 30.0) is None


def test_a_lapsed_lock_lease_lets_another_orchestrator_in(harness: Harness) -> None:
    store = harness.store
    assert store.acquire_lock(FKEY, "orch-1", 0.2) is None
    harness.pass_time(0.2, lambda: store.acquire_lock(FKEY, "orch-2", 30.0) is None)
    assert store.lock_holder(FKEY) == "orch-2"
    assert not store.renew_lock(FKEY, "orch-1", 30.0)


# --- agent slots -------------------------------------------------------------------------


def test_slots_count_holders_up_to_the_limit(store: Store) -> None:
    assert store.take_slot("codex", "a", 2, 30.0)
    assert store.take_slot("codex", "b", 2, 30.0)
    assert not store.take_slot("codex", "c", 2, 30.0)
    assert store.take_slot("codex", "a", 2, 30.0)  # a holder renews its own
    assert store.take_slot("claude", "c", 1, 30.0)  # another agent's slots are apart
    store.release_slot("codex", "a")
    store.release_slot("codex", "nobody")
    assert store.take_slot("codex", "c", 2, 30.0)
    assert not store.take_slot("codex", "a", 2, 30.0)


def test_a_lapsed_slot_lease_frees_the_slot(harness: Harness) -> None:
    store = harness.store
    assert store.take_slot("codex", "lost", 1, 0.2)
    assert not store.take_slot("codex", "next", 1, 30.0)
    harness.pass_time(0.2, lambda: store.take_slot("codex", "next", 1, 30.0))
    assert not store.take_slot("codex", "lost", 1, 30.0)


# --- atomicity ----------------------------------------------------------------------------


def _race(count: int, attempt: object) -> list[object]:
    """``count`` threads call ``attempt(i)`` together; their answers."""
    answers: list[object] = [None] * count
    gate = threading.Barrier(count)

    def one(i: int) -> None:
        gate.wait()
        answers[i] = attempt(i)  # type: ignore[operator]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_racing_copies_get_one_run(store: Store) -> None:
    answers = _race(8, lambda i: begin(store, worker=f"w{i}"))
    assert sorted(answers) == ["busy"] * 7 + ["run"]  # type: ignore[type-var]
    assert store.subtask_info(RUN, "01")["starts"] == "1"


def test_racing_results_record_one(store: Store) -> None:
    answers = _race(8, lambda i: store.record_result(result("01", summary=str(i)), FKEY, "w"))
    assert answers.count(True) == 1
    winner = answers.index(True)
    recorded = store.result(RUN, "01")
    assert recorded is not None and recorded.summary == str(winner)
    assert store.subtask_info(RUN, "01")["finishes"] == "8"


def test_racing_reports_store_one(store: Store) -> None:
    store.start_batch(RUN, 1, ["01"], "graceful")
    answers = _race(6, lambda i: store.store_report(batch_report(marker=str(i)), FKEY))
    assert answers.count(True) == 1
    assert store.report_refs(FKEY) == [(RUN, 1)]
