"""The inotify-kept workspace snapshot: same answers as two walks, without the walks."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from batchq.executor import writewindow
from batchq.files import snapshot


def touch(path: Path, text: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    for rel in ["a.txt", "src/b.py", "src/deep/c.py", ".tmp/tasks/feat/task.json"]:
        touch(root / rel)
    return root


@pytest.fixture(params=["inotify", "walk"])
def tracker(request: pytest.FixtureRequest, workspace: Path, monkeypatch: pytest.MonkeyPatch):
    if request.param == "walk":

        def refuse() -> None:
            raise writewindow._Unavailable("refused for the test")

        monkeypatch.setattr(writewindow._Inotify, "__init__", lambda self: refuse())
    made = writewindow.Tracker(str(workspace))
    if request.param == "walk":
        assert made.notify is None
    yield made
    made.close()


def test_a_tracker_reports_writes_new_files_and_deletions_once(
    tracker: writewindow.Tracker, workspace: Path
) -> None:
    assert tracker.changes() == []
    (workspace / "a.txt").write_text("changed")
    touch(workspace / "src" / "new.py")
    (workspace / "src" / "deep" / "c.py").unlink()
    touch(workspace / ".tmp" / "tasks" / "feat" / "subtask_01.json")
    touch(workspace / "node_modules" / "x.js")
    assert tracker.changes() == ["a.txt", "src/deep/c.py", "src/new.py"]
    assert tracker.changes() == []


def test_a_tracker_sees_files_in_new_moved_and_removed_folders(
    tracker: writewindow.Tracker, workspace: Path
) -> None:
    tracker.changes()
    touch(workspace / "gen" / "sub" / "f.txt")
    assert tracker.changes() == ["gen/sub/f.txt"]
    os.rename(workspace / "gen", workspace / "moved")
    assert tracker.changes() == ["gen/sub/f.txt", "moved/sub/f.txt"]
    shutil.rmtree(workspace / "src")
    assert tracker.changes() == ["src/b.py", "src/deep/c.py"]


def test_an_open_for_write_that_changes_nothing_is_no_write(
    tracker: writewindow.Tracker, workspace: Path
) -> None:
    tracker.changes()
    with (workspace / "a.txt").open("a"):
        pass
    assert tracker.changes() == []


def test_after_lost_events_the_tracker_diffs_a_fresh_walk(workspace: Path) -> None:
    made = writewindow.Tracker(str(workspace))
    try:
        touch(workspace / "late.txt")
        assert made._rewalk() == ["late.txt"]
        touch(workspace / "later.txt")
        assert made.changes() == ["later.txt"]
    finally:
        made.close()


def test_a_window_outside_git_uses_the_tracker_and_ignores_earlier_writes(
    workspace: Path,
) -> None:
    touch(workspace / "before.txt")
    window = writewindow.open_window(workspace)
    touch(workspace / "during.txt")
    assert window() == ["during.txt"]
    assert writewindow.tracker_for(str(workspace)) is writewindow.tracker_for(str(workspace))


def test_each_thread_keeps_its_own_tracker_so_overlapping_windows_miss_nothing(
    workspace: Path,
) -> None:
    """The threads pool runs subtasks side by side in one process: a window closed in
    one thread must not consume the changes another thread's open window is owed."""
    mine = writewindow.open_window(workspace)
    seen: dict[str, object] = {}

    def other_slot() -> None:
        theirs = writewindow.open_window(workspace)
        touch(workspace / "during.txt")
        seen["theirs"] = theirs()
        seen["tracker"] = writewindow.tracker_for(str(workspace))

    thread = threading.Thread(target=other_slot)
    thread.start()
    thread.join(10)
    assert seen["theirs"] == ["during.txt"]
    assert mine() == ["during.txt"]
    assert seen["tracker"] is not writewindow.tracker_for(str(workspace))


def _repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    touch(root / ".gitignore", "build/\n*.log\n")
    touch(root / "kept.log", "tracked although it matches *.log\n")
    touch(root / "gone.txt")
    subprocess.run([*git, "add", "-f", ".gitignore", "kept.log", "gone.txt"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "set-up"], cwd=root, check=True)
    return root


def test_a_window_in_a_git_work_tree_leaves_out_what_git_ignores(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    assert snapshot.git_toplevel(str(root)) is not None
    touch(root / "before.txt")  # before the window: not its write
    window = writewindow.open_window(root)
    touch(root / "build" / "out.o")
    touch(root / "debug.log")
    touch(root / "kept.log", "a tracked file is never ignored\n")
    touch(root / "src" / "x.py")
    (root / "gone.txt").unlink()  # a tracked file removed is a write too
    assert window() == ["gone.txt", "kept.log", "src/x.py"]


def test_git_is_asked_only_when_something_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _repo(tmp_path)
    asked: list[list[str]] = []
    real_run = subprocess.run

    def counting(args: list[str], **kwargs: Any) -> Any:
        asked.append(list(args))
        return real_run(args, **kwargs)

    writewindow.open_window(root)()  # the tracker's first walk, outside the count
    monkeypatch.setattr(writewindow.subprocess, "run", counting)
    assert writewindow.open_window(root)() == []
    assert asked == []  # nothing changed: no git process at all
    window = writewindow.open_window(root)
    touch(root / "new.txt")
    assert window() == ["new.txt"]
    assert [args[:4] for args in asked] == [["git", "--no-optional-locks", "check-ignore", "-z"]]


def test_a_write_inside_a_nested_repository_is_kept_without_asking_git(
    tmp_path: Path,
) -> None:
    root = _repo(tmp_path)
    nested = root / "vendor" / "lib"
    nested.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=nested, check=True)
    window = writewindow.open_window(root)
    touch(nested / "a.c")
    touch(root / "b.log")
    assert window() == ["vendor/lib/a.c"]  # check-ignore would refuse the first


def test_a_window_that_saw_only_declared_writes_asks_git_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _repo(tmp_path)
    asked: list[list[str]] = []
    real_run = subprocess.run

    def counting(args: list[str], **kwargs: Any) -> Any:
        asked.append(list(args))
        return real_run(args, **kwargs)

    writewindow.open_window(root)()  # the tracker's first walk, outside the count
    monkeypatch.setattr(writewindow.subprocess, "run", counting)
    window = writewindow.open_window(root, ["out/a.txt", "dist/"])
    touch(root / "out" / "a.txt")
    touch(root / "dist" / "b" / "c.bin")
    assert window() == []
    assert asked == []  # every change was declared: whether git ignores it is moot
    window = writewindow.open_window(root, ["out/a.txt"])
    touch(root / "out" / "a.txt", "again\n")
    touch(root / "debug.log")  # ignored by the repository's .gitignore
    touch(root / "stray.txt")
    assert window() == ["stray.txt"]
    assert len(asked) == 1
