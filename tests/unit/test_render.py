"""The renderers alone: Markdown seed format, Rich table, JSON, plan preview."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console

from batchq.cli.render import (
    format_duration,
    markdown_lines,
    render_json,
    render_markdown,
    render_plan,
    render_table,
)
from batchq.core import report
from batchq.models import (
    BatchReport,
    DeliverableCheck,
    Feature,
    Plan,
    PlannedBatch,
    ResultState,
    Subtask,
    SubtaskResult,
    TaskFile,
)

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
LOG = ".tmp/tasks/auth-system/.batchq/logs/r1/02.log"


def result(seq: str, title: str, state: ResultState, **kw: Any) -> SubtaskResult:
    return SubtaskResult(
        feature="auth-system", run_id="r1", batch=1, seq=seq, title=title, result=state, **kw
    )


def partial_failure(**kw: Any) -> BatchReport:
    results = [
        result(
            "01",
            "Setup project structure",
            ResultState.COMPLETED,
            summary="Created project layout",
            deliverables=[
                DeliverableCheck(path="src/", verified=True),
                DeliverableCheck(path="package.json", verified=True),
            ],
            duration_s=2.1,
            worker="batchq-1@host",
        ),
        result(
            "02",
            "Configure database",
            ResultState.FAILED,
            error="deliverable missing: src/db.ts",
            deliverables=[DeliverableCheck(path="src/db.ts", verified=False)],
            output_tail="".join(f"line {i}\n" for i in range(30)),
            log_path=LOG,
            duration_s=3.5,
            worker="batchq-2@host",
        ),
        result("03", "Install dependencies", ResultState.COMPLETED, duration_s=4.2),
    ]
    return report.build(
        feature="auth-system",
        run_id="r1",
        batch=1,
        results=results,
        expected=["01", "02", "03"],
        next_batch=PlannedBatch(number=2, level=1, seqs=["04"], parallel=False, after=1),
        submitted_at=T0,
        finished_at=T0 + timedelta(seconds=4.2),
        **kw,
    )


def all_completed() -> BatchReport:
    return report.build(
        feature="auth-system",
        run_id="r1",
        batch=1,
        results=[result("01", "Setup project structure", ResultState.COMPLETED, duration_s=1.0)],
        expected=["01"],
        next_batch=PlannedBatch(
            number=2, level=1, seqs=["03"], parallel=True, after=1, depends_on=["01"]
        ),
        submitted_at=T0,
        finished_at=T0 + timedelta(seconds=1),
    )


def section(md: str, header: str) -> list[str]:
    """The non-empty lines under a ``### header`` up to the next header."""
    lines = md.splitlines()
    start = lines.index(header) + 1
    out: list[str] = []
    for line in lines[start:]:
        if line.startswith("##"):
            break
        if line:
            out.append(line)
    return out


# --- markdown ------------------------------------------------------------------------


def test_markdown_opens_with_the_seed_header_lines() -> None:
    md = render_markdown(partial_failure())
    assert md.splitlines()[:6] == [
        "## Batch 1 Execution FAILED",
        "",
        "Feature: auth-system",
        "Batch: 1",
        "Subtasks: 01, 02, 03",
        "Status: ❌ PARTIAL FAILURE",
    ]


def test_markdown_of_a_completed_batch_says_all_completed_and_the_next_batch_is_ready() -> None:
    md = render_markdown(all_completed())
    assert md.splitlines()[0] == "## Batch 1 Execution Complete"
    assert "Status: ✅ ALL COMPLETED" in md.splitlines()
    assert section(md, "### Next Steps:") == [
        "Batch 1 complete. Ready to proceed to Batch 2 (subtask 03).",
        "Batch 2 depends on: 01 (all now satisfied).",
    ]


def test_markdown_statistics_are_the_seed_lines() -> None:
    md = render_markdown(partial_failure())
    assert section(md, "### Batch Statistics:") == [
        "- Total tasks: 3",
        "- Completed: 2",
        "- Failed: 1",
        "- Success rate: 66.7%",
        "- Wall time: 4.2s · Summed subtask time: 9.8s · Parallel speed-up: 2.3×",
    ]


def test_a_whole_success_rate_has_no_decimal() -> None:
    assert "- Success rate: 100%" in render_markdown(all_completed()).splitlines()


def test_a_batch_of_one_shows_no_speed_up() -> None:
    md = render_markdown(all_completed())
    assert "- Wall time: 1.0s · Summed subtask time: 1.0s" in md.splitlines()
    assert "speed-up" not in md


def test_markdown_has_the_sections_in_seed_order_and_no_trailing_newline() -> None:
    md = render_markdown(partial_failure())
    headers = [line for line in md.splitlines() if line.startswith("##")]
    assert headers == [
        "## Batch 1 Execution FAILED",
        "### Individual Results:",
        "### Batch Statistics:",
        "### Next Steps:",
    ]
    assert not md.endswith("\n")


def test_markdown_shows_a_completed_subtask_block_in_the_seed_shape() -> None:
    md = render_markdown(partial_failure())
    lines = md.splitlines()
    start = lines.index("✅ Subtask 01 - Setup project structure")
    assert lines[start : start + 6] == [
        "✅ Subtask 01 - Setup project structure",
        "   - Status: completed",
        "   - Deliverables: src/, package.json",
        "   - Summary: Created project layout",
        "   - Duration: 2.1s · Worker: batchq-1@host",
        "",
    ]


def test_markdown_shows_a_failed_subtask_with_its_error_tail_and_log() -> None:
    md = render_markdown(partial_failure())
    lines = md.splitlines()
    start = lines.index("❌ Subtask 02 - FAILED: deliverable missing: src/db.ts")
    block = lines[start : lines.index("", start)]
    assert block[1:5] == [
        "   - Status: failed",
        "   - Deliverables: ✗ src/db.ts",
        "   - Title: Configure database",
        "   - Output (tail):",
    ]
    tail = [line for line in block if line.startswith("     line ")]
    assert len(tail) == 20
    assert tail[-1] == "     line 29"
    assert block[-1] == f"   - Log: {LOG}"


def test_markdown_next_steps_of_a_failure_name_the_subtask_to_fix() -> None:
    md = render_markdown(partial_failure())
    assert section(md, "### Next Steps:") == [
        "Recommendation: Fix subtask 02 before proceeding to Batch 2.",
        "Batch 2 (04) does not start; rerun `batchq run auth-system` once it is fixed.",
    ]


def test_markdown_of_the_last_batch_says_all_planned_batches_complete() -> None:
    rep = report.build(
        feature="auth-system",
        run_id="r1",
        batch=1,
        results=[result("01", "Setup", ResultState.COMPLETED)],
        expected=["01"],
        next_batch=None,
        submitted_at=T0,
        finished_at=T0,
    )
    assert section(render_markdown(rep), "### Next Steps:") == [
        "Batch 1 complete. All planned batches complete."
    ]


def test_markdown_of_a_forced_report_warns_and_lists_the_missing_member() -> None:
    rep = report.build(
        feature="auth-system",
        run_id="r1",
        batch=1,
        results=[result("01", "Setup", ResultState.COMPLETED)],
        expected=["01", "04"],
        next_batch=None,
        submitted_at=T0,
        finished_at=T0,
        forced=True,
    )
    md = render_markdown(rep)
    assert section(md, "### Forced Report:") == ["- No result from 04 (stalled)"]
    assert "❌ Subtask 04 - FAILED: no result received" in md.splitlines()
    assert "- No result (counted in Failed): 1" in md.splitlines()
    assert "Recommendation: Fix subtask 04, then rerun `batchq run auth-system`." in md


def test_markdown_marks_timed_out_as_failed_and_cancelled_as_cancelled() -> None:
    rep = report.build(
        feature="f",
        run_id="r1",
        batch=1,
        results=[
            SubtaskResult(
                feature="f",
                run_id="r1",
                batch=1,
                seq="01",
                title="a",
                result=ResultState.TIMED_OUT,
                error="timed out after 5s",
            ),
            SubtaskResult(
                feature="f", run_id="r1", batch=1, seq="02", title="b", result=ResultState.CANCELLED
            ),
        ],
        expected=["01", "02"],
        next_batch=None,
        submitted_at=T0,
        finished_at=T0,
    )
    lines = render_markdown(rep).splitlines()
    assert "❌ Subtask 01 - FAILED: timed out after 5s" in lines
    assert "   - Status: timed_out" in lines
    assert "⊘ Subtask 02 - b" in lines
    assert "- Failed: 1" in lines
    assert "- Timed out (counted in Failed): 1" in lines
    assert "- Cancelled: 1" in lines
    assert "Recommendation: Fix subtask 01, then rerun `batchq run f`." in lines


def test_a_cancelled_batch_says_so_and_counts_nothing_as_failed() -> None:
    rep = report.build(
        feature="f",
        run_id="r1",
        batch=1,
        results=[
            SubtaskResult(
                feature="f", run_id="r1", batch=1, seq=s, title=s, result=ResultState.CANCELLED
            )
            for s in ("01", "02")
        ],
        expected=["01", "02"],
        next_batch=None,
        submitted_at=T0,
        finished_at=T0,
    )
    md = render_markdown(rep)
    assert md.splitlines()[0] == "## Batch 1 Execution CANCELLED"
    assert "Status: ⊘ CANCELLED" in md.splitlines()
    assert "- Failed: 0" in md.splitlines() and "- Cancelled: 2" in md.splitlines()
    assert "Fix" not in md
    assert section(md, "### Next Steps:") == [
        "Batch 1 was cancelled: subtasks 01, 02 did not complete. Rerun `batchq run f` to resume."
    ]


def test_markdown_has_a_discrepancies_section_only_when_there_are_some() -> None:
    assert "### Discrepancies:" not in render_markdown(partial_failure())
    md = render_markdown(partial_failure(discrepancies=["04: late result"]))
    assert section(md, "### Discrepancies:") == ["- 04: late result"]


def test_durations_read_as_seconds_minutes_or_hours() -> None:
    assert format_duration(2.14) == "2.1s"
    assert format_duration(252) == "4m 12s"
    assert format_duration(3725) == "1h 02m"


# --- table and json --------------------------------------------------------------------


def test_the_table_renders_every_member_with_statistics_in_the_caption() -> None:
    console = Console(record=True, width=120)
    console.print(render_table(partial_failure(discrepancies=["x"])))
    text = console.export_text()
    for seq in ("01", "02", "03"):
        assert seq in text
    assert "Configure database" in text
    assert "Success 66.7%" in text


def test_the_table_shows_worker_text_literally_not_as_markup() -> None:
    rep = report.build(
        feature="f",
        run_id="r1",
        batch=1,
        results=[
            SubtaskResult(
                feature="f",
                run_id="r1",
                batch=1,
                seq="01",
                title="[bold]x[/bold]",
                result=ResultState.FAILED,
                error="bad [red]thing",
            )
        ],
        expected=["01", "02"],
        next_batch=None,
        submitted_at=T0,
        finished_at=T0,
        forced=True,
    )
    console = Console(record=True, width=120)
    console.print(render_table(rep))
    text = console.export_text()
    assert "[bold]x[/bold]" in text
    assert "bad [red]thing" in text
    assert "missing" in text


def test_json_round_trips_into_the_report_model() -> None:
    rep = partial_failure(forced=True, discrepancies=["d"])
    assert BatchReport.model_validate_json(render_json(rep)) == rep


# --- plan -------------------------------------------------------------------------------


def feature(tmp_path: Path) -> Feature:
    subs = [
        Subtask(
            id=f"auth-system-{seq}",
            seq=seq,
            title=title,
            acceptance_criteria=["works"],
            deliverables=[f"{seq}.txt"],
        )
        for seq, title in [("01", "Setup"), ("02", "DB"), ("03", "Deps"), ("04", "Auth")]
    ]
    return Feature(
        name="auth-system",
        root=tmp_path,
        path=tmp_path / ".tmp/tasks/auth-system",
        task=TaskFile(id="auth-system", name="Auth"),
        subtasks=subs,
    )


def test_the_plan_lists_batches_with_reasons_then_what_is_blocked(tmp_path: Path) -> None:
    plan = Plan(
        feature="auth-system",
        batches=[
            PlannedBatch(
                number=1,
                level=0,
                seqs=["01", "02"],
                parallel=True,
                reasons={"01": "no dependencies", "02": "no dependencies"},
            ),
            PlannedBatch(
                number=2, level=1, seqs=["03"], parallel=False, after=1, reasons={"03": "needs 01"}
            ),
        ],
        blocked={"04": "blocked: waiting on a human"},
    )
    assert render_plan(plan, feature(tmp_path)).splitlines() == [
        "Batch 1 (Ready now): 01, 02",
        "  01: no dependencies",
        "  02: no dependencies",
        "Batch 2 (After Batch 1): 03",
        "  03: needs 01",
        "",
        "Blocked:",
        "  04: blocked: waiting on a human",
    ]


def test_a_plan_member_without_a_reason_is_shown_with_its_title(tmp_path: Path) -> None:
    plan = Plan(
        feature="auth-system",
        batches=[PlannedBatch(number=1, level=0, seqs=["02"], parallel=False)],
    )
    assert render_plan(plan, feature(tmp_path)).splitlines() == [
        "Batch 1 (Ready now): 02",
        "  02: DB",
    ]


def test_an_empty_plan_says_there_is_nothing_to_run(tmp_path: Path) -> None:
    plan = Plan(feature="auth-system", completed=["01", "02", "03", "04"])
    assert render_plan(plan, feature(tmp_path)) == (
        "[auth-system] Nothing to run: 4/4 subtasks completed"
    )


def _with_skips() -> BatchReport:
    return report.build(
        feature="auth-system",
        run_id="r1",
        batch=1,
        results=[result("03", "Build", ResultState.FAILED, error="boom")],
        expected=["03", "04"],
        next_batch=None,
        submitted_at=T0,
        finished_at=T0 + timedelta(seconds=3),
        skipped={"04": "depends on 03, which failed"},
    )


def test_markdown_lists_skipped_members_with_their_reason_and_counts_them() -> None:
    md = render_markdown(_with_skips())
    assert "❌ PARTIAL FAILURE" in md
    assert "⏭ Subtask 04\n   - Status: skipped\n   - Reason: depends on 03, which failed" in md
    assert "- Failed: 1\n- Success rate: 0%\n- Skipped: 1\n" in md
    assert "Recommendation: Fix subtask 03, then rerun `batchq run auth-system`." in md


def test_the_table_shows_a_skipped_member_and_its_reason() -> None:
    console = Console(width=200, record=True)
    console.print(render_table(_with_skips()))
    text = console.export_text()
    assert "skipped" in text and "depends on 03, which failed" in text


def test_members_are_rendered_in_seq_order_whichever_list_holds_them() -> None:
    """Results, members that never reported and skipped ones interleave by seq, as the
    blocks are made one by one."""
    base = _with_skips()
    done = [result(s, f"t{s}", ResultState.COMPLETED) for s in ("10", "02")]
    mixed = base.model_copy(
        update={
            "results": done,
            "missing": ["09", "01"],
            "skipped": [base.skipped[0].model_copy(update={"seq": "05"})],
        }
    )
    icons = ("✅", "❌", "⏭")
    heads = [line.split(" - ")[0] for line in markdown_lines(mixed) if line.startswith(icons)]
    assert heads == [
        "❌ Subtask 01",
        "✅ Subtask 02",
        "⏭ Subtask 05",
        "❌ Subtask 09",
        "✅ Subtask 10",
    ]
    assert "\n".join(markdown_lines(mixed)) == render_markdown(mixed)


def test_emit_writes_every_line_in_order_however_many(capsys: Any) -> None:
    from batchq.cli.common import EMIT_AT_ONCE, emit

    lines = (f"line {i}" for i in range(2 * EMIT_AT_ONCE + 7))
    emit(itertools.chain(lines, ["two\nparts", ""]))
    written = capsys.readouterr().out.split("\n")
    assert written[: 2 * EMIT_AT_ONCE + 7] == [f"line {i}" for i in range(2 * EMIT_AT_ONCE + 7)]
    assert written[2 * EMIT_AT_ONCE + 7 :] == ["two", "parts", "", ""]
