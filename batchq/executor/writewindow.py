"""A workspace snapshot kept current by inotify, so a delegation's write window costs
no walk of the workspace.

Walking a plain folder costs a ``stat`` per file: about 20 ms for 5,000 files here,
twice per subtask, which would multiply the overhead of a batch of quick subtasks. A
:class:`Tracker` walks once per pool slot (process or thread) and workspace, then
applies only the paths the kernel reported as created, written, deleted, moved or
touched. Two rules
keep it exact rather than merely fast: a reported path is re-``stat``-ed and compared
with the kept signature (an open-for-write that wrote nothing is no change), and when
the kernel's event queue overflows the tracker walks again and diffs the two
snapshots. Where inotify is missing (not Linux) or refused (watch or instance limits),
every window walks twice, as :func:`batchq.files.snapshot.snapshot` does.

Only local writes are seen: a workspace shared over NFS with other hosts needs each
host's own worker to watch, which is the case when every worker runs its own subtasks.

In a git work tree the tracker says what changed as well, and git is asked only which
of those paths it ignores (``git check-ignore``: an untracked path matching an ignore
rule; a tracked file never is), once per window and only when something changed. Two
``git status`` snapshots per window cost two git processes (~4 ms each here) even for
a subtask that wrote nothing. Where the tracker has no inotify, the window falls back
to the two snapshots (walking a repository with large ignored folders every window
would cost more).
"""

from __future__ import annotations

import ctypes
import functools
import os
import struct
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

from batchq.core import blame
from batchq.files import snapshot
from batchq.files.snapshot import Snapshot

__all__ = ["Tracker", "open_window", "tracker_for"]

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ISDIR = 0x40000000
IN_ONLYDIR = 0x01000000
IN_DONTFOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
WATCH_MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
    | IN_DONTFOLLOW
    | IN_EXCL_UNLINK
)
_EVENT = struct.Struct("iIII")
_READ_SIZE = 1 << 16


class _Unavailable(Exception):
    """inotify cannot watch this workspace; walk instead."""


@functools.cache
def _libc() -> ctypes.CDLL:
    """The C library already loaded in this process: ``find_library`` would start
    ``ldconfig`` for every new workspace."""
    return ctypes.CDLL(None, use_errno=True)


class _Inotify:
    """The few libc calls needed, through ctypes (no dependency)."""

    def __init__(self) -> None:
        if not sys.platform.startswith("linux"):
            raise _Unavailable("not Linux")
        libc = _libc()
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._rm = libc.inotify_rm_watch
        self._rm.argtypes = [ctypes.c_int, ctypes.c_int]
        self.fd = int(libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
        if self.fd < 0:
            raise _Unavailable(os.strerror(ctypes.get_errno()))
        # Closed once, by close() or when dropped: a thread's tracker is dropped with
        # the thread (threads pool shutdown) without anyone calling close().
        self._closer = weakref.finalize(self, os.close, self.fd)

    def add(self, path: str) -> int:
        wd = int(self._add(self.fd, os.fsencode(path), WATCH_MASK))
        if wd < 0:
            raise _Unavailable(f"{path}: {os.strerror(ctypes.get_errno())}")
        return wd

    def read(self) -> list[tuple[int, int, str]]:
        """Every pending event as (watch, mask, name), without blocking."""
        out: list[tuple[int, int, str]] = []
        while True:
            try:
                data = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                return out
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                start = offset + _EVENT.size
                name = os.fsdecode(data[start : start + length].rstrip(b"\0"))
                out.append((wd, mask, name))
                offset = start + length

    def close(self) -> None:
        self._closer()


class Tracker:
    """One workspace's file signatures, brought up to date on demand."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.snap: Snapshot = {}
        self.dirs: dict[int, str] = {}
        self.notify: _Inotify | None = None
        try:
            self.notify = _Inotify()
            self._watch_tree("")
        except (_Unavailable, OSError):
            self._drop_notify()
        if self.notify is None:
            self.snap = snapshot.snapshot_walk(root)

    def _drop_notify(self) -> None:
        if self.notify is not None:
            self.notify.close()
        self.notify = None
        self.dirs = {}

    def _watch_tree(self, rel: str) -> None:
        """Watch ``rel`` and every folder under it, recording their files; a file
        created before its folder's watch existed is recorded by this walk."""
        assert self.notify is not None
        self.dirs[self.notify.add(os.path.join(self.root, rel) if rel else self.root)] = rel
        sub: Snapshot = {}
        for name, is_dir in snapshot.list_dir(self.root, rel, sub):
            if is_dir:
                self._watch_tree(name)
        self.snap.update(sub)

    def _forget(self, rel: str) -> Snapshot:
        """Drop a folder's files and watches (it was removed, moved or replaced);
        return the dropped files' signatures."""
        prefix = rel + "/"
        gone = {p: sig for p, sig in self.snap.items() if p.startswith(prefix)}
        for path in gone:
            del self.snap[path]
        for wd in [wd for wd, d in self.dirs.items() if d == rel or d.startswith(prefix)]:
            del self.dirs[wd]
        return gone

    def changes(self) -> list[str]:
        """Paths whose signature changed since the last call (sorted), and bring the
        snapshot up to date. The first call after construction reports nothing."""
        if self.notify is None:
            fresh = snapshot.snapshot_walk(self.root)
            walked = blame.changed(self.snap, fresh)
            self.snap = fresh
            return walked
        try:
            events = self.notify.read()
        except OSError:
            return self._rewalk()
        if any(mask & IN_Q_OVERFLOW for _, mask, _ in events):
            return self._rewalk()
        touched: set[str] = set()
        changed: set[str] = set()
        for wd, mask, name in events:
            folder = self.dirs.get(wd)
            if folder is None or not name:
                continue
            rel = f"{folder}/{name}" if folder else name
            if snapshot.skipped(rel):
                continue
            if not mask & IN_ISDIR:
                touched.add(rel)
                continue
            old = self._forget(rel)
            if mask & (IN_CREATE | IN_MOVED_TO):
                try:
                    self._watch_tree(rel)
                except (_Unavailable, OSError):
                    self.snap.update(old)
                    return self._fall_back()
            prefix = rel + "/"
            now = {p: sig for p, sig in self.snap.items() if p.startswith(prefix)}
            changed.update(p for p in set(old) | set(now) if old.get(p) != now.get(p))
        for rel in touched - changed:
            sig = snapshot.stat_signature(os.path.join(self.root, rel))
            previous = self.snap.get(rel)
            if sig[1] < 0:
                self.snap.pop(rel, None)
                if previous is not None:
                    changed.add(rel)
            elif sig != previous:
                self.snap[rel] = sig
                changed.add(rel)
        return sorted(changed)

    def _rewalk(self) -> list[str]:
        """The kernel dropped events: diff against a fresh walk and watch anew."""
        old = self.snap
        self._drop_notify()
        self.snap = {}
        try:
            self.notify = _Inotify()
            self._watch_tree("")
        except (_Unavailable, OSError):
            return self._fall_back(old)
        return blame.changed(old, self.snap)

    def _fall_back(self, old: Snapshot | None = None) -> list[str]:
        old = self.snap if old is None else old
        self._drop_notify()
        self.snap = snapshot.snapshot_walk(self.root)
        return blame.changed(old, self.snap)

    def close(self) -> None:
        self._drop_notify()


class _Current(threading.local):
    """The calling thread's tracker, with the pid that made it (a forked child gets
    the forking thread's copy and must not use its parent's inotify instance)."""

    entry: tuple[int, Tracker] | None = None


_CURRENT = _Current()


def tracker_for(root: str) -> Tracker:
    """This thread's tracker for ``root``. One per thread: a pool slot (a prefork child,
    or a thread of the threads pool) runs one subtask at a time, so its windows never
    overlap, whereas a tracker shared by threads would hand one window's changes to
    another's ``changes()`` call, and two threads replacing it at once would close its
    inotify descriptor twice (the second close can hit a descriptor reused meanwhile).
    A thread keeps one workspace's tracker at a time: inotify instances are scarce
    (128 per user by default)."""
    current = _CURRENT.entry
    if current is not None:
        pid, tracker = current
        if pid == os.getpid() and tracker.root == root:
            return tracker
        if pid == os.getpid():
            tracker.close()
    tracker = Tracker(root)
    _CURRENT.entry = (os.getpid(), tracker)
    return tracker


def open_window(root: Path, declared: Sequence[str] = ()) -> Callable[[], list[str]]:
    """Start a write window on ``root``; call the result at its end for the paths that
    changed meanwhile (sorted), leaving out those ``declared`` covers (the subtask's
    deliverables: files, or folders ending in ``/``). This thread's tracker says what
    changed (its changes since its last use happened outside any window of ours); in a
    git work tree the paths git ignores are left out too (ignored files are not writes
    anyone declares). The declared paths go first, so a subtask that wrote only its
    deliverables starts no git process: whether git ignores them changes nothing."""
    where = str(root)
    in_git = snapshot.git_toplevel(where) is not None
    tracker = tracker_for(where)
    if in_git and tracker.notify is None:
        before = snapshot.snapshot(root)
        return lambda: blame.outside(blame.changed(before, snapshot.snapshot(root)), declared)
    tracker.changes()
    if not in_git:
        return lambda: blame.outside(tracker.changes(), declared)
    return lambda: not_ignored(where, blame.outside(tracker.changes(), declared))


def not_ignored(root: str, paths: list[str]) -> list[str]:
    """``paths`` (relative to ``root``, in a git work tree) without those git ignores;
    no git process when there is nothing to ask. Raises OSError when git cannot tell (the
    caller then reports the writes as not checked rather than guess)."""
    # A path inside a submodule or a nested repository is that repository's file, not
    # something this one ignores (and check-ignore refuses it with a fatal error).
    marked: dict[str, bool] = {}
    asked = [path for path in paths if not _in_nested_repository(root, path, marked)]
    if not asked:
        return list(paths)
    try:
        done = subprocess.run(
            ["git", "--no-optional-locks", "check-ignore", "-z", "--stdin"],
            cwd=root,
            input=b"\0".join(os.fsencode(path) for path in asked) + b"\0",
            capture_output=True,
            timeout=snapshot.GIT_TIMEOUT_S,
            check=False,
        )
    except subprocess.SubprocessError as exc:
        raise OSError(f"git check-ignore in {root}: {exc}") from exc
    if done.returncode not in (0, 1):  # 1: none of them is ignored
        detail = done.stderr.decode("utf-8", "replace").strip()
        raise OSError(f"git check-ignore in {root} failed: {detail or done.returncode}")
    ignored = {os.fsdecode(name) for name in done.stdout.split(b"\0") if name}
    return [path for path in paths if path not in ignored]


def _in_nested_repository(root: str, path: str, marked: dict[str, bool]) -> bool:
    """Whether a folder between ``root`` and ``path`` holds a ``.git`` of its own;
    ``marked`` remembers the folders already looked at."""
    parts = path.split("/")[:-1]
    for depth in range(1, len(parts) + 1):
        folder = "/".join(parts[:depth])
        if folder not in marked:
            marked[folder] = os.path.lexists(os.path.join(root, folder, ".git"))
        if marked[folder]:
            return True
    return False
