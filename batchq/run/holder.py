"""Who runs a feature: an orchestrator's name, and whether that process still exists.

An orchestrator holds its feature with a ``flock`` on the feature folder and a Redis
lease named ``<host>:<pid>:<start ticks>``. The lease outlives a SIGKILLed holder
until it lapses (a minute), but on the same host nobody has to wait that long: the
kernel drops the ``flock`` with the process, and the pid with its start time (a
reused pid starts later) tells whether the named process is still the one running.
A holder on another host can only be trusted to lapse.

The name is also written into the lock file, so ``batchq cancel`` can find an
embedded run's orchestrator (it has no Redis another process could reach) and
interrupt it as Ctrl-C would.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from batchq.procs import pid_alive, process_start_ticks

__all__ = ["Holder", "current", "gone_here", "parse", "recorded"]


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    ticks: int | None

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.ticks if self.ticks is not None else '?'}"

    @property
    def here(self) -> bool:
        return self.host == socket.gethostname()

    @property
    def alive(self) -> bool:
        """Still the process that took the lock (meaningful on this host only)."""
        if not pid_alive(self.pid):
            return False
        return self.ticks is None or process_start_ticks(self.pid) == self.ticks


def current() -> Holder:
    """This process, as it names itself in the lease and the lock file."""
    pid = os.getpid()
    return Holder(socket.gethostname(), pid, process_start_ticks(pid))


def parse(text: str) -> Holder | None:
    """A holder name read back (``host:pid:ticks``, or an older ``host:pid``)."""
    host, _, rest = text.strip().rpartition(":")
    if not host:
        return None
    ticks: int | None = None
    if ":" in host and rest.isdigit():
        first, _, pid_text = host.rpartition(":")
        if pid_text.isdigit():
            return Holder(first, int(pid_text), int(rest))
    if not rest.isdigit():
        return None
    return Holder(host, int(rest), ticks)


def gone_here(name: str) -> bool:
    """True when ``name`` is a holder on this host whose process no longer runs."""
    holder = parse(name)
    return holder is not None and holder.here and not holder.alive


def recorded(lock_file: Path) -> Holder | None:
    """The holder written in a feature's lock file, if it is alive on this host."""
    try:
        holder = parse(lock_file.read_text(encoding="utf-8"))
    except OSError:
        return None
    return holder if holder is not None and holder.here and holder.alive else None
