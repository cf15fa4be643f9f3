"""The ``batchq`` console script's entry point: ``batchq --version`` answers at once,
and ``batchq status`` in its plain case (:mod:`batchq.quickstatus`) without the rest.

Everything else goes to :func:`batchq.cli.main.main`. This module imports nothing of
the command machinery (Typer, Rich, pydantic, the settings; it sits outside
the ``batchq.cli`` package, whose ``__init__`` imports them all), so that a version check
costs an interpreter start-up, not a command's.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    """Print ``batchq <version>`` for a lone ``--version``; otherwise run the CLI."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--version"]:
        from importlib.metadata import version

        sys.stdout.write(f"batchq {version('batchq')}\n")
        sys.stdout.flush()
        raise SystemExit(0)
    if args[:1] == ["status"]:
        # lazy: status's plain case needs the standard library alone
        from batchq.quickstatus import status

        if status(args[1:]):
            raise SystemExit(0)
    # lazy: the whole command machinery, for every command but a lone --version
    from batchq.cli.main import main as run

    run(argv)
