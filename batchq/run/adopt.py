"""Settle a run whose orchestrator went away: what the workers recorded becomes the files.

Workers record every result in Redis; only the orchestrator mirrors them into the task
files. When it goes away first (Ctrl-C, SIGKILL, a lost host), the records outlive
it, and redoing a coding-agent delegation that already finished is the worst thing
batchq can do. So whoever comes next calls :func:`settle`: the interrupted
orchestrator itself in embedded mode (its Redis is about to go), the next ``batchq
run`` of the feature, or ``batchq watch`` when it sees the run end. It

1. stops what has not started (the batch's cancel flag: a queued message that starts
   later finds it and never runs),
2. waits for the members still running (a live claim), up to ``wait_s``,
3. merges back every completed isolated result the orchestrator never merged
   (:mod:`batchq.run.latemerge`: its deliverables are only in its result commit; a
   conflict fails it),
4. writes every recorded result into the files (``completed`` stays completed and is
   never run again), returns the members without one to ``pending`` (no ``agent_id``
   or ``started_at`` left),
5. stores and saves a report of each batch that had none (a cancelled one: its
   unfinished members are ``skipped``), so ``batchq report`` shows it, and
6. marks the run settled when nothing of it is still running, as its orchestrator
   does when it ends with complete reports: a settled run is never adopted again, so
   a task file written anew afterwards runs instead of taking an old result.

The caller holds the feature (:meth:`~batchq.run.orchestrator.Orchestrator.exclusive`):
one writer of the files at a time.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batchq import layout
from batchq.core import report
from batchq.files import fingerprint
from batchq.files.jsonfile import write_atomic
from batchq.files.taskfiles import (
    Claims,
    feature_dir,
    load_feature,
    mark_blocked,
    mark_completed,
    mark_pending,
    update_subtasks,
    utc_timestamp,
)
from batchq.models import (
    BatchqBlock,
    BatchReport,
    Feature,
    PlannedBatch,
    ResultState,
    SubtaskResult,
    SubtaskStatus,
    seq_key,
)
from batchq.protocol import RUN_SETTLED, BatchState
from batchq.run import latemerge, remote
from batchq.settings import Settings
from batchq.store.contract import Store

__all__ = ["Settled", "final_change", "save_report", "settle", "unsettled"]

WaitHandler = Callable[[list[str]], None]
"""Told once which members settling waits for (still running on a worker)."""


@dataclass
class Settled:
    """What :func:`settle` wrote: seq -> the recorded result, the seqs returned to
    ``pending`` for want of one, the report of each of the run's batches, and the
    isolated results it merged back into the workspace (its orchestrator never did)."""

    run_id: str
    adopted: dict[str, ResultState] = field(default_factory=dict)
    returned: list[str] = field(default_factory=list)
    reports: list[BatchReport] = field(default_factory=list)
    merged: list[str] = field(default_factory=list)

    def merged_note(self) -> str:
        """``, merged back 01, 02`` for a progress line ("" when nothing was)."""
        return f", merged back {', '.join(self.merged)}" if self.merged else ""


def unsettled(store: Store, run_id: str, feature: Feature) -> bool:
    """True when run ``run_id`` still has a batch in flight, or a file still says a
    member is ``in_progress`` for it, or a member's file lags its recorded result, or
    a completed isolated result was never merged back: the files (or the workspace)
    do not yet say what the workers recorded. A settled run (its orchestrator reported
    every batch from complete records and mirrored them, or an adoption left nothing
    running) is never unsettled: files made afresh since are the user's."""
    if store.run_info(run_id).get(RUN_SETTLED) == "1":
        return False
    states = store.batch_states(run_id)
    if any(state == BatchState.RUNNING for state in states.values()):
        return True
    members = [seq for n in states for seq in store.batch_members(run_id, n)]
    by_seq = feature.by_seq()
    results = _final(store, run_id, states, members)
    for seq in members:
        sub = by_seq.get(seq)
        if sub is None or _newer(sub.batchq, run_id):
            continue
        if sub.status is SubtaskStatus.IN_PROGRESS:
            return True
        res = results.get(seq)
        if res is None:
            continue
        if latemerge.unmerged(res) or not _written(sub.batchq, sub.status, run_id, res.result):
            return True
    return False


def _final(
    store: Store, run_id: str, states: Mapping[int, str], members: list[str]
) -> dict[str, SubtaskResult]:
    """Each member's final result: its batch report's verdict where there is one (it
    may fail a completed member for an undeclared write), else its record."""
    final: dict[str, SubtaskResult] = dict(store.results(run_id, members))
    for n in states:
        rep = store.report(run_id, n)
        if rep is not None:
            final.update({r.seq: r for r in rep.results})
    return final


def _newer(block: BatchqBlock | None, run_id: str) -> bool:
    """The file already records a later run (run ids start with their start time):
    an older run's result must not replace it."""
    return block is not None and block.run_id is not None and block.run_id > run_id


def settle(
    root: Path,
    name: str,
    store: Store,
    settings: Settings,
    run_id: str,
    *,
    reason: str,
    cancel: str | None,
    wait_s: float,
    on_wait: WaitHandler | None = None,
) -> Settled:
    """Bring the files of ``name`` in line with what run ``run_id`` recorded (see the
    module docstring); ``cancel`` is the mode set on the run's batches still in flight
    (None: leave them be), ``reason`` says why in the files and reports."""
    settled = Settled(run_id)
    states = store.batch_states(run_id)
    if cancel is not None:
        for n, state in states.items():
            if state == BatchState.RUNNING:
                store.cancel(run_id, n, cancel)
    members = {n: store.batch_members(run_id, n) for n in states}
    everyone = [seq for seqs in members.values() for seq in seqs]
    still = _wait_for_running(store, run_id, everyone, wait_s, on_wait)

    stored = {n: store.report(run_id, n) for n in states}
    final = _final(store, run_id, states, everyone)
    feature = load_feature(root, name)
    by_seq = feature.by_seq()
    ours = {s: r for s, r in final.items() if s in by_seq and not _newer(by_seq[s].batchq, run_id)}
    if settings.git_remote and any(latemerge.unmerged(r) for r in ours.values()):
        remote.fetch_run(feature.root, settings.git_remote, run_id, settings.git_timeout_s)
    merged = latemerge.merge_late(store, feature.root, by_seq, run_id, ours)
    # Merged now: written again (the outputs' fingerprint is of the merged files), and
    # a completion the mirror wrote is cleared from one the merge failed.
    late = {s: r.result is not ours[s].result for s, r in merged.items()}
    settled.merged = sorted((s for s, r in merged.items() if r.merged), key=seq_key)
    final |= merged
    done = [seq for seq, r in final.items() if r.result is ResultState.COMPLETED]
    recorder = fingerprint.Recorder.for_batch(feature, [s for s in done if s in by_seq], settings)
    claims: Claims = {}
    changes: dict[str, Callable[[dict[str, Any]], None]] = {}
    for seq in everyone:
        sub = by_seq.get(seq)
        if sub is None or _newer(sub.batchq, run_id):
            continue
        res = final.get(seq)
        if res is not None:
            if seq in late or not _written(sub.batchq, sub.status, run_id, res.result):
                forget = late.get(seq, False)
                changes[seq] = final_change(res, run_id, recorder, claims, forget=forget)
            settled.adopted[seq] = res.result
        elif sub.status is SubtaskStatus.IN_PROGRESS:  # a pending file stays as it is
            block = BatchqBlock(result=ResultState.CANCELLED, error=reason, run_id=run_id)
            changes[seq] = mark_pending(block)
            settled.returned.append(seq)
    if changes:
        feature = update_subtasks(root, name, changes)
    info = store.run_info(run_id)
    for n, seqs in members.items():
        rep = stored[n] or _cancelled_report(store, feature, info, run_id, n, seqs, final, reason)
        rep = latemerge.reconcile(store, rep, merged)  # stored before the merge
        save_report(root, name, rep)
        settled.reports.append(rep)
    if not still:  # a member still running may yet record: the next one adopts that
        store.settle_run(run_id)
    return settled


def _wait_for_running(
    store: Store,
    run_id: str,
    members: list[str],
    wait_s: float,
    on_wait: WaitHandler | None,
) -> list[str]:
    """Until no member without a result holds a live claim, or ``wait_s`` passes; the
    members still running then."""
    deadline = time.monotonic() + wait_s
    told = False
    last = store.last_event_id(run_id)
    while True:
        recorded = store.results(run_id, members)
        running = store.live_claims(run_id, [s for s in members if s not in recorded])
        if not running or time.monotonic() >= deadline:
            return running
        if on_wait is not None and not told:
            on_wait(running)
            told = True
        events = store.events(run_id, last, block_ms=500)
        if events:
            last = events[-1].id


def _cancelled_report(
    store: Store,
    feature: Feature,
    info: Mapping[str, str],
    run_id: str,
    n: int,
    seqs: list[str],
    final: Mapping[str, SubtaskResult],
    reason: str,
) -> BatchReport:
    """The report of a batch its orchestrator never reported: what was recorded, and
    the rest ``skipped`` (they did not run to completion, through no fault of theirs)."""
    record = store.batch_record(run_id, n)
    titles = {s.seq: s.title for s in feature.subtasks if s.seq in seqs}
    following = PlannedBatch.model_validate_json(record.following) if record.following else None
    check = latemerge.write_check(record)
    results = [final[s] for s in seqs if s in final]
    built = report.build(
        feature=feature.name,
        run_id=run_id,
        batch=n,
        results=results,
        expected=seqs,
        next_batch=following,
        submitted_at=None,
        finished_at=datetime.now(UTC),
        forced=True,
        discrepancies=[reason],
        skipped={s: reason for s in seqs if s not in final},
        declared=record.declared,
        write_check=check,
        titles=titles,
    )
    fkey = info.get("feature_key", "")
    if store.store_report(built, fkey):
        return built
    return store.report(run_id, n) or built


def save_report(root: Path, name: str, built: BatchReport) -> None:
    """Keep a copy in ``.batchq/reports/`` (it outlives Redis, embedded or not)."""
    folder = layout.reports_dir(feature_dir(root, name))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{built.run_id}-{built.batch:03d}.json"
    write_atomic(path, itertools.chain(built.json_parts(indent=2), (b"\n",)), durable=False)


def _written(
    block: BatchqBlock | None, status: SubtaskStatus, run_id: str, result: ResultState
) -> bool:
    """True when the file already records ``result`` from run ``run_id``."""
    return (
        block is not None
        and block.run_id == run_id
        and block.result is result
        and status is not SubtaskStatus.IN_PROGRESS
    )


def final_change(
    res: SubtaskResult,
    run_id: str,
    recorder: fingerprint.Recorder,
    claims: Claims,
    *,
    forget: bool = False,
) -> Callable[[dict[str, Any]], None]:
    """The file change for a final result; ``claims`` collects what agents said of
    themselves through ``batchq complete`` meanwhile (kept, or contradicted). ``forget``
    clears a completion a failed result's file may still show, whoever wrote it."""
    block = BatchqBlock(
        result=res.result,
        error=res.error,
        attempts=res.attempts,
        run_id=run_id,
        log=res.log_path,
    )
    if res.result is ResultState.COMPLETED:
        block = recorder.stamp(res.seq, block)
    finished = utc_timestamp(res.finished_at or datetime.now(UTC))
    if res.result is ResultState.COMPLETED:
        return mark_completed(res.summary or res.title, finished, block, claims)
    if res.result is ResultState.CANCELLED:
        return mark_pending(block, claims)
    return mark_blocked(block, claims, forget_completion=forget)
