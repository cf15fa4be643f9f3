"""A reader that goes away (``batchq status f | head -1``) is not a failure: exit 0,
no traceback. The pipe's read end is closed before the command writes, so every
write fails with EPIPE, deterministically (no race with a real ``head``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MakeFeature, subtask


def run_with_closed_stdout(root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "batchq", *args, "--root", str(root)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "args",
    [("status", "feat"), ("status", "feat", "--json"), ("plan", "feat"), ("validate", "feat")],
)
def test_a_closed_stdout_pipe_is_exit_0_without_a_traceback(
    make_feature: MakeFeature, args: tuple[str, ...]
) -> None:
    root = make_feature([subtask(f"{n:02d}", command="true") for n in range(1, 21)])
    done = run_with_closed_stdout(root, *args)
    assert done.returncode == 0, done.stderr.decode()
    assert b"Traceback" not in done.stderr
