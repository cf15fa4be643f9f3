"""The ``status`` block of one feature (SPEC appendix), needing no models.

Both :mod:`batchq.cli.views` (over a validated :class:`~batchq.models.Feature`) and
``status``'s quick path (:mod:`batchq.quickstatus`, over plain JSON) render through
here, so the two cannot drift apart. Pure, and standard library only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from batchq.core.textsafe import terminal_safe

__all__ = ["ICONS", "NO_FEATURES", "StatusRow", "progress_percent", "status_block"]

NO_FEATURES = "No active features found."

ICONS = {
    "completed": "✓",
    "in_progress": "~",
    "pending": "○",
    "blocked": "✗",
}
"""Keyed by the status values (a ``SubtaskStatus`` is a ``StrEnum``, so it finds them)."""


@dataclass(frozen=True, slots=True)
class StatusRow:
    """One subtask as ``status`` shows it; ``error`` only for a blocked one."""

    seq: str
    title: str
    status: str
    result: str | None = None
    error: str | None = None


def progress_percent(done: int, total: int) -> int:
    """JavaScript's ``Math.round(done / total * 100)``: half up, so 1/8 is 13%."""
    if total == 0:
        return 0
    return (done * 200 + total) // (2 * total)


def status_block(
    name: str, task_name: str, task_status: str, rows: Sequence[StatusRow]
) -> list[str]:
    """The established ``status`` lines of one feature (SPEC appendix), problems not
    included: the header, the progress, the counts, then one line per subtask."""
    counts = dict.fromkeys(ICONS, 0)
    for row in rows:
        counts[row.status] += 1
    done, total = counts["completed"], len(rows)
    lines = [
        f"[{name}] {task_name}",
        f"  Status: {task_status} | Progress: {progress_percent(done, total)}% ({done}/{total})",
        f"  Pending: {counts['pending']} | In Progress: {counts['in_progress']} | "
        f"Completed: {done} | Blocked: {counts['blocked']}",
    ]
    for row in rows:
        line = f"  {ICONS[row.status]} {row.seq} - {terminal_safe(row.title)} [{row.status}]"
        if row.status == "blocked" and row.result is not None and row.error:
            first = terminal_safe(row.error.splitlines()[0])
            line += f" ({row.result}: {first[:120]})"
        lines.append(line)
    return lines
