"""``batchq status``'s quick path: the plain case without pydantic, Typer or Rich.

Tried by :mod:`batchq.entry` before the command machinery is imported; it sits, like
the entry point, outside the ``batchq.cli`` package, whose ``__init__`` imports it all.
It answers only when the command line is a plain ``status [FEATURE] [--root PATH]``,
the settings are the defaults (:func:`defaults_apply`: no Redis to
ask for a live line, the default protected paths) and every feature is plainly sound
(:func:`batchq.files.plainread.plain_feature`); then it prints exactly what the full
command prints, through the same renderer (:mod:`batchq.core.statusview`), written as
:func:`batchq.cli.common.emit` writes lines. In every other case it returns False
having printed nothing, and the full command runs: refusals, problems, warnings and
errors are worded there alone.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from batchq import layout
from batchq.core.statusview import NO_FEATURES, StatusRow, status_block
from batchq.core.textsafe import terminal_safe
from batchq.errors import UsageError
from batchq.files.locations import find_root, list_features
from batchq.files.plainread import plain_feature

__all__ = ["defaults_apply", "status"]

PREFIX = "BATCHQ_"


def defaults_apply(root: Path) -> bool:
    """True when no ``BATCHQ_*`` variable is set and ``root`` has no ``batchq.toml``:
    the settings are then the defaults, so loading them (pydantic and its models) can
    be skipped. No value is read, only whether a name or the file exists:
    :mod:`batchq.settings` stays the one reader of both."""
    if any(name.upper().startswith(PREFIX) for name in os.environ):
        return False
    return not os.path.lexists(root / layout.CONFIG_FILE)


def _parse(args: Sequence[str]) -> tuple[str | None, Path | None] | None:
    """(feature, root) from ``status [FEATURE] [--root PATH]``; None for anything else."""
    feature: str | None = None
    root: Path | None = None
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--root" and rest and root is None:
            root = Path(rest.pop(0))
        elif arg.startswith("--root=") and root is None:
            root = Path(arg.removeprefix("--root="))
        elif arg.startswith("-") or feature is not None:
            return None
        else:
            feature = arg
    return feature, root


def status(args: Sequence[str]) -> bool:
    """Print ``status`` for ``args`` (what follows ``status``) and return True, or
    print nothing and return False when the full command must answer."""
    parsed = _parse(args)
    if parsed is None:
        return False
    name, given = parsed
    try:
        root = find_root(root=given)
        names = [name] if name else list_features(root)
    except (UsageError, OSError):
        return False
    if not defaults_apply(root):
        return False
    blocks: list[list[str]] = []
    for each in names:
        feature = plain_feature(root, each)
        if feature is None:
            return False
        rows = [StatusRow(s.seq, s.title, s.status, s.result, s.error) for s in feature.subtasks]
        blocks.append(status_block(feature.name, feature.task_name, feature.task_status, rows))
    lines: list[str] = []
    for i, block in enumerate(blocks):
        lines += [""] * bool(i) + block
    shown = (terminal_safe(part) for line in lines or [NO_FEATURES] for part in line.split("\n"))
    try:
        sys.stdout.write("".join(f"{part}\n" for part in shown))
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`batchq status f | head -1`): not a failure, as in the
        # full command. Point stdout at /dev/null so the final flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return True
