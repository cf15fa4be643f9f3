"""The ``batchq`` command line: a thin layer over the Python API.

``app`` and ``main`` are imported on first use (PEP 562), so a light module of this
package (:mod:`batchq.cli.quick`, :mod:`batchq.cli.lines`) can be imported without
Typer, Rich, pydantic and the settings.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app", "main"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        # lazy: the command machinery, only when asked for
        from batchq.cli import main as module

        return getattr(module, name)
    raise AttributeError(f"module 'batchq.cli' has no attribute {name!r}")
