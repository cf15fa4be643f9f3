"""Who wrote an undeclared path: the pure half of write-set enforcement.

A subtask declares its deliverables; nothing stops its agent from writing elsewhere.
The worker takes a snapshot (:mod:`batchq.files.snapshot`) right before the agent runs
and right after it, and keeps the :func:`changed` paths that are not its own
deliverables (:func:`outside`). That view is honest but not exact: a sibling running
at the same time writes into the same workspace. So the blame is decided later, by the
batch report, which knows every member's deliverables and window (:func:`blame`):

* a path some member of the batch declared is never blamed on anyone;
* a path observed by subtask S is blamed on S only when no other member ran during
  any part of S's window;
* otherwise it is reported at batch level with the members whose windows saw it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from batchq.core.paths import PathError, components
from batchq.models import SubtaskResult, UndeclaredWrite, seq_key

__all__ = ["Blame", "Signature", "Window", "blame", "changed", "outside"]

Signature = tuple[str, int, int, int]
"""(git status code or "", size, mtime_ns, inode); a vanished file is (code, -1, -1, -1)."""


def changed(before: Mapping[str, Signature], after: Mapping[str, Signature]) -> list[str]:
    """Paths added, removed or modified between two snapshots, sorted."""
    keys = set(before) | set(after)
    return sorted(k for k in keys if before.get(k) != after.get(k))


def _covered(path: str, declared: Iterable[str]) -> bool:
    """Whether ``path`` is a declared deliverable or inside a declared folder."""
    comps, _ = components(path)
    for item in declared:
        try:
            own, _ = components(item)
        except PathError:
            continue
        if comps[: len(own)] == own:
            return True
    return False


def outside(paths: Iterable[str], declared: Sequence[str]) -> list[str]:
    """The ``paths`` not covered by ``declared`` (files, or folders ending in ``/``)."""
    return [p for p in paths if not _covered(p, declared)]


@dataclass(frozen=True)
class Blame:
    """The verdict for one batch: paths per guilty member, and the unattributable rest."""

    by_seq: dict[str, list[str]]
    batch_level: list[UndeclaredWrite]


def _window(result: SubtaskResult) -> tuple[datetime, datetime] | None:
    if result.started_at is None or result.finished_at is None:
        return None
    return result.started_at, result.finished_at


def _overlap(a: tuple[datetime, datetime] | None, b: tuple[datetime, datetime] | None) -> bool:
    """Unknown windows overlap everything: an unknown cannot clear a suspect."""
    if a is None or b is None:
        return True
    return a[0] <= b[1] and b[0] <= a[1]


Window = tuple[datetime, datetime | None]
"""A subtask's time in flight outside the batch: start and end (None: still running)."""


def _reasons(
    seq: str, siblings: Sequence[str], outsiders: int, missing: Sequence[str]
) -> list[str]:
    """Why ``seq`` cannot be blamed alone for what it saw (empty: it can)."""
    out = [" and ".join(sorted((seq, o), key=seq_key)) + " overlapped" for o in siblings]
    if outsiders:
        many = "s" if outsiders > 1 else ""
        out.append(f"{seq} overlapped {outsiders} subtask{many} of other batches")
    if missing:
        out.append(f"{', '.join(missing)} left no result (its window is unknown)")
    return out


def blame(
    results: Sequence[SubtaskResult],
    declared: Mapping[str, Sequence[str]],
    missing: Sequence[str] = (),
    others: Sequence[Window] = (),
) -> Blame:
    """Decide who wrote each undeclared path (see the module docstring).

    ``declared`` maps every member's seq to its deliverables (flow mode: every subtask
    of the run, since other batches' members run alongside); ``missing`` members never
    reported, so their windows are unknown and they may have run alongside anyone;
    ``others`` are the windows of subtasks outside the batch that were in flight
    meanwhile (flow mode), which clear no suspect either.
    """
    union = [item for items in declared.values() for item in items]
    windows = {r.seq: _window(r) for r in results}
    outside_windows = [
        (start, end or datetime.max.replace(tzinfo=start.tzinfo)) for start, end in others
    ]
    by_seq: dict[str, list[str]] = {}
    seen_by: dict[str, list[str]] = {}
    why: dict[str, list[str]] = {}
    for result in results:
        stray = outside(result.observed_writes, union)
        if not stray:
            continue
        mine = windows[result.seq]
        siblings = sorted(
            (o for o in windows if o != result.seq and _overlap(mine, windows[o])), key=seq_key
        )
        outsiders = sum(1 for w in outside_windows if _overlap(mine, w))
        reasons = _reasons(result.seq, siblings, outsiders, missing)
        for path in stray:
            if not reasons:
                by_seq.setdefault(result.seq, []).append(path)
            else:
                seen_by.setdefault(path, []).append(result.seq)
                why.setdefault(path, []).extend(r for r in reasons if r not in why[path])
    batch_level = [
        UndeclaredWrite(
            path=path, candidates=sorted(set(seqs), key=seq_key), reason="; ".join(why[path])
        )
        for path, seqs in sorted(seen_by.items())
    ]
    return Blame(by_seq={k: sorted(v) for k, v in by_seq.items()}, batch_level=batch_level)
