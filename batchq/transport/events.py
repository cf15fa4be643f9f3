"""Task events sent in batches from the worker's main process.

Celery buffers a worker's task events but flushes them after every turn of its event
loop, so each subtask costs about three fanout ``PUBLISH`` round trips in the one
process that also receives, acknowledges and dispatches every message: measured on
two cores, a quarter of that process's time. Flushing on a short timer instead sends
the events of many subtasks as one ``task-multi`` message, which Flower and every
other event receiver unpack (``EventReceiver._receive`` takes lists); the cost is
that Flower sees a state change up to ``FLUSH_EVERY_S`` later. batchq's own progress
never depends on these events: it reads the run's Redis stream.
"""

from __future__ import annotations

import ast
import time
from typing import Any

from celery import Celery, bootsteps
from celery.worker.request import Request

from batchq.transport.publish import publish_events

__all__ = [
    "FLUSH_EVERY_S",
    "BatchedEvents",
    "MemberEvents",
    "TruthfulRequest",
    "finished_event",
    "outcome",
]

ERROR_LIMIT = 200
"""Characters of a subtask's error carried in its return value (and so its event)."""
_FAILED = {"failed", "timed_out"}
_NOT_RUN = {"cancelled", "skipped"}


def outcome(seq: str, result: str, error: str | None) -> dict[str, Any]:
    """What ``run_subtask`` returns: small (the chord only counts members; the full
    result is in Redis) but enough for :func:`finished_event` to tell Flower the truth."""
    done: dict[str, Any] = {"seq": seq, "result": result}
    if result != "completed":
        done["error"] = " ".join((error or result).split())[:ERROR_LIMIT]
    return done


def finished_event(value: Any, fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The task event that says how a member really ended, for a ``task-succeeded``
    Celery would send: the task returns normally so the chord fires, but a failed or
    timed-out subtask is ``task-failed`` (Flower's FAILURE, its Failed filter and its
    Prometheus counter) with its error, and a cancelled one ``task-revoked`` (REVOKED).
    ``value`` is the returned dict or, from a pool process, its repr."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return "task-succeeded", fields
    if not isinstance(value, dict):
        return "task-succeeded", fields
    result = str(value.get("result", ""))
    if result in _FAILED:
        error = f"{result}: {value.get('error') or result}"
        kept = {k: v for k, v in fields.items() if k not in ("result",)}
        return "task-failed", kept | {"exception": error, "traceback": ""}
    if result in _NOT_RUN:
        kept = {k: v for k, v in fields.items() if k not in ("result", "runtime")}
        return "task-revoked", kept | {"terminated": False, "signum": None, "expired": False}
    return "task-succeeded", fields


class TruthfulRequest(Request):  # type: ignore[misc]
    """``run_subtask``'s worker request: its ``task-succeeded`` event becomes the event
    :func:`finished_event` chooses. Only the event changes; the task still succeeds
    for Celery, so its chord still fires (SPEC 3)."""

    def send_event(self, type: str, **fields: Any) -> None:
        if type == "task-succeeded":
            type, fields = finished_event(fields.get("result"), fields)
        super().send_event(type, **fields)


FLUSH_EVERY_S = 0.1
BUFFER_LIMIT = 500
"""A full buffer is sent at once, whatever the timer says."""


class BatchedEvents(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer step: re-arm the event dispatcher the ``Events`` step just built
    (it is rebuilt on every reconnection, and this step restarts with it)."""

    requires = ("celery.worker.consumer.events:Events",)

    def start(self, c: Any) -> None:
        dispatcher, hub = c.event_dispatcher, c.hub
        if dispatcher is None or hub is None:
            return
        armed = False

        def flush() -> None:
            nonlocal armed
            armed = False
            c._flush_events()

        def buffered() -> None:
            nonlocal armed
            if not armed:
                armed = True
                hub.call_later(FLUSH_EVERY_S, flush)

        dispatcher.buffer_limit = BUFFER_LIMIT
        dispatcher.on_send_buffered = buffered


class MemberEvents:
    """Task events for the members of a chunk (:mod:`batchq.core.chunks`), so Flower and
    every event receiver show each member as a ``run_subtask`` task of its own, child
    of the chunk's task, with its runtime. They leave the pool process as one
    ``task-multi`` message every ``FLUSH_EVERY_S`` and at the chunk's end, and never
    fail the chunk: batchq's progress is in its Redis stream, not in these events."""

    def __init__(self, app: Celery, request: Any, name: str) -> None:
        self.app, self.name = app, name
        self.hostname = request.hostname
        self.parent = request.id
        self.root = request.root_id or request.id
        self.pending: list[tuple[str, dict[str, Any]]] = []
        self.flushed = time.monotonic()
        self.began: dict[str, float] = {}

    def started(self, task_id: str, shown: str) -> None:
        now = self.began[task_id] = time.time()
        received = {
            "uuid": task_id,
            "name": self.name,
            "args": shown,
            "kwargs": "{}",
            "root_id": self.root,
            "parent_id": self.parent,
            "retries": 0,
            "eta": None,
            "expires": None,
            "timestamp": now,
        }
        self.pending.append(("task-received", received))
        self.pending.append(("task-started", {"uuid": task_id, "timestamp": now}))

    def succeeded(self, task_id: str, value: Any) -> None:
        """The member finished (whatever its result: see :func:`finished_event`)."""
        now = time.time()
        runtime = now - self.began.pop(task_id, now)
        fields = {"uuid": task_id, "result": repr(value), "runtime": runtime, "timestamp": now}
        self.pending.append(finished_event(value, fields))
        if time.monotonic() - self.flushed >= FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        """Send what is pending as one ``task-multi`` message, built as Celery's
        dispatcher builds one (:func:`~batchq.transport.publish.publish_events`) on a
        producer from the app's pool."""
        events, self.pending = self.pending, []
        self.flushed = time.monotonic()
        if not events:
            return
        try:
            with self.app.amqp.producer_pool.acquire(block=True) as producer:
                publish_events(self.app, producer, events, self.hostname)
        except Exception:
            return
