"""Git plumbing for isolated runs: workspace snapshots, worktrees, result commits, blobs.

Why plumbing and not porcelain: a snapshot must capture the workspace as it is —
tracked files, untracked files that are not ignored, uncommitted changes — without
touching anything the user owns. So it is built in a *temporary* index
(``GIT_INDEX_FILE``; seeded with a copy of the user's index so unchanged files are not
re-hashed), then ``write-tree``, ``commit-tree`` and ``update-ref`` on a hidden ref
under ``refs/batchq/``. HEAD, the branch, the user's index, the stash and the config
are never written.

Every call goes through :func:`git`: bounded by a timeout, hooks off
(``core.hooksPath=/dev/null``), no prompt, no optional locks (so a read never
refreshes the user's index), and the caller's ``GIT_DIR``/``GIT_INDEX_FILE`` are
dropped so nothing inherited redirects a command. A failure is an
:class:`~batchq.errors.InfrastructureError` naming the command.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from batchq.errors import InfrastructureError, UsageError

__all__ = [
    "EXCLUDED",
    "GIT_TIMEOUT_S",
    "Entry",
    "changed_paths",
    "commit_worktree",
    "common_dir",
    "git",
    "linked_git_dirs",
    "patch",
    "read_blob",
    "ref_commit",
    "require_work_tree",
    "shortstat",
    "snapshot",
    "tree_entries",
    "workspace_entries",
    "worktree_add",
    "worktree_prune",
    "worktree_remove",
]

GIT_TIMEOUT_S = 300.0
"""A bound on one git command: a checkout of a very large tree can take a while, a
hung one (a network filesystem, a lock) must not hold a worker forever."""

EXCLUDED: tuple[str, ...] = (".tmp/tasks", ".tmp/batchq", ".batchq")
"""batchq's own state never enters a snapshot or a result commit: the task files, run
tokens, logs and reports (``.tmp/tasks/``, with every ``.batchq/``) and the stack file."""

_DROPPED_ENV = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_LITERAL_PATHSPECS",
)
_IDENTITY = {
    "GIT_AUTHOR_NAME": "batchq",
    "GIT_AUTHOR_EMAIL": "batchq@localhost",
    "GIT_COMMITTER_NAME": "batchq",
    "GIT_COMMITTER_EMAIL": "batchq@localhost",
}


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env.update({"GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"})
    env.update(_IDENTITY)
    env.update(extra or {})
    return env


def git(
    cwd: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    timeout_s: float = GIT_TIMEOUT_S,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``git -C cwd args`` with hooks off; raise InfrastructureError on failure
    (unless ``check`` is False), on a timeout, or when git cannot be started."""
    argv = ["git", "-C", str(cwd), "-c", "core.hooksPath=/dev/null", *args]
    try:
        done = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            env=_env(env),
            timeout=timeout_s,
            check=False,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise InfrastructureError(
            f"git {' '.join(args[:2])} in {cwd} did not finish within {timeout_s:g}s"
        ) from None
    except OSError as exc:
        raise InfrastructureError(f"cannot run git: {exc.strerror or exc}") from None
    if check and done.returncode != 0:
        detail = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise InfrastructureError(
            f"git {' '.join(args[:2])} failed in {cwd} (exit {done.returncode})"
            + (f": {detail[-1]}" if detail else "")
        )
    return done


def _text(done: subprocess.CompletedProcess[bytes]) -> str:
    return done.stdout.decode("utf-8", "surrogateescape").strip()


def require_work_tree(root: Path) -> Path:
    """The top of the git work tree ``root`` is in; a clear
    :class:`~batchq.errors.UsageError` (exit 2) when there is none."""
    if shutil.which("git") is None:
        raise UsageError("--isolate worktree needs git, which is not on PATH")
    done = git(root, "rev-parse", "--is-inside-work-tree", "--show-toplevel", check=False)
    lines = _text(done).splitlines()
    if done.returncode != 0 or not lines or lines[0] != "true" or len(lines) < 2:
        raise UsageError(
            f"--isolate worktree: {root} is not inside a git work tree (run `git init` "
            "there, or run without isolation: --isolate none)"
        )
    return Path(lines[1]).resolve()


def common_dir(root: Path) -> Path:
    """The repository's shared ``.git`` folder (the same from any of its worktrees)."""
    found = Path(_text(git(root, "rev-parse", "--git-common-dir")))
    return (found if found.is_absolute() else root / found).resolve()


def ref_commit(root: Path, ref: str) -> str | None:
    """The commit ``ref`` names, or None when there is none (an unborn HEAD)."""
    done = git(root, "rev-parse", "--verify", "-q", f"{ref}^{{commit}}", check=False)
    return _text(done) or None if done.returncode == 0 else None


def _commit_index(cwd: Path, env: Mapping[str, str], parent: str | None, message: str) -> str:
    tree = _text(git(cwd, "write-tree", env=env))
    parents = ["-p", parent] if parent else []
    return _text(git(cwd, "commit-tree", tree, *parents, "-m", message, env=env))


def _add_all(top: Path, project: Path, env: Mapping[str, str]) -> None:
    """Stage the whole work tree at ``top``, then take batchq's state out of the
    project at ``project`` (the project root may be a folder inside the repository)."""
    git(top, "add", "-A", env=env)
    # Taken out afterwards, not excluded by pathspec: git refuses an exclude pathspec
    # naming an ignored folder (``.tmp/`` often is). Also drops a committed copy.
    git(project, "rm", "-r", "-q", "--cached", "--ignore-unmatch", "--", *EXCLUDED, env=env)


def snapshot(root: Path, ref: str, message: str) -> str:
    """Record the work tree ``root`` is in as a commit on ``ref`` (parent: HEAD, when
    there is one) and return its id. Only a temporary index is written."""
    top = require_work_tree(root)
    project = root.resolve()
    user_index = Path(_text(git(top, "rev-parse", "--git-path", "index")))
    user_index = user_index if user_index.is_absolute() else top / user_index
    head = ref_commit(top, "HEAD")
    with tempfile.TemporaryDirectory(prefix="batchq-snap-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        if user_index.is_file():  # its stat data spares re-hashing unchanged files
            # copy2 keeps the index's mtime, which git's racy-clean check compares each
            # file's with: under a fresh mtime, a same-size change made within the
            # timestamp tick of the user's last `git add` would look unchanged and the
            # snapshot would miss it.
            shutil.copy2(user_index, env["GIT_INDEX_FILE"])
        elif head:
            git(top, "read-tree", head, env=env)
        try:
            _add_all(top, project, env)
        except InfrastructureError:  # e.g. a split index the copy cannot resolve
            Path(env["GIT_INDEX_FILE"]).unlink(missing_ok=True)
            if head:
                git(top, "read-tree", head, env=env)
            _add_all(top, project, env)
        commit = _commit_index(top, env, head, message)
    git(top, "update-ref", ref, commit)
    return commit


def commit_worktree(
    worktree: Path,
    project: Path,
    base: str,
    ref: str,
    message: str,
    force: Sequence[str] = (),
) -> str:
    """Commit everything in ``worktree`` (a batchq worktree: its index is ours) with
    ``base`` as parent, on ``ref``; return the commit id. The ``force`` paths (the
    subtask's deliverables, relative to ``project``, the project root inside the
    worktree) are added even when ``.gitignore`` ignores them."""
    env = {"GIT_INDEX_FILE": str(Path(_text(git(worktree, "rev-parse", "--git-path", "index"))))}
    index = Path(env["GIT_INDEX_FILE"])
    if not index.is_absolute():
        env["GIT_INDEX_FILE"] = str(worktree / index)
    _add_all(worktree, project, env)
    present = [p for p in force if (project / p).exists() or (project / p).is_symlink()]
    if present:
        git(project, "--literal-pathspecs", "add", "-f", "-A", "--", *present, env=env)
    commit = _commit_index(worktree, env, base, message)
    git(worktree, "update-ref", ref, commit)
    return commit


def changed_paths(cwd: Path, old: str, new: str) -> list[str]:
    """Paths under ``cwd`` that differ between two commits, relative to it (no rename
    detection: each side counts). Every diff here is ``--relative`` to its ``cwd``,
    the project root, which may be a folder inside the repository."""
    done = git(cwd, "diff", "--relative", "--name-only", "-z", "--no-renames", old, new)
    return sorted(p for p in done.stdout.decode("utf-8", "surrogateescape").split("\0") if p)


def shortstat(cwd: Path, old: str, new: str) -> str:
    return _text(git(cwd, "diff", "--relative", "--shortstat", "--no-renames", old, new))


def patch(cwd: Path, old: str, new: str) -> str:
    """The unified diff ``old..new`` under ``cwd`` (binary files as git binary patches)."""
    flags = ("--relative", "--binary", "--no-color", "--no-ext-diff", "--no-textconv")
    done = git(cwd, "diff", *flags, old, new)
    return done.stdout.decode("utf-8", "replace")


@dataclass(frozen=True)
class Entry:
    """One path's content as git sees it: mode (``100644``, ``100755``, ``120000``)
    and blob id."""

    mode: str
    oid: str


def tree_entries(root: Path, rev: str, paths: Sequence[str]) -> dict[str, Entry]:
    """The entries of ``paths`` (relative to ``root``, as the names returned) in commit
    ``rev``; absent paths are left out."""
    if not paths:
        return {}
    done = git(root, "--literal-pathspecs", "ls-tree", "-r", "-z", rev, "--", *paths)
    out: dict[str, Entry] = {}
    for record in done.stdout.decode("utf-8", "surrogateescape").split("\0"):
        if not record:
            continue
        meta, _, name = record.partition("\t")
        mode, kind, oid = meta.split()
        if kind == "blob":
            out[name] = Entry(mode, oid)
    return out


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def workspace_entries(root: Path, paths: Sequence[str]) -> dict[str, Entry]:
    """The entries ``paths`` would have if added now: regular files hashed the way
    ``git add`` hashes them (attributes and filters apply), symlinks by their target;
    missing paths and folders are left out."""
    out: dict[str, Entry] = {}
    files: list[str] = []
    for name in paths:
        path = root / name
        if path.is_symlink():
            out[name] = Entry("120000", _blob_id(os.fsencode(os.readlink(path))))
        elif path.is_file():
            files.append(name)
    if files:
        done = git(
            root,
            "hash-object",
            "--stdin-paths",
            input="".join(f"{name}\n" for name in files).encode("utf-8", "surrogateescape"),
        )
        for name, oid in zip(files, _text(done).splitlines(), strict=True):
            mode = "100755" if os.access(root / name, os.X_OK) else "100644"
            out[name] = Entry(mode, oid)
    return out


def read_blob(root: Path, rev: str, path: str) -> bytes:
    """``rev:path``'s content (``path`` relative to ``root``) as a checkout would write
    it (smudge filters apply)."""
    return git(root, "cat-file", "--filters", f"{rev}:./{path}").stdout


def worktree_add(root: Path, path: Path, commit: str) -> None:
    """A detached worktree at ``commit`` (hooks off: no ``post-checkout`` runs)."""
    git(root, "worktree", "add", "--detach", "--quiet", str(path), commit)


def worktree_remove(root: Path, path: Path) -> None:
    """Remove a worktree and its administrative files; never raises for one already gone."""
    git(root, "worktree", "remove", "--force", "--force", str(path), check=False)
    shutil.rmtree(path, ignore_errors=True)
    worktree_prune(root)


def worktree_prune(root: Path) -> None:
    git(root, "worktree", "prune", check=False)


def linked_git_dirs(workspace: Path) -> list[Path]:
    """For a linked worktree (its ``.git`` is a file ``gitdir: ...``), the repository's
    shared ``.git`` folder, which its git commands read; empty for anything else.

    The sandbox binds it read-only: under a ``/tmp`` tmpfs it would be hidden and the
    agent's ``git status`` would find no repository."""
    found = (d / ".git" for d in (workspace, *workspace.parents) if (d / ".git").exists())
    marker = next(found, None)
    try:
        if marker is None or marker.is_symlink() or not marker.is_file():
            return []
        text = marker.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return []
    workspace = marker.parent
    if not text.startswith("gitdir:"):
        return []
    gitdir = Path(text.removeprefix("gitdir:").strip())
    gitdir = gitdir if gitdir.is_absolute() else workspace / gitdir
    # <common>/worktrees/<name>: the common folder is two levels up.
    common = gitdir.resolve().parent.parent
    return [common] if (common / "objects").is_dir() else []
