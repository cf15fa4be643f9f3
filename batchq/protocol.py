"""The protocol's vocabulary: task and queue names, progress-stream event kinds, batch
states and cancel modes — the strings that cross processes (Celery messages, Redis
keys and streams, Flower), spelled once.

Every name here is a ``StrEnum`` or a constant so it compares equal to the plain
string it travels as; the Lua scripts in :mod:`batchq.store.state` write the same
strings.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "AGGREGATE_TASK",
    "CHUNK_TASK",
    "CONTROL_QUEUE",
    "DEFAULT_QUEUES",
    "RUN_ORCHESTRATOR",
    "RUN_SETTLED",
    "RUN_TASK",
    "BatchState",
    "CancelMode",
    "EventKind",
    "agent_queue",
]

RUN_TASK = "batchq.run_subtask"
"""One task name for every subtask, so Flower's Prometheus series stay one (TRAPS)."""
CHUNK_TASK = "batchq.run_chunk"
AGGREGATE_TASK = "batchq.aggregate_batch"
CONTROL_QUEUE = "batchq.control"
"""The chord callbacks' queue; every worker serves it."""
RUN_SETTLED = "settled"
"""The run record's field an orchestrator sets once every result it recorded is in the
files: adoption (:mod:`batchq.run.adopt`) leaves such a run alone."""
RUN_ORCHESTRATOR = "orchestrator"
"""The run record's field naming the holder of the feature's lock that started the run
and builds its reports: while that lock is still its, a chord callback leaves the report
to it (see :mod:`batchq.transport.tasks`)."""


def agent_queue(agent: str) -> str:
    """Each agent has its own queue so workers can serve a subset (``--agents``)."""
    return f"batchq.{agent}"


DEFAULT_QUEUES: tuple[str, ...] = (CONTROL_QUEUE, agent_queue("shell"), agent_queue("python"))
"""What a local worker serves unless told otherwise."""


class EventKind(StrEnum):
    """The ``kind`` of an entry on a run's progress stream."""

    STARTED = "started"
    FINISHED = "finished"
    FAILED_FAST = "failed_fast"
    BATCH_REPORTED = "batch_reported"
    BATCH_FORCED = "batch_forced"
    LATE = "late"
    AGGREGATED = "aggregated"
    """From the chord callback on a worker (``stored``: whether its report was the
    first); the producer usually stores the report before it."""


class BatchState(StrEnum):
    """A batch's ``state`` field in Redis: in flight, reported once, or forced at the
    stall deadline (a late report may still replace a forced one)."""

    RUNNING = "running"
    REPORTED = "reported"
    FORCED = "forced"


class CancelMode(StrEnum):
    """The cooperative cancel flag of a batch: ``graceful`` lets running members
    finish and starts no new one; ``terminate`` also stops the running ones."""

    GRACEFUL = "graceful"
    TERMINATE = "terminate"
