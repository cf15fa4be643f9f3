"""Callables the reliability tests delegate to through the python agent."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any


def kill_own_worker(subtask: Any, context: Any) -> str:
    """Log the start, then SIGKILL the pool child running us: a crash every time."""
    marks = Path(context.workspace) / "marks"
    marks.mkdir(exist_ok=True)
    with (marks / subtask.seq).open("a") as handle:
        handle.write(f"{__import__('time').time()} {os.getpid()}\n")
    os.kill(os.getpid(), signal.SIGKILL)
    return "unreachable"
