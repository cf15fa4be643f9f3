"""What every ``batchq`` command shares: the Typer app, the consoles, the common
options, the :class:`Context` (root and settings) and the verbatim line writers."""

from __future__ import annotations

import itertools
import json
import re
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer

from batchq.cli.console import LazyConsole
from batchq.core import planner
from batchq.core.textsafe import inline, terminal_safe
from batchq.files import taskfiles
from batchq.models import Feature
from batchq.settings import Settings, load_settings

__all__ = [
    "Context",
    "JsonOpt",
    "RootOpt",
    "app",
    "emit",
    "emit_json",
    "err",
    "error_line",
    "keep_root",
    "out",
]

app = typer.Typer(
    name="batchq",
    help="Run batches of subtask delegations in parallel on Celery workers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = LazyConsole()
err = LazyConsole(stderr=True)

RootOpt = Annotated[
    Path | None, typer.Option("--root", help="Project root (default: nearest .git/package.json).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]


class Context:
    """What every command needs: the project root and its settings."""

    def __init__(self, root: Path | None) -> None:
        self.given_root = root
        """``--root`` as the user gave it (None: found from the working folder)."""
        self.root = taskfiles.find_root(root=root)
        self.settings: Settings = load_settings(self.root)

    def feature(self, name: str) -> Feature:
        return taskfiles.load_feature(self.root, name)

    def names(self, name: str | None) -> list[str]:
        return [name] if name else taskfiles.list_features(self.root)

    def problems(self, feature: Feature) -> list[planner.Problem]:
        return planner.problems(feature, self.settings.protected_paths)


_ADVICE = re.compile(r"`(batchq [a-z]+(?: [^`]*)?)`")


def keep_root(text: str, root: Path | str | None) -> str:
    """Advice as a user can follow it: every quoted `batchq ...` command in ``text``
    gets the ``--root`` the user gave, so it works from wherever they are."""
    if root is None or "`batchq " not in text:  # most lines of a report: no advice
        return text
    given = f" --root {shlex.quote(str(root))}"

    def add(match: re.Match[str]) -> str:
        command = match.group(1)
        return match.group(0) if "--root" in command else f"`{command}{given}`"

    return _ADVICE.sub(add, text)


EMIT_AT_ONCE = 1000
"""Lines :func:`emit` writes per call: a big batch's report is written as it is made."""


def emit(lines: Iterable[str]) -> None:
    """Print established-format lines verbatim: no Rich markup, emoji codes or tab
    expansion may touch a title an orchestrator will parse. Escape sequences and
    control characters are shown as spaces; the views make untrusted text one line
    (:func:`batchq.core.textsafe.inline`) before it gets here."""
    shown = (terminal_safe(part) for line in lines for part in line.split("\n"))
    while chunk := "".join(f"{part}\n" for part in itertools.islice(shown, EMIT_AT_ONCE)):
        sys.stdout.write(chunk)
    sys.stdout.flush()


def error_line(message: str) -> None:
    """One ``error: ...`` line on stderr, whatever line breaks the message holds."""
    sys.stderr.write(f"error: {inline(message)}\n")
    sys.stderr.flush()


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
