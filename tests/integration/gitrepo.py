"""Shared by the isolation tests: a git repository with every kind of local work,
the user's git state, and file-coordinated waits (no timing)."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from batchq.models import Isolation
from batchq.run.orchestrator import Orchestrator, RunOptions

ISOLATED = RunOptions(isolate=Isolation.WORKTREE)


def git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), *args],
        capture_output=True,
        check=True,
        env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
    )
    return done.stdout.decode()


def git_state(root: Path) -> dict[str, Any]:
    """Everything of the user's git an isolated run must leave alone."""
    return {
        "head": git(root, "rev-parse", "HEAD"),
        "branch": git(root, "symbolic-ref", "HEAD"),
        "cached": git(root, "diff", "--cached"),
        "index": (root / ".git" / "index").read_bytes(),
        "stash": git(root, "stash", "list"),
        "worktrees": git(root, "worktree", "list", "--porcelain"),
        "config": (root / ".git" / "config").read_bytes(),
    }


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with a commit, a stash entry, then an uncommitted change
    (``a.txt``), a staged one (``staged.txt``), an untracked file (``notes.txt``) and
    an ignored one (``build/ignored.txt``)."""
    root = tmp_path / "project"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "t@example.com")
    git(root, "config", "user.name", "t")
    (root / "a.txt").write_text("v1\n")
    (root / "staged.txt").write_text("s1\n")
    (root / ".gitignore").write_text("build/\n.tmp/\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "init")
    (root / "a.txt").write_text("stashed\n")
    git(root, "stash", "-q")
    (root / "a.txt").write_text("v2\n")
    (root / "staged.txt").write_text("s2\n")
    git(root, "add", "staged.txt")
    (root / "notes.txt").write_text("hello\n")
    (root / "build").mkdir()
    (root / "build" / "ignored.txt").write_text("o\n")
    return root


def worktrees_home(root: Path) -> Path:
    return root / ".git" / "batchq-worktrees"


def leftovers(root: Path) -> list[str]:
    home = worktrees_home(root)
    return sorted(str(p.relative_to(home)) for p in home.rglob("*")) if home.exists() else []


def run_in_thread(orch: Orchestrator, options: RunOptions) -> tuple[threading.Thread, list[Any]]:
    box: list[Any] = []

    def target() -> None:
        try:
            box.append(orch.run(options))
        except BaseException as exc:  # surfaced by the test
            box.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def wait_for_glob(folder: Path, pattern: str, thread: threading.Thread) -> Path:
    """Poll for a file an agent writes in its worktree (the overlap is made by files,
    not by timing); fail if the run ended first."""
    while True:
        found = sorted(folder.glob(pattern)) if folder.exists() else []
        if found:
            return found[0]
        assert thread.is_alive(), "the run ended before the agent started"
        thread.join(0.05)
