"""Pure planning: readiness, dependency levels, parallel-safety checks (SPEC 2).

Nothing here does I/O or imports celery or redis, so every rule is unit-tested on
in-memory :class:`~batchq.models.Feature` objects and the CLI, the producer and the
orchestrator all schedule the same way.

* :func:`problems` / :func:`validate` — duplicate seqs, unknown or self dependencies,
  cycles (``01 -> 02 -> 01``), and invalid or protected paths.
* :func:`plan` — the whole schedule: dependency levels over the subtasks not yet
  completed, each level cut into batches whose members write disjoint paths.
* :func:`check_batch` — every reason an explicit batch is unsafe.
* :func:`ready`, :func:`blocked_view`, :func:`dependency_tree`, :func:`mermaid` — the
  read-only views; they never raise on a broken graph, so ``status`` and friends can
  still print what they can.

``in_progress`` subtasks are planned like ``pending`` ones: ``run`` resets those
without a live claim (SPEC 2), and one still running elsewhere will be completed
before its batch comes up, so the preview shows where it would run again.
"""

from __future__ import annotations

import graphlib
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field

from batchq import layout
from batchq.core.paths import PathError, components, is_protected
from batchq.errors import PlanError, UsageError
from batchq.models import (
    Feature,
    Plan,
    PlannedBatch,
    Subtask,
    SubtaskStatus,
    Violation,
    agent_name,
    file_path,
    seq_key,
)
from batchq.settings import DEFAULT_PROTECTED, Settings

__all__ = [
    "DepNode",
    "PathIndex",
    "Problem",
    "ProblemKind",
    "ViolationKind",
    "blocked_view",
    "check_batch",
    "dependency_tree",
    "mermaid",
    "next_after",
    "plan",
    "plan_for",
    "problems",
    "ready",
    "validate",
]

CODING_BATCH_GUIDANCE = 8
"""Past this many coding-agent (CLI) members a batch gets a warning: the seed's
parallel-execution guidance is "optimal batch size 2–4 tasks, up to 8 if truly
independent" (agents in one workspace step on each other, and review gets harder)."""
GUIDANCE_TEXT = "optimal batch size 2–4 tasks, up to 8 if truly independent"

MAX_CYCLES = 20
"""Cycles reported per feature; each costs a graph pass, and a few make the point."""

_PENDING = SubtaskStatus.PENDING
_COMPLETED = SubtaskStatus.COMPLETED
_BLOCKED = SubtaskStatus.BLOCKED


class ProblemKind(StrEnum):
    DUPLICATE_SEQ = "duplicate_seq"
    UNKNOWN_DEPENDENCY = "unknown_dependency"
    SELF_DEPENDENCY = "self_dependency"
    CYCLE = "cycle"
    INVALID_PATH = "invalid_path"
    PROTECTED_PATH = "protected_path"


class ViolationKind(StrEnum):
    UNKNOWN_SEQ = "unknown_seq"
    DUPLICATE_MEMBER = "duplicate_member"
    DEPENDENCY_IN_BATCH = "dependency_in_batch"
    NOT_PARALLEL = "not_parallel"
    OVERLAP = "overlap"
    NOT_READY = "not_ready"
    INVALID_PATH = "invalid_path"
    PROTECTED_PATH = "protected_path"


class Problem(BaseModel):
    """One semantic problem of a feature; ``message`` is the one line users see."""

    model_config = ConfigDict(frozen=True)

    kind: ProblemKind
    seq: str | None
    file: str
    field: str
    message: str

    def __str__(self) -> str:
        return self.message


class DepNode(BaseModel):
    """One node of a ``deps`` tree. ``cycle`` and ``repeated`` nodes are not expanded:
    the first closes a cycle back to an ancestor, the second was expanded above.

    Built on first use (``defer_build``): only ``deps`` makes one, and building this
    recursive model at import cost every command some 7 ms."""

    model_config = ConfigDict(defer_build=True)

    seq: str
    title: str | None = None
    status: SubtaskStatus | None = None
    missing: bool = False
    cycle: bool = False
    repeated: bool = False
    children: list[DepNode] = Field(default_factory=lambda: [])


def _join(seqs: Iterable[str]) -> str:
    return ", ".join(sorted(seqs, key=seq_key))


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


# --- validation ---------------------------------------------------------------


@dataclass
class _Analysis:
    by_seq: dict[str, Subtask]
    graph: dict[str, list[str]]
    order: list[str] | None
    cycles: list[list[str]]
    problems: list[Problem]


def problems(feature: Feature, protected: Sequence[str] = DEFAULT_PROTECTED) -> list[Problem]:
    """Every semantic problem (seqs, then dependencies, cycles and paths); empty when
    the feature is sound. The read-only views print these after their own output."""
    return _analyse(feature, protected).problems


def validate(feature: Feature, protected: Sequence[str] = DEFAULT_PROTECTED) -> None:
    """Raise :class:`PlanError` listing every problem, or return quietly."""
    _checked(feature, protected)


def _checked(feature: Feature, protected: Sequence[str]) -> _Analysis:
    found = _analyse(feature, protected)
    if found.problems:
        cycle = found.cycles[0] if found.cycles else None
        raise PlanError([p.message for p in found.problems], cycle=cycle)
    return found


def _analyse(feature: Feature, protected: Sequence[str]) -> _Analysis:
    out: list[Problem] = []
    by_seq: dict[str, Subtask] = {}
    for sub in feature.subtasks:
        first = by_seq.setdefault(sub.seq, sub)
        if first is not sub:
            out.append(
                _problem(
                    ProblemKind.DUPLICATE_SEQ,
                    sub.seq,
                    "seq",
                    f"'{sub.seq}' is used by both {first.title!r} and {sub.title!r}; "
                    "expected every seq to be unique",
                )
            )
    graph: dict[str, list[str]] = {}
    for seq in sorted(by_seq, key=seq_key):
        deps: list[str] = []
        for dep in _unique(by_seq[seq].depends_on):
            if dep == seq:
                kind, why = ProblemKind.SELF_DEPENDENCY, f"'{dep}' is the subtask itself"
            elif dep not in by_seq:
                kind, why = ProblemKind.UNKNOWN_DEPENDENCY, f"'{dep}' is not a subtask"
            else:
                deps.append(dep)
                continue
            msg = f"{why}; expected the seq of another subtask of this feature"
            out.append(_problem(kind, seq, "depends_on", msg))
        graph[seq] = deps
    order, cycles = _order(graph)
    for cycle in cycles:
        msg = f"cycle {' -> '.join(cycle)}; expected dependencies without cycles"
        out.append(_problem(ProblemKind.CYCLE, cycle[0], "depends_on", msg))
    out.extend(_path_problems(feature, tuple(protected)))
    return _Analysis(by_seq, graph, order, cycles, out)


def _problem(kind: ProblemKind, seq: str | None, field: str, text: str) -> Problem:
    file = layout.TASK_FILE if seq is None else layout.subtask_file(seq)
    return Problem(kind=kind, seq=seq, file=file, field=field, message=f"{file}: {field}: {text}")


def _order(graph: dict[str, list[str]]) -> tuple[list[str] | None, list[list[str]]]:
    """A dependency-first order, or None and the cycles found (one edge of each is cut
    so the next pass can find the next cycle)."""
    cycles: list[list[str]] = []
    work = graph
    while True:
        try:
            order = list(graphlib.TopologicalSorter(work).static_order())
        except graphlib.CycleError as exc:
            cycle = _cycle_path(exc.args[1])
            cycles.append(cycle)
            if len(cycles) >= MAX_CYCLES:
                return None, cycles
            if work is graph:
                work = {seq: list(deps) for seq, deps in graph.items()}
            work[cycle[0]].remove(cycle[1])
            continue
        return (None if cycles else order), cycles


def _cycle_path(raw: Sequence[str]) -> list[str]:
    """graphlib lists a cycle predecessor-first; turn it into ``a -> b`` meaning
    "a depends on b", starting at the lowest seq so the message is stable."""
    nodes = list(reversed(raw))[:-1]
    start = nodes.index(min(nodes, key=seq_key))
    nodes = nodes[start:] + nodes[:start]
    return [*nodes, nodes[0]]


def _path_problems(feature: Feature, patterns: tuple[str, ...]) -> Iterator[Problem]:
    task = feature.task
    yield from _entry_problems(None, "context_files", map(file_path, task.context_files), patterns)
    refs = map(file_path, task.reference_files)
    yield from _entry_problems(None, "reference_files", refs, patterns)
    for sub in feature.subtasks:
        yield from _subtask_path_problems(sub, patterns)


def _subtask_path_problems(sub: Subtask, patterns: tuple[str, ...]) -> Iterator[Problem]:
    yield from _entry_problems(sub.seq, "deliverables", sub.deliverables, patterns)
    yield from _entry_problems(
        sub.seq, "context_files", map(file_path, sub.context_files), patterns
    )
    refs = map(file_path, sub.reference_files)
    yield from _entry_problems(sub.seq, "reference_files", refs, patterns)


def _entry_problems(
    seq: str | None, field: str, paths: Iterable[str], patterns: tuple[str, ...]
) -> Iterator[Problem]:
    for index, path in enumerate(paths):
        where = f"{field}[{index}]"
        try:
            hit = is_protected(path, patterns)
        except PathError as exc:
            yield _problem(ProblemKind.INVALID_PATH, seq, where, exc.message)
            continue
        if hit is None:
            continue
        if field == "deliverables":
            why = "expected a deliverable outside protected paths"
        else:
            why = "protected files are never read into a prompt; expected an unprotected path"
        text = f"{path!r} is protected by {hit!r}; {why}"
        yield _problem(ProblemKind.PROTECTED_PATH, seq, where, text)


# --- read-only views ------------------------------------------------------------


def _is_completed(by_seq: dict[str, Subtask], seq: str) -> bool:
    dep = by_seq.get(seq)
    return dep is not None and dep.status is _COMPLETED


def ready(feature: Feature) -> list[Subtask]:
    """Subtasks that may start now: ``pending`` with every dependency completed."""
    by_seq = feature.by_seq()
    return [
        sub
        for seq, sub in sorted(by_seq.items(), key=lambda item: seq_key(item[0]))
        if sub.status is _PENDING and all(_is_completed(by_seq, d) for d in sub.depends_on)
    ]


def blocked_view(feature: Feature) -> list[tuple[Subtask, list[str]]]:
    """Pending subtasks still waiting, with the seqs they wait on (unknown ones too)."""
    by_seq = feature.by_seq()
    out: list[tuple[Subtask, list[str]]] = []
    for seq in sorted(by_seq, key=seq_key):
        sub = by_seq[seq]
        if sub.status is not _PENDING:
            continue
        waiting = [d for d in _unique(sub.depends_on) if not _is_completed(by_seq, d)]
        if waiting:
            out.append((sub, sorted(waiting, key=seq_key)))
    return out


def dependency_tree(feature: Feature, seq: str) -> DepNode:
    """The dependencies of ``seq``, recursively, for ``deps``. Never recurses forever:
    a cycle is marked where it closes, a node seen before is marked ``repeated``."""
    by_seq = feature.by_seq()
    top = by_seq.get(seq)
    if top is None:
        raise UsageError(f"feature {feature.name!r} has no subtask {seq!r}")
    root = DepNode(seq=seq, title=top.title, status=top.status)
    expanded = {seq}
    on_path = {seq}
    stack: list[tuple[DepNode, Iterator[str]]] = [(root, iter(_unique(top.depends_on)))]
    while stack:
        node, deps = stack[-1]
        dep = next(deps, None)
        if dep is None:
            stack.pop()
            on_path.discard(node.seq)
            continue
        sub = by_seq.get(dep)
        if sub is None:
            node.children.append(DepNode(seq=dep, missing=True))
            continue
        child = DepNode(seq=dep, title=sub.title, status=sub.status)
        node.children.append(child)
        if dep in on_path:
            child.cycle = True
        elif dep in expanded:
            child.repeated = True
        else:
            expanded.add(dep)
            on_path.add(dep)
            stack.append((child, iter(_unique(sub.depends_on))))
    return root


# --- planning ---------------------------------------------------------------------


@lru_cache(maxsize=32768)
def _keys(path: str) -> tuple[str, tuple[str, ...]]:
    """The normalised path without its trailing slash, and its ancestor folders."""
    comps, _ = components(path)
    ancestors = tuple("/".join(comps[:i]) for i in range(1, len(comps)))
    return "/".join(comps), ancestors


def forget_paths() -> None:
    """Empty the caches of path keys that planning fills (a batch's deliverables are
    split and joined several times while it is planned and checked). A run calls it
    once a batch is published: they hold two entries per member (1.6 MiB at 5,000,
    traced), under everything its wait then allocates."""
    _keys.cache_clear()
    components.cache_clear()


class PathIndex:
    """The deliverables of one batch, indexed so testing a path costs O(its depth)
    rather than O(batch size): equal paths share a key, a folder is found among the
    new path's ancestors, and a new folder finds the paths filed under it."""

    def __init__(self) -> None:
        self._exact: dict[str, list[tuple[str, str]]] = {}
        self._under: dict[str, list[tuple[str, str]]] = {}

    def clashes(self, paths: Iterable[str]) -> Iterator[tuple[str, str, str]]:
        """(our path, their seq, their path) for every indexed path overlapping ours."""
        for path in paths:
            key, ancestors = _keys(path)
            for seq, theirs in self._exact.get(key, ()):
                yield path, seq, theirs
            for seq, theirs in self._under.get(key, ()):
                yield path, seq, theirs
            for folder in ancestors:
                for seq, theirs in self._exact.get(folder, ()):
                    yield path, seq, theirs

    def add(self, seq: str, paths: Iterable[str]) -> None:
        for path in paths:
            key, ancestors = _keys(path)
            self._exact.setdefault(key, []).append((seq, path))
            for folder in ancestors:
                self._under.setdefault(folder, []).append((seq, path))


def plan_for(feature: Feature, settings: Settings) -> Plan:
    """:func:`plan` with a project's settings: its protected paths, ``max_batch`` and
    coding agents. What ``plan`` prints and ``run`` runs."""
    return plan(
        feature,
        settings.protected_paths,
        max_batch=settings.max_batch,
        coding_agents=settings.coding_agents,
    )


def plan(
    feature: Feature,
    protected: Sequence[str] = DEFAULT_PROTECTED,
    *,
    max_batch: int | None = None,
    coding_agents: Collection[str] = (),
) -> Plan:
    """The whole schedule (SPEC 2). Raises :class:`PlanError` on any problem.

    Level k holds the subtasks whose dependencies are completed or in levels < k. A
    level's ``parallel: true`` subtasks fill batches greedily by seq; one whose
    deliverables overlap the current batch, or that would make it larger than
    ``max_batch``, opens the next. Each ``parallel: false`` subtask then runs alone.
    ``blocked`` subtasks, and everything waiting on one, are left out with the reason
    in ``Plan.blocked``. ``PlannedBatch.level`` counts from 1. A batch with more than
    :data:`CODING_BATCH_GUIDANCE` members whose agent is in ``coding_agents`` gets a
    line in ``Plan.warnings``; it is advice, never an error.
    """
    if max_batch is not None and max_batch < 1:
        raise UsageError(f"max_batch: {max_batch}; expected 1 or more")
    found = _checked(feature, protected)
    by_seq, graph = found.by_seq, found.graph
    levels: dict[str, int] = {}
    upstream: dict[str, frozenset[str]] = {}
    left_out: dict[str, str] = {}
    for seq in found.order or []:
        sub = by_seq[seq]
        if sub.status is _COMPLETED:
            continue
        if sub.status is _BLOCKED:
            upstream[seq] = frozenset((seq,))
            left_out[seq] = _blocked_reason(sub)
            continue
        stuck = [d for d in graph[seq] if d in upstream]
        if stuck:
            roots = frozenset().union(*(upstream[d] for d in stuck))
            upstream[seq] = roots
            via = [d for d in stuck if by_seq[d].status is not _BLOCKED]
            left_out[seq] = f"waiting on blocked {_join(roots)}" + (
                f" (via {_join(via)})" if via else ""
            )
            continue
        levels[seq] = 1 + max((levels[d] for d in graph[seq] if d in levels), default=0)

    by_level: dict[int, list[str]] = {}
    for seq in sorted(levels, key=seq_key):
        by_level.setdefault(levels[seq], []).append(seq)
    batches: list[PlannedBatch] = []
    for level in sorted(by_level):
        for seqs, parallel, reasons in _cut_level(by_level[level], by_seq, graph, max_batch):
            after = batches[-1].number if batches else None
            batches.append(
                PlannedBatch(
                    number=len(batches) + 1,
                    level=level,
                    seqs=seqs,
                    parallel=parallel,
                    after=after,
                    reasons=reasons,
                    depends_on=_outside(seqs, by_seq),
                )
            )
    completed = [s for s in sorted(by_seq, key=seq_key) if by_seq[s].status is _COMPLETED]
    blocked = {s: left_out[s] for s in sorted(left_out, key=seq_key)}
    return Plan(
        feature=feature.name,
        batches=batches,
        blocked=blocked,
        completed=completed,
        warnings=_size_warnings(batches, by_seq, frozenset(coding_agents)),
    )


def _size_warnings(
    batches: Sequence[PlannedBatch], by_seq: dict[str, Subtask], coding: frozenset[str]
) -> list[str]:
    warnings: list[str] = []
    for batch in batches:
        cli = [s for s in batch.seqs if agent_name(by_seq[s]) in coding]
        if len(cli) > CODING_BATCH_GUIDANCE:
            warnings.append(
                f"Batch {batch.number} has {len(cli)} coding-agent subtasks "
                f'({_join(cli)}); the guidance is "{GUIDANCE_TEXT}": '
                "set max_batch in batchq.toml (or BATCHQ_MAX_BATCH) to cut it"
            )
    return warnings


def _outside(seqs: Sequence[str], by_seq: dict[str, Subtask]) -> list[str]:
    """The dependencies of a batch's members that are not members themselves."""
    inside = set(seqs)
    deps = {d for s in seqs for d in by_seq[s].depends_on if d not in inside}
    return sorted(deps, key=seq_key)


def next_after(
    feature: Feature, seqs: Sequence[str], protected: Sequence[str] = DEFAULT_PROTECTED
) -> PlannedBatch | None:
    """The feature's next batch once the explicit batch ``seqs`` has completed (what
    ``batchq batch`` names next), numbered 2 after the explicit batch's 1; None when
    nothing would be left to plan."""
    done = set(seqs)
    assumed = feature.model_copy(
        update={
            "subtasks": [
                s.model_copy(update={"status": _COMPLETED}) if s.seq in done else s
                for s in feature.subtasks
            ]
        }
    )
    batches = plan(assumed, protected).batches
    if not batches:
        return None
    return batches[0].model_copy(update={"number": 2, "after": 1})


def _cut_level(
    seqs: list[str],
    by_seq: dict[str, Subtask],
    graph: dict[str, list[str]],
    max_batch: int | None = None,
) -> Iterator[tuple[list[str], bool, dict[str, str]]]:
    """The batches of one level, as (seqs, parallel, reasons), in run order."""

    def why(seq: str) -> str:
        waits = [d for d in graph[seq] if by_seq[d].status is not _COMPLETED]
        text = f"after {_join(waits)}" if waits else "ready now"
        if by_seq[seq].status is SubtaskStatus.IN_PROGRESS:
            text += "; in_progress, planned like pending"
        return text

    members: list[str] = []
    reasons: dict[str, str] = {}
    index = PathIndex()
    for seq in seqs:
        sub = by_seq[seq]
        if not sub.parallel:
            continue
        clash = next(index.clashes(sub.deliverables), None)
        full = max_batch is not None and len(members) >= max_batch
        if members and (clash is not None or full):
            yield members, True, reasons
            members, reasons, index = [], {}, PathIndex()
        members.append(seq)
        reasons[seq] = why(seq)
        if clash is not None:
            mine, other, theirs = clash
            reasons[seq] += f"; deliverable {mine} overlaps {other}'s {theirs}"
        elif full:
            reasons[seq] += f"; the previous batch is full (max_batch {max_batch})"
        index.add(seq, sub.deliverables)
    if members:
        yield members, True, reasons
    for seq in seqs:
        if not by_seq[seq].parallel:
            yield [seq], False, {seq: f"{why(seq)}; parallel: false runs alone"}


def _blocked_reason(sub: Subtask) -> str:
    block = sub.batchq
    if block is None:
        return "status blocked"
    detail = f"{block.result}: {block.error}" if block.error else str(block.result)
    line = detail.splitlines()[0] if detail.strip() else detail
    return f"status blocked ({line[:160]})"


# --- explicit batches ---------------------------------------------------------------


def check_batch(
    feature: Feature, seqs: Sequence[str], protected: Sequence[str] = DEFAULT_PROTECTED
) -> list[Violation]:
    """Every reason the explicit batch ``seqs`` is unsafe; an empty list means safe."""
    by_seq = feature.by_seq()
    out: list[Violation] = []
    members: list[Subtask] = []
    for seq in _unique(seqs):
        sub = by_seq.get(seq)
        if sub is None:
            text = f"{seq} is not a subtask of {feature.name!r}; expected a known seq"
            out.append(_violation(ViolationKind.UNKNOWN_SEQ, [seq], text))
        else:
            members.append(sub)
    for seq in _unique(s for s, n in Counter(seqs).items() if n > 1):
        text = f"{seq} is listed more than once; expected each subtask once"
        out.append(_violation(ViolationKind.DUPLICATE_MEMBER, [seq], text))

    inside = {sub.seq for sub in members}
    patterns = tuple(protected)
    index = PathIndex()
    for sub in members:
        out.extend(_member_violations(sub, by_seq, inside, len(members)))
        for problem in _subtask_path_problems(sub, patterns):
            kind = ViolationKind(problem.kind.value)
            out.append(_violation(kind, [sub.seq], problem.message))
        good = [path for path in sub.deliverables if _is_safe(path, patterns)]
        reported: set[tuple[str, str]] = set()
        for mine, other, theirs in index.clashes(good):
            if (mine, other) in reported:
                continue
            reported.add((mine, other))
            text = (
                f"deliverable {mine} of {sub.seq} overlaps {theirs} of {other}; "
                "expected members to write disjoint paths"
            )
            out.append(_violation(ViolationKind.OVERLAP, [other, sub.seq], text))
        index.add(sub.seq, good)
    return out


def _is_safe(path: str, patterns: tuple[str, ...]) -> bool:
    try:
        return is_protected(path, patterns) is None
    except PathError:
        return False


def _member_violations(
    sub: Subtask, by_seq: dict[str, Subtask], inside: set[str], size: int
) -> Iterator[Violation]:
    deps = _unique(sub.depends_on)
    in_batch = [d for d in deps if d in inside]
    if in_batch:
        text = (
            f"{sub.seq} depends on {_join(in_batch)} in the same batch; "
            "expected dependencies completed before the batch"
        )
        yield _violation(ViolationKind.DEPENDENCY_IN_BATCH, [sub.seq, *in_batch], text)
    if not sub.parallel and size > 1:
        text = f"{sub.seq} is not marked parallel; expected parallel: true in a batch of {size}"
        yield _violation(ViolationKind.NOT_PARALLEL, [sub.seq], text)
    if sub.status is not _PENDING:
        text = f"{sub.seq} is {sub.status.value}; expected pending"
        yield _violation(ViolationKind.NOT_READY, [sub.seq], text)
    waiting = [d for d in deps if d not in inside and not _is_completed(by_seq, d)]
    if waiting:
        states = ", ".join(
            f"{d} ({by_seq[d].status.value if d in by_seq else 'unknown'})"
            for d in sorted(waiting, key=seq_key)
        )
        text = f"{sub.seq} waits on {states}; expected every dependency completed"
        yield _violation(ViolationKind.NOT_READY, [sub.seq, *waiting], text)


def _violation(kind: ViolationKind, seqs: list[str], message: str) -> Violation:
    return Violation(kind=kind.value, seqs=seqs, message=message)


# --- rendering helpers ----------------------------------------------------------------


def mermaid(plan: Plan, feature: Feature) -> str:
    """``plan --mermaid``: one subgraph per batch, completed and blocked subtasks
    outside them, and an edge from each dependency to its dependant."""
    by_seq = feature.by_seq()

    def node(seq: str, mark: str = "") -> str:
        sub = by_seq.get(seq)
        title = f"{seq} - {sub.title}" if sub else seq
        label = " ".join(f"{mark}{title}".split()).replace('"', "#quot;")
        return f's{seq}["{label}"]'

    lines = ["graph TD"]
    for batch in plan.batches:
        when = "ready now" if batch.after is None else f"after batch {batch.after}"
        lines.append(f'  subgraph batch{batch.number}["Batch {batch.number} ({when})"]')
        lines.extend(f"    {node(seq)}" for seq in batch.seqs)
        lines.append("  end")
    lines.extend(f"  {node(seq, '✓ ')}:::completed" for seq in plan.completed)
    lines.extend(f"  {node(seq, '✗ ')}:::blocked" for seq in plan.blocked)
    shown = {s for b in plan.batches for s in b.seqs} | set(plan.completed) | set(plan.blocked)
    for seq in sorted(shown, key=seq_key):
        sub = by_seq.get(seq)
        for dep in _unique(sub.depends_on) if sub else []:
            if dep in shown:
                lines.append(f"  s{dep} --> s{seq}")
    lines.append("  classDef completed fill:#e6f4ea,stroke:#34a853")
    lines.append("  classDef blocked fill:#fce8e6,stroke:#ea4335")
    return "\n".join(lines) + "\n"
