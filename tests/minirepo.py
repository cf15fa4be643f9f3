"""A small git repository for unit tests of the isolation code (real git, no fixture
state): one commit of ``a.txt`` (``v1``) plus whatever files the test adds."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def git(root: Path, *args: str) -> str:
    """``git -C root ARGS``'s standard output; a failure raises. No optional locks:
    the test's own ``git status`` never takes ``index.lock`` from the code under test."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    return subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, check=True, text=True, env=env
    ).stdout


def init_repo(root: Path, extra: dict[str, str] | None = None) -> Path:
    """A repository at ``root`` on branch ``main`` whose one commit holds ``a.txt`` and
    ``extra`` (relative path -> text)."""
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "t@example.com")
    git(root, "config", "user.name", "t")
    for name, text in {"a.txt": "v1\n", **(extra or {})}.items():
        (root / name).write_text(text)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "init")
    return root
