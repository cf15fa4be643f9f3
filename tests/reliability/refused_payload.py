"""A module no worker allows: importing it would leave a marker file.

The python agent checks the allow-list before the import, so this code must never
run on a worker (tests/reliability/test_security.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_marker_dir = os.environ.get("BATCHQ_TEST_MARKER_DIR")
if _marker_dir:
    (Path(_marker_dir) / "imported").write_text("refused_payload was imported\n")


def run(subtask: Any, context: Any) -> str:
    if _marker_dir:
        (Path(_marker_dir) / "called").write_text("refused_payload.run was called\n")
    return "should never run"
