"""Write-set enforcement: snapshot diffs, blame, and how the batch report uses them."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from batchq.cli.render import render_json, render_markdown, render_table
from batchq.core import blame, report
from batchq.files import snapshot
from batchq.models import (
    BatchReport,
    BatchStatus,
    ResultState,
    SubtaskResult,
    UndeclaredWrite,
    WriteCheck,
)

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def result(
    seq: str,
    start: float,
    end: float,
    observed: list[str] | None = None,
    state: ResultState = ResultState.COMPLETED,
    **kw: Any,
) -> SubtaskResult:
    return SubtaskResult(
        feature="f",
        run_id="r1",
        batch=1,
        seq=seq,
        title=f"Subtask {seq}",
        result=state,
        started_at=T0 + timedelta(seconds=start),
        finished_at=T0 + timedelta(seconds=end),
        duration_s=end - start,
        observed_writes=observed or [],
        **kw,
    )


# --- pure: diff, coverage, porcelain ---------------------------------------------------


def test_changed_lists_added_removed_and_modified_paths_only() -> None:
    before = {"a": ("", 1, 10, 1), "b": ("", 1, 10, 2), "c": ("", 1, 10, 3)}
    after = {"a": ("", 1, 10, 1), "b": ("", 2, 11, 2), "d": ("", 1, 10, 4)}
    assert blame.changed(before, after) == ["b", "c", "d"]


def test_outside_keeps_paths_not_declared_nor_under_a_declared_folder() -> None:
    paths = ["src/a.py", "src/ab.py", "docs/x.md", "build/out/y.o", "notes.txt"]
    declared = ["./src/a.py", "build/", "/abs/ignored"]
    assert blame.outside(paths, declared) == ["src/ab.py", "docs/x.md", "notes.txt"]


def test_porcelain_parsing_keeps_both_sides_of_a_rename() -> None:
    raw = b" M src/a.py\0R  new name.py\0old.py\0?? dir/new.txt\0"
    assert snapshot.parse_porcelain(raw) == [
        (" M", "src/a.py"),
        ("R ", "new name.py"),
        ("R ", "old.py"),
        ("??", "dir/new.txt"),
    ]


# --- pure: blame -------------------------------------------------------------------------


def test_a_write_seen_by_a_subtask_that_ran_alone_is_blamed_on_it() -> None:
    results = [result("01", 0, 5, ["stray.txt"]), result("02", 6, 9)]
    verdict = blame.blame(results, {"01": ["out/01.txt"], "02": ["out/02.txt"]})
    assert verdict.by_seq == {"01": ["stray.txt"]}
    assert verdict.batch_level == []


def test_a_write_seen_while_siblings_overlapped_goes_to_batch_level_with_candidates() -> None:
    results = [
        result("01", 0, 5, ["stray.txt"]),
        result("02", 4, 9, ["stray.txt"]),
        result("03", 10, 12),
    ]
    verdict = blame.blame(results, {"01": [], "02": [], "03": []})
    assert verdict.by_seq == {}
    assert verdict.batch_level == [
        UndeclaredWrite(path="stray.txt", candidates=["01", "02"], reason="01 and 02 overlapped")
    ]


def test_a_siblings_declared_deliverable_is_never_blamed() -> None:
    results = [result("01", 0, 5, ["out/02.txt", "x"]), result("02", 4, 9, ["out/02.txt"])]
    verdict = blame.blame(results, {"01": ["out/01.txt"], "02": ["out/02.txt"]})
    assert verdict.by_seq == {}
    assert [w.path for w in verdict.batch_level] == ["x"]
    alone = blame.blame([result("01", 0, 5, ["out/02.txt"])], {"01": [], "02": ["out/02.txt"]})
    assert alone.by_seq == {} and alone.batch_level == []


def test_a_missing_member_may_have_run_alongside_so_nobody_is_blamed_alone() -> None:
    verdict = blame.blame([result("01", 0, 5, ["x"])], {"01": [], "02": []}, missing=["02"])
    assert verdict.by_seq == {}
    assert verdict.batch_level == [
        UndeclaredWrite(
            path="x", candidates=["01"], reason="02 left no result (its window is unknown)"
        )
    ]


def test_a_subtask_of_another_batch_in_flight_meanwhile_clears_no_suspect() -> None:
    """Flow mode: other batches' members run alongside a batch; a finished one whose
    window overlaps, or one still in flight (open window), keeps the write unblamed."""
    alone = [result("01", 0, 5, ["x"])]
    declared = {"01": [], "07": ["out/07.txt"]}
    finished_elsewhere = [(T0 + timedelta(seconds=3), T0 + timedelta(seconds=8))]
    verdict = blame.blame(alone, declared, others=finished_elsewhere)
    assert verdict.by_seq == {} and [w.path for w in verdict.batch_level] == ["x"]
    running_elsewhere = [(T0 + timedelta(seconds=4), None)]
    assert blame.blame(alone, declared, others=running_elsewhere).by_seq == {}
    before = [(T0 - timedelta(seconds=9), T0 - timedelta(seconds=1))]
    assert blame.blame(alone, declared, others=before).by_seq == {"01": ["x"]}


# --- report.build with blame ------------------------------------------------------------


def build(results: list[SubtaskResult], check: WriteCheck, **kw: Any) -> BatchReport:
    return report.build(
        feature="f",
        run_id="r1",
        batch=1,
        results=results,
        expected=kw.pop("expected", [r.seq for r in results]),
        next_batch=None,
        submitted_at=T0,
        finished_at=T0 + timedelta(seconds=20),
        declared=kw.pop("declared", {r.seq: [f"out/{r.seq}.txt"] for r in results}),
        write_check=check,
        **kw,
    )


def test_warn_reports_the_blamed_write_and_keeps_the_subtask_completed() -> None:
    built = build([result("01", 0, 5, ["src/x.py"]), result("02", 6, 8)], WriteCheck.WARN)
    assert built.ok
    first = built.results[0]
    assert first.result is ResultState.COMPLETED
    assert first.undeclared_writes == ["src/x.py"]
    assert built.results[1].undeclared_writes == []
    assert report.amended(built, {r.seq: r for r in built.results}) == []


def test_fail_fails_the_blamed_subtask_with_the_paths_and_its_declarations() -> None:
    recorded = [result("01", 0, 5, ["src/x.py"]), result("02", 6, 8)]
    built = build(recorded, WriteCheck.FAIL, declared={"01": ["src/a.py"], "02": []})
    assert built.status is BatchStatus.PARTIAL_FAILURE
    first = built.results[0]
    assert first.result is ResultState.FAILED
    assert first.error == "undeclared write: src/x.py (declared: src/a.py)"
    assert first.error_type == "UndeclaredWrite"
    assert built.next.recommendation.startswith("Fix subtask 01")
    changed = report.amended(built, {r.seq: r for r in recorded})
    assert [r.seq for r in changed] == ["01"]


def test_fail_with_an_unattributable_write_fails_the_batch_but_no_member() -> None:
    results = [result("01", 0, 5, ["stray"]), result("02", 1, 4, ["stray"])]
    built = build(results, WriteCheck.FAIL)
    assert built.status is BatchStatus.PARTIAL_FAILURE
    assert (built.completed, built.failed) == (2, 0)
    assert all(r.ok for r in built.results)
    assert built.undeclared_writes == [
        UndeclaredWrite(path="stray", candidates=["01", "02"], reason="01 and 02 overlapped")
    ]
    assert "stray (candidates: 01, 02; 01 and 02 overlapped)" in built.next.recommendation
    md = render_markdown(built)
    assert "- Failed: 0" in md and "- Undeclared writes (fail the batch): 1" in md
    assert not built.next.dependencies_satisfied


def test_warn_with_an_unattributable_write_reports_it_and_stays_completed() -> None:
    results = [result("01", 0, 5, ["stray"]), result("02", 1, 4)]
    built = build(results, WriteCheck.WARN)
    assert built.ok
    # The verdict names the sibling whose window overlapped, though 02 saw nothing.
    assert built.undeclared_writes == [
        UndeclaredWrite(path="stray", candidates=["01"], reason="01 and 02 overlapped")
    ]


def test_off_ignores_observed_writes() -> None:
    built = build([result("01", 0, 5, ["stray"])], WriteCheck.OFF)
    assert built.ok and built.undeclared_writes == []
    assert built.results[0].undeclared_writes == []


def test_without_declarations_the_verified_deliverables_stand_for_them() -> None:
    from batchq.models import DeliverableCheck

    sibling = result("02", 1, 4, deliverables=[DeliverableCheck(path="out/02.txt", verified=True)])
    built = build([result("01", 0, 5, ["out/02.txt"]), sibling], WriteCheck.FAIL, declared=None)
    assert built.ok and built.undeclared_writes == []


def test_every_view_shows_blamed_and_batch_level_writes() -> None:
    results = [result("01", 0, 5, ["a.txt"]), result("02", 6, 9, ["b.txt"]), result("03", 8, 9)]
    built = build(results, WriteCheck.WARN)
    markdown = render_markdown(built)
    assert "   - Undeclared writes: a.txt" in markdown
    assert "### Undeclared Writes:" in markdown
    assert "- b.txt (not attributable; candidates: 02)" in markdown
    assert '"undeclared_writes"' in render_json(built)
    assert "b.txt (candidates: 02)" in str(render_table(built).caption)
    cells = [str(c) for c in render_table(built).columns[-1].cells]
    assert "undeclared writes: a.txt" in cells


# --- I/O: snapshots -----------------------------------------------------------------


def touch(path: Path, text: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def bump(path: Path, text: str) -> None:
    """Write new content with a later mtime, whatever the file system's clock step."""
    stat = path.stat()
    path.write_text(text)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_a_plain_folder_snapshot_sees_new_changed_and_removed_files(tmp_path: Path) -> None:
    touch(tmp_path / "keep.txt")
    touch(tmp_path / "edit.txt")
    touch(tmp_path / "gone.txt")
    before = snapshot.snapshot(tmp_path)
    touch(tmp_path / "sub" / "new.txt")
    bump(tmp_path / "edit.txt", "changed")
    (tmp_path / "gone.txt").unlink()
    after = snapshot.snapshot(tmp_path)
    assert blame.changed(before, after) == ["edit.txt", "gone.txt", "sub/new.txt"]


def test_snapshots_skip_tool_folders_and_the_task_folders(tmp_path: Path) -> None:
    before = snapshot.snapshot(tmp_path)
    for rel in [
        ".git/index",
        "a/.batchq/logs/1.log",
        "node_modules/x/index.js",
        "pkg/__pycache__/mod.cpython-311.pyc",
        ".tmp/tasks/feat/subtask_01.json",
        ".tmp/other.txt",
    ]:
        touch(tmp_path / rel)
    assert blame.changed(before, snapshot.snapshot(tmp_path)) == [".tmp/other.txt"]


def git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=root,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    touch(root / "tracked.txt", "one")
    touch(root / "dirty.txt", "one")
    touch(root / ".gitignore", "build/\n")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "init")
    touch(root / "dirty.txt", "two")  # dirty before the window
    return root


def test_a_git_snapshot_sees_edits_new_files_and_rewrites_of_dirty_files(repo: Path) -> None:
    before = snapshot.snapshot(repo)
    assert set(before) == {"dirty.txt"}
    touch(repo / "tracked.txt", "changed")
    bump(repo / "dirty.txt", "three")
    touch(repo / "new" / "file.txt")
    touch(repo / "build" / "ignored.o")
    touch(repo / ".tmp" / "tasks" / "feat" / "task.json")
    after = snapshot.snapshot(repo)
    assert blame.changed(before, after) == ["dirty.txt", "new/file.txt", "tracked.txt"]


def test_a_git_snapshot_of_a_subfolder_is_relative_to_that_folder(repo: Path) -> None:
    sub = repo / "pkg"
    touch(sub / "kept.txt")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "pkg")
    before = snapshot.snapshot(sub)
    touch(sub / "mod.py")
    touch(repo / "outside.txt")
    assert blame.changed(before, snapshot.snapshot(sub)) == ["mod.py"]


def test_the_git_work_tree_is_found_without_starting_git(tmp_path: Path) -> None:
    """A ``.git`` folder with HEAD up the tree is the top; an empty one (a marker a
    tool left) or none is no work tree, and ``git status`` is never tried there."""
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    (tmp_path / "repo" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (tmp_path / "repo" / "sub").mkdir()
    (tmp_path / "marker" / ".git").mkdir(parents=True)
    snapshot.git_toplevel.cache_clear()
    assert snapshot.git_toplevel(str(tmp_path / "repo" / "sub")) == str(
        (tmp_path / "repo").resolve()
    )
    assert snapshot.git_toplevel(str(tmp_path / "marker")) is None
