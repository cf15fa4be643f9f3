"""Flow mode's I/O loop: publish what :class:`~batchq.core.flowschedule.FlowSchedule` says is
ready, follow the run's progress stream, and report each planned batch as it closes.

There is no chord: every subtask is one message, published the moment its own
dependencies are completed, and reports are built here from the recorded results
(the same :func:`~batchq.run.producer.report_from_store` as batch mode). The failure
policy is applied here rather than by the workers' per-batch cancel flag, since a
planned batch is no longer a unit of execution: ``graceful`` and ``continue`` skip
the transitive dependents of a failure and keep everything else going;
``terminate`` skips everything not yet enqueued and stops the running ones.

Under isolation (``isolate = "worktree"``, :mod:`batchq.run.merge`) every call that
publishes a wave of ready subtasks first records the workspace on
``refs/batchq/<run>/base-w<wave>`` (waves numbered 1, 2, ... across the run), and each
message names that ref. A completed result is merged back as soon as it arrives —
those arriving in one step in seq order — before anything else sees it: the mirror
and the progress lines get the amended result, the store keeps it for the report,
and a merge that fails the subtask fails it for the schedule too (its dependents are
skipped per policy). Dependents are published only afterwards, so their wave's
snapshot holds what was merged.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from celery import Celery

from batchq.core.blame import Window
from batchq.core.flowschedule import FlowSchedule, Skip
from batchq.models import (
    BatchReport,
    FailurePolicy,
    Feature,
    Isolation,
    NextStep,
    Plan,
    ResultState,
    Run,
    SubtaskResult,
)
from batchq.protocol import CancelMode, EventKind
from batchq.run import merge
from batchq.run.producer import (
    EventHandler,
    Submission,
    agent_names,
    budget_s,
    declared_of,
    follow,
    report_from_store,
    weights,
)
from batchq.settings import Settings
from batchq.store.contract import Store
from batchq.store.state import Event
from batchq.transport.publish import Brief, publish_each, signature

__all__ = ["run_flow"]

ReportHandler = Callable[[BatchReport], None]


class _FlowRun:
    """One flow-mode run: the schedule, what was published, which batches reported."""

    def __init__(
        self,
        app: Celery,
        store: Store,
        run: Run,
        feature: Feature,
        plan: Plan,
        settings: Settings,
        on_events: EventHandler,
        on_report: ReportHandler,
        on_publish: Callable[[list[str]], None] | None,
        waves: Iterator[int],
    ) -> None:
        self.app, self.store, self.run, self.settings = app, store, run, settings
        self.waves = waves
        self.on_publish = on_publish
        self.on_events, self.on_report = on_events, on_report
        by_seq = feature.by_seq()
        members = [by_seq[s] for b in plan.batches for s in b.seqs]
        self.agents = agent_names(members)
        learned = weights(members, run.learned)
        self.schedule = FlowSchedule(feature, plan, learned)
        self.by_seq = by_seq
        self.batches = {b.number: b for b in plan.batches}
        # What each member's prompt says about its planned batch, built once per batch.
        self.briefs = {
            b.number: Brief.of(feature, [by_seq[s] for s in b.seqs], self.agents)
            for b in plan.batches
        }
        self.submissions: dict[int, Submission] = {}
        self.hard_cap_s = sum(budget_s(s, settings) for s in members) + settings.stall_s
        self.stream_from = "0-0"  # set when the batches are registered
        self.terminated = False
        # Write blame: in flow mode other batches' members run alongside a batch, so
        # every subtask's deliverables are declared and their windows are considered.
        self.declared = declared_of(members, run.write_check, run.foreign)
        self.enqueued_at: dict[str, datetime] = {}
        self.windows: dict[str, Window] = {}
        self.reported: set[int] = set()
        # Isolation: the seqs merged back, the results a merge changed (as event data),
        # and the amendments not yet in the store (a Redis blip retries the write,
        # never the merge).
        self.merged: set[str] = set()
        self.amended: dict[str, dict[str, Any]] = {}
        self.unstored: list[SubtaskResult] = []

    # --- publishing -------------------------------------------------------------------

    def publish_ready(self) -> None:
        seqs = self.schedule.ready()
        if not seqs:
            return
        if self.on_publish is not None:
            self.on_publish(seqs)
        # Isolation: this wave's snapshot, after every merge so far ("" otherwise).
        snapshot = merge.snapshot_wave(self.run, next(self.waves)) if self._isolated else ""
        batch_of = self.schedule.batch_of
        publish_each(
            self.app,
            [
                signature(
                    self.app,
                    self.run,
                    self.by_seq[s],
                    self.agents[s],
                    batch_of[s],
                    # The workers never cancel a batch's siblings in flow mode.
                    FailurePolicy.CONTINUE,
                    self.briefs[batch_of[s]],
                    snapshot,
                )
                for s in seqs
            ],
        )
        now = datetime.now(UTC)
        for seq in seqs:
            self.enqueued_at[seq] = now
            self.schedule.enqueued(seq)
            self._submission(batch_of[seq])

    def _submission(self, n: int) -> Submission:
        """The batch's record for reporting, from its first enqueue (or its close)."""
        if n not in self.submissions:
            batch = self.batches[n]
            self.submissions[n] = Submission(
                run=self.run,
                batch=batch,
                expected=list(batch.seqs),
                next_batch=None,
                submitted_at=datetime.now(UTC),
                stream_from=self.stream_from,
                hard_cap_s=self.hard_cap_s,
                titles={s: self.by_seq[s].title for s in batch.seqs},
                declared=self.declared,
            )
        return self.submissions[n]

    # --- following ------------------------------------------------------------------------

    @property
    def _isolated(self) -> bool:
        return self.run.isolate is Isolation.WORKTREE

    def step(self, events: list[Event]) -> bool | None:
        if self._isolated:
            events = self._merge(events)
        self.on_events(events)
        touched: set[int] = set()
        for event in events:
            if event.kind != EventKind.FINISHED or not event.data:
                continue
            if event.seq not in self.schedule.in_flight:
                continue  # a repeat (at-least-once, or reread after a Redis blip)
            state = ResultState(str(event.data.get("result", "failed")))
            self.windows[event.seq] = _window(event.data, self.enqueued_at.get(event.seq))
            skips = self.schedule.finished(event.seq, state)
            if state is not ResultState.COMPLETED:
                skips += self._apply_policy(event.seq, state)
            touched.add(self.schedule.batch_of[event.seq])
            touched.update(self.schedule.batch_of[s.seq] for s in skips)
        self.publish_ready()
        self.close(touched)
        return True if self.schedule.done else None

    def _merge(self, events: list[Event]) -> list[Event]:
        """Merge back the isolated results these events bring (in seq order, each
        against its own wave's snapshot) and return the events with the amended
        results in place of the recorded ones."""
        arrived: list[SubtaskResult] = []
        for event in events:
            if event.kind != EventKind.FINISHED or not event.data:
                continue
            if event.seq in self.schedule.in_flight and event.seq not in self.merged:
                arrived.append(SubtaskResult.model_validate(event.data))
                self.merged.add(event.seq)  # at most once, even if a repeat arrives
        recorded = {r.seq: r for r in arrived}
        for result in merge.merge_results(self.run, self.by_seq, arrived) if arrived else []:
            if result != recorded[result.seq]:
                self.amended[result.seq] = json.loads(result.model_dump_json())
                self.unstored.append(result)
        if self.unstored:
            self.store.amend_results(self.unstored)
            self.unstored = []
        return [
            dataclasses.replace(e, data=self.amended[e.seq])
            if e.kind == EventKind.FINISHED and e.seq in self.amended
            else e
            for e in events
        ]

    def _apply_policy(self, seq: str, state: ResultState) -> list[Skip]:
        if state is ResultState.CANCELLED:  # only a cancel flag cancels (cancel, Ctrl-C)
            return self.schedule.stop(f"not started: {seq} was cancelled, the run stops")
        if self.run.policy is not FailurePolicy.TERMINATE:
            return []
        skips = self.schedule.stop(f"not started: {seq} {state.value}, policy terminate")
        if not self.terminated:
            self.terminated = True
            for n in self.batches:
                if self.schedule.members_left(n):
                    self.store.cancel(self.run.run_id, n, CancelMode.TERMINATE)
        return skips

    def close(self, batches: set[int], forced: str | None = None) -> None:
        """Report every batch of ``batches`` with no member left to finish; a forced
        report (``forced``) closes the open batches whatever is left."""
        for n in sorted(batches):
            if n not in self.batches or n in self.reported:
                continue
            if forced is None and self.schedule.members_left(n):
                continue
            batch = self.batches[n]
            skipped = {
                s: self.schedule.skipped[s] for s in batch.seqs if s in self.schedule.skipped
            }
            still = [str(b) for b in self.batches if b not in self.reported and b != n]
            going_on = NextStep(
                dependencies_satisfied=True,
                recommendation=f"Flow mode: batch {', '.join(still)} go on as their own "
                "dependencies complete",
            )
            built = report_from_store(
                self.store,
                self._submission(n),
                forced,
                skipped,
                going_on if still else None,
                self._others(batch.seqs),
                {s: self.schedule.causes[s] for s in skipped if s in self.schedule.causes},
            )
            self.on_report(built)
            # Only now: a Redis blip above makes the loop reread the events and retry.
            self.reported.add(n)

    def _others(self, members: list[str]) -> list[Window]:
        """Windows of the subtasks outside a batch: finished ones as recorded, in-flight
        ones from their enqueue on (open-ended)."""
        mine = set(members)
        out = [w for seq, w in self.windows.items() if seq not in mine]
        out += [
            (self.enqueued_at[seq], None)
            for seq in self.schedule.in_flight
            if seq not in mine and seq in self.enqueued_at
        ]
        return out

    def give_up(self, reason: str | None) -> bool:
        """The stall deadline or the hard cap: skip what never started and force a
        report for every batch still open, naming the members that never reported."""
        if reason is None:
            silent = sorted(self.schedule.in_flight)
            reason = (
                f"stalled: no progress for {self.settings.stall_s:g}s; "
                f"never reported: {', '.join(silent) or 'none'}"
            )
        self.schedule.stop(f"not started: {reason}")
        self.close(set(self.batches), forced=reason)
        return True


def _window(data: dict[str, Any], enqueued: datetime | None) -> Window:
    """A finished subtask's window from its event (its enqueue time, if the worker's
    start is unknown: a wider window clears no suspect)."""
    try:
        start = datetime.fromisoformat(str(data["started_at"]))
        end: datetime | None = datetime.fromisoformat(str(data["finished_at"]))
    except (KeyError, ValueError):
        return (enqueued or datetime.now(UTC), None)
    return (start, end)


def run_flow(
    app: Celery,
    store: Store,
    run: Run,
    feature: Feature,
    plan: Plan,
    settings: Settings,
    on_events: EventHandler,
    on_report: ReportHandler,
    on_publish: Callable[[list[str]], None] | None = None,
    waves: Iterator[int] | None = None,
) -> None:
    """Run every planned subtask in flow mode; ``on_report`` gets each batch's report
    as its last member finishes or is skipped, in closing order, and ``on_publish``
    the subtasks about to be enqueued (their inputs are final by then). ``waves``
    numbers the isolated snapshots (one per publishing call); a run of several flow
    passes shares one, so no pass overwrites another's refs."""
    flow = _FlowRun(
        app,
        store,
        run,
        feature,
        plan,
        settings,
        on_events,
        on_report,
        on_publish,
        waves if waves is not None else itertools.count(1),
    )
    flow.stream_from = store.start_batches(
        run.run_id,
        {b.number: b.seqs for b in plan.batches},
        run.policy.value,
        declared=flow.declared,
        write_check=run.write_check.value,
    )
    flow.publish_ready()
    follow(
        store,
        run.run_id,
        flow.stream_from,
        settings,
        hard_cap_s=flow.hard_cap_s,
        mine=lambda event: True,
        step=flow.step,
        in_flight=lambda: sorted(flow.schedule.in_flight),
        give_up=flow.give_up,
    )
