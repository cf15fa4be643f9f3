"""A full disk when a run starts is infrastructure (exit 3), said in one line: no
traceback, nothing left running, the task files as they were."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_embedded_run import (
    EXAMPLES,
    Sandbox,
    assert_no_process_left,
    sandbox,
    subtask_files,
)

pytestmark = pytest.mark.integration
__all__ = ["sandbox"]  # the fixture, imported for this test


@contextlib.contextmanager
def tiny_disk(where: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs at ``where`` (root only), unmounted afterwards."""
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tiny tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_when_a_run_starts_is_exit_3_without_a_traceback(sandbox: Sandbox) -> None:
    with tiny_disk(sandbox.base / "disk") as disk:
        root = disk / "demo"
        shutil.copytree(EXAMPLES / "demo", root)
        with contextlib.suppress(OSError), (disk / "fill").open("wb", buffering=0) as fill:
            while True:
                fill.write(b"\0" * 4096)
        before = subtask_files(root, "demo")
        result = sandbox.run("run", "demo", "--root", str(root))
        assert result.returncode == 3, result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr
        assert "No space left on device" in result.stderr
        assert subtask_files(root, "demo") == before
        assert_no_process_left(sandbox.base)
