"""A planned batch becomes messages (:mod:`batchq.transport.publish` sends them), then one report.

Waiting never uses ``AsyncResult.get()`` (TRAPS: it subscribes per task and dominates
big chords); the producer reads the run's progress stream in Redis instead, which
also gives it the stall deadline: no event and no live claim for ``stall_s`` seconds,
or past the hard cap, yields a forced report naming the members that never reported.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar, overload

from celery import Celery
from kombu.exceptions import OperationalError

from batchq import layout
from batchq.core import chunks, report
from batchq.core.blame import Window
from batchq.errors import BrokerUnavailable
from batchq.files.taskfiles import declared_by_features
from batchq.models import (
    BatchReport,
    FailurePolicy,
    Feature,
    NextStep,
    PlannedBatch,
    Run,
    RunMode,
    Subtask,
    SubtaskResult,
    WriteCheck,
    agent_name,
    feature_key,
)
from batchq.protocol import RUN_ORCHESTRATOR, CancelMode, EventKind
from batchq.run.preflight import budget_s
from batchq.settings import Settings
from batchq.store.contract import Store
from batchq.store.state import CONNECTION_ERRORS, Event
from batchq.transport.app import (
    max_subtask_budget_s,
)
from batchq.transport.publish import Brief, chunk_signature, publish_batch, signature

__all__ = [
    "Submission",
    "agent_names",
    "budget_s",
    "follow",
    "new_run",
    "report_from_store",
    "submit",
    "wait",
    "weights",
]

EventHandler = Callable[[list[Event]], None]
"""Called with each new slice of the batch's events, and with none at least every
second, so a handler can do periodic work (the orchestrator's coalesced mirroring)."""
OUTAGE_POLL_S = 0.5
RIDE_OUT: tuple[type[Exception], ...] = (*CONNECTION_ERRORS, OperationalError)
"""What :func:`follow` rides out: Redis errors, and kombu's when a publish from a
``step`` (flow mode) finds the broker down past kombu's own retries."""
FOLLOW_COUNT = 256
"""Most events one read of the progress stream returns. A finished event carries its
whole result, some 3 KiB decoded, and the slice that holds a batch's last one lives
while its report is built: at 1,000 that was 3 MiB beside it."""
T = TypeVar("T")


@dataclass
class Submission:
    run: Run
    batch: PlannedBatch
    expected: list[str]
    next_batch: PlannedBatch | None
    submitted_at: datetime
    stream_from: str
    hard_cap_s: float
    titles: dict[str, str] = field(default_factory=dict)
    declared: dict[str, list[str]] | None = None


class _Built(Sequence[Any]):
    """A batch's signatures, each built when it is read: published in turn, a message's
    body (the subtask and its brief as a dict) is garbage once sent, instead of all
    5,000 of a batch's bodies held at once beside their serialized copies."""

    def __init__(self, groups: list[list[Subtask]], build: Callable[[list[Subtask]], Any]) -> None:
        self.groups, self.build = groups, build

    def __len__(self) -> int:
        return len(self.groups)

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self.build(group) for group in self.groups[index]]
        return self.build(self.groups[index])

    def __iter__(self) -> Iterator[Any]:
        return (self.build(group) for group in self.groups)


def agent_names(members: Sequence[Subtask]) -> dict[str, str]:
    """Each member's agent, by seq. Nothing is checked here: the pre-flight
    (:mod:`batchq.run.preflight`) refused what may not run before the run began, and
    the worker checks once more before it runs anything."""
    return {sub.seq: agent_name(sub) for sub in members}


def new_run(
    store: Store,
    feature: Feature,
    policy: FailurePolicy,
    context: str = "",
    mode: RunMode = RunMode.BATCH,
    write_check: WriteCheck = WriteCheck.WARN,
    orchestrator: str = "",
) -> Run:
    """Create a run: its token file in the workspace and its record and context in Redis
    (``mode`` is recorded so ``watch`` knows whether batches overlap; ``orchestrator``,
    the holder of the feature's lock that waits for the run's reports, so a chord
    callback can leave a report to it while it lives)."""
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(4)
    token = secrets.token_hex(16)
    fkey = feature_key(feature.name, feature.root)
    token_file = layout.token_file(feature.path, run_id)
    token_file.parent.mkdir(parents=True, exist_ok=True)
    # A new name no one reads before the first message is published: no temp file.
    token_file.write_text(token + "\n", encoding="utf-8")
    callables = sorted(
        {s.execution.callable_ for s in feature.subtasks if s.execution and s.execution.callable_}
    )
    fields = {
        "feature": feature.name,
        "feature_key": fkey,
        "root": str(feature.root),
        "policy": policy.value,
        "mode": mode.value,
        "write_check": write_check.value,
        "created_at": datetime.now(UTC).isoformat(),
    }
    if orchestrator:
        fields[RUN_ORCHESTRATOR] = orchestrator
    # `batchq runs` lists runs from the files: Redis forgets (an embedded one at once).
    record = {"run_id": run_id} | {k: fields[k] for k in ("created_at", "mode", "policy")}
    layout.run_record(feature.path, run_id).write_text(json.dumps(record) + "\n", encoding="utf-8")
    learned = store.create_run(run_id, fields, context, callables)
    return Run(
        run_id,
        feature.name,
        fkey,
        feature.root,
        token,
        policy,
        learned.durations,
        write_check,
        learned.callables,
        foreign_deliverables(feature) if write_check is not WriteCheck.OFF else {},
    )


def foreign_deliverables(feature: Feature) -> dict[str, list[str]]:
    """What the other features in ``feature``'s root declare, keyed ``feature <name>``
    (never a seq). Features sharing a root run side by side: a path one of them
    declared is its own, never an undeclared write of this run. Read from their files
    without validating them (:func:`~batchq.files.taskfiles.declared_by_features`):
    a root may hold many finished features, and one that does not load still declares
    what its files say."""
    return {
        f"feature {name}": paths
        for name, paths in declared_by_features(feature.root, feature.name).items()
    }


def weights(members: Sequence[Subtask], learned: Mapping[str, float]) -> dict[str, float]:
    """Each member's expected duration: its ``estimate_s``, else the last measured
    one, else 0 (unknown). Both modes order simultaneously ready work by it."""

    def weight(sub: Subtask) -> float:
        if sub.execution and sub.execution.estimate_s is not None:
            return sub.execution.estimate_s
        return learned.get(sub.seq, 0.0)

    return {sub.seq: weight(sub) for sub in members}


def declared_of(
    members: Sequence[Subtask], write_check: WriteCheck, foreign: Mapping[str, list[str]]
) -> dict[str, list[str]] | None:
    """Each member's deliverables, for the blame of undeclared writes (None when off),
    and the other features' (``foreign``, keyed ``feature <name>``), which are
    declared by someone, so never blamed. The lists are the models' own (models are
    replaced, never changed in place), not copies: a batch of 20,000 holds them all."""
    if write_check is WriteCheck.OFF:
        return None
    return {sub.seq: sub.deliverables for sub in members} | dict(foreign)


def _order(members: list[Subtask], learned: Mapping[str, float]) -> list[Subtask]:
    """Longest first when durations are known (estimate or learned): with prefetch 1
    the publish order is the dispatch order, and LPT shortens the makespan."""
    known = weights(members, learned)
    return sorted(members, key=lambda s: (-known[s.seq], s.number))


def submit(
    app: Celery,
    store: Store,
    run: Run,
    feature: Feature,
    batch: PlannedBatch,
    next_batch: PlannedBatch | None,
    settings: Settings,
    snapshot_ref: str = "",
) -> Submission:
    """Publish one batch: a chord for two or more members, a single task for one;
    isolated members start from ``snapshot_ref`` (:func:`batchq.run.merge.snapshot`)."""
    by_seq = feature.by_seq()
    members = [by_seq[seq] for seq in batch.seqs]
    agents = agent_names(members)
    members = _order(members, run.learned)
    declared = declared_of(members, run.write_check, run.foreign)
    stream_from = store.start_batch(
        run.run_id,
        batch.number,
        batch.seqs,
        run.policy.value,
        next_batch.model_dump_json() if next_batch else None,
        declared,
        run.write_check.value,
    )
    submitted_at = datetime.now(UTC)
    known = weights(members, run.learned)
    groups = chunks.plan(
        members,
        agents,
        known,
        lambda sub: budget_s(sub, settings),
        max_subtask_budget_s(settings),
        settings.chunk_max,
        chunks.tiny(members, agents, known, run.callable_s),
    )
    brief = Brief.of(feature, members, agents)

    def build(group: list[Subtask]) -> Any:
        if len(group) == 1:
            sub = group[0]
            return signature(
                app, run, sub, agents[sub.seq], batch.number, run.policy, brief, snapshot_ref
            )
        return chunk_signature(app, run, group, batch.number, run.policy, snapshot_ref)

    publish_batch(app, _Built(groups, build), run, batch, submitted_at)
    hard_cap = sum(budget_s(s, settings) for s in members) + settings.stall_s
    return Submission(
        run=run,
        batch=batch,
        expected=list(batch.seqs),
        next_batch=next_batch,
        submitted_at=submitted_at,
        stream_from=stream_from,
        hard_cap_s=hard_cap,
        titles={s.seq: s.title for s in members},
        declared=declared,
    )


def report_from_store(
    store: Store,
    sub: Submission,
    forced_reason: str | None = None,
    skipped: Mapping[str, str] | None = None,
    next_if_ok: NextStep | None = None,
    others: Sequence[Window] = (),
    causes: Mapping[str, str] | None = None,
) -> BatchReport:
    """Build and store the report from the recorded results: the batch-of-one path,
    and the deadline path (``forced_reason``), which also stops members not yet
    started. The report stored first wins; a later one is kept as ``late``."""
    run = sub.run
    if forced_reason is not None:
        store.cancel(run.run_id, sub.batch.number, CancelMode.GRACEFUL)
    else:
        # The chord callback may have stored it already, from the same records (and
        # amended them): read that one instead of building a second copy of every
        # result beside it (at 5,000 members each copy is about 20 MiB). After a
        # forced report, one built from complete records is still kept, as ``late``.
        stored = store.report(run.run_id, sub.batch.number)
        if stored is not None and not stored.forced:
            share_submitted(stored.results, sub)
            return stored
    results = store.results(run.run_id, sub.expected)
    share_submitted(results.values(), sub)  # before the build: it reuses what is freed
    built = report.build(
        feature=run.feature,
        run_id=run.run_id,
        batch=sub.batch.number,
        results=list(results.values()),
        expected=sub.expected,
        next_batch=sub.next_batch,
        submitted_at=sub.submitted_at,
        finished_at=datetime.now(UTC),
        forced=forced_reason is not None,
        discrepancies=[forced_reason] if forced_reason else [],
        skipped=skipped,
        declared=sub.declared,
        write_check=run.write_check,
        others=others,
        causes=causes,
        titles=sub.titles,
    )
    if next_if_ok is not None and built.ok:  # flow mode: no next batch to wait for
        built = built.model_copy(update={"next": next_if_ok})
    store.amend_results(report.amended(built, results))
    if store.store_report(built, run.feature_key):
        return built
    return store.report(run.run_id, sub.batch.number) or built


def wait(
    store: Store,
    sub: Submission,
    settings: Settings,
    on_event: EventHandler | None = None,
) -> BatchReport:
    """Block until the batch's report exists, forcing one at the stall deadline.

    The report is built here as soon as every member's result is recorded, which
    spares a batch the latency of the chord callback's own dispatch; whichever of
    the two stores it first wins, and they build it from the same records.
    """
    run, n = sub.run, sub.batch.number
    waiting = set(sub.expected)

    def step(mine: list[Event]) -> BatchReport | None:
        if on_event is not None:  # also called empty: a tick for periodic work
            on_event(mine)
        for event in mine:
            if event.kind in (EventKind.BATCH_REPORTED, EventKind.BATCH_FORCED):
                stored = store.report(run.run_id, n)
                if stored is not None:
                    return stored
            if event.kind == EventKind.FINISHED:
                waiting.discard(event.seq)
                if not waiting:  # every member recorded: no need to wait for
                    return report_from_store(store, sub)  # the chord callback hop
        return None

    return follow(
        store,
        run.run_id,
        sub.stream_from,
        settings,
        hard_cap_s=sub.hard_cap_s,
        mine=lambda event: event.batch == n,
        step=step,
        in_flight=lambda: sub.expected,
        give_up=lambda reason: report_from_store(
            store, sub, reason or _stall_reason(store, sub, settings)
        ),
    )


def share_submitted(results: Iterable[SubtaskResult], sub: Submission) -> None:
    """Give results read back from the store the submission's own strings where they
    are equal: each is decoded with copies of its title and deliverable paths, which
    the submission holds anyway while the run lasts (at 20,000 members some 2.4 MiB of
    copies under the report). Done as they are read, before the report is built, so
    the build reuses the memory the copies held. Only equal values are swapped, in
    the frozen models' ``__dict__``: nothing any reader sees changes."""
    declared = sub.declared or {}
    for res in results:
        title = sub.titles.get(res.seq)
        if title is not None and title == res.title:
            res.__dict__["title"] = title
        paths = declared.get(res.seq)
        if not paths:
            continue
        for check in res.deliverables:
            for path in paths:
                if path == check.path:
                    check.__dict__["path"] = path
                    break


def follow(
    store: Store,
    run_id: str,
    after: str,
    settings: Settings,
    *,
    hard_cap_s: float,
    mine: Callable[[Event], bool],
    step: Callable[[list[Event]], T | None],
    in_flight: Callable[[], Sequence[str]],
    give_up: Callable[[str | None], T],
) -> T:
    """Read the run's progress stream after ``after`` until ``step`` returns a value.

    ``step`` gets the events ``mine`` selects (and an empty list at least every
    second). No such event and no live claim among ``in_flight()`` for ``stall_s``
    seconds calls ``give_up(None)`` (a stall); past ``hard_cap_s`` it calls
    ``give_up`` with the reason. Both batch mode and flow mode wait here.

    A Redis blip (restart, failover, network) is ridden out: the loop retries until
    Redis answers again (``step`` sees the same events again, so it must tolerate
    repeats), and gives up with :class:`BrokerUnavailable` (exit 3) only when Redis
    stays unreachable for ``stall_s``.
    """
    start = last_progress = time.monotonic()
    outage_since: float | None = None
    while True:
        try:
            events = store.events(run_id, after, block_ms=1000, count=FOLLOW_COUNT)
            outage_since = None
            selected = [e for e in events if mine(e)]
            if selected:
                last_progress = time.monotonic()
            done = step(selected)
            if done is not None:
                return done
            if events:  # only once handled: a blip above rereads them
                after = events[-1].id
            now = time.monotonic()
            if now - last_progress >= settings.stall_s:
                if store.live_claims(run_id, in_flight()):
                    last_progress = now
                else:
                    return give_up(None)
            if now - start >= hard_cap_s:
                return give_up(f"hard deadline of {hard_cap_s:g}s passed")
        except RIDE_OUT as exc:
            now = time.monotonic()
            outage_since = outage_since if outage_since is not None else now
            if now - outage_since >= settings.stall_s:
                raise BrokerUnavailable(settings.redis_url or "", str(exc)) from exc
            time.sleep(OUTAGE_POLL_S)


def _stall_reason(store: Store, sub: Submission, settings: Settings) -> str:
    run = sub.run
    silent = [s for s in sub.expected if store.result(run.run_id, s) is None]
    reason = (
        f"stalled: no progress for {settings.stall_s:g}s; "
        f"never reported: {', '.join(silent) or 'none'}"
    )
    if not store.run_info(run.run_id):
        # The run's record never expires before the run ends: Redis lost its data.
        reason += (
            "; the run's state is gone from Redis (restarted without persistence?), "
            "so queued messages and results were lost"
        )
    return reason
