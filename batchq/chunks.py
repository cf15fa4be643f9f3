"""Which subtasks of a batch share one broker message (pure).

Every message costs the worker's main process about a millisecond whatever its
subtask does: the fetch, kombu's unacked bookkeeping, the ack, the pipes to the pool
process, and the chord's per-member return. For thousands of in-process ``python``
callables that is most of the work, so the producer packs several of them into one
``run_chunk`` message. Only the message is shared: each member keeps its own claim,
recorded result and progress events, its own timeout (the python agent arms its own
alarm), its own retries (run again in place, inside the chunk) and its own entry in
Flower (the chunk sends task events for each member).

A chunk is a static assignment of subtasks to one slot, which a duration-blind
dispatcher should avoid, so chunking stays where it cannot hurt the makespan much:

- only batches big enough to still make ``MIN_MESSAGES`` messages or more;
- only ``python``-agent members not known to be long (``estimate_s`` or the learned
  duration below ``LONG_S``); the others travel alone;
- a chunk's summed budget (timeouts, retries, backoff) stays under the limit the
  broker's visibility timeout allows, like a single subtask's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from batchq.models import Subtask

__all__ = ["LONG_S", "MIN_MESSAGES", "plan"]

MIN_MESSAGES = 256
"""A chunked batch still spreads over at least this many messages (workers' slots)."""

LONG_S = 1.0
"""A member known to take this long or longer is never chunked."""


def plan(
    members: Sequence[Subtask],
    agents: Mapping[str, str],
    known_s: Mapping[str, float],
    budget_s: Callable[[Subtask], float],
    limit_s: float,
    chunk_max: int,
) -> list[list[Subtask]]:
    """``members`` (in publish order) grouped into messages, order kept: a group of one
    is a plain subtask message, a larger one a chunk of at most ``chunk_max``."""
    size = min(chunk_max, len(members) // MIN_MESSAGES)
    if size < 2:
        return [[sub] for sub in members]
    groups: list[list[Subtask]] = []
    current: list[Subtask] = []
    spent = 0.0
    for sub in members:
        if agents[sub.seq] != "python" or known_s.get(sub.seq, 0.0) >= LONG_S:
            groups.append([sub])
            continue
        cost = budget_s(sub)
        if current and (len(current) == size or spent + cost > limit_s):
            groups.append(current)
            current, spent = [], 0.0
        current.append(sub)
        spent += cost
    if current:
        groups.append(current)
    return groups
