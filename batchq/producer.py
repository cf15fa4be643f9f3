"""The only code that enqueues: a planned batch becomes one chord, then one report.

Waiting never uses ``AsyncResult.get()`` (TRAPS: it subscribes per task and dominates
big chords); the producer reads the run's progress stream in Redis instead, which
also gives it the stall deadline: no event and no live claim for ``stall_s`` seconds,
or past the hard cap, yields a forced report naming the members that never reported.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery import Celery, chord, group

from batchq import report
from batchq.agents.base import agent_for
from batchq.app import AGGREGATE_TASK, CONTROL_QUEUE, RUN_TASK, agent_queue, max_subtask_budget_s
from batchq.errors import BrokerUnavailable, PolicyError
from batchq.jsonfile import write_atomic
from batchq.models import (
    BatchReport,
    FailurePolicy,
    Feature,
    PlannedBatch,
    Subtask,
    SubtaskMessage,
    WriteCheck,
)
from batchq.settings import Settings
from batchq.state import CONNECTION_ERRORS, Event, StateStore, feature_key

__all__ = ["Run", "Submission", "check_agents", "new_run", "submit", "wait"]

EventHandler = Callable[[list[Event]], None]
"""Called with each new slice of the batch's events, and with none at least every
second, so a handler can do periodic work (the orchestrator's coalesced mirroring)."""
OUTAGE_POLL_S = 0.5
PUBLISH_BATCH = 1000


@dataclass(frozen=True)
class Run:
    """One ``batchq run``/``batch`` invocation: its id, token and shared context key."""

    run_id: str
    feature: str
    feature_key: str
    root: Path
    token: str
    policy: FailurePolicy
    write_check: WriteCheck = WriteCheck.WARN


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


def _budget_s(sub: Subtask, settings: Settings) -> float:
    retries = sub.execution.retries if sub.execution else 0
    return sub.timeout_s * (retries + 1) + settings.retry_backoff_max_s * retries


def check_agents(subtasks: Sequence[Subtask], settings: Settings) -> dict[str, str]:
    """Refuse, before anything is enqueued, an unknown agent, a disallowed command or
    module, or a timeout the broker's visibility timeout cannot cover."""
    agents: dict[str, str] = {}
    limit = max_subtask_budget_s(settings)
    for sub in subtasks:
        agents[sub.seq] = agent_for(sub, settings).name
        if _budget_s(sub, settings) > limit:
            raise PolicyError(
                sub.seq,
                f"subtask {sub.seq}: execution.timeout_s: {sub.timeout_s:g}s with its retries "
                f"needs {_budget_s(sub, settings):g}s, over the {limit:g}s the broker's "
                "visibility timeout allows; raise BATCHQ_VISIBILITY_TIMEOUT_S or lower it",
            )
    return agents


def new_run(
    store: StateStore,
    feature: Feature,
    policy: FailurePolicy,
    context: str = "",
    write_check: WriteCheck = WriteCheck.WARN,
) -> Run:
    """Create a run: its token file in the workspace and its record and context in Redis."""
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(4)
    token = secrets.token_hex(16)
    fkey = feature_key(feature.name, feature.root)
    token_file = feature.state_dir / "runs" / f"{run_id}.token"
    token_file.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(token_file, token + "\n", durable=False)
    store.create_run(
        run_id,
        {
            "feature": feature.name,
            "feature_key": fkey,
            "root": str(feature.root),
            "policy": policy.value,
            "write_check": write_check.value,
            "created_at": datetime.now(UTC).isoformat(),
        },
        context,
    )
    return Run(run_id, feature.name, fkey, feature.root, token, policy, write_check)


def _order(members: list[Subtask], learned: Mapping[str, float]) -> list[Subtask]:
    """Longest first when durations are known (estimate or learned): with prefetch 1
    the publish order is the dispatch order, and LPT shortens the makespan."""

    def weight(sub: Subtask) -> float:
        if sub.execution and sub.execution.estimate_s is not None:
            return sub.execution.estimate_s
        return learned.get(sub.seq, 0.0)

    return sorted(members, key=lambda s: (-weight(s), s.number))


def submit(
    app: Celery,
    store: StateStore,
    run: Run,
    feature: Feature,
    batch: PlannedBatch,
    next_batch: PlannedBatch | None,
    settings: Settings,
) -> Submission:
    """Publish one batch: a chord for two or more members, a single task for one."""
    by_seq = feature.by_seq()
    members = [by_seq[seq] for seq in batch.seqs]
    agents = check_agents(members, settings)
    members = _order(members, store.durations(run.feature_key))
    stream_from = store.last_event_id(run.run_id)
    declared = None
    if run.write_check is not WriteCheck.OFF:
        declared = {sub.seq: list(sub.deliverables) for sub in members}
    store.start_batch(
        run.run_id, batch.number, batch.seqs, run.policy.value, declared, run.write_check.value
    )
    submitted_at = datetime.now(UTC)
    signatures = []
    for sub in members:
        msg = SubtaskMessage(
            feature=run.feature,
            feature_key=run.feature_key,
            run_id=run.run_id,
            batch=batch.number,
            root=str(run.root),
            token=run.token,
            policy=run.policy,
            agent=agents[sub.seq],
            subtask=sub,
            write_check=run.write_check,
        )
        options: dict[str, object] = {
            "queue": agent_queue(agents[sub.seq]),
            # seq and title first: Flower's args column shows about 45 characters.
            "argsrepr": f"seq={sub.seq} title={sub.title!r} feature={run.feature} "
            f"batch={batch.number}",
            "kwargsrepr": "{}",
        }
        if agents[sub.seq] == "python":
            options["soft_time_limit"] = sub.timeout_s
        signatures.append(
            app.signature(RUN_TASK, args=(msg.model_dump(mode="json", by_alias=True),), **options)
        )
    # One pipelined round trip per 1,000 Redis commands instead of two per subtask
    # (the message and its task-sent event): kombu's publish batch.
    with app.producer_or_acquire() as producer, producer.batch(max_size=PUBLISH_BATCH):
        _publish(app, signatures, producer, run, batch, next_batch, submitted_at)
    hard_cap = sum(_budget_s(s, settings) for s in members) + settings.stall_s
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


def _publish(
    app: Celery,
    signatures: list[Any],
    producer: Any,
    run: Run,
    batch: PlannedBatch,
    next_batch: PlannedBatch | None,
    submitted_at: datetime,
) -> None:
    if len(signatures) == 1:
        signatures[0].apply_async(producer=producer)
        return
    meta = {
        "feature": run.feature,
        "feature_key": run.feature_key,
        "run_id": run.run_id,
        "batch": batch.number,
        "expected": list(batch.seqs),
        "next_batch": next_batch.model_dump(mode="json") if next_batch else None,
        "submitted_at": submitted_at.isoformat(),
    }
    callback = app.signature(
        AGGREGATE_TASK,
        kwargs={"meta": meta},
        queue=CONTROL_QUEUE,
        argsrepr=f"feature={run.feature} batch={batch.number} members={len(signatures)}",
        kwargsrepr="{}",
    )
    chord(group(signatures), callback).apply_async(producer=producer)


def _report_from_store(
    store: StateStore, sub: Submission, forced_reason: str | None = None
) -> BatchReport:
    """Build and store the report from the recorded results: the batch-of-one path,
    and the deadline path (``forced_reason``), which also stops members not yet
    started. The report stored first wins; a later one is kept as ``late``."""
    run = sub.run
    if forced_reason is not None:
        store.cancel(run.run_id, sub.batch.number, "graceful")
    results = store.results(run.run_id, sub.expected)
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
        declared=sub.declared,
        write_check=run.write_check,
    )
    store.amend_results(report.amended(built, results))
    store.store_report(built, run.feature_key)
    return store.report(run.run_id, sub.batch.number) or built


def wait(
    store: StateStore,
    sub: Submission,
    settings: Settings,
    on_event: EventHandler | None = None,
) -> BatchReport:
    """Block until the batch's report exists, forcing one at the stall deadline.

    The report is built here as soon as every member's result is recorded, which
    spares a batch the latency of the chord callback's own dispatch; whichever of
    the two stores it first wins, and they build it from the same records.

    A Redis blip (restart, failover, network) is ridden out: the loop retries until
    Redis answers again, and gives up with :class:`BrokerUnavailable` (exit 3) only
    when it stays unreachable for ``stall_s``.
    """
    run, n = sub.run, sub.batch.number
    waiting = set(sub.expected)
    last_id = sub.stream_from
    start = last_progress = time.monotonic()
    outage_since: float | None = None
    while True:
        try:
            events = store.events(run.run_id, last_id, block_ms=1000)
            outage_since = None
            mine = [e for e in events if e.batch == n]
            if mine:
                last_progress = time.monotonic()
            if on_event is not None:  # also called empty: a tick for periodic work
                on_event(mine)
            for event in mine:
                if event.kind in ("batch_reported", "batch_forced"):
                    stored = store.report(run.run_id, n)
                    if stored is not None:
                        return stored
                if event.kind == "finished":
                    waiting.discard(event.seq)
                    if not waiting:  # every member recorded: no need to wait for
                        return _report_from_store(store, sub)  # the chord callback hop
            if events:  # only once handled: a blip above rereads them
                last_id = events[-1].id
            now = time.monotonic()
            if now - last_progress >= settings.stall_s:
                if store.live_claims(run.run_id, sub.expected):
                    last_progress = now
                else:
                    return _report_from_store(store, sub, _stall_reason(store, sub, settings))
            if now - start >= sub.hard_cap_s:
                return _report_from_store(
                    store, sub, f"hard deadline of {sub.hard_cap_s:g}s passed"
                )
        except CONNECTION_ERRORS as exc:
            now = time.monotonic()
            outage_since = outage_since if outage_since is not None else now
            if now - outage_since >= settings.stall_s:
                raise BrokerUnavailable(settings.redis_url or "", str(exc)) from exc
            time.sleep(OUTAGE_POLL_S)


def _stall_reason(store: StateStore, sub: Submission, settings: Settings) -> str:
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
