"""Child processes that never outlive batchq: own session, output to a file, reaped.

Every process batchq starts (redis-server, Celery workers, Flower) goes through
:func:`spawn`, because an orphan is worse than a crash here: a leftover child that
holds CI's stdout keeps the CI job alive until its time limit, and a leftover worker
keeps consuming a queue nobody watches. So each child

- starts in a new session (``start_new_session=True``): it and everything it starts
  share one process group we can signal at once, and Ctrl-C in the terminal reaches
  only us, so teardown happens in our order;
- writes stdout and stderr to a log file, never to our stdout;
- is recorded in a module-level registry until it is reaped. An ``atexit`` hook, and a
  SIGTERM handler installed on request (:func:`install_sigterm_reaper`), kill every
  registered group, so a normal exit, an exception or a TERM leaves nothing behind.

Process discovery (group members, children) reads ``/proc`` and is Linux-only, like
the rest of the embedded stack.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

__all__ = [
    "Child",
    "child_pids",
    "group_members",
    "install_sigterm_reaper",
    "live_children",
    "pid_alive",
    "process_start_ticks",
    "reap_all",
    "reap_detached",
    "spawn",
    "wait_group_gone",
]

_POLL_S = 0.02

_registry: dict[int, Child] = {}
_registry_lock = threading.Lock()
# Popen objects of detached children (``batchq up``): kept referenced so their
# ``__del__`` never warns about a still-running process while we are alive.
_detached: list[subprocess.Popen[bytes]] = []
# A forked copy of this process (multiprocessing "fork") inherits the registry; only
# the process that spawned the children may reap them.
_owner_pid = os.getpid()


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name, or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may itself contain spaces or ")".
    return raw[raw.rfind(b")") + 2 :].decode("ascii", "replace").split()


def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a live process (zombies count as dead: they run nothing)."""
    fields = _stat_fields(pid)
    if fields is None:
        return False
    return fields[0] not in ("Z", "X")


def process_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot: tells a reused pid apart."""
    fields = _stat_fields(pid)
    # Field 22 of stat is starttime; fields here start at field 3 (state).
    return int(fields[19]) if fields is not None and len(fields) > 19 else None


def _proc_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for pid in _proc_pids():
        fields = _stat_fields(pid)
        # fields: state, ppid, pgrp, ...
        if fields is not None and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(pid)
    return members


def child_pids(pid: int) -> list[int]:
    """Direct live children of ``pid``, via ``/proc/<pid>/task/*/children`` or a scan."""
    children: set[int] = set()
    task_dir = Path(f"/proc/{pid}/task")
    found_file = False
    try:
        for task in task_dir.iterdir():
            try:
                text = (task / "children").read_text()
            except OSError:
                continue
            found_file = True
            children.update(int(part) for part in text.split())
    except OSError:
        return []
    if not found_file:  # kernel without CONFIG_PROC_CHILDREN
        for candidate in _proc_pids():
            fields = _stat_fields(candidate)
            if fields is not None and int(fields[1]) == pid:
                children.add(candidate)
    return sorted(c for c in children if pid_alive(c))


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def wait_group_gone(pgid: int, timeout_s: float) -> bool:
    """Wait until no live process is left in ``pgid``; True if that happened in time."""
    deadline = time.monotonic() + timeout_s
    while True:
        if not group_members(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)


class Child:
    """A process started by :func:`spawn`, leader of its own process group."""

    def __init__(self, popen: subprocess.Popen[bytes], argv: Sequence[str], log_path: Path) -> None:
        self._popen = popen
        self.argv = list(argv)
        self.log_path = log_path
        self.pid = popen.pid
        # start_new_session makes the child a session and group leader: pgid == pid.
        self.pgid = popen.pid
        self.start_ticks = process_start_ticks(popen.pid)
        self.log_offset = 0

    def __repr__(self) -> str:
        state = "alive" if self.alive() else f"exited {self.returncode}"
        return f"<Child pid={self.pid} {self.argv[0]!r} {state}>"

    @property
    def returncode(self) -> int | None:
        """Exit status of the leader once it has exited (negative: killed by signal)."""
        return self._popen.poll()

    def alive(self) -> bool:
        """True while the group leader runs."""
        return self._popen.poll() is None

    def group_alive(self) -> bool:
        """True while any process of the group runs (the leader or what it started)."""
        return bool(group_members(self.pgid)) or self.alive()

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Wait for the leader to exit; its exit status, or None on timeout."""
        try:
            return self._popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def send_signal(self, sig: int, *, group: bool = True) -> None:
        """Signal the whole group, or with ``group=False`` only the leader."""
        if group:
            _signal_group(self.pgid, sig)
        elif self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self, grace_s: float = 10.0, *, leader_only: bool = False) -> int | None:
        """SIGTERM, wait up to ``grace_s`` for the group to go, then SIGKILL the group.

        ``leader_only`` sends the TERM to the leader alone. Celery needs that for a
        warm shutdown: its prefork pool children reset SIGTERM to the default action,
        so a TERM to the whole group would kill running tasks mid-way instead of
        letting the main process drain them. What is left after the grace is killed.
        """
        if self._popen.poll() is None or group_members(self.pgid):
            self.send_signal(signal.SIGTERM, group=not leader_only)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline:
                if self._popen.poll() is not None and not group_members(self.pgid):
                    break
                time.sleep(_POLL_S)
        return self.kill()

    def kill(self) -> int | None:
        """SIGKILL the whole group and reap the leader."""
        _signal_group(self.pgid, signal.SIGKILL)
        code = self.wait(5.0)
        # Grandchildren are reparented and reaped by init; wait until they are gone.
        wait_group_gone(self.pgid, 5.0)
        self._forget()
        return code

    def detach(self) -> None:
        """Let the child outlive us (``batchq up``): no reaping at exit."""
        _detached.append(self._popen)
        self._forget()

    def read_log(self, *, since_start: bool = True) -> str:
        """The log written since this child started (the file may hold older runs)."""
        try:
            with self.log_path.open("rb") as handle:
                if since_start:
                    handle.seek(self.log_offset)
                return handle.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the log, for error messages."""
        return "\n".join(self.read_log().splitlines()[-lines:])

    def _forget(self) -> None:
        with _registry_lock:
            _registry.pop(self.pid, None)


def spawn(
    argv: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
) -> Child:
    """Start ``argv`` in a new session with stdout+stderr appended to ``log_path``.

    ``env`` replaces the environment entirely when given (callers build it from
    ``os.environ`` on purpose). The log is appended to, so a restarted server keeps
    its history; :attr:`Child.log_offset` marks where this run begins.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        offset = log.tell()
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    child = Child(popen, argv, log_path)
    child.log_offset = offset
    with _registry_lock:
        _registry[child.pid] = child
    return child


def reap_detached() -> None:
    """Collect the exit status of detached children that have exited since."""
    _detached[:] = [popen for popen in _detached if popen.poll() is None]


def live_children() -> list[Child]:
    """Children spawned by this process and not yet reaped or detached."""
    with _registry_lock:
        return list(_registry.values())


def reap_all(grace_s: float = 2.0) -> int:
    """Terminate every registered child group; returns how many there were.

    TERM goes to all groups first and the grace is shared, so N children cost one
    grace period, not N.
    """
    if os.getpid() != _owner_pid:
        return 0
    children = live_children()
    for child in children:
        child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in children:
        child.terminate(max(0.0, deadline - time.monotonic()))
    return len(children)


_sigterm_installed = False


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    reap_all()
    # Exit as if by the signal, but through SystemExit so `with` blocks and atexit run.
    raise SystemExit(128 + signum)


def install_sigterm_reaper() -> bool:
    """Make SIGTERM reap our children and exit; True if the handler was installed.

    Only done from the main thread and only over the default disposition: a process
    that set its own handler (a Celery worker, a test runner) keeps it, and it must
    not be done at import time, where it would surprise library users.
    """
    global _sigterm_installed
    if _sigterm_installed:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return False
    signal.signal(signal.SIGTERM, _on_sigterm)
    _sigterm_installed = True
    return True


atexit.register(reap_all)
# A forked copy must not own (and at exit kill) its parent's children.
os.register_at_fork(after_in_child=_registry.clear)
