"""Merging on adoption: the isolated results a run recorded but never merged back.

Under ``isolate = "worktree"`` a worker records a completed result whose deliverables
live only in its result commit (``refs/batchq/<run>/<seq>``); the orchestrator merges
them into the workspace (:mod:`batchq.run.merge`) and marks the result ``merged``. An
orchestrator that went away between the two (SIGKILL, a lost host, Ctrl-C) leaves a
completed result whose deliverables are not in the workspace: written into the files
as it stands, ``completed`` would be a lie. So :func:`batchq.run.adopt.settle` calls
:func:`merge_late` before it writes anything: each such result is merged now with the
rules of a live merge (seq order, each 3-way against its own snapshot; a conflict
fails it naming the paths and the workspace keeps its version; strays per the run's
write check; a workspace that already matches is no conflict), the amended results
go to the store, and :func:`reconcile` rebuilds a batch report stored before the
merge from them, so report, store and files agree.

``workspace = git`` (#20) keeps the result commits on a remote: the orchestrator
fetches them before it merges. Adoption needs the same fetch, at the top of
:func:`merge_late`, for the commits of the results it is about to merge.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from batchq.core import report
from batchq.models import (
    BatchReport,
    PlannedBatch,
    Subtask,
    SubtaskResult,
    WriteCheck,
)
from batchq.run import merge
from batchq.store.contract import Store
from batchq.store.state import BatchRecord

__all__ = ["merge_late", "reconcile", "unmerged", "write_check"]


def unmerged(result: SubtaskResult) -> bool:
    """A completed isolated result no orchestrator merged back. A non-empty
    ``merged_paths`` counts as merged too: results recorded before the ``merged``
    flag existed say so only that way."""
    return (
        result.ok
        and result.isolated_commit is not None
        and not result.merged
        and not result.merged_paths
    )


def write_check(record: BatchRecord) -> WriteCheck:
    """The write check a batch was registered with (``warn`` for an unknown value)."""
    try:
        return WriteCheck(record.write_check)
    except ValueError:
        return WriteCheck.WARN


def merge_late(
    store: Store,
    project: Path,
    by_seq: Mapping[str, Subtask],
    run_id: str,
    final: Mapping[str, SubtaskResult],
) -> dict[str, SubtaskResult]:
    """Merge into ``project`` every result of ``final`` (seq -> the result adoption
    takes as final) that :func:`unmerged` says was never merged; seq -> each result
    the merge amended, already in the store when this returns."""
    late = [r for r in final.values() if unmerged(r)]
    if not late:
        return {}
    # One write check per run: every batch of a run is registered with the run's.
    check = write_check(store.batch_record(run_id, min(r.batch for r in late)))
    amended = [r for r in merge.merge_into(project, check, by_seq, late) if r != final[r.seq]]
    store.amend_results(amended)
    return {r.seq: r for r in amended}


def reconcile(store: Store, rep: BatchReport, amended: Mapping[str, SubtaskResult]) -> BatchReport:
    """``rep`` as it must be after :func:`merge_late`: unchanged when it already has
    the amended results, else rebuilt from them and stored over the old one (one
    stored before the merge: by the batch's chord callback, or while settling)."""
    if all(_merge_of(amended.get(r.seq, r)) == _merge_of(r) for r in rep.results):
        return rep
    record = store.batch_record(rep.run_id, rep.batch)
    rebuilt = _rebuilt(rep, amended, record, write_check(record))
    store.overwrite_report(rebuilt)
    return rebuilt


def _merge_of(result: SubtaskResult) -> tuple[object, ...]:
    """What a merge decides of a result (a report may add its own blame besides)."""
    return result.result, result.merged, result.merged_paths, result.error_type


def _rebuilt(
    rep: BatchReport,
    results: Mapping[str, SubtaskResult],
    record: BatchRecord,
    check: WriteCheck,
) -> BatchReport:
    """``rep`` built again from the amended results, as :func:`merge.merge_batch`
    rebuilds a batch's report after its merge."""
    following = PlannedBatch.model_validate_json(record.following) if record.following else None
    built = report.build(
        feature=rep.feature,
        run_id=rep.run_id,
        batch=rep.batch,
        results=[results.get(r.seq, r) for r in rep.results],
        expected=record.expected or [r.seq for r in rep.results],
        next_batch=following,
        submitted_at=rep.submitted_at,
        finished_at=rep.finished_at or datetime.now(UTC),
        forced=rep.forced,
        discrepancies=rep.discrepancies,
        skipped={s.seq: s.reason for s in rep.skipped},
        write_check=check,
    )
    if rep.ok and built.ok:  # flow mode's own next step (no next batch to wait for)
        built = built.model_copy(update={"next": rep.next})
    return built
