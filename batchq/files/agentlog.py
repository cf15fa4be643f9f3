"""A subtask's log file, opened by the worker in a folder its agents can write.

Every agent of a run may write the run's log folder (the sandbox binds it writable),
so any name in it may be an agent's doing: a symlink there to ``~/.bashrc`` would have
the worker append the next subtask's output to it, a symlink to a deploy key would
have ``workspace = git`` read the key as the log and push it to the remote, and a FIFO
would block the worker's ``open``. So the worker opens a log only through here: the
last component is never followed (``O_NOFOLLOW``), the open never waits
(``O_NONBLOCK``), and what is opened must be a regular file, else :class:`OSError`
(the caller's usual failure for a log it cannot open). The folders above the log are
out of the agents' reach: the sandbox binds the log folder itself, inside read-only
ones, and a mount point cannot be moved.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO, TextIO

__all__ = ["append_bytes", "append_text", "read_bytes_from"]

_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _open(path: Path, flags: int) -> int:
    fd = os.open(path, flags | _FLAGS, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def append_bytes(path: Path) -> BinaryIO:
    """``path`` opened to append bytes, created (and its folder) when missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.fdopen(_open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab")


def append_text(path: Path, errors: str = "strict") -> TextIO:
    """``path`` opened to append UTF-8 text, created (and its folder) when missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    return os.fdopen(fd, "a", encoding="utf-8", errors=errors)


def read_bytes_from(path: Path) -> BinaryIO:
    """``path`` opened to read bytes (it must exist)."""
    return os.fdopen(_open(path, os.O_RDONLY), "rb")
