"""Run one agent child process to completion, a timeout or a cancellation.

Shared by the ``shell`` and CLI agents and by ``execution.verify``. The rules come
from what goes wrong with subprocesses on workers (TRAPS):

- The child starts in its own session (``start_new_session=True``), so it and every
  process it starts share one process group. A timeout, a cancellation, or the
  child's own exit ends with the whole group signalled (SIGTERM, a short grace, then
  SIGKILL): a ``sleep 30 &`` left behind by a finished command is killed too, and
  nothing outlives the subtask as an orphan holding the worker's pipes.
- stdout and stderr are merged and streamed to the subtask's log file as they come,
  so a long run can be followed with ``tail -f``; memory keeps only a bounded tail.
- One thread, no reader threads: a ``select`` loop waits on the output pipe and on a
  pidfd of the child (Linux ≥ 5.3), so it wakes the moment output arrives or the child
  exits — a ``touch x`` holds its worker slot for the command's own time, not a poll
  interval. Each wait ends no later than the deadline or the next ``should_stop``
  check (at most one every ``poll_s``). Without a pidfd the child is polled: after EOF
  with ``Popen.wait`` (a fine back-off), before it every ``_NO_PIDFD_POLL_S`` at most.
  A grandchild that escaped the group (``setsid``) and keeps the pipe open cannot hang
  us: after the group is gone the pipe is drained for a bounded time only.
- A sandboxed child (bubblewrap) runs everything in a PID namespace of its own and
  reports that namespace's PID 1 (:class:`PidNamespace`, bwrap's ``--info-fd``). Its
  exit then ends the wait exactly: the kernel releases every process of a namespace
  before its PID 1's pidfd turns readable, so once it has and the leader is reaped no
  process of the group can be alive, and no ``/proc`` scan is needed (scanning every
  process costs a few milliseconds, more than the rest of a trivial subtask).
- The child's own failure — non-zero exit, signal, missing executable, missing
  working directory — is a :class:`ProcessResult`, never an exception. Exceptions
  raised *into* the loop (Celery's soft time limit, a failing ``should_stop``)
  still propagate, after the group has been killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from batchq.files.agentlog import append_bytes
from batchq.procs import group_members

__all__ = [
    "DEFAULT_TAIL_BYTES",
    "Held",
    "PidNamespace",
    "ProcessResult",
    "gated",
    "hold_process",
    "last_line",
    "run_process",
    "summary_line",
]

DEFAULT_TAIL_BYTES = 64 * 1024
"""How much of a child's output is kept in memory; the log file has all of it."""

_READ_CHUNK = 64 * 1024
_MAX_READS_PER_POLL = 16
_DRAIN_S = 1.0
_HAVE_PROC = os.path.isdir("/proc/self")
_NO_PIDFD_POLL_S = 0.01
"""Without a pidfd, how often a child whose pipe is still open is polled for its exit."""
_PIDFD_OK = sys.platform.startswith("linux")
"""Whether to try ``os.pidfd_open`` (tests turn it off to cover the fallback)."""
SUMMARY_CHARS = 200
_INFO_LIMIT = 64 * 1024


class PidNamespace:
    """A pipe on which the child reports the PID 1 of the PID namespace it runs every
    process in, as bwrap's ``--info-fd`` does (``{"child-pid": N, ...}``).

    Make one, put :attr:`write_fd` in the child's argv, and give it to
    :func:`run_process`, which passes that end to the child, closes it here once the
    child runs, and closes both ends when it returns. Only a child that really puts
    all its processes in that namespace may be described by one: the leader and the
    namespace are then the whole process group."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self._data = bytearray()
        self._eof = False

    def reported(self) -> int | None:
        """Read what the child wrote so far; the reported PID 1 once it is complete."""
        while not self._eof and len(self._data) <= _INFO_LIMIT:
            try:
                chunk = os.read(self.read_fd, 4096)
            except BlockingIOError:
                break
            if not chunk:
                self._eof = True
            self._data += chunk
        try:
            info = json.loads(self._data)
        except ValueError:
            return None
        pid = info.get("child-pid") if isinstance(info, dict) else None
        return pid if isinstance(pid, int) and pid > 1 else None

    @property
    def done(self) -> bool:
        """Nothing more will come (EOF, or more than a report can hold)."""
        return self._eof or len(self._data) > _INFO_LIMIT

    def close_write(self) -> None:
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def close(self) -> None:
        self.close_write()
        if self.read_fd >= 0:
            os.close(self.read_fd)
            self.read_fd = -1


@dataclass(frozen=True)
class ProcessResult:
    """How a child process ended. Exactly one of the flags explains a failure:
    ``error`` (could not start), ``timed_out``, ``cancelled``, or a non-zero
    ``exit_code`` (negative: killed by that signal)."""

    argv: tuple[str, ...]
    exit_code: int | None
    output: str
    timed_out: bool = False
    cancelled: bool = False
    error: str | None = None
    error_type: str | None = None
    duration_s: float = 0.0
    truncated_bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.cancelled and not self.error

    def describe(self) -> str:
        """One line saying why the process did not succeed (empty when it did)."""
        if self.error:
            return self.error
        if self.timed_out:
            return f"timed out after {self.duration_s:.0f}s"
        if self.cancelled:
            return "cancelled"
        if self.exit_code is not None and self.exit_code < 0:
            try:
                name = signal.Signals(-self.exit_code).name
            except ValueError:
                name = f"signal {-self.exit_code}"
            return f"killed by {name}"
        if self.exit_code:
            return f"exit code {self.exit_code}"
        return ""


SUMMARY_MARKER = "SUMMARY:"
"""A line starting with this (after blanks) is an agent's one-line summary."""


def summary_line(output: str, limit: int = SUMMARY_CHARS) -> str:
    """An agent's summary: the text after the last ``SUMMARY:`` marker line that has
    any, else :func:`last_line`. The prompt asks coding agents to end with one, so
    a closing remark or a progress line printed later does not become the summary."""
    for line in reversed(output.splitlines()):
        text = line.strip()
        if text.startswith(SUMMARY_MARKER):
            text = text[len(SUMMARY_MARKER) :].strip()
            if text:
                return text if len(text) <= limit else text[: limit - 1] + "…"
    return last_line(output, limit)


def last_line(output: str, limit: int = SUMMARY_CHARS) -> str:
    """The last non-empty line of ``output``, cut to ``limit`` characters: what a
    command printed last is the best one-line summary we can get for free."""
    for line in reversed(output.splitlines()):
        text = line.strip()
        if text:
            return text if len(text) <= limit else text[: limit - 1] + "…"
    return ""


class _Tail:
    """The last ``limit`` bytes of a stream, without holding the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = max(limit, 0)
        self.buf = bytearray()
        self.dropped = 0

    def add(self, data: bytes) -> None:
        self.buf += data
        excess = len(self.buf) - self.limit
        # Trim in bulk (only past twice the limit) so appends stay amortised O(1).
        if excess > self.limit:
            del self.buf[:excess]
            self.dropped += excess

    def text(self) -> tuple[str, int]:
        excess = max(len(self.buf) - self.limit, 0)
        data = bytes(self.buf[excess:])
        return data.decode("utf-8", errors="replace"), self.dropped + excess


def _spawn(
    argv: Sequence[str],
    cwd: Path | str,
    env: Mapping[str, str] | None,
    stdin: int,
    pid_namespace: PidNamespace | None,
    parent_death_signal: bool,
) -> subprocess.Popen[bytes]:
    """The agent process as both :func:`run_process` and :func:`hold_process` start
    it: output and errors into one pipe, the leader of a new session (its group is
    what a stop kills), no inherited descriptors but the sandbox's info pipe."""
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        close_fds=True,
        pass_fds=(pid_namespace.write_fd,) if pid_namespace is not None else (),
        preexec_fn=_die_with_parent if parent_death_signal else None,
    )


def run_process(
    command: str | Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
    should_stop: Callable[[], bool] | None = None,
    log_path: Path | None = None,
    tail_bytes: int = DEFAULT_TAIL_BYTES,
    grace_s: float = 2.0,
    poll_s: float = 0.2,
    pid_namespace: PidNamespace | None = None,
    parent_death_signal: bool = True,
    on_spawn: Callable[[], object] | None = None,
) -> ProcessResult:
    """Run ``command`` (a bash line, or an argv run without a shell) in ``cwd``.

    Output (stdout and stderr merged) is appended to ``log_path`` as it arrives and its
    tail returned. The child is killed with its whole process group when it outlives
    ``timeout_s`` or ``should_stop()`` turns true, and any process it left behind is
    killed when it exits. Never raises for the child's own failure.

    ``pid_namespace``: the child reports the PID namespace it runs everything in (see
    :class:`PidNamespace`); its end is awaited instead of scanning for the group.
    ``parent_death_signal=False`` leaves out the SIGKILL-on-worker-death set in the
    child before exec, for a child that sets it itself (``bwrap --die-with-parent``):
    without a ``preexec_fn`` Python starts the child with ``vfork``, which spares a
    copy of the worker's page tables (about 4 ms per process here).
    ``on_spawn``: called once while the child runs (work to do meanwhile): at once,
    or, with ``pid_namespace``, once the child has reported it (not at all if it ended
    before); should it raise, the child's group is killed first.
    """
    argv = ("bash", "-c", command) if isinstance(command, str) else tuple(command)
    started = time.monotonic()
    try:
        if not argv:
            return _failed_start(argv, "empty command", "ValueError", started)
        if not Path(cwd).is_dir():
            return _failed_start(
                argv, f"working directory not found: {cwd}", "FileNotFoundError", started
            )
        log = _open_log(log_path)
        try:
            try:
                proc = _spawn(
                    argv, cwd, env, subprocess.DEVNULL, pid_namespace, parent_death_signal
                )
            except OSError as exc:
                reason = f"cannot start {argv[0]!r}: {exc.strerror or exc}"
                if isinstance(exc, FileNotFoundError):
                    reason = f"executable not found: {argv[0]!r}"
                _write(log, f"[batchq] {reason}\n".encode())
                return _failed_start(argv, reason, type(exc).__name__, started)
            if pid_namespace is not None:
                pid_namespace.close_write()  # EOF once the child closed its copy
            return _supervise(
                proc,
                argv,
                log,
                started,
                _Limits(timeout_s, should_stop, tail_bytes, grace_s, poll_s),
                pid_namespace,
                on_spawn,
            )
        finally:
            if log is not None:
                log.close()
    finally:
        if pid_namespace is not None:
            pid_namespace.close()


@dataclass(frozen=True)
class _Limits:
    timeout_s: float | None
    should_stop: Callable[[], bool] | None
    tail_bytes: int
    grace_s: float
    poll_s: float


GATE_SCRIPT = 'IFS= read -r go && [ "$go" = go ] && exec "$@" </dev/null; exit 125'
"""What a held child runs first (:func:`gated`): wait on stdin for the word ``go``,
then become the command, with ``/dev/null`` as its stdin as usual. Anything else —
end of file because the worker died, or was told nothing — ends it without running
the command."""


def gated(argv: Sequence[str]) -> list[str]:
    """``argv`` behind the gate :func:`hold_process` opens. ``/bin/sh`` by its path:
    a sandbox's ``PATH`` is the subtask's, which need not name it."""
    return ["/bin/sh", "-c", GATE_SCRIPT, "batchq-gate", *argv]


class Held:
    """A child started ahead of time and held before its command runs.

    Starting a sandbox costs bwrap several milliseconds of namespace and mount set-up;
    a verify command's sandbox can pay them while the agent still runs. The child's
    argv must be :func:`gated`: it waits on its stdin, a pipe only the worker holds.
    :meth:`release` lets the command run (and supervises it as :func:`run_process`
    does, the deadline counted from the release); :meth:`discard` kills it unrun.
    Exactly one of the two must be called."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        argv: tuple[str, ...],
        gate: int,
        namespace: PidNamespace | None,
    ) -> None:
        self.proc, self.argv, self.gate, self.namespace = proc, argv, gate, namespace
        self.used = False  # released or discarded: its group id may belong to others now

    def release(
        self,
        *,
        timeout_s: float | None = None,
        should_stop: Callable[[], bool] | None = None,
        log_path: Path | None = None,
        tail_bytes: int = DEFAULT_TAIL_BYTES,
        grace_s: float = 2.0,
        poll_s: float = 0.2,
    ) -> ProcessResult:
        """Run the held command to completion, a timeout or a cancellation."""
        assert not self.used, "a held process runs once"
        started = time.monotonic()
        try:
            log = _open_log(log_path)
        except OSError:
            self.discard()  # as run_process, which raises before it starts anything
            raise
        self.used = True
        try:
            try:
                with contextlib.suppress(OSError):  # dead already: supervision says how
                    os.write(self.gate, b"go\n")
                self._close_gate()
                limits = _Limits(timeout_s, should_stop, tail_bytes, grace_s, poll_s)
                return _supervise(self.proc, self.argv, log, started, limits, self.namespace)
            finally:
                if log is not None:
                    log.close()
        finally:
            self._close_gate()
            if self.namespace is not None:
                self.namespace.close()

    def discard(self) -> None:
        """Kill the held child and everything it started, without running the command
        (the gate stays shut: killed first, so not even end of file reaches it). Does
        nothing once released or discarded."""
        if self.used:
            return
        self.used = True
        try:
            _signal_group(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=_DRAIN_S)
        finally:
            self._close_gate()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            if self.namespace is not None:
                self.namespace.close()

    def _close_gate(self) -> None:
        if self.gate >= 0:
            os.close(self.gate)
            self.gate = -1


def hold_process(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    pid_namespace: PidNamespace | None = None,
    parent_death_signal: bool = True,
) -> Held | ProcessResult:
    """Start ``argv`` (a :func:`gated` argv) as :func:`run_process` would, its stdin
    the gate's pipe, and return it held; a :class:`ProcessResult` when it cannot start."""
    argv = tuple(argv)
    started = time.monotonic()
    if not Path(cwd).is_dir():
        if pid_namespace is not None:
            pid_namespace.close()
        return _failed_start(
            argv, f"working directory not found: {cwd}", "FileNotFoundError", started
        )
    read_end, gate = os.pipe()
    try:
        proc = _spawn(argv, cwd, env, read_end, pid_namespace, parent_death_signal)
    except OSError as exc:
        os.close(gate)
        if pid_namespace is not None:
            pid_namespace.close()
        reason = f"cannot start {argv[0]!r}: {exc.strerror or exc}"
        if isinstance(exc, FileNotFoundError):
            reason = f"executable not found: {argv[0]!r}"
        return _failed_start(argv, reason, type(exc).__name__, started)
    finally:
        os.close(read_end)
    if pid_namespace is not None:
        pid_namespace.close_write()
    return Held(proc, argv, gate, pid_namespace)


_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        # dlopen(NULL): the interpreter's own symbols, libc's among them. find_library
        # would run `ldconfig -p` as a process at import (5 ms idle, 20-100 ms loaded),
        # in every `batchq run` whose pre-flight looks at the agents.
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _load_prctl()


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the worker process dies.

    A SIGKILLed pool child cannot kill its agent's process group, and the redelivered
    copy must not run beside an orphan still writing the same deliverables. Resolved
    before fork (``_PRCTL``) so the child only makes one system call."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _supervise(
    proc: subprocess.Popen[bytes],
    argv: tuple[str, ...],
    log: IO[bytes] | None,
    started: float,
    limits: _Limits,
    namespace: PidNamespace | None,
    on_spawn: Callable[[], object] | None = None,
) -> ProcessResult:
    """Supervise ``proc`` to its end (see :func:`run_process`). ``on_spawn`` runs on
    the first turn once the sandbox's report is in (at once without a namespace): read
    while the leader lives, the report's PID 1 can be checked to be its child, so the
    end is awaited exactly; a hook run first (a held verify's set-up, several
    milliseconds) often outlasted a trivial command, whose leader then exited before
    its report was read, and every such end cost a scan of ``/proc``. Should the hook
    raise, the group is killed (the ``finally`` below) and the exception passes."""
    timeout_s, should_stop, poll_s, grace_s = (
        limits.timeout_s,
        limits.should_stop,
        limits.poll_s,
        limits.grace_s,
    )
    pgid = proc.pid  # a session leader's pid is its group id
    tail = _Tail(limits.tail_bytes)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    selector = selectors.DefaultSelector()
    selector.register(fd, selectors.EVENT_READ)
    deadline = started + timeout_s if timeout_s is not None else None
    next_check = started  # the first should_stop check comes at once
    timed_out = cancelled = False
    finished = False
    pidfd: int | None = None
    init = _Init(namespace, proc.pid)
    try:
        # Not reaped yet, so the pid cannot have been reused: the pidfd is the child's.
        pidfd = _open_pidfd(proc.pid)
        if pidfd is not None:
            selector.register(pidfd, selectors.EVENT_READ)
        info = init.info_fd
        if info is not None:
            selector.register(info, selectors.EVENT_READ)
        eof = False
        while True:
            if on_spawn is not None and info is None:
                hook, on_spawn = on_spawn, None
                hook()
            if proc.poll() is not None:
                break
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                timed_out = True
                break
            if should_stop is not None and now >= next_check:
                if should_stop():
                    cancelled = True
                    break
                next_check = now + poll_s
            wake = [deadline] if deadline is not None else []
            if should_stop is not None:
                wake.append(next_check)
            if pidfd is None and not eof:
                wake.append(now + min(poll_s, _NO_PIDFD_POLL_S))
            wait = max(min(wake) - now, 0.0) if wake else None
            if pidfd is None and eof:
                # Nothing to select on: wait for the child itself.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=wait)
                continue
            ready = {key.fd for key, _ in selector.select(wait)}
            if info is not None and info in ready and init.read():
                selector.unregister(info)  # the report is complete (or never will be)
                info = None
            if fd in ready and _consume(fd, tail, log):
                eof = True
                selector.unregister(fd)  # a pipe at EOF is always readable
        if info is not None:
            selector.unregister(info)
        if pidfd is not None:
            selector.unregister(pidfd)  # readable from now on: keep it out of the drain
        if timed_out or cancelled or not init.wait_gone(grace_s):
            _stop_group(proc, pgid, grace_s)
        if not eof:
            _drain(selector, fd, tail, log)
        finished = True
    finally:
        if not finished:
            # Unwinding (soft time limit, KeyboardInterrupt, should_stop raised):
            # no grace, but never leave the group behind.
            _signal_group(pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace_s)
        selector.close()
        if pidfd is not None:
            os.close(pidfd)
        init.close()
        proc.stdout.close()
    duration = time.monotonic() - started
    note = ""
    if timed_out:
        note = f"[batchq] timed out after {timeout_s:g}s; process group {pgid} killed\n"
    elif cancelled:
        note = f"[batchq] cancelled; process group {pgid} killed\n"
    if note:
        tail.add(note.encode())
        _write(log, note.encode())
    output, dropped = tail.text()
    return ProcessResult(
        argv=argv,
        exit_code=proc.returncode,
        output=output,
        timed_out=timed_out,
        cancelled=cancelled,
        error_type="Timeout" if timed_out else "Cancelled" if cancelled else None,
        duration_s=duration,
        truncated_bytes=dropped,
    )


class _Init:
    """The PID 1 of the child's namespace, as far as it has been learnt.

    Its pidfd is opened, and checked to be the leader's child, while the leader is
    unreaped (its pid cannot be reused, so a child of it is the real one). Anything
    short of that — no report, a report after the leader exited, no pidfd — leaves
    :meth:`wait_gone` False, and the caller checks the group the slow, general way."""

    def __init__(self, namespace: PidNamespace | None, leader: int) -> None:
        self.namespace = namespace
        self.leader = leader
        self.pidfd: int | None = None
        if namespace is not None:
            os.set_blocking(namespace.read_fd, False)

    @property
    def info_fd(self) -> int | None:
        if self.namespace is None or self.namespace.read_fd < 0:
            return None
        return self.namespace.read_fd

    def read(self) -> bool:
        """Consume the report; True when nothing more is to be read."""
        assert self.namespace is not None
        pid = self.namespace.reported()
        if pid is None:
            return self.namespace.done
        pidfd = _open_pidfd(pid)
        if pidfd is not None and _parent_of(pid) == self.leader:
            self.pidfd = pidfd
        elif pidfd is not None:
            os.close(pidfd)
        return True

    def wait_gone(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the namespace to end; True if it has (and so,
        with the leader reaped, every process of the group)."""
        if self.pidfd is None:
            return False
        with selectors.DefaultSelector() as waiter:
            waiter.register(self.pidfd, selectors.EVENT_READ)
            return bool(waiter.select(timeout))

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _parent_of(pid: int) -> int | None:
    """``pid``'s parent, from ``/proc``; None when it cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
        return int(raw[raw.rfind(b")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _open_pidfd(pid: int) -> int | None:
    """A file descriptor that turns readable when ``pid`` exits, or None where the
    platform has none (not Linux, a kernel before 5.3, a sandbox that forbids it)."""
    if not _PIDFD_OK:
        return None
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        fd: int = pidfd_open(pid)
    except OSError:
        return None
    return fd


def _pump(
    selector: selectors.BaseSelector,
    fd: int,
    timeout: float | None,
    tail: _Tail,
    log: IO[bytes] | None,
) -> bool:
    """Wait up to ``timeout`` (None: no limit) for output and consume the output
    there is; True at EOF."""
    ready = selector.select(timeout)
    if not any(key.fd == fd for key, _ in ready):
        return False
    return _consume(fd, tail, log)


def _consume(fd: int, tail: _Tail, log: IO[bytes] | None) -> bool:
    """Read the output there is (the pipe was reported readable); True at EOF."""
    for _ in range(_MAX_READS_PER_POLL):
        try:
            data = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            return False
        if not data:
            return True
        tail.add(data)
        _write(log, data)
    return False


def _drain(selector: selectors.BaseSelector, fd: int, tail: _Tail, log: IO[bytes] | None) -> None:
    """Read what the dead group left in the pipe; bounded, in case an escaped
    grandchild still holds the write end."""
    until = time.monotonic() + _DRAIN_S
    while (left := until - time.monotonic()) > 0:
        if _pump(selector, fd, min(left, 0.05), tail, log):
            return


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to the group; False when no process of it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # pid reused by someone else's group: not ours to kill
        return False
    return True


def _group_alive(pgid: int) -> bool:
    """True while a process of the group still runs. Zombies do not count: an orphan
    is reaped by init (or whatever PID 1 is) on its own schedule, not ours."""
    if not _signal_group(pgid, 0):
        return False
    if not _HAVE_PROC:
        return True
    return bool(group_members(pgid))


def _stop_group(proc: subprocess.Popen[bytes], pgid: int, grace_s: float) -> None:
    """TERM the group, give it ``grace_s`` to exit, then KILL what is left.

    The leader is reaped as we go, so its zombie does not keep the group alive."""
    try:
        if not _group_alive(pgid):
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            _signal_group(pgid, sig)
            until = time.monotonic() + grace_s
            while time.monotonic() < until:
                proc.poll()
                if not _group_alive(pgid):
                    return
                time.sleep(0.02)
    finally:
        # The leader is dead or dying by now; reap it for its exit status.
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)


def _open_log(log_path: Path | None) -> IO[bytes] | None:
    """The log, never through a symlink an agent left (:mod:`batchq.files.agentlog`)."""
    return append_bytes(log_path) if log_path is not None else None


def _write(log: IO[bytes] | None, data: bytes) -> None:
    if log is not None:
        log.write(data)
        log.flush()


def _failed_start(
    argv: tuple[str, ...], reason: str, error_type: str, started: float
) -> ProcessResult:
    return ProcessResult(
        argv=argv,
        exit_code=None,
        output=reason,
        error=reason,
        error_type=error_type,
        duration_s=time.monotonic() - started,
    )
