"""Reading files an agent or a task file names, such that a read cannot hang or leak.

Task files name context files, deliverables and folders; agents create them. Any of
them can be a FIFO (``open`` blocks until a writer appears), a device (``/dev/zero``
never ends), a socket, a symlink out of the project, or a hard link to a protected
file under an innocent name. Every read of such a path goes through
:func:`open_regular`: it opens without following a final symlink and without
blocking, then checks on the open descriptor (no race between check and open) that
it is a regular file. Callers resolve symlinks and judge the resolved path first;
callers that inline content (prompts) also refuse files with more than one link.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

__all__ = ["NotRegular", "open_regular"]

_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC


class NotRegular(OSError):
    """The path is not a regular file (a FIFO, device, socket, folder or symlink)."""


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def open_regular(path: str | Path, *, max_links: int | None = None) -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file (and, with
    ``max_links``, has at most that many hard links); raise :class:`NotRegular`
    saying what it is otherwise, or the usual :class:`OSError`."""
    try:
        fd = os.open(path, _FLAGS)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: the final component is a symlink
            raise NotRegular(exc.errno, "a symlink", str(path)) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegular(0, _kind(info.st_mode), str(path))
        if max_links is not None and info.st_nlink > max_links:
            raise NotRegular(
                0, f"has {info.st_nlink} hard links (it may be another file's name)", str(path)
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
