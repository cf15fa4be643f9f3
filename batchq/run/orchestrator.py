"""Run a feature batch after batch, mirroring every status change into its files.

The orchestrator process is the only writer of the task files during a run; workers
write Redis only. One orchestrator per feature: a non-blocking ``flock`` on the
feature folder (same host) plus a Redis lease renewed in the background (any host).
"""

from __future__ import annotations

import dataclasses
import fcntl
import itertools
import os
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from celery import Celery

from batchq import layout
from batchq.core import planner, report
from batchq.errors import (
    BatchqError,
    InfrastructureError,
    LockedError,
    UnsafeBatchError,
    UsageError,
)
from batchq.files import fingerprint
from batchq.files.taskfiles import (
    Claims,
    existing_feature_dir,
    load_feature,
    mark_blocked,
    mark_in_progress,
    mark_pending,
    update_subtasks,
    utc_timestamp,
)
from batchq.models import (
    BatchqBlock,
    BatchReport,
    FailurePolicy,
    Feature,
    Isolation,
    Plan,
    PlannedBatch,
    ResultState,
    Run,
    RunMode,
    SubtaskResult,
    SubtaskStatus,
    Workspace,
    WriteCheck,
    feature_key,
)
from batchq.protocol import CancelMode, EventKind
from batchq.run import adopt, heap, holder, merge, remote
from batchq.run.adopt import final_change as _final_change
from batchq.run.flowloop import run_flow
from batchq.run.preflight import PreflightError, agent_problems, require
from batchq.run.producer import Submission, new_run, submit, wait
from batchq.settings import Settings
from batchq.store.contract import Store
from batchq.store.state import Event
from batchq.transport.app import max_subtask_budget_s

__all__ = ["Orchestrator", "RunOptions", "RunResult"]

ADOPT_RUNS = 3
"""How many of the feature's latest runs a new run checks for unsettled results."""

LEASE_S = 60.0
MIRROR_EVERY_S = 0.5
MIRROR_IDLE_SHARE = 1.0
"""After a mirror rewrite that took t seconds, the next waits at least this many times
t: a big feature's rewrites (every file checked, hundreds written and fsynced) then
take at most half of the orchestrator's time, whatever the disk, instead of back to
back. Not more: a file costs the same written early or late, and a longer wait only
leaves a bigger last rewrite between the batch's last result and its report (at
5,000 subtasks, 3.0 left seconds of it there)."""
MIRROR_PACE_PER_FILE_S = 0.0005
"""And at least this long per subtask file of the feature: every rewrite walks all of
them (for ``task.json``'s counts), so rewrites paced by time alone made a run's cost
grow with the square of its size (20,000 subtasks: some 300 rewrites of 20,000)."""
MIRROR_FULL_EVERY_S = 5.0
"""How stale the mirror's view of the files it does not change may get: an edit made
in place (not by ``os.replace``) to another subtask's file shows in ``task.json``'s
counts within this long (or four rewrite intervals, if longer), and always by the
batch's last rewrite."""
MIRROR_AFTER_REPORT_MAX = 64
"""A batch's last rewrite of up to this many files is done once its report is built
and stored (a few milliseconds sooner for a small batch's report, and its chord
callback finds the report stored instead of retrying); a bigger one is done first, so
a big rewrite and a big report never sit in memory together."""
INTERRUPT_WAIT_S = 15.0
"""How long an interrupted embedded run waits for its terminated members to record
how they ended before its Redis goes away (they notice within a heartbeat)."""
RESETTABLE = {ResultState.FAILED, ResultState.TIMED_OUT, ResultState.CANCELLED}

EventsHandler = Callable[[list[Event]], None]
ReportHandler = Callable[[BatchReport], None]
StartHandler = Callable[[Submission], None]
RerunHandler = Callable[[dict[str, list[str]]], None]
"""Called with the completed subtasks a ``changed`` run resets to pending (seq ->
reasons): once before planning, then after each batch for rechecked dependents."""


@dataclass
class RunOptions:
    policy: FailurePolicy = FailurePolicy.GRACEFUL
    mode: RunMode = RunMode.BATCH
    retry_failed: bool = True
    context: str = ""
    on_events: EventsHandler | None = None
    on_report: ReportHandler | None = None
    on_submit: StartHandler | None = None
    changed: bool = False
    """Also rerun completed subtasks whose fingerprint or outputs changed (``--changed``)."""
    on_rerun: RerunHandler | None = None
    write_check: WriteCheck | None = None
    """None: ``Settings.undeclared_writes``."""
    isolate: Isolation | None = None
    """None: ``Settings.isolate`` (:mod:`batchq.run.merge`)."""
    workspace: Workspace | None = None
    """None: ``Settings.workspace``; ``git`` implies worktree isolation
    (:mod:`batchq.run.remote`)."""
    cancel_on_interrupt: bool = False
    """Ctrl-C cancels the run and settles the files before returning (embedded mode:
    its Redis and workers go with this process); otherwise the run goes on on the
    workers, and the next ``run`` or ``watch`` of the feature adopts its results."""
    on_note: Callable[[str], None] | None = None
    """One line for the user (adopting an orphaned run, waiting for its members)."""
    prechecked: bool = False
    """The caller ran :func:`batchq.run.preflight.require` just before (the CLI does,
    before it starts a Redis or a worker): the run does not check the same twice."""


@dataclass
class RunResult:
    run_id: str
    feature: Feature
    reports: list[BatchReport] = field(default_factory=list)
    reruns: dict[str, list[str]] = field(default_factory=dict)
    """Completed subtasks this run reset to rerun, with why (``changed`` runs only)."""

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.reports)


class _Lease(threading.Thread):
    def __init__(self, store: Store, fkey: str, holder: str) -> None:
        super().__init__(name="batchq-lease", daemon=True)
        self.store, self.fkey, self.holder = store, fkey, holder
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(LEASE_S / 3):
            try:
                self.store.renew_lock(self.fkey, self.holder, LEASE_S)
            except Exception:
                continue

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)


class _Mirror:
    """Mirrors progress events into the task files, coalesced: the latest state of each
    subtask is written at most every ``MIRROR_EVERY_S`` seconds (longer after a slow
    rewrite, see ``MIRROR_IDLE_SHARE``) in one locked rewrite,
    so a batch of thousands of quick subtasks costs a few rewrites, not thousands."""

    def __init__(
        self,
        root: Path,
        name: str,
        run_id: str,
        forward: EventsHandler | None,
        recorder: fingerprint.Recorder,
        members: Collection[str] = (),
    ) -> None:
        self.root, self.name, self.run_id, self.forward = root, name, run_id, forward
        self.recorder = recorder
        self.unfinished = set(members)
        """The batch's members not finished yet: the last one's event flushes at once,
        so the batch's biggest rewrite is done before its report is built and the two
        never sit in memory together."""
        self.pending: dict[str, Callable[[dict[str, Any]], None]] = {}
        self.finished: dict[str, ResultState] = {}
        self.written: dict[str, ResultState] = {}
        self.final: dict[str, ResultState] = {}
        """The final states among ``pending`` (a held, unmerged completion is not one)."""
        self.claims: Claims = {}
        """seq -> the summary an agent recorded itself during the run."""
        self.workers: dict[str, str] = {}
        """One copy of each worker's name, which every file's ``agent_id`` keeps (each
        event decodes its own: 5,000 copies of a handful of names)."""
        self.last_flush = self.last_full = time.monotonic()
        self.interval = MIRROR_EVERY_S
        self.feature: Feature | None = None
        self._held: list[Event] = []
        """Events of a last rewrite left until the report is stored: forwarded
        (printed) only once it is written (:meth:`finish`), so no progress line is
        ahead of the files."""

    def __call__(self, events: list[Event]) -> None:
        last = False
        for event in events:
            if event.kind == EventKind.STARTED:
                self.final.pop(event.seq, None)
                worker = str(event.data.get("worker", ""))
                self.pending[event.seq] = mark_in_progress(
                    self.workers.setdefault(worker, worker),
                    _timestamp(str(event.data.get("started_at", ""))),
                    self.run_id,
                )
            elif event.kind == EventKind.FINISHED and event.data:
                result = SubtaskResult.model_validate(event.data)
                self.finished[event.seq] = result.result
                if event.seq in self.unfinished:
                    self.unfinished.discard(event.seq)
                    last = not self.unfinished  # write now, before the report is built
                    if last:  # a set never shrinks: 0.5 MiB left of one of 5,000
                        self.unfinished = set()
                if result.ok and result.isolated_commit and not result.merged:
                    # Isolated, not merged back yet (batch mode merges after the batch):
                    # its deliverables are only in its result commit, so the file keeps
                    # saying in_progress until the merge settles it, either way.
                    continue
                self.pending[event.seq] = _final_change(
                    result, self.run_id, self.recorder, self.claims
                )
                self.final[event.seq] = result.result
        if last and len(self.pending) <= MIRROR_AFTER_REPORT_MAX:
            self._held = events
            return
        if last:
            self.flush()
        elif time.monotonic() - self.last_flush >= self.interval:
            since_full = time.monotonic() - self.last_full
            self.flush(quick=since_full < max(MIRROR_FULL_EVERY_S, 4 * self.interval))
        if self.forward is not None:
            self.forward(events)

    def finish(self) -> None:
        """Write what is still pending once the batch's report is stored, then forward
        the events held for it."""
        if self.pending:  # else the last member's event flushed: keep what it wrote
            self.flush()
        events, self._held = self._held, []
        if events and self.forward is not None:
            self.forward(events)

    def flush(self, *, quick: bool = False) -> None:
        """Write what is pending; the files are current when it returns, and
        ``feature`` is what this flush wrote (None if it wrote nothing). ``quick``
        checks only the files it changes (see ``update_subtasks``): an interim rewrite
        of a 20,000-subtask feature then costs what it writes, not a ``stat`` of every
        file; the last rewrite, and one every ``MIRROR_FULL_EVERY_S``, check them all."""
        self.feature = None
        start = time.monotonic()
        if self.pending:
            changes, self.pending = self.pending, {}
            final, self.final = self.final, {}
            self.feature = update_subtasks(self.root, self.name, changes, quick=quick)
            if not quick:
                self.last_full = start
            self.written |= final
        self.last_flush = time.monotonic()
        files = len(self.feature.subtasks) if self.feature is not None else 0
        self.interval = max(
            MIRROR_EVERY_S,
            MIRROR_IDLE_SHARE * (self.last_flush - start),
            MIRROR_PACE_PER_FILE_S * files,
        )


class Orchestrator:
    """Runs one feature's batches on a Celery app and a state store."""

    def __init__(
        self, root: Path, name: str, settings: Settings, app: Celery, store: Store
    ) -> None:
        self.root, self.name, self.settings = root, name, settings
        self.app, self.store = app, store
        self.holder = str(holder.current())

    # --- locking ----------------------------------------------------------------

    @contextmanager
    def exclusive(self) -> Iterator[str]:
        """Hold this feature for one orchestrator; yields the feature key."""
        folder = existing_feature_dir(self.root, self.name)
        fkey = feature_key(self.name, self.root)
        layout.state_dir(folder).mkdir(exist_ok=True)
        lock_file = layout.orchestrator_lock(folder)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                found = holder.recorded(lock_file)
                name = self.store.lock_holder(fkey) or str(found or "another process here")
                raise LockedError(self.name, name, root=self.root) from None
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, (self.holder + "\n").encode(), 0)
            except OSError as exc:  # a full disk or a read-only folder: exit 3
                raise InfrastructureError(
                    f"cannot start a run of {self.name}: {lock_file}: {exc.strerror or exc}"
                ) from exc
            current = self.store.acquire_lock(fkey, self.holder, LEASE_S)
            if current is not None and holder.gone_here(current):
                # Its process is gone (we hold the flock it held): no need to wait
                # for its lease to lapse.
                self.store.release_lock(fkey, current)
                current = self.store.acquire_lock(fkey, self.holder, LEASE_S)
            if current is not None:
                raise LockedError(self.name, current, root=self.root)
            lease = _Lease(self.store, fkey, self.holder)
            lease.start()
            try:
                yield fkey
            finally:
                lease.stop()
                self.store.release_lock(fkey, self.holder)
        finally:
            os.close(fd)

    # --- runs -------------------------------------------------------------------------

    def run(self, options: RunOptions | None = None) -> RunResult:
        """Run every remaining batch until done or one fails (SPEC 3); in flow mode,
        every subtask as soon as its own dependencies are completed."""
        options = options or RunOptions()
        with self.exclusive(), heap.long_lived():
            feature, reruns = self._prepare(options)
            run = self._new_run(feature, options)
            result = RunResult(run.run_id, feature)
            # From here ``result.feature`` is the one reference batch mode keeps (only
            # its header while a batch runs, see ``_run_one``), so the models loaded
            # before the run are not held beside the ones each rewrite makes.
            del feature
            keep = not options.cancel_on_interrupt
            with (
                remote.run_refs(run, self.settings, keep_on_interrupt=keep),
                self._interruptible(run.run_id, options),
            ):
                self._announce(result, reruns, options)
                if options.mode is RunMode.FLOW:
                    self._flows(run, result.feature, result, options)
                else:
                    self._batches(run, result, options)
            self._settled(run.run_id, result)
            return result

    def _settled(self, run_id: str, result: RunResult) -> None:
        """Mark the run settled when every report came from complete records (none
        forced, none missing a member) and its files were mirrored: nothing of it can
        still arrive, so adoption must never read it back into files made since. A run
        with a forced report stays open to adoption, which waits for its stragglers."""
        if all(not r.forced and not r.missing for r in result.reports):
            self.store.settle_run(run_id)

    @contextmanager
    def _interruptible(self, run_id: str, options: RunOptions) -> Iterator[None]:
        """On Ctrl-C in embedded mode, cancel the run and settle its files (see
        :mod:`batchq.run.adopt`) while its Redis still exists; then let it propagate."""
        try:
            yield
        except KeyboardInterrupt:
            if options.cancel_on_interrupt:
                adopt.settle(
                    self.root,
                    self.name,
                    self.store,
                    self.settings,
                    run_id,
                    reason="interrupted (Ctrl-C) before it finished; it runs again next time",
                    cancel=CancelMode.TERMINATE,
                    wait_s=INTERRUPT_WAIT_S,
                )
            raise

    def _batches(self, run: Run, result: RunResult, options: RunOptions) -> None:
        """The batches ``plan`` printed when the run started, in its order and with its
        members (SPEC 4: "the batches reported are the batches plan printed"); the run
        stops at the first batch that does not complete. Only a ``changed`` run that
        resets completed dependents after a batch plans again, for what it reset."""
        done: set[str] = set()
        schedule = list(planner.plan_for(result.feature, self.settings).batches)
        while schedule:
            batch, following = schedule[0], schedule[1] if len(schedule) > 1 else None
            built = self._run_one(run, result, batch, following, options)
            result.reports.append(built)
            schedule.pop(0)
            result.feature = load_feature(self.root, self.name)
            if not built.ok:
                break
            if options.changed:
                done.update(r.seq for r in built.results if r.ok)
                rechecked = self.recheck_dependents(result.feature, done, result, options)
                reset, result.feature = rechecked is not result.feature, rechecked
                del rechecked  # result.feature only, while the next batch runs
                if reset:
                    # What was reset is not in the schedule: plan the rest again.
                    fresh = planner.plan_for(result.feature, self.settings)
                    schedule = list(_renumbered(fresh, len(result.reports)).batches)

    def _flows(self, run: Run, feature: Feature, result: RunResult, options: RunOptions) -> None:
        """Plan once, then let :mod:`batchq.run.flowloop` publish each subtask when it is
        ready; each planned batch is settled and saved as it closes. Under ``changed``
        the completed dependents of what completed are rechecked when the flow drains,
        and a further flow runs the ones that must rerun (batch numbers go on)."""
        done: set[str] = set()
        waves = itertools.count(1)  # isolation: snapshot refs numbered across passes
        while True:
            plan = _renumbered(planner.plan_for(feature, self.settings), len(result.reports))
            if not plan.batches:
                break
            passed = self._flow_pass(run, feature, plan, options, result, waves)
            feature = load_feature(self.root, self.name)
            result.feature = feature
            if not all(r.ok for r in passed) or not options.changed:
                break
            done.update(r.seq for built in passed for r in built.results if r.ok)
            feature = self.recheck_dependents(feature, done, result, options)
            result.feature = feature
        result.reports.sort(key=lambda r: r.batch)

    def _flow_pass(
        self,
        run: Run,
        feature: Feature,
        plan: Plan,
        options: RunOptions,
        result: RunResult,
        waves: Iterator[int],
    ) -> list[BatchReport]:
        recorder = fingerprint.Recorder(feature.root, tuple(self.settings.protected_paths))
        mirror = _Mirror(self.root, self.name, run.run_id, options.on_events, recorder)
        passed: list[BatchReport] = []

        def reported(built: BatchReport) -> None:
            mirror.flush()
            built = self._settle(run, built, mirror, recorder)
            passed.append(built)
            result.reports.append(built)
            if options.on_report is not None:
                options.on_report(built)

        def publishing(seqs: list[str]) -> None:
            recorder.take(feature, seqs, self.settings)

        run_flow(
            self.app,
            self.store,
            run,
            feature,
            plan,
            self.settings,
            mirror,
            reported,
            publishing,
            waves,
        )
        mirror.flush()
        return passed

    def run_batch(self, seqs: list[str], options: RunOptions | None = None) -> RunResult:
        """Run one explicit batch after the BatchExecutor safety check (SPEC 2)."""
        options = options or RunOptions()
        with self.exclusive():
            feature = self._retrying(self._checked(options, seqs), seqs, options)
            violations = planner.check_batch(feature, seqs, self.settings.protected_paths)
            if violations:
                raise UnsafeBatchError(violations)
            batch = PlannedBatch(number=1, level=0, seqs=sorted(seqs, key=int), parallel=True)
            run = self._new_run(feature, options)
            result = RunResult(run.run_id, feature)
            following = planner.next_after(feature, seqs, self.settings.protected_paths)
            del feature  # result.feature only (see run)
            keep = not options.cancel_on_interrupt
            with (
                remote.run_refs(run, self.settings, keep_on_interrupt=keep),
                self._interruptible(run.run_id, options),
            ):
                result.reports.append(self._run_one(run, result, batch, following, options))
            result.feature = load_feature(self.root, self.name)
            self._settled(run.run_id, result)
            return result

    def _retrying(self, feature: Feature, seqs: list[str], options: RunOptions) -> Feature:
        """An explicit batch retries what a batchq run left behind: an interrupted run's
        results are adopted first, then a member it left ``in_progress`` (no live claim)
        or ``blocked`` (it failed, timed out) returns to ``pending``. A member blocked by
        hand (no failed result recorded) is refused with how to unblock it."""
        recent = self.store.recent_runs(feature_key(feature.name, feature.root))
        if self._adopt(feature, recent[:ADOPT_RUNS], options):
            feature = load_feature(self.root, self.name)
        by_seq = feature.by_seq()
        changes: dict[str, Callable[[dict[str, Any]], None]] = {}
        for seq in seqs:
            sub = by_seq.get(seq)
            if sub is None:
                continue  # the safety check names it
            block = sub.batchq
            if sub.status is SubtaskStatus.IN_PROGRESS:
                if not any(self.store.live_claims(r, [seq]) for r in recent):
                    changes[seq] = mark_pending(block)
            elif sub.status is SubtaskStatus.BLOCKED:
                if block is None or block.result not in RESETTABLE:
                    raise UsageError(
                        f"subtask {seq} of {self.name} is blocked, but not by a batchq run "
                        "(its file records no failed result): set its status to pending "
                        "to run it again"
                    )
                changes[seq] = mark_pending(block)
                if options.on_note is not None:
                    options.on_note(
                        f"↻ retrying {seq}: it {block.result.value.replace('_', ' ')} in run "
                        f"{block.run_id or '?'}"
                        + (f" ({block.error.splitlines()[0][:160]})" if block.error else "")
                    )
        return update_subtasks(self.root, self.name, changes) if changes else feature

    def recheck_dependents(
        self, feature: Feature, done: Collection[str], result: RunResult, options: RunOptions
    ) -> Feature:
        """Early cutoff for ``changed`` runs: after dependencies completed again in this
        run (``done``), reset to pending the completed subtasks depending on one of them
        whose fingerprint now differs; one whose dependencies produced identical
        deliverables stays completed. A subtask completed in this run is never rechecked,
        so each runs at most once per run. Call it whenever members complete (batch
        mode: after each batch)."""
        candidates = [
            s.seq
            for s in feature.subtasks
            if s.status is SubtaskStatus.COMPLETED
            and s.seq not in done
            and any(dep in done for dep in s.depends_on)
        ]
        if not candidates:
            return feature
        found = fingerprint.stale(feature, self.settings, candidates)
        if not found:
            return feature
        _refuse(agent_problems([feature.by_seq()[seq] for seq in found], self.settings, self.root))
        feature = update_subtasks(self.root, self.name, _rerun_changes(feature, found))
        self._announce(result, found, options)
        return feature

    @staticmethod
    def _announce(
        result: RunResult, found: dict[str, list[fingerprint.Change]], options: RunOptions
    ) -> None:
        if not found:
            return
        reasons = {seq: [str(c) for c in why] for seq, why in found.items()}
        result.reruns.update(reasons)
        if options.on_rerun is not None:
            options.on_rerun(reasons)

    def _new_run(self, feature: Feature, options: RunOptions) -> Run:
        check = options.write_check or self.settings.undeclared_writes
        isolate = options.isolate or self.settings.isolate  # isolation (issue 19)
        workspace = options.workspace or self.settings.workspace  # git remote (issue 20)
        url = remote.check(self.root, self.settings, workspace)  # the pre-flight asked it
        isolate = Isolation.WORKTREE if url else isolate
        merge.check(self.root, isolate)
        run = new_run(
            self.store, feature, options.policy, options.context, options.mode, check, self.holder
        )
        prefix = remote.prefix_of(self.root) if url else ""
        timeout = self.settings.git_timeout_s
        return dataclasses.replace(
            run, isolate=isolate, git_remote=url, git_prefix=prefix, git_timeout_s=timeout
        )

    def _prepare(self, options: RunOptions) -> tuple[Feature, dict[str, list[fingerprint.Change]]]:
        """Validate everything, refuse bad agents up front, and reset what we may rerun:
        failed and orphaned subtasks, and under ``changed`` the completed ones whose
        fingerprint or outputs changed."""
        feature = self._checked(options)  # the subtasks not completed
        found = fingerprint.stale(feature, self.settings) if options.changed else {}
        by_seq = feature.by_seq()
        _refuse(
            agent_problems([by_seq[seq] for seq in found], self.settings, self.root)
        )  # and these
        todo = [
            s for s in feature.subtasks if s.status is not SubtaskStatus.COMPLETED or s.seq in found
        ]
        changes: dict[str, Callable[[dict[str, Any]], None]] = _rerun_changes(feature, found)
        recent = self.store.recent_runs(feature_key(feature.name, feature.root))
        if self._adopt(feature, recent[:ADOPT_RUNS], options):
            feature = load_feature(self.root, self.name)
            todo = [
                s
                for s in feature.subtasks
                if s.status is not SubtaskStatus.COMPLETED or s.seq in found
            ]
        for sub in todo:
            if sub.seq in found:
                continue
            block = sub.batchq
            ours = block is not None and block.result in RESETTABLE
            if sub.status is SubtaskStatus.IN_PROGRESS:
                if not any(self.store.live_claims(r, [sub.seq]) for r in recent):
                    changes[sub.seq] = mark_pending(block)
            elif ours and options.retry_failed and sub.status is SubtaskStatus.BLOCKED:
                changes[sub.seq] = mark_pending(block)
        if changes:
            feature = update_subtasks(self.root, self.name, changes)
        return feature, found

    def _checked(self, options: RunOptions, seqs: list[str] | None = None) -> Feature:
        """The pre-flight, once per run: here, or by the caller (``prechecked``)."""
        if options.prechecked:
            return load_feature(self.root, self.name)
        return require(self.root, self.name, self.settings, seqs=seqs, workspace=options.workspace)

    def _adopt(self, feature: Feature, runs: list[str], options: RunOptions) -> bool:
        """Settle the runs whose orchestrator went away before it mirrored them (we
        hold the feature now, so theirs is gone): their recorded results become the
        files' truth, members still running on the workers are waited for, and
        nothing they completed runs again. True when any was settled."""
        settled = False
        for run_id in reversed(runs):  # oldest first: the newest run has the last word
            if not adopt.unsettled(self.store, run_id, feature):
                continue

            def waiting(seqs: list[str], run_id: str = run_id) -> None:
                if options.on_note is not None:
                    options.on_note(
                        f"waiting for {', '.join(seqs)} of the interrupted run {run_id}, "
                        "still running on the workers"
                    )

            done = adopt.settle(
                self.root,
                self.name,
                self.store,
                self.settings,
                run_id,
                reason=f"its run {run_id} ended without its orchestrator; it runs again",
                cancel=CancelMode.GRACEFUL,
                wait_s=max_subtask_budget_s(self.settings) + self.settings.stall_s,
                on_wait=waiting,
            )
            if options.on_note is not None:
                kept = sorted(s for s, r in done.adopted.items() if r is ResultState.COMPLETED)
                options.on_note(
                    f"adopted the interrupted run {run_id}: "
                    f"{len(kept)} completed there ({', '.join(kept) or 'none'}), "
                    f"{len(done.returned)} back to pending{done.merged_note()}"
                )
            settled = True
        return settled

    def _run_one(
        self,
        run: Run,
        result: RunResult,
        batch: PlannedBatch,
        following: PlannedBatch | None,
        options: RunOptions,
    ) -> BatchReport:
        """One batch: publish it, mirror it, settle its report. ``result.feature`` is
        the feature to submit; from the publish on, only its header (the caller loads
        the feature again after the batch)."""
        feature = result.feature
        # Inputs as submitted: what the members are made from, once per batch.
        recorder = fingerprint.Recorder.for_batch(feature, batch.seqs, self.settings)
        snapshot = merge.snapshot_batch(run, batch.number)  # isolation (#19): before publishing
        submission = submit(
            self.app, self.store, run, feature, batch, following, self.settings, snapshot
        )
        planner.forget_paths()  # planned and published: not asked for while it runs
        if options.on_submit is not None:
            options.on_submit(submission)

        mirror = _Mirror(self.root, self.name, run.run_id, options.on_events, recorder, batch.seqs)
        isolated = feature if run.isolate is Isolation.WORKTREE else None  # merge's input
        # Until the batch's report, the run holds no subtask models of its own: the
        # mirror's rewrites replace them file by file, and a feature held here would
        # keep every replaced one beside its successor. The caller loads it again.
        result.feature = _header(feature)
        del feature
        try:
            built = wait(self.store, submission, self.settings, mirror)
        except BaseException:
            # What the members recorded still reaches their files (the last rewrite
            # waits for the report, which did not come); what the wait raised is the news.
            with suppress(Exception):
                mirror.finish()
            raise
        mirror.finish()
        if isolated is not None:  # isolation (issue 19): merge, then restamp all
            built = merge.merge_batch(self.store, submission, built, isolated)
            mirror.written.clear()
            mirror.feature = None  # the merge changed the workspace since
        built = self._settle(run, built, mirror, recorder)
        if options.on_report is not None:
            options.on_report(built)
        return built

    def _settle(
        self,
        run: Run,
        built: BatchReport,
        mirror: _Mirror,
        recorder: fingerprint.Recorder,
    ) -> BatchReport:
        """Mirror the final states not yet mirrored (the mirror wrote what the progress
        stream said, and the report may have failed a member for an undeclared write
        since), then check that store and files agree with the report."""
        written = mirror.written
        changes: dict[str, Callable[[dict[str, Any]], None]] = {}
        by_seq = {r.seq: r for r in built.results}
        for seq, res in by_seq.items():
            if written.get(seq) is not res.result:
                changes[seq] = _final_change(res, run.run_id, recorder, mirror.claims)
        lost: list[str] = []
        for seq in built.missing:
            block = BatchqBlock(
                result=ResultState.FAILED,
                error="no result before the batch deadline (worker lost or message lost)",
                run_id=run.run_id,
            )
            # The progress stream may have said it finished (then Redis lost the
            # record): the file must not keep a completion the report does not have.
            changes[seq] = mark_blocked(block, forget_completion=True)
            if seq in mirror.finished:
                lost.append(
                    f"{seq}: its progress event said {mirror.finished[seq].value}, but no "
                    "result is recorded in the store (state lost?); recorded as failed"
                )
        for skip in built.skipped:
            block = BatchqBlock(
                result=ResultState.CANCELLED, error=f"skipped: {skip.reason}", run_id=run.run_id
            )
            changes[skip.seq] = mark_pending(block)
        if changes:
            feature = update_subtasks(self.root, self.name, changes)
        else:  # as the mirror's last write left it, or read
            feature = mirror.feature or load_feature(self.root, self.name)
        found: list[str] = list(lost)
        if built.forced or built.missing:
            # A complete report was built from records, which are written once and
            # never change: only a forced one can disagree with the store (late results).
            recorded_store = {
                seq: r.result.value
                for seq, r in self.store.results(run.run_id, list(by_seq) + built.missing).items()
            }
            found += report.discrepancies(built, recorded_store, source="store")
            for late in self.store.late_reports(run.run_id, built.batch):
                found.append(f"a report arrived after the forced report: {late.status.value}")
        files = {
            s.seq: _file_result(s.status, s.batchq) for s in feature.subtasks if s.seq in by_seq
        }
        found += report.discrepancies(built, files, source="files")
        built, contradicted = _with_claims(built, mirror.claims)
        found += contradicted
        if found or built.results != list(by_seq.values()):
            built = built.model_copy(update={"discrepancies": [*built.discrepancies, *found]})
            self.store.overwrite_report(built)
        self._save(built)
        return built

    def _save(self, built: BatchReport) -> None:
        adopt.save_report(self.root, self.name, built)


def _refuse(problems: list[BatchqError]) -> None:
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise PreflightError(problems)


def _with_claims(built: BatchReport, claims: Claims) -> tuple[BatchReport, list[str]]:
    """The report with the agents' own words: a completed member the agent completed
    itself keeps the summary it recorded; one whose claim the result contradicts (its
    verification failed, it timed out or was cancelled) is a discrepancy."""
    results: list[SubtaskResult] = []
    notes: list[str] = []
    for res in built.results:
        claim = claims.get(res.seq)
        if claim is None:
            results.append(res)
        elif res.ok:
            results.append(res.model_copy(update={"summary": claim or res.summary}))
        else:
            results.append(res)
            why = res.error or res.result.value
            said = f" ({claim!r})" if claim else ""
            notes.append(
                f"{res.seq}: the agent marked itself completed{said}, but the subtask "
                f"{res.result.value}: {why}"
            )
    if results == built.results:
        return built, notes
    return built.model_copy(update={"results": results}), notes


def _header(feature: Feature) -> Feature:
    """The feature without its subtasks: what a run result holds while a batch runs."""
    return feature.model_copy(update={"subtasks": []})


def _renumbered(plan: Plan, offset: int) -> Plan:
    """A later flow pass's plan, numbered after the batches already reported."""
    if not offset:
        return plan
    batches = [
        b.model_copy(
            update={
                "number": b.number + offset,
                "after": None if b.after is None else b.after + offset,
            }
        )
        for b in plan.batches
    ]
    return plan.model_copy(update={"batches": batches})


def _timestamp(iso: str) -> str:
    """Worker timestamps in the format the task files already use."""
    try:
        return utc_timestamp(datetime.fromisoformat(iso))
    except ValueError:
        return utc_timestamp()


def _rerun_changes(
    feature: Feature, found: Collection[str]
) -> dict[str, Callable[[dict[str, Any]], None]]:
    """Back to pending for a rerun; the stale fingerprint goes, so a subtask completed
    by hand afterwards is not mistaken for one batchq completed from these inputs."""
    by_seq = feature.by_seq()
    changes: dict[str, Callable[[dict[str, Any]], None]] = {}
    for seq in found:
        block = by_seq[seq].batchq
        if block is not None:
            block = block.model_copy(update={"fingerprint": None, "inputs": None, "outputs": None})
        changes[seq] = mark_pending(block)
    return changes


_STATUS_FOR = {
    ResultState.COMPLETED: SubtaskStatus.COMPLETED,
    ResultState.FAILED: SubtaskStatus.BLOCKED,
    ResultState.TIMED_OUT: SubtaskStatus.BLOCKED,
    ResultState.CANCELLED: SubtaskStatus.PENDING,
}


def _file_result(status: SubtaskStatus, block: BatchqBlock | None) -> str:
    """What a subtask file says the last result was, for the discrepancy check: the
    ``batchq`` block's result, or the raw status when the two disagree."""
    if block is None:
        return f"status {status.value}"
    if _STATUS_FOR[block.result] is not status:
        return f"{block.result.value} with status {status.value}"
    return block.result.value


def saved_reports(feature: Feature) -> list[BatchReport]:
    """Reports kept in ``.batchq/reports/``, oldest submission first (they outlive an
    embedded run)."""
    folder = layout.reports_dir(feature.path)
    if not folder.is_dir():
        raise UsageError(f"no reports for {feature.name} yet: run `batchq run {feature.name}`")
    found = [
        (p.name, BatchReport.model_validate_json(p.read_text(encoding="utf-8")))
        for p in folder.glob("*.json")
    ]
    found.sort(key=merge.submission_order)
    return [built for _, built in found]
