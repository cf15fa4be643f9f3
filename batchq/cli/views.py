"""Pure formatters for the established task-file CLI output (SPEC appendix).

Orchestrators parse these lines, so the established ones are byte-for-byte; batchq's
additions always come after them. Nothing here prints or reads files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from batchq.core import planner
from batchq.core.statusview import ICONS, NO_FEATURES, StatusRow, progress_percent, status_block
from batchq.core.textsafe import inline, terminal_safe
from batchq.models import Feature, Plan, Subtask, SubtaskStatus, seq_key

__all__ = [
    "ICONS",
    "NO_FEATURES",
    "DepRow",
    "dep_rows",
    "format_blocked",
    "format_changed",
    "format_complete",
    "format_deps",
    "format_next",
    "format_parallel",
    "format_problems",
    "format_reruns",
    "format_status",
    "format_validate",
    "progress_percent",
]


_BLOCKED = SubtaskStatus.BLOCKED


def format_problems(problems: Sequence[object]) -> list[str]:
    """batchq's addition to read-only views: the graph problems, after the output."""
    return [f"  ⚠ {p}" for p in problems]


def format_status(feature: Feature, problems: Sequence[object] = ()) -> list[str]:
    rows = [
        StatusRow(
            sub.seq,
            str(sub.title),
            sub.status.value,
            None if sub.batchq is None else sub.batchq.result.value,
            None if sub.batchq is None else sub.batchq.error,
        )
        for sub in feature.subtasks
    ]
    task = feature.task
    return status_block(feature.name, task.name, task.status.value, rows) + format_problems(
        problems
    )


def format_next(features: Sequence[tuple[Feature, Sequence[object]]]) -> list[str]:
    lines = ["=== Ready Tasks (deps satisfied) ===", ""]
    for feature, problems in features:
        ready = planner.ready(feature)
        if not ready and not problems:
            continue
        lines.append(f"[{feature.name}]")
        for sub in ready:
            kind = "[parallel]" if sub.parallel else "[sequential]"
            lines.append(f"  {sub.seq} - {terminal_safe(str(sub.title))}  {kind}")
        lines.extend(format_problems(problems))
        lines.append("")
    return lines


def format_parallel(
    features: Sequence[tuple[Feature, Sequence[object], Plan | None]],
) -> list[str]:
    lines = ["=== Parallelizable Tasks Ready Now ===", ""]
    for feature, problems, plan in features:
        ready = [s for s in planner.ready(feature) if s.parallel]
        batches = plan.batches if plan is not None else []
        if ready:
            lines.append(f"[{feature.name}] - {len(ready)} parallel tasks:")
            lines.extend(f"  {sub.seq} - {terminal_safe(str(sub.title))}" for sub in ready)
        elif batches or problems:
            lines.append(f"[{feature.name}]")
        if batches:
            lines.append("  Projected batches:")
            for batch in batches:
                when = "Ready now" if batch.after is None else f"After Batch {batch.after}"
                lines.append(f"    Batch {batch.number} ({when}): {', '.join(batch.seqs)}")
        lines.extend(format_problems(problems))
        if ready or problems or batches:
            lines.append("")
    return lines


@dataclass(frozen=True)
class DepRow:
    """One dependency of a ``deps`` tree, flattened: ``depth`` 1 is a direct
    dependency, ``parent`` the seq it hangs under, ``last`` whether it closes its
    parent's list (for the branch glyph)."""

    node: planner.DepNode
    depth: int
    parent: str
    last: bool
    prefix: str


def dep_rows(tree: planner.DepNode, prefix: str = "  ") -> list[DepRow]:
    """The tree below ``tree`` in print order, without recursion: a chain thousands of
    subtasks deep must neither exhaust the stack nor be cut short."""
    rows: list[DepRow] = []
    stack: list[tuple[planner.DepNode, int, str, int]] = [(tree, 0, prefix, 1)]
    while stack:
        parent, index, indent, depth = stack.pop()
        if index >= len(parent.children):
            continue
        stack.append((parent, index + 1, indent, depth))
        child = parent.children[index]
        last = index == len(parent.children) - 1
        rows.append(DepRow(child, depth, parent.seq, last, indent))
        if child.children:
            stack.append((child, 0, indent + ("    " if last else "│   "), depth + 1))
    return rows


def _node_text(node: planner.DepNode, by_seq: dict[str, Subtask]) -> str:
    # The established tool prints "? 09 - NOT FOUND" and repeats a shared dependency
    # in full; batchq expands it once and marks later copies "(see above)" only when
    # it has dependencies of its own to elide, so leaf lines stay byte-identical.
    if node.missing:
        return f"? {node.seq} - NOT FOUND"
    icon = ICONS[node.status] if node.status else "?"
    status = node.status.value if node.status else "unknown"
    text = f"{icon} {node.seq} - {terminal_safe(str(node.title))} [{status}]"
    if node.cycle:
        text += " (cycle)"
    elif node.repeated and by_seq[node.seq].depends_on:
        text += " (see above)"
    return text


def _tree_lines(tree: planner.DepNode, prefix: str, by_seq: dict[str, Subtask]) -> list[str]:
    return [
        f"{row.prefix}{'└── ' if row.last else '├── '}{_node_text(row.node, by_seq)}"
        for row in dep_rows(tree, prefix)
    ]


def format_deps(feature: Feature, seq: str, problems: Sequence[object] = ()) -> list[str]:
    tree = planner.dependency_tree(feature, seq)
    status = tree.status.value if tree.status else "unknown"
    lines = [
        f"=== Dependency Tree: {feature.name}/{tree.seq} ===",
        "",
        f"{tree.seq} - {terminal_safe(str(tree.title))} [{status}]",
    ]
    if tree.children:
        lines.extend(_tree_lines(tree, "  ", feature.by_seq()))
    else:
        lines.append("  └── (no dependencies)")
    return lines + format_problems(problems)


def format_blocked(features: Sequence[tuple[Feature, Sequence[object]]]) -> list[str]:
    lines = ["=== Blocked Tasks ===", ""]
    for feature, problems in features:
        rows = [(sub, f"waiting: {', '.join(deps)}") for sub, deps in planner.blocked_view(feature)]
        rows += [(s, _blocked_reason(s)) for s in feature.subtasks if s.status is _BLOCKED]
        if not rows and not problems:
            continue
        lines.append(f"[{feature.name}]")
        rows.sort(key=lambda row: seq_key(row[0].seq))
        lines.extend(f"  {sub.seq} - {terminal_safe(str(sub.title))} ({why})" for sub, why in rows)
        lines.extend(format_problems(problems))
        lines.append("")
    return lines


def _blocked_reason(sub: Subtask) -> str:
    """``explicitly blocked`` as the established tool says, or batchq's own reason."""
    block = sub.batchq
    if block is None:
        return "explicitly blocked"
    detail = f"{block.result.value}: {inline(block.error)}" if block.error else block.result.value
    lines = detail.splitlines()
    return (lines[0] if lines else detail)[:160]


def format_complete(feature: Feature, seq: str, summary: str) -> list[str]:
    done, total = feature.completed_count, len(feature.subtasks)
    return [
        f"✓ Marked {feature.name}/{seq} as completed",
        f"  Summary: {inline(summary)}",
        f"  Progress: {done}/{total}",
    ]


def format_validate(results: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
    lines = ["=== Validation Results ===", ""]
    for name, errors in results:
        lines.append(f"[{name}]")
        if errors:
            lines.extend(f"  ✗ ERROR: {e}" for e in errors)
        else:
            lines.append("  ✓ All checks passed")
        lines.append("")
    return lines


def format_reruns(reruns: Mapping[str, Sequence[str]]) -> list[str]:
    """One line per completed subtask that reruns, with every reason:
    ``↻ 02 reruns: context file docs/api.md changed; definition changed``."""
    return [f"↻ {seq} reruns: {'; '.join(reasons)}" for seq, reasons in reruns.items()]


def format_changed(feature: Feature, reruns: Mapping[str, Sequence[str]]) -> list[str]:
    """``batchq changed``: what ``run --changed`` would rerun before planning."""
    if not reruns:
        return [f"Nothing changed: every completed subtask of {feature.name} is up to date."]
    return [
        *format_reruns(reruns),
        "  (their completed dependents are rechecked when they complete again)",
    ]
