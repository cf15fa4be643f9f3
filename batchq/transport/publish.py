"""How a batch's messages go out: signatures, chunks, the chord, task-sent events.

Everything here serves one cost: a message's trip through Celery's canvas and kombu.
Messages are published in kombu batches (one pipelined round trip per
``PUBLISH_BATCH`` Redis commands instead of one per message), the chord's members on
the caller's producer (``chord.apply_async`` would take one of its own, outside the
batch), and the members' task-sent events as one ``task-multi`` message.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from celery import Celery
from celery.events import Event as CeleryEvent
from celery.utils import uuid
from celery.utils.time import utcoffset

from batchq.models import FailurePolicy, PlannedBatch, Run, Subtask, SubtaskMessage
from batchq.protocol import AGGREGATE_TASK, CHUNK_TASK, CONTROL_QUEUE, RUN_TASK, agent_queue

__all__ = ["PUBLISH_BATCH", "chunk_signature", "publish_batch", "publish_each", "signature"]

PUBLISH_BATCH = 1000


def signature(
    app: Celery, run: Run, sub: Subtask, agent: str, batch: int, policy: FailurePolicy
) -> Any:
    """One subtask's ``run_subtask`` signature, routed to its agent's queue.

    ``policy`` is what the worker applies to the batch's siblings on a failure; flow
    mode passes ``continue`` because its orchestrator applies the policy itself."""
    options: dict[str, object] = {
        "queue": agent_queue(agent),
        "argsrepr": _shown(run, sub, batch),
        "kwargsrepr": "{}",
    }
    if agent == "python":
        options["soft_time_limit"] = sub.timeout_s
    message = _message(run, sub, agent, batch, policy)
    return app.signature(RUN_TASK, args=(message,), **options)


def chunk_signature(
    app: Celery, run: Run, subs: Sequence[Subtask], batch: int, policy: FailurePolicy
) -> Any:
    """One ``run_chunk`` signature for several ``python`` subtasks (:mod:`batchq.core.chunks`).
    Each member gets a task id of its own, under which the worker records it and
    shows it in Flower. No Celery time limit: the python agent times each member."""
    members = [
        {
            "id": uuid(),
            "shown": _shown(run, sub, batch),
            "message": _message(run, sub, "python", batch, policy),
        }
        for sub in subs
    ]
    first, last = subs[0].seq, subs[-1].seq
    shown = f"{len(subs)} subtasks seq={first}..{last} feature={run.feature} batch={batch}"
    return app.signature(
        CHUNK_TASK,
        args=(members,),
        queue=agent_queue("python"),
        argsrepr=shown,
        kwargsrepr="{}",
    )


def _message(run: Run, sub: Subtask, agent: str, batch: int, policy: FailurePolicy) -> Any:
    msg = SubtaskMessage(
        feature=run.feature,
        feature_key=run.feature_key,
        run_id=run.run_id,
        batch=batch,
        root=str(run.root),
        token=run.token,
        policy=policy,
        agent=agent,
        subtask=sub,
        write_check=run.write_check,
        isolate=run.isolate,
    )
    return msg.model_dump(mode="json", by_alias=True)


def _shown(run: Run, sub: Subtask, batch: int) -> str:
    """seq and title first: Flower's args column shows about 45 characters."""
    return f"seq={sub.seq} title={sub.title!r} feature={run.feature} batch={batch}"


def publish_each(app: Celery, signatures: Sequence[Any]) -> None:
    """Publish single tasks (flow mode), pipelined like a chord's members."""
    with _publishing(app) as (producer, sent):
        for sig in signatures:
            sig.apply_async(producer=producer, event_dispatcher=sent)


class _SentEvents:
    """Stands in for Celery's event dispatcher while a batch is published. Celery sends
    each message's ``task-sent`` event as a fanout message of its own, a second publish
    per subtask; collected here, they go out as one ``task-multi`` message in the same
    kombu batch, which every event receiver (Flower) unpacks, timestamps kept."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def publish(self, type: str, fields: dict[str, Any], producer: Any, **_: Any) -> None:
        self.events.append((type, {**fields, "timestamp": time.time()}))

    def flush(self, app: Celery, producer: Any) -> None:
        events, self.events = self.events, []
        if not events:
            return
        sender = _event_sender(app)
        body = [
            CeleryEvent(
                kind,
                hostname=sender.hostname,
                utcoffset=utcoffset(),
                pid=sender.pid,
                clock=sender.clock.forward(),
                **fields,
            )
            for kind, fields in events
        ]
        producer.publish(
            body,
            routing_key="task.multi",
            exchange=sender.exchange.name,
            declare=[sender.exchange],
            serializer=sender.serializer,
            headers=sender.headers,
            delivery_mode=sender.delivery_mode,
        )


_SENDERS: weakref.WeakKeyDictionary[Celery, Any] = weakref.WeakKeyDictionary()


def _event_sender(app: Celery) -> Any:
    """The app's event settings (exchange, serializer, hostname, clock), built once."""
    sender = _SENDERS.get(app)
    if sender is None:
        sender = _SENDERS[app] = app.events.Dispatcher(enabled=False)
    return sender


@contextmanager
def _publishing(app: Celery) -> Iterator[tuple[Any, _SentEvents]]:
    """A producer whose publishes go out in kombu batches (one pipelined round trip
    per ``PUBLISH_BATCH`` commands instead of one per message), and the collector of
    their task-sent events (pass it as ``event_dispatcher``), sent in the same batch."""
    sent = _SentEvents()
    with app.producer_or_acquire() as producer, producer.batch(max_size=PUBLISH_BATCH):
        yield producer, sent
        if app.conf.task_send_sent_event:
            sent.flush(app, producer)


def publish_batch(
    app: Celery, signatures: list[Any], run: Run, batch: PlannedBatch, submitted_at: datetime
) -> None:
    """Publish a batch's messages: a chord whose callback aggregates the report (even
    when its members share one chunk), or the one message of a batch of one."""
    with _publishing(app) as (producer, sent):
        _publish(app, signatures, producer, sent, run, batch, submitted_at)


def _publish(
    app: Celery,
    signatures: list[Any],
    producer: Any,
    sent: _SentEvents,
    run: Run,
    batch: PlannedBatch,
    submitted_at: datetime,
) -> None:
    if len(batch.seqs) == 1:
        signatures[0].apply_async(producer=producer, event_dispatcher=sent)
        return
    meta = {
        "feature": run.feature,
        "feature_key": run.feature_key,
        "run_id": run.run_id,
        "batch": batch.number,
        "submitted_at": submitted_at.isoformat(),
    }
    callback = app.signature(
        AGGREGATE_TASK,
        kwargs={"meta": meta},
        queue=CONTROL_QUEUE,
        argsrepr=f"feature={run.feature} batch={batch.number} members={len(batch.seqs)}",
        kwargsrepr="{}",
    )
    _apply_chord(app, signatures, callback, producer, sent)


def _apply_chord(
    app: Celery, header: list[Any], body: Any, producer: Any, sent: _SentEvents
) -> None:
    """``chord(group(header), body).apply_async()``, but on ``producer``.

    ``chord.apply_async`` drops its ``producer`` argument and publishes the header
    on one acquired from the pool, outside the caller's kombu publish batch: one
    round trip per message and per task-sent event instead of one per thousand. Each
    member is published as ``group._apply_tasks`` does once the group is frozen (its
    task id, the group id and its index, the body as ``chord``), without the group's
    two clones of every member; the messages are the same, so the workers' chord
    counting and the callback are unchanged.
    """
    group_id = uuid()
    body = body.clone()
    body.freeze(group_id=group_id)
    app.backend.set_chord_size(group_id, len(header))
    for index, member in enumerate(header):
        member.apply_async(
            producer=producer,
            add_to_parent=False,
            task_id=uuid(),
            group_id=group_id,
            group_index=index,
            chord=body,
            event_dispatcher=sent,
        )
