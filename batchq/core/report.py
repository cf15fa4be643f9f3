"""Pure aggregation: subtask results in, one :class:`~batchq.models.BatchReport` out.

:func:`build` is the only place a batch report is made. The chord callback, the
batch-of-one path and the deadline (forced) path all call it, so the three can never
disagree about totals, status or the next step. It imports neither celery nor redis and
does no I/O: the callers fetch results and write the report; this module only decides.

Counting rules (SPEC 3, 4): counts count what they name.

- ``total`` is the number of *expected* members, not the number of results received.
- ``failed`` counts members that failed, timed out or never reported (``missing``: the
  files record those as failed too). ``cancelled`` and ``skipped_count`` count members
  that did not run to completion through no fault of their own; they are never
  ``failed``. ``completed + failed + cancelled + skipped_count == total``.
- The status: ``partial_failure`` when a member failed (or, under ``fail``, a write no
  member can be blamed for); else ``cancelled`` when a member was cancelled or skipped;
  else ``completed``. A flow batch whose members were skipped because a dependency in
  another batch failed is a ``partial_failure`` with ``Failed: 0``: the advice names
  the failed dependency (``NextStep.fix``), never the skipped dependents.
- Write-set enforcement (:mod:`batchq.files.snapshot`): the members' observed writes are
  blamed here, where every member's deliverables and window are known. Under
  ``fail``, a member blamed alone ends ``failed`` in the report, and writes no single
  member can be blamed for fail the batch without failing any member: they stop the
  run for a look, and rerunning innocent members would not undo a write.
- Delivery is at-least-once, so one seq can arrive twice. The kept copy is chosen
  without regard to arrival order (a completed copy first, then the latest finished,
  then the most attempts), and the duplicate is noted in ``discrepancies``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from batchq.core import blame
from batchq.models import (
    BatchReport,
    BatchStatus,
    NextStep,
    PlannedBatch,
    ResultState,
    SkippedSubtask,
    SubtaskResult,
    UndeclaredWrite,
    WriteCheck,
    seq_key,
)

__all__ = ["amended", "build", "discrepancies"]


def _seq_list(seqs: Sequence[str]) -> str:
    return ", ".join(seqs)


def _preference(result: SubtaskResult) -> tuple[bool, float, int, str]:
    """Sort key for duplicate copies of one seq: the max is the copy to keep.

    The final component (the full JSON) makes the choice independent of the order the
    copies arrived in, which is what "deterministic" has to mean under redelivery.
    """
    finished = result.finished_at.timestamp() if result.finished_at else float("-inf")
    return (result.ok, finished, result.attempts, result.model_dump_json())


def _dedupe(results: Sequence[SubtaskResult], notes: list[str]) -> dict[str, SubtaskResult]:
    by_seq: dict[str, list[SubtaskResult]] = {}
    for result in results:
        by_seq.setdefault(result.seq, []).append(result)
    kept: dict[str, SubtaskResult] = {}
    for seq, copies in by_seq.items():
        if len(copies) == 1:  # the usual case: no key to compute (a JSON dump each)
            kept[seq] = copies[0]
            continue
        best = kept[seq] = max(copies, key=_preference)
        states = ", ".join(sorted(c.result.value for c in copies))
        notes.append(
            f"{seq}: {len(copies)} results received ({states}); "
            f"kept the {best.result.value} one (at-least-once redelivery)"
        )
    return kept


def _foreign(result: SubtaskResult, feature: str, run_id: str, batch: int) -> str | None:
    """Why a result does not belong to this batch, or None when it does."""
    if result.feature != feature:
        return f"{result.seq}: ignored a result for feature {result.feature!r}"
    if result.run_id != run_id:
        return f"{result.seq}: ignored a result from run {result.run_id} (this run is {run_id})"
    if result.batch != batch:
        return f"{result.seq}: ignored a result reported for batch {result.batch}"
    return None


def _success_rate(completed: int, total: int) -> float:
    """Percentage rounded half up to one decimal, in exact integer arithmetic.

    ``round()`` on a float rounds half to even and inherits binary error (1/16 would
    give 6.2); orchestrators compare this number, so it is computed exactly. An empty
    batch has nothing that failed, so it reads 100.0 to agree with its COMPLETED status.
    """
    if total == 0:
        return 100.0
    tenths = (completed * 2000 + total) // (2 * total)
    return tenths / 10


def _wall_seconds(
    submitted_at: datetime | None, finished_at: datetime, results: Sequence[SubtaskResult]
) -> float:
    """Elapsed batch time; falls back to the earliest start when submission is unknown."""
    start = submitted_at
    if start is None:
        starts = [r.started_at for r in results if r.started_at is not None]
        start = min(starts) if starts else None
    if start is None:
        return 0.0
    return max(0.0, (finished_at - start).total_seconds())


def _subtasks(seqs: Sequence[str]) -> str:
    return f"subtask{'s' if len(seqs) != 1 else ''} {_seq_list(seqs)}"


def _next_step(
    feature: str,
    batch: int,
    status: BatchStatus,
    fix: Sequence[str],
    not_run: Sequence[str],
    next_batch: PlannedBatch | None,
    stray: Sequence[UndeclaredWrite] = (),
) -> NextStep:
    """The seed's Next Steps, as data: which batch is next, what it depends on, and the
    one sentence the renderer prints (``recommendation``)."""
    number = next_batch.number if next_batch else None
    seqs = list(next_batch.seqs) if next_batch else []
    deps = list(next_batch.depends_on) if next_batch else []
    if status is BatchStatus.COMPLETED:
        if next_batch is None:
            text = f"Batch {batch} complete. All planned batches complete."
        else:
            text = (
                f"Batch {batch} complete. Ready to proceed to Batch {next_batch.number} "
                f"({_subtasks(next_batch.seqs)})."
            )
        return NextStep(
            batch=number,
            seqs=seqs,
            depends_on=deps,
            dependencies_satisfied=True,
            recommendation=text,
        )
    then = (
        f" before proceeding to Batch {next_batch.number}"
        if next_batch
        else f", then rerun `batchq run {feature}`"
    )
    if status is BatchStatus.CANCELLED:
        text = (
            f"Batch {batch} was cancelled: {_subtasks(not_run)} did not complete. "
            f"Rerun `batchq run {feature}` to resume."
        )
    elif fix:
        text = f"Fix {_subtasks(fix)}{then}."
    else:
        text = f"Declare or remove the undeclared writes {_stray_list(stray)}{then}."
    return NextStep(
        batch=number,
        seqs=seqs,
        depends_on=deps,
        dependencies_satisfied=False,
        recommendation=text,
        fix=list(fix),
    )


def _stray_list(stray: Sequence[UndeclaredWrite]) -> str:
    return "; ".join(
        f"{w.path} (candidates: {_seq_list(w.candidates)}" + (f"; {w.reason})" if w.reason else ")")
        for w in stray
    )


def _blamed(
    result: SubtaskResult, paths: list[str], declared: Sequence[str], check: WriteCheck
) -> SubtaskResult:
    """The result with the writes blamed on it; under ``fail`` a completed one fails."""
    update: dict[str, object] = {"undeclared_writes": paths}
    if check is WriteCheck.FAIL and result.ok:
        update |= {
            "result": ResultState.FAILED,
            "error": f"undeclared write: {', '.join(paths)} "
            f"(declared: {', '.join(declared) or 'nothing'})",
            "error_type": "UndeclaredWrite",
        }
    return result.model_copy(update=update)


def _apply_blame(
    results: list[SubtaskResult],
    declared: Mapping[str, Sequence[str]] | None,
    missing: Sequence[str],
    check: WriteCheck,
    others: Sequence[blame.Window] = (),
) -> tuple[list[SubtaskResult], list[UndeclaredWrite]]:
    if check is WriteCheck.OFF or not any(r.observed_writes for r in results):
        return results, []
    if declared is None:  # the verified deliverables are the declared ones
        declared = {r.seq: [c.path for c in r.deliverables] for r in results}
    verdict = blame.blame(results, declared, missing, others)
    out = [
        _blamed(r, verdict.by_seq[r.seq], declared.get(r.seq, ()), check)
        if r.seq in verdict.by_seq
        else r
        for r in results
    ]
    return out, verdict.batch_level


def build(
    *,
    feature: str,
    run_id: str,
    batch: int,
    results: Sequence[SubtaskResult],
    expected: Sequence[str],
    next_batch: PlannedBatch | None,
    submitted_at: datetime | None,
    finished_at: datetime,
    forced: bool = False,
    discrepancies: Sequence[str] = (),
    skipped: Mapping[str, str] | None = None,
    declared: Mapping[str, Sequence[str]] | None = None,
    write_check: WriteCheck = WriteCheck.WARN,
    others: Sequence[blame.Window] = (),
    causes: Mapping[str, str] | None = None,
    titles: Mapping[str, str] | None = None,
) -> BatchReport:
    """Aggregate one batch's results into its report.

    ``expected`` is the batch's membership: it, not ``results``, defines ``total``, so a
    forced report (the deadline path) names the members that never reported in
    ``missing``. Results that are not for this feature, run, batch or membership are
    left out and noted, as are duplicate copies of one seq. ``discrepancies`` passed in
    (e.g. a late result noticed by the caller) come first in the report's list.
    ``skipped`` (flow mode: seq -> reason) are members never enqueued; they count
    as not completed but are not ``missing``, since nothing was lost.
    ``declared`` maps each member to its deliverables, for the blame of undeclared
    writes (see the module docstring); ``write_check`` is the run's choice; ``others``
    (flow mode) the windows of subtasks outside the batch that ran meanwhile.
    ``causes`` (flow mode) maps a skipped member to the failed subtask it waited on,
    which the advice names; ``titles`` name the members that left no result.
    """
    causes, titles = dict(causes or {}), dict(titles or {})
    skipped = dict(skipped or {})
    notes: list[str] = list(discrepancies)
    members = set(expected)
    accepted: list[SubtaskResult] = []
    for result in results:
        reason = _foreign(result, feature, run_id, batch)
        if reason is None and result.seq not in members:
            reason = f"{result.seq}: ignored a result for a seq outside batch {batch}"
        if reason is None:
            accepted.append(result)
        else:
            notes.append(reason)

    kept = _dedupe(accepted, notes)
    expected_sorted = sorted(dict.fromkeys(expected), key=seq_key)
    missing = [seq for seq in expected_sorted if seq not in kept and seq not in skipped]
    ordered, stray = _apply_blame(
        [kept[seq] for seq in sorted(kept, key=seq_key)], declared, missing, write_check, others
    )
    kept = {r.seq: r for r in ordered}
    failing = (ResultState.FAILED, ResultState.TIMED_OUT)
    failed = [
        s for s in expected_sorted if s in missing or (s in kept and kept[s].result in failing)
    ]
    cancelled = [s for s in kept if kept[s].result is ResultState.CANCELLED]
    skips = [s for s in expected_sorted if s in skipped and s not in kept]
    completed = sum(1 for r in ordered if r.ok)

    total = len(expected_sorted)
    fix = failed or sorted({causes[s] for s in skips if s in causes}, key=seq_key)
    if failed or fix or (write_check is WriteCheck.FAIL and stray):
        status = BatchStatus.PARTIAL_FAILURE
    elif cancelled or skips:
        status = BatchStatus.CANCELLED
    else:
        status = BatchStatus.COMPLETED
    not_run = sorted([*cancelled, *skips], key=seq_key)

    wall_s = _wall_seconds(submitted_at, finished_at, ordered)
    work_s = sum(r.duration_s for r in ordered)
    ran = [r for r in ordered if r.duration_s > 0 and r.result is not ResultState.CANCELLED]
    # A speed-up needs two members that ran and a wall time to divide by.
    speedup = work_s / wall_s if wall_s > 0 and len(ran) > 1 else 0.0

    return BatchReport(
        feature=feature,
        run_id=run_id,
        batch=batch,
        status=status,
        results=ordered,
        total=total,
        completed=completed,
        failed=len(failed),
        cancelled=len(cancelled),
        skipped_count=len(skips),
        success_rate=_success_rate(completed, total),
        next=_next_step(feature, batch, status, fix, not_run, next_batch, stray),
        submitted_at=submitted_at,
        finished_at=finished_at,
        wall_s=round(wall_s, 3),
        work_s=round(work_s, 3),
        speedup=round(speedup, 3),
        forced=forced,
        missing=missing,
        skipped=[
            SkippedSubtask(
                seq=seq, reason=skipped[seq], cause=causes.get(seq), title=titles.get(seq, "")
            )
            for seq in skips
        ],
        discrepancies=notes,
        undeclared_writes=stray,
        write_check=write_check,
    )


def discrepancies(
    report: BatchReport, recorded: Mapping[str, str], *, source: str = "store"
) -> list[str]:
    """Where ``recorded`` (seq -> result string, from the store or the task files)
    disagrees with ``report``.

    SPEC 4 asks the producer to re-read the state after a batch and say where it differs
    from what workers returned; this is the comparison, kept pure so the producer only
    fetches. ``source`` names where ``recorded`` came from in the messages. Seqs that
    are not in the report are ignored: the caller may pass a whole feature's state.
    A missing member that the source has a result for is a result that arrived after
    a forced report (SPEC 3).
    """
    out: list[str] = []
    reported: dict[str, str] = {r.seq: r.result.value for r in report.results}
    for seq in report.missing:
        reported.setdefault(seq, "")
    for seq in sorted(reported, key=seq_key):
        said = reported[seq]
        got_value = recorded.get(seq)
        if said == "":
            if got_value:
                out.append(
                    f"{seq}: no result in the report, but recorded {got_value} in the {source}"
                    " (arrived after the report)"
                )
        elif got_value is None:
            out.append(f"{seq}: reported {said}, but nothing recorded in the {source}")
        elif got_value != said:
            out.append(f"{seq}: reported {said}, but recorded {got_value} in the {source}")
    return out


def amended(report: BatchReport, recorded: Mapping[str, SubtaskResult]) -> list[SubtaskResult]:
    """The report's results whose state differs from what was recorded: members the
    report failed for an undeclared write. The caller writes them back to the store."""
    return [
        r for r in report.results if r.seq in recorded and recorded[r.seq].result is not r.result
    ]
