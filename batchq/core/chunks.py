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

- members known to be tiny: ``python`` subtasks whose callable never took
  ``TINY_S`` or more in its last runs (any feature's; ``state.CALLABLE_RUNS``), and
  neither their ``estimate_s`` nor their own last duration says otherwise. For them a
  message costs more than the work, in a batch of any size;
- otherwise only batches big enough to still make ``MIN_MESSAGES`` messages or more,
  and only ``python`` members not known to be long (``estimate_s`` or the learned
  duration below ``LONG_S``); the others travel alone;
- a chunk's summed budget (timeouts, retries, backoff) stays under the limit the
  broker's visibility timeout allows, like a single subtask's.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

from batchq.models import Subtask

__all__ = ["LONG_S", "MIN_MESSAGES", "TINY_S", "plan", "tiny"]

MIN_MESSAGES = 256
"""A chunked batch still spreads over at least this many messages (workers' slots)."""

LONG_S = 1.0
"""A member known to take this long or longer is never chunked."""

TINY_S = 0.05
"""Work this short costs less than its message: such members share messages."""


def tiny(
    members: Sequence[Subtask],
    agents: Mapping[str, str],
    known_s: Mapping[str, float],
    callable_s: Mapping[str, float],
) -> set[str]:
    """The seqs of ``members`` known to be tiny: ``python`` subtasks whose callable's
    recent runs (``callable_s``: the longest, by callable) all took under ``TINY_S``
    and whose own expected duration (``known_s``: estimate or last run) agrees."""
    found: set[str] = set()
    for sub in members:
        spec = sub.execution.callable_ if sub.execution else None
        if agents[sub.seq] != "python" or spec is None or spec not in callable_s:
            continue
        if callable_s[spec] < TINY_S and known_s.get(sub.seq, 0.0) < TINY_S:
            found.add(sub.seq)
    return found


def plan(
    members: Sequence[Subtask],
    agents: Mapping[str, str],
    known_s: Mapping[str, float],
    budget_s: Callable[[Subtask], float],
    limit_s: float,
    chunk_max: int,
    tiny_seqs: Collection[str] = (),
) -> list[list[Subtask]]:
    """``members`` (in publish order) grouped into messages, ordered by their first
    member: a group of one is a plain subtask message, a larger one a chunk. Members in
    ``tiny_seqs`` (see :func:`tiny`) share chunks of up to ``chunk_max`` in a batch of
    any size; other ``python`` members not known to be long, chunks of the size that
    still leaves ``MIN_MESSAGES`` messages (none in a smaller batch)."""
    spread = min(chunk_max, len(members) // MIN_MESSAGES)
    groups: list[list[Subtask]] = []
    open_: dict[bool, tuple[list[Subtask], float]] = {}  # by tininess; already in groups
    for sub in members:
        is_tiny = sub.seq in tiny_seqs
        size = chunk_max if is_tiny else spread
        chunkable = is_tiny or (agents[sub.seq] == "python" and known_s.get(sub.seq, 0.0) < LONG_S)
        if not chunkable or size < 2:
            groups.append([sub])
            continue
        cost = budget_s(sub)
        current, spent = open_.get(is_tiny, (None, 0.0))
        if current is None or len(current) == size or spent + cost > limit_s:
            current, spent = [], 0.0
            groups.append(current)
        current.append(sub)
        open_[is_tiny] = (current, spent + cost)
    return groups
