"""The per-feature file lock that serialises every read-modify-write of the task files.

``flock`` is used rather than a lock file created with ``O_EXCL`` because the kernel
releases it when the holder dies: a crashed ``batchq complete`` can never leave a
feature locked. The lock is held only for the few milliseconds of one rewrite; the
orchestrator's long-lived "one run per feature" lock must use a different file.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from batchq import layout
from batchq.errors import UsageError

__all__ = ["feature_lock"]

_held = threading.local()


def _depths() -> dict[str, int]:
    depths: dict[str, int] | None = getattr(_held, "depths", None)
    if depths is None:
        depths = {}
        _held.depths = depths
    return depths


@contextmanager
def feature_lock(feature_path: Path) -> Iterator[Path]:
    """Hold the exclusive lock of a feature folder; yields the lock file's path.

    Blocks until the lock is free. Re-entrant within one thread (a nested
    ``feature_lock`` on the same folder would otherwise deadlock on its own ``flock``);
    other threads and processes wait. ``.batchq/`` is created if needed, but never the
    feature folder itself, so a folder archived meanwhile is not resurrected.
    """
    lock_path = layout.lock_file(feature_path)
    state_dir = lock_path.parent
    key = os.path.realpath(lock_path)
    depths = _depths()
    if depths.get(key):
        depths[key] += 1
        try:
            yield lock_path
        finally:
            depths[key] -= 1
        return
    try:
        state_dir.mkdir(exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except FileNotFoundError as exc:
        raise UsageError(f"feature folder {feature_path} does not exist") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        depths[key] = 1
        try:
            yield lock_path
        finally:
            depths.pop(key, None)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
