"""The Celery tasks, kept thin: decode, delegate to plain functions, map retries.

``run_subtask`` returns a result for every subtask outcome and never raises for the
subtask's own failure, so the chord callback always fires (TRAPS: a failed member
fails the whole chord). One task name for every subtask keeps Flower's Prometheus
labels bounded; the feature, batch, seq and title are in the argument summary.
``run_chunk`` runs several python subtasks in one message
(:mod:`batchq.core.chunks`), each as ``run_subtask`` would, and ``aggregate_batch`` is
the chord callback.

The tasks ignore their Celery result: the chord still collects member results (the
Redis backend's chord list does not depend on stored results), and batchq keeps its
own record in :mod:`batchq.store.state`, so a stored copy would only cost a write per task.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from functools import cache
from typing import Any

from celery import Celery, Task
from celery.exceptions import Reject, SoftTimeLimitExceeded

from batchq.core import report
from batchq.executor.runner import Chain, RetryLater, execute
from batchq.models import PlannedBatch, SubtaskMessage, WriteCheck
from batchq.protocol import (
    AGGREGATE_TASK,
    CHUNK_TASK,
    RUN_ORCHESTRATOR,
    RUN_TASK,
    BatchState,
    EventKind,
)
from batchq.settings import Settings
from batchq.store.contract import Store
from batchq.store.state import CONNECTION_ERRORS, StateStore
from batchq.transport.events import MemberEvents, TruthfulRequest, outcome

__all__ = ["register"]


def register(app: Celery, settings: Settings) -> None:
    """Register batchq's tasks on ``app`` (called by :func:`batchq.transport.app.create_app`)."""

    @cache
    def store() -> StateStore:
        # One connection pool per worker process, opened on first use, not at import.
        return StateStore.from_settings(settings)

    @app.task(  # type: ignore[untyped-decorator]
        name=RUN_TASK,
        bind=True,
        shared=False,
        ignore_result=True,
        acks_late=True,
        reject_on_worker_lost=True,
        max_retries=None,
        Request=TruthfulRequest,
    )
    def run_subtask(self: Task, message: dict[str, Any]) -> dict[str, Any]:
        msg = SubtaskMessage.model_validate(message)
        try:
            result = execute(
                msg,
                store(),
                settings,
                task_id=self.request.id or "",
                retries_done=self.request.retries,
            )
        except RetryLater as later:
            raise self.retry(countdown=later.countdown, max_retries=None) from later
        except CONNECTION_ERRORS as exc:
            # Redis went away under us (restart, failover). Raising would record a
            # failure and fail the batch's chord; rejecting with requeue leaves the
            # unacked message to come back (at once, or after the visibility timeout
            # if Redis is still down), and the claim and record-once rules decide.
            raise Reject(
                f"Redis unreachable, subtask left for redelivery: {exc}", requeue=True
            ) from exc
        except SoftTimeLimitExceeded:  # pragma: no cover - mapped inside execute()
            raise
        # The full result is recorded in Redis; the chord only needs to count members,
        # and a small value keeps Celery's repr for the task-succeeded event cheap.
        return outcome(result.seq, result.result.value, result.error)

    @app.task(  # type: ignore[untyped-decorator]
        name=CHUNK_TASK,
        bind=True,
        shared=False,
        ignore_result=True,
        acks_late=True,
        reject_on_worker_lost=True,
    )
    def run_chunk(self: Task, members: list[dict[str, Any]]) -> str:
        """Several tiny ``python`` subtasks in one message (:mod:`batchq.core.chunks`), one
        after the other, each exactly as ``run_subtask`` would run it. A redelivered
        chunk finds its recorded members done and runs only the rest.

        Its chord value is the JSON text of its members' values (:func:`aggregate` reads
        it back): Celery's ``saferepr`` of the returned value, which every task pays for
        its log line, walked a list of dicts token by token, ~1 ms per chunk here,
        where a string is one token."""
        shown = None
        if app.conf.worker_send_task_events:
            shown = MemberEvents(app, self.request, RUN_TASK)
        results: list[dict[str, Any]] = []
        messages = [SubtaskMessage.model_validate(member["message"]) for member in members]
        chain = Chain()
        retries = self.request.retries
        try:
            for index, (member, msg) in enumerate(zip(members, messages, strict=True)):
                if index + 1 < len(members):
                    chain.then(messages[index + 1], members[index + 1]["id"], retries + 1)
                else:
                    chain.then(None)
                if shown is not None:
                    shown.started(member["id"], str(member.get("shown", "")))
                result = _in_place(msg, member["id"], retries, chain)
                done = outcome(result.seq, result.result.value, result.error)
                if shown is not None:
                    shown.succeeded(member["id"], done)
                results.append(done)
        except CONNECTION_ERRORS as exc:
            raise Reject(
                f"Redis unreachable, chunk left for redelivery: {exc}", requeue=True
            ) from exc
        finally:
            if shown is not None:
                shown.flush()
        return json.dumps(results)

    def _in_place(msg: SubtaskMessage, task_id: str, retries_done: int, chain: Chain) -> Any:
        """A member's retries happen here: published again, it would leave the chord."""
        while True:
            try:
                return execute(
                    msg,
                    store(),
                    settings,
                    task_id=task_id,
                    retries_done=retries_done,
                    chain=chain,
                )
            except RetryLater as later:
                retries_done += 1
                time.sleep(later.countdown)

    @app.task(  # type: ignore[untyped-decorator]
        name=AGGREGATE_TASK,
        bind=True,
        shared=False,
        ignore_result=True,
        acks_late=True,
        max_retries=None,
    )
    def aggregate_batch(
        self: Task,
        results: list[dict[str, Any]],
        meta: dict[str, Any],
    ) -> dict[str, Any]:
        try:
            return aggregate(store(), results, meta)
        except LeftToOrchestrator as left:
            raise self.retry(countdown=left.countdown) from left

    del run_subtask, run_chunk, aggregate_batch


class LeftToOrchestrator(Exception):
    """The run's orchestrator is alive and builds this report itself: look again in
    ``countdown`` seconds (by then it is stored, or the orchestrator is gone)."""

    def __init__(self, countdown: float) -> None:
        super().__init__(f"the run's orchestrator reports this batch; again in {countdown:g}s")
        self.countdown = countdown


LEFT_FOR_S = 30.0
"""How long a chord callback waits before it looks again at a batch whose orchestrator
builds the report; under the orchestrator's lease (60 s), so a dead one's batch is
reported by the callback within a minute or two of its death."""


def aggregate(store: Store, results: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """Chord callback body: build the report from the recorded results with the one
    pure function, and store it. A member whose chord value disagrees with its
    record (a redelivered copy, say) is named as a discrepancy.

    While the run's orchestrator still holds its feature, the report is left to it
    (:class:`LeftToOrchestrator`): it builds the same report from the same records as
    soon as every member is recorded, and a second build here cost a worker process
    as much memory as the orchestrator's (20,000 members: 187 MiB against 85 for the
    other pool process). Once the orchestrator is gone, or when no orchestrator waits
    (a run started without one), the callback builds it, as before."""
    run_id, batch = meta["run_id"], int(meta["batch"])
    record = store.batch_record(run_id, batch)
    if record.state == BatchState.RUNNING and _orchestrator_waits(store, run_id, meta):
        raise LeftToOrchestrator(LEFT_FOR_S)
    # A chunk's chord value is the JSON text of the list of its members' values.
    results = [one for r in results for one in _members_of(r)]
    if record.state == BatchState.REPORTED:
        # The producer stored the report already, built from the same records as soon
        # as every member was recorded; a second one would only be kept as a late copy
        # that nothing reads. After a forced report, the late copy is the evidence.
        existing = store.report(run_id, batch)
        status = existing.status.value if existing is not None else "unknown"
        store.emit(run_id, EventKind.AGGREGATED, batch, "", stored=False, status=status)
        return {"batch": batch, "status": status}
    expected = record.expected
    recorded = store.results(run_id, expected)
    discrepancies = [
        f"{r.get('seq')}: the chord got {r.get('result')}, the store recorded "
        f"{recorded[str(r.get('seq'))].result.value}"
        for r in results
        if isinstance(r, dict)
        and str(r.get("seq")) in recorded
        and recorded[str(r.get("seq"))].result.value != r.get("result")
    ]
    next_batch = PlannedBatch.model_validate_json(record.following) if record.following else None
    built = report.build(
        feature=meta["feature"],
        run_id=run_id,
        batch=batch,
        results=list(recorded.values()),
        expected=expected,
        next_batch=next_batch,
        submitted_at=datetime.fromisoformat(meta["submitted_at"]),
        finished_at=_now(),
        discrepancies=discrepancies,
        declared=record.declared,
        write_check=WriteCheck(record.write_check),
    )
    store.amend_results(report.amended(built, recorded))
    stored = store.store_report(built, meta["feature_key"])
    store.emit(
        run_id, EventKind.AGGREGATED, built.batch, "", stored=stored, status=built.status.value
    )
    return {"batch": built.batch, "status": built.status.value}


def _orchestrator_waits(store: Store, run_id: str, meta: dict[str, Any]) -> bool:
    """The orchestrator that started the run still holds its feature's lock (it renews
    it while it runs; the lease lapses within a minute of its death)."""
    holder = store.run_info(run_id).get(RUN_ORCHESTRATOR)
    return bool(holder) and store.lock_holder(str(meta["feature_key"])) == holder


def _members_of(value: Any) -> list[Any]:
    """The member values in one chord value: a chunk's JSON list (or a list, from a
    worker of an earlier version), or a single subtask's value."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return [value]
    return value if isinstance(value, list) else [value]


def _now() -> datetime:
    from datetime import UTC

    return datetime.now(UTC)
