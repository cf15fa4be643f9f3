"""Workspace snapshots: what files a delegation's window saw change.

The worker snapshots the workspace right before an agent runs and right after it;
:mod:`batchq.core.blame` turns the difference into a verdict. Two snapshot kinds,
chosen once per workspace and process: in a git work tree, ``git status`` lists the
dirty and untracked files (so ignored build output is not noise) and each listed path
is stat-ed, because a file already dirty before may be written again; elsewhere a
``scandir`` walk records every file's size, mtime and inode. Both skip ``.git/``,
``.batchq/``, ``node_modules/``, ``__pycache__/`` and the task folders (the
orchestrator rewrites task files and logs there during a run).
"""

from __future__ import annotations

import os
import subprocess
from functools import lru_cache
from pathlib import Path

from batchq import layout
from batchq.core.blame import Signature

__all__ = [
    "EXCLUDED_DIRS",
    "Signature",
    "Snapshot",
    "git_toplevel",
    "list_dir",
    "parse_porcelain",
    "skipped",
    "snapshot",
    "snapshot_walk",
    "stat_signature",
]

EXCLUDED_DIRS = frozenset({".git", ".batchq", "node_modules", "__pycache__"})
"""Folder names skipped at any depth. ``__pycache__``: Python writes bytecode there on
any import or ``py_compile``, and it is never a deliverable."""
EXCLUDED_PREFIXES = (f"{layout.TASKS_DIR.as_posix()}/",)
"""Root-relative folders skipped: every feature's task folder, its logs and reports."""
GIT_TIMEOUT_S = 60.0

Snapshot = dict[str, Signature]


def parse_porcelain(output: bytes) -> list[tuple[str, str]]:
    """``git status --porcelain=v1 -z`` as (status code, path); a rename's source path
    is listed too, since the rename removed it."""
    fields = output.decode("utf-8", "surrogateescape").split("\0")
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(fields):
        entry = fields[i]
        i += 1
        if len(entry) < 4:
            continue
        code, path = entry[:2], entry[3:]
        out.append((code, path))
        if "R" in code or "C" in code:
            if i < len(fields) and fields[i]:
                out.append((code, fields[i]))
            i += 1
    return out


def skipped(rel: str) -> bool:
    """Whether a root-relative path lies in a folder no snapshot looks at."""
    parts = rel.split("/")
    if any(part in EXCLUDED_DIRS for part in parts):
        return True
    return any((rel + "/").startswith(prefix) for prefix in EXCLUDED_PREFIXES)


# --- I/O --------------------------------------------------------------------------


def stat_signature(path: str, code: str = "") -> Signature:
    """A file's signature; a missing one is (code, -1, -1, -1)."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return (code, -1, -1, -1)
    return (code, st.st_size, st.st_mtime_ns, st.st_ino)


def list_dir(root: str, rel: str, out: Snapshot) -> list[tuple[str, bool]]:
    """Record the files of one folder in ``out``; return its entries (root-relative
    name, is a folder) that are not skipped."""
    try:
        entries = list(os.scandir(os.path.join(root, rel) if rel else root))
    except OSError:  # removed or unreadable meanwhile: nothing to record under it
        return []
    found: list[tuple[str, bool]] = []
    for entry in entries:
        name = f"{rel}/{entry.name}" if rel else entry.name
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
            if is_dir:
                if entry.name not in EXCLUDED_DIRS and not skipped(name):
                    found.append((name, True))
                continue
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not skipped(name):
            out[name] = ("", st.st_size, st.st_mtime_ns, st.st_ino)
            found.append((name, False))
    return found


def snapshot_walk(root: str) -> Snapshot:
    """Every file under ``root`` but the skipped folders, with its signature."""
    out: Snapshot = {}
    todo = [""]
    while todo:
        rel = todo.pop()
        todo.extend(name for name, is_dir in list_dir(root, rel, out) if is_dir)
    return out


@lru_cache(maxsize=64)
def git_toplevel(root: str) -> str | None:
    """The git work tree ``root`` lies in, or None; asked once per root and process.

    The common cases are read off the file system, without starting ``git`` (a few
    milliseconds per new workspace in every worker process): no ``.git`` up the tree,
    or a ``.git`` folder without ``HEAD``, is no work tree; a ``.git`` folder with
    ``HEAD`` makes its parent the top. Only a ``.git`` file (a linked worktree or a
    submodule) asks git. A wrong guess costs nothing but speed: a ``git status``
    that fails falls back to the walk."""
    here = Path(root).resolve()
    for folder in (here, *here.parents):
        marker = folder / ".git"
        if marker.is_dir():
            return str(folder) if (marker / "HEAD").is_file() else None
        if marker.exists():
            return _git_rev_parse(root)
    return None


def _git(root: str, *args: str) -> bytes | None:
    """``git <args>`` in ``root``: its output, or None when git is missing or fails."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, timeout=GIT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _git_rev_parse(root: str) -> str | None:
    out = _git(root, "rev-parse", "--show-toplevel")
    return (out.decode().strip() or None) if out is not None else None


def _git_snapshot(root: str, top: str) -> Snapshot | None:
    # --no-optional-locks: status does not take index.lock to write back the refreshed
    # index (what git advises for background status), so it cannot make a git command
    # the agent runs meanwhile fail on the lock, and it is ~1 ms faster per snapshot.
    status = _git(
        root,
        "--no-optional-locks",
        "status",
        "--porcelain=v1",
        "-z",
        "--untracked-files=all",
        "--",
        ".",
    )
    if status is None:
        return None
    base = os.path.relpath(root, top)
    prefix = "" if base == "." else base.replace(os.sep, "/") + "/"
    out: Snapshot = {}
    for code, path in parse_porcelain(status):
        if not path.startswith(prefix):
            continue
        rel = path[len(prefix) :].rstrip("/")
        if rel and not skipped(rel):
            out[rel] = stat_signature(os.path.join(root, rel), code)
    return out


def snapshot(root: Path) -> Snapshot:
    """The workspace's state as far as writes go: git status plus stats in a git work
    tree, a stat of every file otherwise (falling back to that if git fails)."""
    where = str(root)
    top = git_toplevel(where)
    if top is not None:
        found = _git_snapshot(where, top)
        if found is not None:
            return found
    return snapshot_walk(where)
