"""The CLI's two Rich consoles, made on first use.

Importing ``rich.console`` and building a :class:`~rich.console.Console` costs a
``batchq run`` process some 30 ms, a tenth of what it imports that bare Celery does
not; most commands print through :func:`batchq.cli.common.emit` and never touch a
console, and ``run`` into a pipe or a file needs none either (Rich would show no bar
there). :class:`LazyConsole` stands in for the console and makes it when something
asks for it; :func:`plain_stream` tells, without Rich, when Rich would see no terminal.
"""

from __future__ import annotations

import os
import sys
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["LazyConsole", "plain_stream"]

_TERMINAL_OVERRIDES = ("TTY_COMPATIBLE", "FORCE_COLOR", "TTY_INTERACTIVE")
"""Variables by which Rich may call a non-tty a terminal (or the reverse): with any set,
Rich itself decides."""


def plain_stream(stream: IO[str]) -> bool:
    """True when Rich would certainly not treat ``stream`` as a terminal: it is no tty
    and no variable overrides Rich's detection. False means "ask Rich"."""
    if any(name in os.environ for name in _TERMINAL_OVERRIDES):
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return isatty is None or not isatty()
    except ValueError:  # a closed stream: Rich says no terminal too
        return True


class LazyConsole:
    """A :class:`~rich.console.Console` (``highlight=False, soft_wrap=True``) on stdout or
    stderr, built on first use; every attribute is the console's."""

    def __init__(self, *, stderr: bool = False) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        if self._console is None:
            # lazy: rich.console is the cost this class exists to avoid
            from rich.console import Console

            self._console = Console(stderr=self._stderr, highlight=False, soft_wrap=True)
        return self._console

    @property
    def stream(self) -> IO[str]:
        """The stream the console writes to (looked up each time, as Rich does)."""
        return sys.stderr if self._stderr else sys.stdout

    @property
    def made(self) -> bool:
        """Whether anything has used the console yet."""
        return self._console is not None

    @property
    def quiet(self) -> bool:
        """Rich goes quiet after a closed pipe; a console never made never went quiet."""
        return self._console is not None and self._console.quiet

    @property
    def is_terminal(self) -> bool:
        """Rich's answer, without making the console where the answer is certainly no."""
        if self._console is None and plain_stream(self.stream):
            return False
        return self.console.is_terminal

    def print(self, *objects: Any, **kwargs: Any) -> None:
        self.console.print(*objects, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console, name)
