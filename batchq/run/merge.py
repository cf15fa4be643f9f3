"""Isolated runs on the orchestrator: the snapshot before publishing, the merge after.

``isolate = "worktree"`` gives every delegation its own git worktree
(:mod:`batchq.executor.isolation`). The orchestrator's half:

* :func:`check` refuses, before anything starts, a workspace that is not a git work
  tree;
* before publishing, the workspace is recorded on a hidden ref after removing
  worktrees dead workers left, and every message names that ref
  (``SubtaskMessage.snapshot_ref``): in batch mode :func:`snapshot_batch` records
  ``refs/batchq/<run>/base-<batch>`` at each batch submit; in flow mode
  :func:`snapshot_wave` records ``refs/batchq/<run>/base-w<wave>`` each time a wave
  of ready subtasks is published (:mod:`batchq.run.flowloop`);
* :func:`merge_results` merges completed members back in seq order as
  :mod:`batchq.core.mergeplan` decides, each 3-way against its *own* snapshot (the
  parent of its result commit); a conflict, a merge that cannot be done or, under
  ``fail``, a stray fails its member. Batch mode calls it through
  :func:`merge_batch`, once the batch's report is built and before the statuses are
  settled in the files, and rebuilds the report from the amended results; flow mode
  as each member's result arrives (those of one step in seq order), before its
  dependents are published, and stores the amended results its reports are built
  from. Either way the next snapshot sees what was merged. A merged result says so
  (``merged``); adoption merges, through :func:`merge_into`, a completed one that
  does not (:mod:`batchq.run.latemerge`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from batchq import layout
from batchq.core import mergeplan, report
from batchq.core.blame import outside
from batchq.core.paths import PathError, normalise
from batchq.errors import BatchqError, UsageError
from batchq.executor import isolation
from batchq.files import gitsnap
from batchq.models import (
    BatchReport,
    Feature,
    Isolation,
    ResultState,
    Run,
    Subtask,
    SubtaskResult,
    WriteCheck,
    seq_key,
)
from batchq.run import remote
from batchq.run.producer import Submission
from batchq.store.contract import Store

__all__ = [
    "apply_paths",
    "check",
    "merge_batch",
    "merge_into",
    "merge_one",
    "merge_results",
    "snapshot_batch",
    "snapshot_wave",
    "subtask_patch",
]


def check(root: Path, isolate: Isolation) -> None:
    """Refuse what isolation cannot do, with :class:`UsageError` (exit 2)."""
    if isolate is not Isolation.NONE:
        gitsnap.require_work_tree(root)


def snapshot_batch(run: Run, batch: int) -> str:
    """Record the workspace for batch ``batch``'s isolated members; the ref their
    messages name ("" when the run is not isolated)."""
    return _snapshot(run, isolation.base_ref(run.run_id, batch), f"batch {batch}")


def snapshot_wave(run: Run, wave: int) -> str:
    """Record the workspace for the ``wave``-th wave a flow run publishes; the ref its
    messages name ("" when the run is not isolated)."""
    return _snapshot(run, isolation.wave_ref(run.run_id, wave), f"flow wave {wave}")


def _snapshot(run: Run, ref: str, what: str) -> str:
    if run.isolate is Isolation.NONE:
        return ""
    top = gitsnap.require_work_tree(run.root)
    isolation.prune_dead(top)
    gitsnap.snapshot(top, ref, f"batchq {run.run_id} {what} snapshot")
    remote.push_snapshot(run, ref)  # workspace = git (#20): where the workers fetch it
    return ref


def apply_paths(
    project: Path, commit: str, theirs: dict[str, gitsnap.Entry], paths: list[str]
) -> None:
    """Make each of ``paths`` in the project what it is in ``commit``: written (with
    its mode, or as a symlink) atomically, or deleted when ``commit`` has none."""
    root = project.resolve()
    for name in paths:
        target = root / normalise(name)
        if not target.parent.resolve().is_relative_to(root):
            raise PathError(name, "resolves outside the workspace")
        entry = theirs.get(name)
        if entry is None:
            if target.is_symlink() or target.is_file():
                target.unlink()
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        tmp = Path(tmp_name)
        try:
            os.close(fd)
            if entry.mode == "120000":
                tmp.unlink()
                os.symlink(gitsnap.read_blob(root, commit, name), tmp)
            else:
                tmp.write_bytes(gitsnap.read_blob(root, commit, name))
                tmp.chmod(0o755 if entry.mode == "100755" else 0o644)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


def merge_one(
    project: Path, result: SubtaskResult, deliverables: Sequence[str], write_check: WriteCheck
) -> SubtaskResult:
    """Merge one completed isolated result into the project at ``project`` (every path
    here is relative to it); the result as amended (merged paths, undeclared writes, or
    failed naming why)."""
    commit = result.isolated_commit
    if commit is None or not result.ok:
        return result
    base = f"{commit}^"
    changed = result.changed_paths
    declared = sorted(set(changed) - set(outside(changed, deliverables)))
    theirs = gitsnap.tree_entries(project, commit, declared)
    verdict = mergeplan.decide(
        changed,
        deliverables,
        _contents(gitsnap.tree_entries(project, base, declared)),
        _contents(gitsnap.workspace_entries(project, declared)),
        _contents(theirs),
        write_check,
    )
    update: dict[str, object] = {"undeclared_writes": verdict.strays}
    if verdict.failure is not None:
        error_type = "MergeConflict" if verdict.conflicts else "UndeclaredWrite"
        update |= {"result": ResultState.FAILED, "error": verdict.failure, "error_type": error_type}
        return result.model_copy(update=update)
    apply_paths(project, commit, theirs, verdict.apply)
    update |= {"merged_paths": verdict.apply, "merged": True}
    return result.model_copy(update=update)


def _contents(entries: dict[str, gitsnap.Entry]) -> dict[str, mergeplan.Content]:
    return {path: (e.mode, e.oid) for path, e in entries.items()}


def merge_results(
    run: Run, by_seq: Mapping[str, Subtask], results: Iterable[SubtaskResult]
) -> list[SubtaskResult]:
    """Merge isolated results into the run's project in seq order; each result as
    amended (unchanged when it did not complete or was not isolated), in seq order.
    A merge that cannot be done (git gone, a path that resolves outside) fails its
    result instead of raising: the others still merge. Under ``workspace = git`` the
    results (and their logs) are fetched from the run's remote first."""
    gitsnap.require_work_tree(run.root)
    return merge_into(run.root, run.write_check, by_seq, remote.fetched(run, results))


def merge_into(
    project: Path,
    write_check: WriteCheck,
    by_seq: Mapping[str, Subtask],
    results: Iterable[SubtaskResult],
) -> list[SubtaskResult]:
    """:func:`merge_results` without a :class:`Run`: adoption merges what an
    orchestrator that went away never merged (:mod:`batchq.run.latemerge`)."""
    amended: list[SubtaskResult] = []
    for result in sorted(results, key=lambda r: seq_key(r.seq)):
        deliverables = by_seq[result.seq].deliverables if result.seq in by_seq else []
        try:
            amended.append(merge_one(project, result, deliverables, write_check))
        except (BatchqError, OSError, ValueError) as exc:
            amended.append(
                result.model_copy(
                    update={
                        "result": ResultState.FAILED,
                        "error": f"merge failed: {exc}",
                        "error_type": "MergeFailed",
                    }
                )
            )
    return amended


def merge_batch(store: Store, sub: Submission, built: BatchReport, feature: Feature) -> BatchReport:
    """Merge a batch's isolated results back in seq order and return the report as
    amended (stored again, with the amended results, so store and report agree)."""
    run = sub.run
    if run.isolate is Isolation.NONE:
        return built
    amended = merge_results(run, feature.by_seq(), built.results)
    if amended == list(built.results):
        return built
    run = sub.run
    rebuilt = report.build(
        feature=built.feature,
        run_id=built.run_id,
        batch=built.batch,
        results=amended,
        expected=sub.expected,
        next_batch=sub.next_batch,
        submitted_at=built.submitted_at,
        finished_at=built.finished_at or datetime.now(UTC),
        forced=built.forced,
        discrepancies=built.discrepancies,
        write_check=run.write_check,
    )
    before = {r.seq: r for r in built.results}
    store.amend_results([r for r in rebuilt.results if before.get(r.seq) != r])
    store.overwrite_report(rebuilt)
    return rebuilt


def _isolated_commit(feature: Feature, seq: str, run_id: str | None) -> str | None:
    """The result commit of ``seq`` in the latest saved report that has one (of run
    ``run_id`` when given)."""
    folder = layout.reports_dir(feature.path)
    readable: list[tuple[str, BatchReport]] = []
    for path in folder.glob("*.json") if folder.is_dir() else []:
        try:
            readable.append(
                (path.name, BatchReport.model_validate_json(path.read_text(encoding="utf-8")))
            )
        except (OSError, ValueError):
            continue
    found: str | None = None
    for _, saved in sorted(readable, key=submission_order):
        if run_id is not None and saved.run_id != run_id:
            continue
        for result in saved.results:
            if result.seq == seq and result.isolated_commit:
                found = result.isolated_commit
    return found


def submission_order(saved: tuple[str, BatchReport]) -> tuple[float, str]:
    """Sort key of a saved report ``(file name, report)``: oldest submission first.

    Not the file name alone: a file is named by its run's id, whose clock has whole
    seconds, so an interrupted run and the next one started within a second would sort
    by the ids' random part."""
    name, built = saved
    return (built.submitted_at.timestamp() if built.submitted_at is not None else 0.0, name)


def subtask_patch(feature: Feature, seq: str, run_id: str | None = None) -> str:
    """The unified diff an isolated subtask made against its snapshot
    (``batchq diff``); a :class:`UsageError` when there is none."""
    top = gitsnap.require_work_tree(feature.root)
    commit = _isolated_commit(feature, seq, run_id)
    if commit is None and run_id is not None:  # no saved report: the ref still tells
        commit = gitsnap.ref_commit(top, isolation.result_ref(run_id, seq))
    if commit is None:
        which = f"run {run_id}" if run_id else "any saved run"
        raise UsageError(
            f"no isolated result for {feature.name} subtask {seq} in {which}: only runs with "
            "--isolate worktree record one"
        )
    if gitsnap.ref_commit(top, commit) is None:
        raise UsageError(f"{feature.name} subtask {seq}: commit {commit} is gone from {top}")
    return gitsnap.patch(feature.root, f"{commit}^", commit)
