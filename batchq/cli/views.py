"""Pure formatters for the established task-file CLI output (SPEC appendix).

Orchestrators parse these lines, so the established ones are byte-for-byte; batchq's
additions always come after them. Nothing here prints or reads files.
"""

from __future__ import annotations

from collections.abc import Sequence

from batchq import planner
from batchq.models import Feature, Plan, Subtask, SubtaskStatus

__all__ = [
    "ICONS",
    "format_blocked",
    "format_complete",
    "format_deps",
    "format_next",
    "format_parallel",
    "format_problems",
    "format_status",
    "format_validate",
    "progress_percent",
]

ICONS = {
    SubtaskStatus.COMPLETED: "✓",
    SubtaskStatus.IN_PROGRESS: "~",
    SubtaskStatus.PENDING: "○",
    SubtaskStatus.BLOCKED: "✗",
}


def progress_percent(done: int, total: int) -> int:
    """JavaScript's ``Math.round(done / total * 100)``: half up, so 1/8 is 13%."""
    if total == 0:
        return 0
    return (done * 200 + total) // (2 * total)


def _counts(feature: Feature) -> dict[SubtaskStatus, int]:
    counts = dict.fromkeys(SubtaskStatus, 0)
    for sub in feature.subtasks:
        counts[sub.status] += 1
    return counts


def _line(sub: Subtask) -> str:
    return f"  {ICONS[sub.status]} {sub.seq} - {sub.title} [{sub.status.value}]"


def format_problems(problems: Sequence[object]) -> list[str]:
    """batchq's addition to read-only views: the graph problems, after the output."""
    return [f"  ⚠ {p}" for p in problems]


def format_status(feature: Feature, problems: Sequence[object] = ()) -> list[str]:
    counts = _counts(feature)
    done, total = counts[SubtaskStatus.COMPLETED], len(feature.subtasks)
    lines = [
        f"[{feature.name}] {feature.task.name}",
        f"  Status: {feature.task.status.value} | "
        f"Progress: {progress_percent(done, total)}% ({done}/{total})",
        f"  Pending: {counts[SubtaskStatus.PENDING]} | "
        f"In Progress: {counts[SubtaskStatus.IN_PROGRESS]} | "
        f"Completed: {done} | Blocked: {counts[SubtaskStatus.BLOCKED]}",
    ]
    for sub in feature.subtasks:
        line = _line(sub)
        if sub.batchq is not None and sub.status is SubtaskStatus.BLOCKED and sub.batchq.error:
            line += f" ({sub.batchq.result.value}: {sub.batchq.error.splitlines()[0][:120]})"
        lines.append(line)
    return lines + format_problems(problems)


def format_next(features: Sequence[tuple[Feature, Sequence[object]]]) -> list[str]:
    lines = ["=== Ready Tasks (deps satisfied) ===", ""]
    for feature, problems in features:
        ready = planner.ready(feature)
        if not ready and not problems:
            continue
        lines.append(f"[{feature.name}]")
        for sub in ready:
            suffix = "  [parallel]" if sub.parallel else ""
            lines.append(f"  {sub.seq} - {sub.title}{suffix}")
        lines.extend(format_problems(problems))
        lines.append("")
    return lines


def format_parallel(
    features: Sequence[tuple[Feature, Sequence[object], Plan | None]],
) -> list[str]:
    lines = ["=== Parallelizable Tasks Ready Now ===", ""]
    for feature, problems, plan in features:
        ready = [s for s in planner.ready(feature) if s.parallel]
        if ready:
            lines.append(f"[{feature.name}] - {len(ready)} parallel tasks:")
            lines.extend(f"  {sub.seq} - {sub.title}" for sub in ready)
        if plan is not None and plan.batches:
            lines.append("  Projected batches:")
            for batch in plan.batches:
                when = "Ready now" if batch.after is None else f"After Batch {batch.after}"
                lines.append(f"    Batch {batch.number} ({when}): {', '.join(batch.seqs)}")
        lines.extend(format_problems(problems))
        if ready or problems or (plan is not None and plan.batches):
            lines.append("")
    return lines


def _tree_lines(node: planner.DepNode, prefix: str) -> list[str]:
    out: list[str] = []
    for i, child in enumerate(node.children):
        last = i == len(node.children) - 1
        branch = "└── " if last else "├── "
        if child.missing:
            text = f"? {child.seq} - (unknown subtask)"
        else:
            icon = ICONS[child.status] if child.status else "?"
            status = child.status.value if child.status else "unknown"
            text = f"{icon} {child.seq} - {child.title} [{status}]"
            if child.cycle:
                text += " (cycle)"
            elif child.repeated:
                text += " (see above)"
        out.append(f"{prefix}{branch}{text}")
        out.extend(_tree_lines(child, prefix + ("    " if last else "│   ")))
    return out


def format_deps(feature: Feature, seq: str, problems: Sequence[object] = ()) -> list[str]:
    tree = planner.dependency_tree(feature, seq)
    status = tree.status.value if tree.status else "unknown"
    lines = [
        f"=== Dependency Tree: {feature.name}/{tree.seq} ===",
        "",
        f"{tree.seq} - {tree.title} [{status}]",
    ]
    lines.extend(_tree_lines(tree, "  "))
    return lines + format_problems(problems)


def format_blocked(features: Sequence[tuple[Feature, Sequence[object]]]) -> list[str]:
    lines = ["=== Blocked Tasks ===", ""]
    for feature, problems in features:
        waiting = planner.blocked_view(feature)
        stuck = [s for s in feature.subtasks if s.status is SubtaskStatus.BLOCKED]
        if not waiting and not stuck and not problems:
            continue
        lines.append(f"[{feature.name}]")
        for sub, deps in waiting:
            lines.append(f"  {sub.seq} - {sub.title} (waiting: {', '.join(deps)})")
        for sub in stuck:
            why = sub.batchq.error if sub.batchq and sub.batchq.error else "status blocked"
            lines.append(f"  {sub.seq} - {sub.title} (blocked: {why.splitlines()[0][:160]})")
        lines.extend(format_problems(problems))
        lines.append("")
    return lines


def format_complete(feature: Feature, seq: str, summary: str) -> list[str]:
    done, total = feature.completed_count, len(feature.subtasks)
    return [
        f"✓ Marked {feature.name}/{seq} as completed",
        f"  Summary: {summary}",
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
