"""Pure flow scheduling: which subtask may be enqueued now, without batch barriers.

Batch mode waits for a whole planned batch before the next one starts; flow mode
enqueues a subtask as soon as its own dependencies are completed. The parallel-safety
rules of the plan still hold at every moment: two subtasks whose deliverables overlap
(the planner's notion) are never in flight together, and a ``parallel: false``
subtask is in flight alone. The plan's batches stay the unit of reporting: a batch
*closes* once each of its members finished or was skipped.

"In flight" starts at enqueue, not at the worker's start: a queued message may start
at any moment, so the scheduler treats it as running. Nothing here does I/O; the
orchestrator feeds it the results it reads and publishes what it answers. The state
is kept incrementally (unmet-dependency counts, a ready set), so a finished event
costs the size of its dependents and of the ready set, not of the feature.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from batchq.core.planner import PathIndex
from batchq.models import Feature, Plan, PlannedBatch, ResultState, seq_key

__all__ = ["FlowSchedule", "Skip"]

_WHAT = {
    ResultState.FAILED: "failed",
    ResultState.TIMED_OUT: "timed out",
    ResultState.CANCELLED: "was cancelled",
}


@dataclass(frozen=True)
class Skip:
    """A subtask flow mode will not run in this run, and why."""

    seq: str
    reason: str
    cause: str | None = None
    """The failed subtask behind the skip; None when the run stopped."""


class FlowSchedule:
    """The state of one flow-mode run over the subtasks of ``plan``.

    ``weights`` (seconds, estimate or learned) order simultaneously ready subtasks
    longest first, like batch mode's publish order; unknown ones count as 0 and fall
    back to plan order (batch, then seq).
    """

    def __init__(
        self, feature: Feature, plan: Plan, weights: Mapping[str, float] | None = None
    ) -> None:
        by_seq = feature.by_seq()
        self.batches: list[PlannedBatch] = list(plan.batches)
        self.batch_of = {s: b.number for b in plan.batches for s in b.seqs}
        self.todo = {s: by_seq[s] for s in self.batch_of}
        # Dependencies outside the plan are completed (the planner leaves blocked
        # subtasks and their dependents out), so only planned ones are waited on.
        deps = {s: {d for d in sub.depends_on if d in self.todo} for s, sub in self.todo.items()}
        self.dependents: dict[str, list[str]] = {s: [] for s in self.todo}
        for seq in sorted(deps, key=seq_key):
            for dep in deps[seq]:
                self.dependents[dep].append(seq)
        self._unmet = {s: len(d) for s, d in deps.items()}
        weights = weights or {}
        self._rank = {s: (-weights.get(s, 0.0), self.batch_of[s], seq_key(s)) for s in self.todo}
        self.waiting: set[str] = set(self.todo)
        self.ready_set: set[str] = {s for s, n in self._unmet.items() if n == 0}
        self.in_flight: set[str] = set()
        self.results: dict[str, ResultState] = {}
        self.skipped: dict[str, str] = {}
        self.causes: dict[str, str] = {}
        """Skipped seq -> the failed subtask it was skipped because of."""
        self.stopped: str | None = None
        self._open = {b.number: len(b.seqs) for b in plan.batches}

    # --- questions ---------------------------------------------------------------

    @property
    def done(self) -> bool:
        return not self.in_flight and not self.waiting

    def ready(self) -> list[str]:
        """What may be enqueued now, in publish order; call :meth:`enqueued` for each.

        A ready ``parallel: false`` subtask holds back everything ranked after it,
        so the in-flight set drains and it gets its turn instead of starving behind
        a stream of newly ready parallel ones.
        """
        if self.stopped is not None or not self.ready_set:
            return []
        if any(not self.todo[s].parallel for s in self.in_flight):
            return []  # an exclusive one is in flight
        busy = bool(self.in_flight)
        index = PathIndex()
        for seq in self.in_flight:
            index.add(seq, self.todo[seq].deliverables)
        picked: list[str] = []
        for seq in sorted(self.ready_set, key=self._rank.__getitem__):
            sub = self.todo[seq]
            if not sub.parallel:
                if not busy:
                    picked.append(seq)
                break  # alone, or after the drain; hold back the rest
            if next(index.clashes(sub.deliverables), None) is not None:
                continue
            picked.append(seq)
            busy = True
            index.add(seq, sub.deliverables)
        return picked

    def members_left(self, number: int) -> int:
        """Members of batch ``number`` neither finished nor skipped."""
        return self._open[number]

    # --- transitions ---------------------------------------------------------------

    def enqueued(self, seq: str) -> None:
        if seq not in self.ready_set:
            raise ValueError(f"{seq} is not ready to be enqueued")
        self.ready_set.discard(seq)
        self.waiting.discard(seq)
        self.in_flight.add(seq)

    def finished(self, seq: str, result: ResultState) -> list[Skip]:
        """Record a final result; a failed one skips every transitive dependent."""
        if seq not in self.in_flight:
            return []  # a duplicate event (at-least-once) or a seq outside the run
        self.in_flight.discard(seq)
        self.results[seq] = result
        self._open[self.batch_of[seq]] -= 1
        if result is not ResultState.COMPLETED:
            # A cancelled dependency is nobody's fault: its dependents have no cause.
            cause = None if result is ResultState.CANCELLED else seq
            return self._skip_dependents(seq, _WHAT[result], cause)
        for dep in self.dependents[seq]:
            self._unmet[dep] -= 1
            if self._unmet[dep] == 0 and dep in self.waiting:
                self.ready_set.add(dep)
        return []

    def stop(self, reason: str) -> list[Skip]:
        """Enqueue nothing more (``terminate``, a deadline): every waiting subtask is
        skipped with ``reason``; in-flight ones still report."""
        self.stopped = self.stopped or reason
        out = [Skip(s, reason) for s in sorted(self.waiting, key=seq_key)]
        for skip in out:
            self._skip(skip)
        return out

    def _skip(self, skip: Skip) -> None:
        self.waiting.discard(skip.seq)
        self.ready_set.discard(skip.seq)
        self.skipped[skip.seq] = skip.reason
        if skip.cause is not None:
            self.causes[skip.seq] = skip.cause
        self._open[self.batch_of[skip.seq]] -= 1

    def _skip_dependents(self, failed: str, what: str, cause: str | None) -> list[Skip]:
        out: list[Skip] = []
        frontier = [(failed, f"{failed}, which {what}")]
        while frontier:
            seq, why = frontier.pop()
            for dep in self.dependents[seq]:
                if dep not in self.waiting:
                    continue  # already skipped through another failed dependency
                skip = Skip(dep, f"depends on {why}", cause)
                self._skip(skip)
                out.append(skip)
                frontier.append((dep, f"{dep}, which was skipped ({failed} {what})"))
        return sorted(out, key=lambda s: seq_key(s.seq))
