"""Whether anything configures batchq here, without reading what it says.

:mod:`batchq.settings` is the one reader of the environment and of ``batchq.toml``,
and loading it costs pydantic-settings (asyncio, dotenv and the models). A read-only
view that only needs the defaults asks this first: with no ``BATCHQ_*`` variable and no
``batchq.toml`` at the root, the settings are the defaults, so it may skip loading them.
No value is read here, only whether a name or the file exists.
"""

from __future__ import annotations

import os
from pathlib import Path

from batchq import layout

__all__ = ["defaults_apply"]

PREFIX = "BATCHQ_"


def defaults_apply(root: Path) -> bool:
    """True when no ``BATCHQ_*`` variable is set and ``root`` has no ``batchq.toml``."""
    if any(name.upper().startswith(PREFIX) for name in os.environ):
        return False
    return not os.path.lexists(root / layout.CONFIG_FILE)
