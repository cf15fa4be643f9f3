"""The old versions of replaced files, freed beside the caller instead of inside its rename.

An atomic replace frees the file it replaces, and on some file systems that free is
most of the rename's cost. On ext4 mounted with ``discard`` and no journal (this
project's CI machine) the freed block is trimmed inside the ``rename`` itself: 130–300
µs per file against 18 µs for the rename (docs/benchmarks.md, "Freed inodes"). A batch
of four then waited about a millisecond on it before its report, and a rewrite of
5,000 files most of a second.

Holding an ``O_PATH`` descriptor on the old file across the rename keeps it allocated,
so the rename is quick; the free happens when the descriptor is closed, which a
background thread does while the caller goes on. Nothing of this is visible: once
renamed over, the old file has no name, so no one can open it; only its space comes
back a few milliseconds later. ``O_PATH`` opens neither the data nor a FIFO's other
end, so holding never blocks and needs no read permission.

At most :data:`MAX_HELD` descriptors are held at once: descriptor numbers stay low
(code that still uses ``select()`` breaks past 1,024) and a rewrite of thousands of
files frees inline, as before, once the closer falls behind.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path

__all__ = ["MAX_HELD", "drain", "hold", "release"]

MAX_HELD = 256
"""Most old files held at once, over the whole process."""

_lock = threading.Lock()
_open: set[int] = set()
"""The descriptors held now: counted against MAX_HELD, and closed in a forked child."""
_queue: queue.SimpleQueue[int] = queue.SimpleQueue()
_closer: threading.Thread | None = None
_idle = threading.Condition(_lock)
_pending = 0
"""Released descriptors not closed yet (what :func:`drain` waits for)."""


def hold(path: str | Path) -> int | None:
    """A descriptor keeping ``path``'s current file allocated, or None: there is no
    such file (nothing to free), or MAX_HELD are held already (the replace frees it
    inline). Symlinks are held as themselves, never followed."""
    with _lock:
        if len(_open) >= MAX_HELD:
            return None
        try:
            fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        _open.add(fd)
        return fd


def release(fds: Iterable[int | None]) -> None:
    """Let the closer thread close ``fds`` (the files they hold are freed then)."""
    global _closer, _pending
    handed = [fd for fd in fds if fd is not None]
    if not handed:
        return
    with _lock:
        _pending += len(handed)
        for fd in handed:
            _queue.put(fd)
        if _closer is None:
            _closer = threading.Thread(target=_close_forever, name="batchq-retire", daemon=True)
            _closer.start()


def drain() -> None:
    """Wait until every released descriptor is closed (tests; nothing needs it for
    correctness)."""
    with _idle:
        while _pending:
            _idle.wait()


def _close_forever() -> None:
    global _pending
    while True:
        fd = _queue.get()
        with _lock:  # before the close: a hold() may get this number right after it
            _open.discard(fd)
        with suppress(OSError):
            os.close(fd)  # releases the GIL; the file system frees the old file here
        with _idle:
            _pending -= 1
            if not _pending:
                _idle.notify_all()


def _forget_in_child() -> None:
    """A forked child inherits the held descriptors but not the closer: it closes its
    copies at once (each would keep an old file allocated until the child exits)."""
    global _lock, _idle, _queue, _closer, _pending
    for fd in list(_open):
        with suppress(OSError):
            os.close(fd)
    _open.clear()
    _lock = threading.Lock()
    _idle = threading.Condition(_lock)
    _queue = queue.SimpleQueue()
    _closer = None
    _pending = 0


os.register_at_fork(after_in_child=_forget_in_child)
