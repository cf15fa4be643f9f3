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

from typing import Any

from celery import bootsteps

__all__ = ["FLUSH_EVERY_S", "BatchedEvents"]

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
