"""report.build and report.discrepancies: pure aggregation, no broker."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchq.core import report
from batchq.models import (
    BatchReport,
    BatchStatus,
    PlannedBatch,
    ResultState,
    SubtaskResult,
)

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def result(seq: str, state: ResultState = ResultState.COMPLETED, **kw: Any) -> SubtaskResult:
    fields: dict[str, Any] = {
        "feature": "auth-system",
        "run_id": "r1",
        "batch": 1,
        "seq": seq,
        "title": f"Subtask {seq}",
        "result": state,
        "duration_s": 1.0,
    }
    fields.update(kw)
    return SubtaskResult(**fields)


def build(
    results: Sequence[SubtaskResult],
    expected: Sequence[str],
    *,
    next_batch: PlannedBatch | None = None,
    wall: float = 2.0,
    **kw: Any,
) -> BatchReport:
    return report.build(
        feature="auth-system",
        run_id="r1",
        batch=1,
        results=results,
        expected=expected,
        next_batch=next_batch,
        submitted_at=T0,
        finished_at=T0 + timedelta(seconds=wall),
        **kw,
    )


NEXT = PlannedBatch(number=2, level=1, seqs=["03", "04"], parallel=True, after=1)


# --- totals and status ----------------------------------------------------------


def test_a_batch_where_every_member_completed_is_completed_with_full_totals() -> None:
    rep = build([result("01"), result("02")], ["01", "02"])
    assert rep.status is BatchStatus.COMPLETED
    assert (rep.total, rep.completed, rep.failed) == (2, 2, 0)
    assert rep.success_rate == 100.0
    assert rep.missing == []
    assert rep.discrepancies == []
    assert rep.ok


def test_one_failed_member_makes_a_partial_failure_with_a_rounded_success_rate() -> None:
    rep = build(
        [result("01"), result("02", ResultState.FAILED), result("03")],
        ["01", "02", "03"],
    )
    assert rep.status is BatchStatus.PARTIAL_FAILURE
    assert (rep.total, rep.completed, rep.failed) == (3, 2, 1)
    assert rep.success_rate == 66.7


def test_a_timed_out_member_counts_as_failed() -> None:
    rep = build([result("01"), result("02", ResultState.TIMED_OUT)], ["01", "02"])
    assert (rep.completed, rep.failed, rep.cancelled) == (1, 1, 0)
    assert rep.status is BatchStatus.PARTIAL_FAILURE
    assert rep.next.fix == ["02"]


def test_a_cancelled_member_counts_as_cancelled_not_failed() -> None:
    rep = build([result("01"), result("02", ResultState.CANCELLED)], ["01", "02"])
    assert (rep.completed, rep.failed, rep.cancelled) == (1, 0, 1)
    assert rep.status is BatchStatus.CANCELLED
    assert rep.next.fix == []
    assert not rep.next.dependencies_satisfied
    assert rep.next.recommendation == (
        "Batch 1 was cancelled: subtask 02 did not complete. "
        "Rerun `batchq run auth-system` to resume."
    )


def test_graceful_cancels_after_a_failure_count_apart_and_only_the_failure_is_blamed() -> None:
    rep = build(
        [result("01", ResultState.FAILED), result("02", ResultState.CANCELLED)],
        ["01", "02", "03"],
        skipped={"03": "not started"},
    )
    assert rep.status is BatchStatus.PARTIAL_FAILURE
    assert (rep.failed, rep.cancelled, rep.skipped_count) == (1, 1, 1)
    assert rep.total == rep.completed + rep.failed + rep.cancelled + rep.skipped_count
    assert rep.next.fix == ["01"]


def test_a_forced_report_names_members_without_a_result_and_counts_them_failed() -> None:
    rep = build([result("01"), result("02")], ["01", "02", "04"], forced=True)
    assert rep.forced
    assert rep.missing == ["04"]
    assert (rep.total, rep.completed, rep.failed) == (3, 2, 1)
    assert rep.status is BatchStatus.PARTIAL_FAILURE
    assert [r.seq for r in rep.results] == ["01", "02"]


def test_the_success_rate_rounds_half_up_not_half_to_even() -> None:
    # 1/16 = 6.25 %: round() would give 6.2.
    expected = [f"{i:02d}" for i in range(1, 17)]
    rep = build([result("01")], expected)
    assert rep.success_rate == 6.3


def test_an_empty_batch_is_vacuously_completed() -> None:
    rep = build([], [])
    assert rep.status is BatchStatus.COMPLETED
    assert (rep.total, rep.completed, rep.failed, rep.success_rate) == (0, 0, 0, 100.0)


# --- duplicates, strays and ordering ---------------------------------------------


def test_a_redelivered_duplicate_keeps_the_completed_copy_and_is_noted() -> None:
    failed = result("02", ResultState.FAILED, finished_at=T0 + timedelta(seconds=9))
    done = result("02", finished_at=T0 + timedelta(seconds=1))
    rep = build([failed, done], ["02"])
    assert rep.results == [done]
    assert rep.status is BatchStatus.COMPLETED
    assert len(rep.discrepancies) == 1
    assert rep.discrepancies[0].startswith("02: 2 results received")


def test_among_equal_duplicates_the_latest_finished_wins_whatever_the_arrival_order() -> None:
    early = result("02", finished_at=T0 + timedelta(seconds=1), worker="w1")
    late = result("02", finished_at=T0 + timedelta(seconds=5), worker="w2")
    assert build([early, late], ["02"]).results == [late]
    assert build([late, early], ["02"]).results == [late]


def test_a_duplicate_is_counted_once_in_the_totals() -> None:
    rep = build([result("01"), result("01"), result("02")], ["01", "02"])
    assert (rep.total, rep.completed) == (2, 2)
    assert rep.work_s == 2.0


def test_only_a_duplicated_seq_has_its_copies_ranked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranking serializes each copy (its JSON is the last tie-break): a report of
    20,000 results, each once, ranks none."""
    ranked: list[str] = []
    real = report._preference

    def preference(r: SubtaskResult) -> Any:
        ranked.append(r.seq)
        return real(r)

    monkeypatch.setattr(report, "_preference", preference)
    rep = build([result("01"), result("02"), result("02"), result("03")], ["01", "02", "03"])
    assert ranked == ["02", "02"]
    assert [r.seq for r in rep.results] == ["01", "02", "03"]


def test_results_for_another_seq_run_or_batch_are_left_out_and_noted() -> None:
    rep = build(
        [result("01"), result("07"), result("02", run_id="old"), result("02", batch=3)],
        ["01", "02"],
    )
    assert [r.seq for r in rep.results] == ["01"]
    assert rep.missing == ["02"]
    assert len(rep.discrepancies) == 3


def test_given_discrepancies_are_kept_first() -> None:
    rep = build([result("01"), result("01")], ["01"], discrepancies=["late result from 09"])
    assert rep.discrepancies[0] == "late result from 09"
    assert len(rep.discrepancies) == 2


def test_results_are_ordered_by_numeric_seq_not_text() -> None:
    seqs = ["100", "10", "09"]
    rep = build([result(s) for s in seqs], seqs)
    assert [r.seq for r in rep.results] == ["09", "10", "100"]


def test_missing_members_are_listed_in_numeric_order() -> None:
    rep = build([], ["100", "10", "09"], forced=True)
    assert rep.missing == ["09", "10", "100"]


@given(st.permutations([f"{i:02d}" for i in range(1, 13)] + ["100", "101"]))
def test_the_report_does_not_depend_on_the_order_results_arrive_in(order: list[str]) -> None:
    expected = sorted(order)
    rep = build([result(s) for s in order], expected)
    assert rep == build([result(s) for s in expected], expected)


# --- timings -----------------------------------------------------------------------


def test_speedup_is_summed_subtask_time_over_wall_time() -> None:
    rep = build(
        [result("01", duration_s=2.1), result("02", duration_s=3.5), result("03", duration_s=4.2)],
        ["01", "02", "03"],
        wall=4.2,
    )
    assert rep.wall_s == 4.2
    assert rep.work_s == pytest.approx(9.8)
    assert rep.speedup == pytest.approx(9.8 / 4.2, abs=1e-3)


def test_speedup_is_zero_when_no_wall_time_passed() -> None:
    rep = build([result("01", duration_s=1.0)], ["01"], wall=0.0)
    assert (rep.wall_s, rep.speedup) == (0.0, 0.0)


def test_wall_time_falls_back_to_the_earliest_start_without_a_submit_time() -> None:
    rep = report.build(
        feature="auth-system",
        run_id="r1",
        batch=1,
        results=[result("01", started_at=T0 + timedelta(seconds=1))],
        expected=["01"],
        next_batch=None,
        submitted_at=None,
        finished_at=T0 + timedelta(seconds=4),
    )
    assert rep.wall_s == 3.0


# --- next step -----------------------------------------------------------------------


def test_a_completed_batch_with_a_next_batch_says_it_is_ready() -> None:
    rep = build([result("01")], ["01"], next_batch=NEXT)
    assert rep.next.batch == 2
    assert rep.next.seqs == ["03", "04"]
    assert rep.next.dependencies_satisfied
    assert rep.next.recommendation == (
        "Batch 1 complete. Ready to proceed to Batch 2 (subtasks 03, 04)."
    )


def test_a_completed_last_batch_says_all_batches_are_complete() -> None:
    rep = build([result("01")], ["01"])
    assert rep.next.batch is None
    assert rep.next.dependencies_satisfied
    assert rep.next.recommendation == "Batch 1 complete. All planned batches complete."


def test_a_failed_batch_recommends_fixing_the_members_that_failed_not_the_cancelled() -> None:
    rep = build(
        [result("01"), result("02", ResultState.FAILED), result("03", ResultState.CANCELLED)],
        ["01", "02", "03", "04"],
        next_batch=NEXT,
        forced=True,
    )
    assert not rep.next.dependencies_satisfied
    assert rep.next.batch == 2
    assert rep.next.fix == ["02", "04"]
    assert rep.next.recommendation == "Fix subtasks 02, 04 before proceeding to Batch 2."


def test_the_report_is_a_frozen_wire_model() -> None:
    rep = build([result("01")], ["01"])
    with pytest.raises(Exception, match="frozen"):
        rep.total = 5  # type: ignore[misc]


# --- discrepancies against the store ----------------------------------------------


def test_no_discrepancy_when_the_store_agrees() -> None:
    rep = build([result("01"), result("02", ResultState.FAILED)], ["01", "02"])
    assert report.discrepancies(rep, {"01": "completed", "02": "failed", "99": "x"}) == []


def test_a_different_result_in_the_store_is_a_discrepancy() -> None:
    rep = build([result("01"), result("02")], ["01", "02"])
    notes = report.discrepancies(rep, {"01": "completed", "02": "failed"}, source="files")
    assert notes == ["02: reported completed, but recorded failed in the files"]


def test_a_result_missing_from_the_store_is_a_discrepancy() -> None:
    rep = build([result("01")], ["01"])
    assert report.discrepancies(rep, {}) == [
        "01: reported completed, but nothing recorded in the store"
    ]


def test_a_result_recorded_after_a_forced_report_is_a_discrepancy() -> None:
    rep = build([result("01")], ["01", "02"], forced=True)
    notes = report.discrepancies(rep, {"01": "completed", "02": "completed"})
    assert len(notes) == 1
    assert notes[0].startswith("02: no result in the report, but recorded completed in the store")


def test_a_missing_member_with_nothing_recorded_is_consistent() -> None:
    rep = build([], ["01"], forced=True)
    assert report.discrepancies(rep, {}) == []


def test_the_report_module_imports_neither_celery_nor_redis() -> None:
    code = (
        "import sys, batchq.core.report; "
        "bad = sorted(m for m in ('celery', 'redis', 'kombu') if m in sys.modules); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_skipped_members_count_as_skipped_not_failed_and_not_missing() -> None:
    built = build(
        [result("01", ResultState.FAILED)],
        ["01", "02", "03"],
        skipped={"02": "depends on 01, which failed", "03": "depends on 01, which failed"},
    )
    assert built.status is BatchStatus.PARTIAL_FAILURE
    assert (built.total, built.completed, built.failed, built.skipped_count) == (3, 0, 1, 2)
    assert built.missing == []
    assert [(s.seq, s.reason) for s in built.skipped] == [
        ("02", "depends on 01, which failed"),
        ("03", "depends on 01, which failed"),
    ]


def test_a_skip_for_a_member_that_has_a_result_is_dropped() -> None:
    built = build([result("01")], ["01"], skipped={"01": "stale"})
    assert built.ok and built.skipped == []


def test_a_batch_skipped_for_a_failure_elsewhere_names_that_failure_not_its_members() -> None:
    built = build(
        [],
        ["07"],
        skipped={"07": "depends on 06, which failed"},
        causes={"07": "06"},
        titles={"07": "Deploy"},
    )
    assert built.status is BatchStatus.PARTIAL_FAILURE
    assert (built.failed, built.skipped_count) == (0, 1)
    assert built.next.fix == ["06"]
    assert built.next.recommendation == "Fix subtask 06, then rerun `batchq run auth-system`."
    assert built.skipped[0].cause == "06" and built.skipped[0].title == "Deploy"


def test_a_batch_skipped_because_the_run_stopped_is_cancelled() -> None:
    built = build([], ["07"], skipped={"07": "not started: 01 was cancelled, the run stops"})
    assert built.status is BatchStatus.CANCELLED
    assert (built.failed, built.skipped_count) == (0, 1)


def test_speedup_needs_two_members_that_ran() -> None:
    assert build([result("01", duration_s=2.0)], ["01"], wall=1.0).speedup == 0.0
    assert build([result("01"), result("02")], ["01", "02"], wall=1.0).speedup == 2.0
