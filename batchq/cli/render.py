"""Turn reports and plans into text and Rich objects; never print.

The CLI computes, then renders, then sets the exit code (STYLE 12). Keeping the
renderers pure means each format is tested alone and the Markdown that orchestrators
parse (SPEC 4's seed format) cannot drift with console state. Everything a worker wrote
(titles, errors, output) goes into Rich as :class:`~rich.text.Text`, never as markup,
so a ``[red]`` in a subtask's output is shown, not interpreted.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from batchq.core.textsafe import inline, terminal_safe
from batchq.models import (
    BatchReport,
    BatchStatus,
    DeliverableCheck,
    Feature,
    Plan,
    ResultState,
    SkippedSubtask,
    SubtaskResult,
    WriteCheck,
    seq_key,
)

if TYPE_CHECKING:
    from rich.table import Table
    from rich.text import Text

__all__ = [
    "format_duration",
    "markdown_lines",
    "render_json",
    "render_markdown",
    "render_plan",
    "render_table",
]

TAIL_LINES = 20

_ICONS: dict[ResultState, str] = {
    ResultState.COMPLETED: "✅",
    ResultState.FAILED: "❌",
    ResultState.TIMED_OUT: "⏱",
    ResultState.CANCELLED: "⊘",
}
_STYLES: dict[ResultState, str] = {
    ResultState.COMPLETED: "green",
    ResultState.FAILED: "red",
    ResultState.TIMED_OUT: "yellow",
    ResultState.CANCELLED: "dim",
}
_MISSING_ICON = "⚠"
_SKIPPED_ICON = "⏭"


def format_duration(seconds: float) -> str:
    """Human durations: ``2.1s`` under a minute, ``4m 12s``, then ``1h 02m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


_STATUS_LINES: dict[BatchStatus, str] = {
    BatchStatus.COMPLETED: "✅ ALL COMPLETED",
    BatchStatus.PARTIAL_FAILURE: "❌ PARTIAL FAILURE",
    BatchStatus.CANCELLED: "⊘ CANCELLED",
}
_HEADINGS: dict[BatchStatus, str] = {
    BatchStatus.COMPLETED: "Execution Complete",
    BatchStatus.PARTIAL_FAILURE: "Execution FAILED",
    BatchStatus.CANCELLED: "Execution CANCELLED",
}


def _status_line(report: BatchReport) -> str:
    return _STATUS_LINES[report.status]


def _percent(rate: float) -> str:
    """``100%``, ``66.7%``: the seed's whole percentages, a decimal only when needed."""
    return f"{rate:.1f}".removesuffix(".0") + "%"


def _deliverables(checks: list[DeliverableCheck]) -> str:
    """Plain paths when all were verified; otherwise mark each one ✓ or ✗."""
    if all(c.verified for c in checks):
        return ", ".join(inline(c.path) for c in checks)
    return ", ".join(f"{'✓' if c.verified else '✗'} {inline(c.path)}" for c in checks)


def _tail(output: str) -> list[str]:
    """The output's last lines, each made safe (they are indented under the result,
    so none can stand for a heading or a field of the report)."""
    lines = output.rstrip("\n").splitlines()
    return [terminal_safe(line).rstrip() for line in lines[-TAIL_LINES:]]


def _headline(result: SubtaskResult) -> str:
    """The seed's ``✅ Subtask 01 - <title>``; a failed or timed-out one is
    ``❌ Subtask 02 - FAILED: <error>`` (its title follows as an extra)."""
    if result.result in (ResultState.FAILED, ResultState.TIMED_OUT):
        error = inline(result.error or result.error_type or result.result.value)
        return f"❌ Subtask {result.seq} - FAILED: {error}"
    return f"{_ICONS[result.result]} Subtask {result.seq} - {terminal_safe(result.title)}"


def _result_block(result: SubtaskResult) -> list[str]:
    lines = [_headline(result), f"   - Status: {result.result.value}"]
    if result.deliverables:
        lines.append(f"   - Deliverables: {_deliverables(result.deliverables)}")
    if result.summary:
        lines.append(f"   - Summary: {inline(result.summary)}")
    if not result.ok and result.result is not ResultState.CANCELLED:
        lines.append(f"   - Title: {inline(result.title)}")
    elif result.result is ResultState.CANCELLED and result.error:
        lines.append(f"   - Reason: {inline(result.error)}")
    if result.undeclared_writes:
        paths = ", ".join(inline(p) for p in result.undeclared_writes)
        lines.append(f"   - Undeclared writes: {paths}")
    if result.diffstat:  # isolation: `batchq diff` prints the patch
        lines.append(f"   - Diff: {result.diffstat}")
    if not result.ok:
        tail = _tail(result.output_tail)
        if tail:
            lines.append("   - Output (tail):")
            lines.extend(f"     {line}" for line in tail)
    facts = [f"Duration: {format_duration(result.duration_s)}"]
    if result.worker:
        facts.append(f"Worker: {result.worker}")
    if result.attempts > 1:
        facts.append(f"Attempts: {result.attempts}")
    lines.append("   - " + " · ".join(facts))
    if not result.ok and result.log_path:
        lines.append(f"   - Log: {result.log_path}")
    return lines


def _missing_block(seq: str) -> list[str]:
    return [
        f"❌ Subtask {seq} - FAILED: no result received",
        "   - Status: failed",
        "   - Reason: no result before the batch deadline (worker lost or message lost)",
    ]


def _skipped_block(skip: SkippedSubtask) -> list[str]:
    title = f" - {inline(skip.title)}" if skip.title else ""
    return [
        f"{_SKIPPED_ICON} Subtask {skip.seq}{title}",
        "   - Status: skipped",
        f"   - Reason: {skip.reason}",
    ]


def _statistics(report: BatchReport) -> list[str]:
    """The seed's four lines, then what batchq adds: the counts the seed has no line
    for (only when not zero), and the timings."""
    lines = [
        f"- Total tasks: {report.total}",
        f"- Completed: {report.completed}",
        f"- Failed: {report.failed}",
        f"- Success rate: {_percent(report.success_rate)}",
    ]
    timed_out = sum(1 for r in report.results if r.result is ResultState.TIMED_OUT)
    extras = [
        ("Timed out (counted in Failed)", timed_out),
        ("No result (counted in Failed)", len(report.missing)),
        ("Cancelled", report.cancelled),
        ("Skipped", report.skipped_count),
    ]
    lines += [f"- {label}: {n}" for label, n in extras if n]
    if report.undeclared_writes:
        # Not a member's failure, so not in Failed; under ``fail`` it fails the batch.
        effect = "fail the batch" if report.write_check is WriteCheck.FAIL else "warning"
        lines.append(f"- Undeclared writes ({effect}): {len(report.undeclared_writes)}")
    timing = (
        f"- Wall time: {format_duration(report.wall_s)}"
        f" · Summed subtask time: {format_duration(report.work_s)}"
    )
    if report.speedup > 0:
        timing += f" · Parallel speed-up: {report.speedup:.1f}×"
    return [*lines, timing]


def _next_steps(report: BatchReport) -> list[str]:
    """In the seed's words: "Batch 1 complete. Ready to proceed to Batch 2 (subtask
    04)." then "Batch 2 depends on: ... (all now satisfied)."; after a failure
    "Recommendation: Fix subtask 02 before proceeding to Batch 2."."""
    step = report.next
    if report.status is BatchStatus.COMPLETED:
        lines = [step.recommendation or f"Batch {report.batch} complete."]
        if step.batch is not None:
            if step.depends_on:
                deps = ", ".join(step.depends_on)
                lines.append(f"Batch {step.batch} depends on: {deps} (all now satisfied).")
            else:
                lines.append(f"Batch {step.batch} depends on: nothing.")
        return lines
    if report.status is BatchStatus.CANCELLED:
        return [step.recommendation]
    lines = [f"Recommendation: {step.recommendation}"]
    if step.batch is not None:
        lines.append(
            f"Batch {step.batch} ({', '.join(step.seqs)}) does not start; "
            f"rerun `batchq run {report.feature}` once it is fixed."
        )
    return lines


def _results(report: BatchReport) -> Iterator[str]:
    """Every member's block in seq order (results, then missing, then skipped ones for
    a seq in several), each made as it is read: at thousands of members, every block
    at once was several MiB beside the report."""
    order = [(r.seq, 0, i) for i, r in enumerate(report.results)]
    order += [(seq, 1, i) for i, seq in enumerate(report.missing)]
    order += [(skip.seq, 2, i) for i, skip in enumerate(report.skipped)]
    order.sort(key=lambda entry: seq_key(entry[0]))
    for seq, kind, index in order:
        if kind == 0:
            yield from _result_block(report.results[index])
        elif kind == 1:
            yield from _missing_block(seq)
        else:
            yield from _skipped_block(report.skipped[index])
        yield ""


def _members(report: BatchReport) -> list[str]:
    seqs = [r.seq for r in report.results] + list(report.missing)
    seqs += [skip.seq for skip in report.skipped]
    return sorted(seqs, key=seq_key)


def render_markdown(report: BatchReport) -> str:
    """The seed format orchestrators already parse (SPEC 4), without a trailing newline.

    The seed's skeleton comes first, line for line; batchq's extras (the forced-report
    warning, undeclared writes, discrepancies) follow in sections of their own after
    Next Steps, and extra per-subtask or statistics lines after the seed's ones, so
    line-oriented parsers keep working.
    """
    return "\n".join(markdown_lines(report))


def markdown_lines(report: BatchReport) -> Iterator[str]:
    """:func:`render_markdown`'s lines, one at a time: a big batch's report is printed
    as it is made, never held whole as text (at 5,000 members some 9 MiB of lines,
    text and copies of it)."""
    yield from [
        f"## Batch {report.batch} {_HEADINGS[report.status]}",
        "",
        f"Feature: {report.feature}",
        f"Batch: {report.batch}",
        f"Subtasks: {', '.join(_members(report))}",
        f"Status: {_status_line(report)}",
        "",
        "### Individual Results:",
        "",
    ]
    yield from _results(report)
    yield "### Batch Statistics:"
    yield from _statistics(report)
    yield from ["", "### Next Steps:", *_next_steps(report)]
    lines: list[str] = []
    if report.forced:
        who = ", ".join(report.missing) if report.missing else "no member"
        lines += ["", "### Forced Report:", f"- No result from {who} (stalled)"]
    if report.undeclared_writes:
        lines += ["", "### Undeclared Writes:"]
        lines += [
            f"- {w.path} (not attributable; candidates: {', '.join(w.candidates)})"
            + (f": {w.reason}" if w.reason else "")
            for w in report.undeclared_writes
        ]
    if report.discrepancies:
        lines += ["", "### Discrepancies:"]
        lines += [f"- {note}" for note in report.discrepancies]
    yield from lines


def render_table(report: BatchReport) -> Table:
    """One row per member (missing ones included), statistics in the caption."""
    # lazy: Rich's tables are for a terminal; the Markdown report needs none of Rich
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title=f"Batch {report.batch} · {report.feature} · {_status_line(report)}",
        caption=(
            f"Total {report.total} · Completed {report.completed} · Failed {report.failed}"
            + (f" · Cancelled {report.cancelled}" if report.cancelled else "")
            + (f" · Skipped {report.skipped_count}" if report.skipped_count else "")
            + f" · Success {_percent(report.success_rate)}"
            f" · Wall {format_duration(report.wall_s)}"
            f" · Summed {format_duration(report.work_s)}"
            + (f" · Speed-up {report.speedup:.1f}×" if report.speedup > 0 else "")
            + (f" · Forced: no result from {', '.join(report.missing)}" if report.forced else "")
            + "".join(
                f" · Undeclared write {w.path} (candidates: {', '.join(w.candidates)})"
                for w in report.undeclared_writes
            )
        ),
    )
    table.add_column("Seq", no_wrap=True)
    table.add_column("Title")
    table.add_column("Result", no_wrap=True)
    table.add_column("Duration", justify="right", no_wrap=True)
    table.add_column("Worker")
    table.add_column("Error", overflow="fold")

    rows: list[tuple[str, list[Text]]] = []
    for r in report.results:
        icon = _ICONS[r.result]
        rows.append(
            (
                r.seq,
                [
                    Text(r.seq),
                    Text(inline(r.title)),
                    Text(f"{icon} {r.result.value}", style=_STYLES[r.result]),
                    Text(format_duration(r.duration_s)),
                    Text(r.worker or "-"),
                    Text(inline(_error_cell(r))),
                ],
            )
        )
    for seq in report.missing:
        cells = [Text(seq), Text(""), Text(f"{_MISSING_ICON} missing", style="yellow")]
        cells += [Text("-"), Text("-"), Text("no result received")]
        rows.append((seq, cells))
    for skip in report.skipped:
        cells = [Text(skip.seq), Text(""), Text(f"{_SKIPPED_ICON} skipped", style="yellow")]
        cells += [Text("-"), Text("-"), Text(skip.reason)]
        rows.append((skip.seq, cells))
    for _, cells in sorted(rows, key=lambda row: seq_key(row[0])):
        table.add_row(*cells)
    return table


def _error_cell(result: SubtaskResult) -> str:
    error = result.error or result.error_type or ""
    if result.undeclared_writes and result.error_type != "UndeclaredWrite":
        note = f"undeclared writes: {', '.join(result.undeclared_writes)}"
        return f"{error}; {note}" if error else note
    return error


def render_json(report: BatchReport) -> str:
    """The report as stored and as ``--json`` prints it; decodes with ``model_validate_json``."""
    return report.model_dump_json(indent=2)


def render_plan(plan: Plan, feature: Feature) -> str:
    """``batchq plan``: each batch with why each member sits there, then what is blocked.

    A member without a recorded reason falls back to its title so every member gets a
    line; the ``Batch N (...)`` lines keep SPEC 2's wording for parsers.
    """
    titles = {sub.seq: inline(sub.title) for sub in feature.subtasks}
    lines: list[str] = []
    for batch in plan.batches:
        when = "Ready now" if batch.after is None else f"After Batch {batch.after}"
        lines.append(f"Batch {batch.number} ({when}): {', '.join(batch.seqs)}")
        for seq in batch.seqs:
            lines.append(f"  {seq}: {batch.reasons.get(seq) or titles.get(seq, '')}".rstrip())
    if plan.blocked:
        if lines:
            lines.append("")
        lines.append("Blocked:")
        for seq in sorted(plan.blocked, key=seq_key):
            lines.append(f"  {seq}: {plan.blocked[seq]}")
    if plan.warnings:
        lines += ["", *(f"Warning: {text}" for text in plan.warnings)]
    if not lines:
        lines.append(
            f"[{feature.name}] Nothing to run: "
            f"{len(plan.completed)}/{len(feature.subtasks)} subtasks completed"
        )
    return "\n".join(lines)
