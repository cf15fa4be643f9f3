"""What an isolated subtask's result may change in the workspace: the pure half of
merging back (:mod:`batchq.run.merge` reads git and writes files).

Under isolation every agent worked in its own worktree at its snapshot (its batch's,
or in flow mode its wave's), so what it changed is known exactly: the paths its
result commit changes against that snapshot. Blame needs no time windows. Of those
paths

* the ones covered by the subtask's *own* declared deliverables are merged, as a
  3-way merge against the snapshot: when the workspace still has the snapshot's
  content the result's wins; when the workspace already has the result's content
  there is nothing to do; otherwise the workspace changed that path meanwhile (the
  user, or a member merged earlier) and that is a conflict — the workspace keeps
  its version and the subtask fails naming the paths;
* every other path is an undeclared write (a *stray*), never applied: reported under
  ``warn``, failing the subtask under ``fail``, ignored under ``off``.

A subtask that fails (conflict, or a stray under ``fail``) merges nothing: half a
result is worse than none, and its patch stays available (``batchq diff``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from batchq.core.blame import outside
from batchq.models import WriteCheck

__all__ = ["Content", "Verdict", "decide"]

Content = tuple[str, str]
"""(mode, blob id) of one path; a path absent on a side is missing from its mapping."""


@dataclass(frozen=True)
class Verdict:
    """What to do with one subtask's result."""

    apply: list[str] = field(default_factory=list)
    """Declared paths to take from the result (write, or delete when it has none)."""
    strays: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    failure: str | None = None
    """Why the subtask fails at merge time; None when it merges."""


def decide(
    changed: Sequence[str],
    deliverables: Sequence[str],
    base: Mapping[str, Content],
    ours: Mapping[str, Content],
    theirs: Mapping[str, Content],
    write_check: WriteCheck,
) -> Verdict:
    """The verdict for one subtask: ``changed`` are its result's paths, ``base`` /
    ``ours`` / ``theirs`` the contents of the declared ones among them in the
    snapshot, the workspace now and the result."""
    strays = sorted(outside(changed, deliverables))
    declared = sorted(set(changed) - set(strays))
    apply: list[str] = []
    conflicts: list[str] = []
    for path in declared:
        now, was, new = _oid(ours, path), _oid(base, path), _oid(theirs, path)
        if now == new:
            continue  # already what the subtask made
        if now != was:
            conflicts.append(path)
        else:
            apply.append(path)
    failure: str | None = None
    if conflicts:
        failure = (
            f"merge conflict: the workspace changed {', '.join(conflicts)} during the "
            "batch; the workspace keeps its version and nothing of this subtask was merged"
        )
    elif strays and write_check is WriteCheck.FAIL:
        failure = (
            f"undeclared write: {', '.join(strays)} (declared: {', '.join(deliverables)}); "
            "not merged"
        )
    shown = strays if write_check is not WriteCheck.OFF else []
    if failure is not None:
        return Verdict(apply=[], strays=shown, conflicts=conflicts, failure=failure)
    return Verdict(apply=apply, strays=shown, conflicts=[], failure=None)


def _oid(side: Mapping[str, Content], path: str) -> str | None:
    """Content identity; the mode is left out (a filesystem without an executable bit,
    or ``core.fileMode=false``, must not turn every path into a conflict)."""
    found = side.get(path)
    return found[1] if found is not None else None
