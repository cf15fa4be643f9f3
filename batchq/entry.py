"""The ``batchq`` console script's entry point: ``batchq --version`` answers at once,
and ``batchq status`` in its plain case (:mod:`batchq.quickstatus`) without the rest.

Everything else goes to :func:`batchq.cli.main.main`. This module imports nothing of
the command machinery (Typer, Rich, pydantic, the settings; it sits outside
the ``batchq.cli`` package, whose ``__init__`` imports them all), so that a version check
costs an interpreter start-up, not a command's.

A command's process spends CPU on its heap twice where no command needs it: the cyclic
garbage collector rescans the growing heap again and again while some 700 modules are
imported (nothing they build at import is garbage), and at exit the interpreter tears
every module and object down one by one before the kernel frees them all at once.
Measured on a 4-subtask ``batchq run``: together about a quarter of its CPU, more
than a bare Celery program's whole import of Celery. So the collector is paused while
the machinery is imported (with what ``run`` and ``batch`` import on first use, for
them) and what was imported is frozen out of later collections
(:func:`gc.freeze`), and the console script leaves by :func:`_leave`: the same
clean-up a normal exit does that anyone could observe (non-daemon threads joined,
``atexit`` handlers run, output flushed), then ``os._exit`` with the same code.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    """Print ``batchq <version>`` for a lone ``--version``; otherwise run the CLI.

    Called as the console script (``argv`` None) it never returns: see :func:`_leave`.
    A caller that passes ``argv`` gets the exit as :class:`SystemExit`, as before.
    """
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
    gc.disable()
    try:
        # lazy: the whole command machinery, for every command but a lone --version
        from batchq.cli.main import main as run
        from batchq.cli.main import preload

        preload(args)
    finally:
        gc.enable()
    gc.freeze()
    if argv is not None:
        run(argv)
        return
    try:
        run(None)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            _leave(exc.code or 0)
        raise
    _leave(0)


def _leave(code: int) -> None:
    """End the process with ``code`` the way a normal exit does, minus the teardown.

    Non-daemon threads are joined (and the thread pools told to stop first) and the
    ``atexit`` handlers run (children reaped, logs flushed, finalizers), in the
    interpreter's own order; stdout and stderr are flushed. What is skipped is freeing
    each object and module, which nothing outside the process sees (mypy's command
    line leaves the same way). A reader that went away before the last flush is not a
    failure of ours (:func:`batchq.cli.main.main` says the same).
    """
    import atexit
    import contextlib
    import threading

    shutdown = getattr(threading, "_shutdown", None)  # what the interpreter calls first
    if shutdown is not None:
        shutdown()

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()  # type: ignore[union-attr]
    os._exit(code)
