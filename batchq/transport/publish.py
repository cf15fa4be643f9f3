"""How a batch's messages go out: signatures, chunks, the chord, task-sent events.

Everything here serves one cost: a message's trip through Celery's canvas and kombu.
Messages are published in kombu batches (one pipelined round trip per
``PUBLISH_BATCH`` Redis commands instead of one per message), the chord's members on
the caller's producer (``chord.apply_async`` would take one of its own, outside the
batch), and the members' task-sent events as one ``task-multi`` message.
"""

from __future__ import annotations

import itertools
import os
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Celery
from celery.events import Event as CeleryEvent
from celery.utils import uuid
from celery.utils.time import utcoffset

from batchq import layout
from batchq.models import (
    BatchMember,
    FailurePolicy,
    Feature,
    PlannedBatch,
    Run,
    Subtask,
    SubtaskMessage,
)
from batchq.protocol import AGGREGATE_TASK, CHUNK_TASK, CONTROL_QUEUE, RUN_TASK, agent_queue
from batchq.settings import BUILTIN_AGENTS

__all__ = [
    "PUBLISH_BATCH",
    "SIBLINGS_CAP",
    "Brief",
    "chunk_signature",
    "message",
    "publish_batch",
    "publish_each",
    "signature",
]

PUBLISH_BATCH = 64
"""Transport operations buffered before a round trip: a chunk message of 16 members is
some 40 KiB serialized, and at 1,000 a 5,000-member batch held all its messages twice
(the envelope and its packed command) until the one round trip."""
SIBLINGS_CAP = 32
"""Most batch siblings one message lists: a prompt needs the neighbours, not a
5,000-member batch copied into each of 5,000 messages (the prompt gives the count)."""


@dataclass(frozen=True)
class Brief:
    """What each member's message tells its agent about the feature and the batch:
    built once per batch, so a message costs its own siblings list only."""

    feature_name: str = ""
    objective: str | None = None
    members: tuple[BatchMember, ...] = ()

    @classmethod
    def of(cls, feature: Feature, members: Sequence[Subtask], agents: Mapping[str, str]) -> Brief:
        """The brief of a batch of ``members`` (any order; listed by seq), whose agents
        by seq are ``agents``. When none of them renders a prompt the members are
        left out: a big batch of shell or python subtasks pays nothing for them."""
        if all(agents.get(s.seq) in BUILTIN_AGENTS for s in members):
            members = ()
        ordered = sorted(members, key=lambda s: s.number)
        return cls(
            feature_name=feature.task.name,
            objective=feature.task.objective,
            members=tuple(
                BatchMember(seq=s.seq, title=s.title, deliverables=list(s.deliverables))
                for s in ordered
            ),
        )


def signature(
    app: Celery,
    run: Run,
    sub: Subtask,
    agent: str,
    batch: int,
    policy: FailurePolicy,
    brief: Brief | None = None,
    snapshot_ref: str = "",
) -> Any:
    """One subtask's ``run_subtask`` signature, routed to its agent's queue.

    ``policy`` is what the worker applies to the batch's siblings on a failure; flow
    mode passes ``continue`` because its orchestrator applies the policy itself.
    ``brief`` is what a coding agent's prompt says about the feature and the batch;
    ``snapshot_ref`` the snapshot an isolated subtask starts from."""
    options: dict[str, object] = {
        "queue": agent_queue(agent),
        "argsrepr": _shown(run, sub, batch),
        "kwargsrepr": "{}",
    }
    if agent == "python":
        options["soft_time_limit"] = sub.timeout_s
    body = message(run, sub, agent, batch, policy, brief, snapshot_ref)
    return app.signature(RUN_TASK, args=(body,), **options)


def chunk_signature(
    app: Celery,
    run: Run,
    subs: Sequence[Subtask],
    batch: int,
    policy: FailurePolicy,
    snapshot_ref: str = "",
) -> Any:
    """One ``run_chunk`` signature for several ``python`` subtasks (:mod:`batchq.core.chunks`).
    Each member gets a task id of its own, under which the worker records it and
    shows it in Flower. No Celery time limit: the python agent times each member."""
    members = [
        {
            "id": uuid(),
            "shown": _shown(run, sub, batch),
            "message": message(run, sub, "python", batch, policy, snapshot_ref=snapshot_ref),
        }
        for sub in subs
    ]
    first, last = subs[0].seq, subs[-1].seq
    shown = (
        f"feature={run.feature} batch={batch} seq={first}..{last} run={run.run_id} "
        f"subtasks={len(subs)}"
    )
    return app.signature(
        CHUNK_TASK,
        args=(members,),
        queue=agent_queue("python"),
        argsrepr=shown,
        kwargsrepr="{}",
    )


def message(
    run: Run,
    sub: Subtask,
    agent: str,
    batch: int,
    policy: FailurePolicy,
    brief: Brief | None = None,
    snapshot_ref: str = "",
) -> dict[str, Any]:
    """The JSON body of one subtask's message. The batch's siblings go only to agents
    that render a prompt (not the built-in ``shell`` and ``python``), at most
    :data:`SIBLINGS_CAP` of them."""
    brief = brief or Brief()
    others = (m for m in brief.members if m.seq != sub.seq)
    wants_siblings = agent not in BUILTIN_AGENTS
    siblings = list(itertools.islice(others, SIBLINGS_CAP)) if wants_siblings else []
    total = max(len(brief.members) - 1, 0) if wants_siblings else 0
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
        feature_name=brief.feature_name,
        objective=brief.objective,
        subtask_file=layout.subtask_relpath(run.feature, sub.seq),
        siblings=siblings,
        siblings_total=total,
        isolate=run.isolate,
        snapshot_ref=snapshot_ref,
        git_remote=run.git_remote,
        git_prefix=run.git_prefix,
    )
    data: dict[str, Any] = msg.model_dump(mode="json", by_alias=True)
    return data


def _shown(run: Run, sub: Subtask, batch: int) -> str:
    """Where the subtask belongs first (feature, batch, seq, run), then its title: the
    prefix is what tells two features' tasks apart in Flower's task list."""
    return f"feature={run.feature} batch={batch} seq={sub.seq} run={run.run_id} title={sub.title!r}"


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
        publish_events(app, producer, events)


def publish_events(
    app: Celery,
    producer: Any,
    events: Sequence[tuple[str, dict[str, Any]]],
    hostname: str | None = None,
) -> None:
    """Send ``(kind, fields)`` events as one ``task-multi`` message on ``producer``,
    built as Celery's dispatcher builds one, in the name of node ``hostname`` (None:
    this process's). The producer's sent events and a worker's chunk members both
    go out this way."""
    if not events:
        return
    sender = _event_sender(app, hostname)
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


_SENDERS: weakref.WeakKeyDictionary[Celery, dict[str | None, Any]] = weakref.WeakKeyDictionary()


def _event_sender(app: Celery, hostname: str | None) -> Any:
    """A disabled event dispatcher per app and node name, kept for the process: it
    holds what an event message needs (exchange, serializer, headers, the app's
    clock, the pid), and building one per flush cost more than the publish. A forked
    process (a pool child) builds its own, so its events carry its pid."""
    senders = _SENDERS.setdefault(app, {})
    sender = senders.get(hostname)
    if sender is None or sender.pid != os.getpid():
        sender = senders[hostname] = app.events.Dispatcher(hostname=hostname, enabled=False)
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
    app: Celery, signatures: Sequence[Any], run: Run, batch: PlannedBatch, submitted_at: datetime
) -> None:
    """Publish a batch's messages: a chord whose callback aggregates the report (even
    when its members share one chunk), or the one message of a batch of one."""
    with _publishing(app) as (producer, sent):
        _publish(app, signatures, producer, sent, run, batch, submitted_at)


def _publish(
    app: Celery,
    signatures: Sequence[Any],
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
        argsrepr=(
            f"feature={run.feature} batch={batch.number} run={run.run_id} members={len(batch.seqs)}"
        ),
        kwargsrepr="{}",
    )
    _apply_chord(app, signatures, callback, producer, sent)


def _set_chord_size(backend: Any, group_id: str, size: int) -> None:
    """``backend.set_chord_size``: the same two commands (the counter a reapplied
    chord would reuse dropped, the size set), pipelined in one round trip instead of
    two, with the backend's own retries; a backend without a Redis client (another
    result backend) is asked as Celery asks it."""
    client = getattr(backend, "client", None)
    if client is None or not hasattr(client, "pipeline"):
        backend.set_chord_size(group_id, size)
        return

    def send() -> None:
        pipe = client.pipeline(transaction=False)
        pipe.delete(backend.get_key_for_group(group_id, ".c"))
        pipe.set(backend.get_key_for_group(group_id, ".s"), size, ex=backend.chord_expires or None)
        pipe.execute()

    backend.ensure(send, ())


def _apply_chord(
    app: Celery, header: Sequence[Any], body: Any, producer: Any, sent: _SentEvents
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
    _set_chord_size(app.backend, group_id, len(header))
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
