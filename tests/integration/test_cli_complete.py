"""Concurrent ``batchq complete`` processes on one feature (SPEC 1: writes are atomic
under a per-feature lock, so none is lost and every file stays valid JSON).

The processes are real console-script invocations, released together: each starts
as ``sh -c 'read _; exec batchq ...'`` reading one shared pipe, and closing the pipe's
write end once all are spawned releases every one of them at the same moment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

BATCHQ = Path(sys.executable).with_name("batchq")
MakeFeature = Callable[..., Path]
SubtaskData = Callable[..., dict[str, Any]]


def _seq(n: int) -> str:
    return f"{n:02d}"


def _complete_all(root: Path, count: int) -> list[tuple[int, str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHQ_")}
    procs: list[subprocess.Popen[str]] = []
    gate_read, gate_write = os.pipe()
    try:
        try:
            for n in range(1, count + 1):
                argv = [str(BATCHQ), "complete", "feat", _seq(n), "Done", "by", "process", str(n)]
                procs.append(
                    subprocess.Popen(
                        ["sh", "-c", 'read _; exec "$0" "$@"', *argv],
                        cwd=root,
                        env=env,
                        stdin=gate_read,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                        start_new_session=True,
                    )
                )
        finally:  # every process is spawned: EOF on the gate releases them all at once
            os.close(gate_read)
            os.close(gate_write)
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            results.append((proc.returncode, out, err))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()


def _check(root: Path, count: int, results: list[tuple[int, str, str]]) -> None:
    failed = [(n + 1, r) for n, r in enumerate(results) if r[0] != 0]
    assert not failed, failed[:3]
    for n, (_, out, err) in enumerate(results, start=1):
        assert out.splitlines()[0] == f"✓ Marked feat/{_seq(n)} as completed"
        assert "Traceback" not in err
    folder = root / ".tmp" / "tasks" / "feat"
    for n in range(1, count + 1):
        data = json.loads((folder / f"subtask_{_seq(n)}.json").read_bytes())
        assert data["status"] == "completed", n
        assert data["completion_summary"] == f"Done by process {n}"
        assert data["completed_at"]
    task = json.loads((folder / "task.json").read_bytes())
    assert task["completed_count"] == count
    assert task["subtask_count"] == count
    assert task["status"] == "completed"
    assert task["completed_at"]
    expected = {"task.json", ".batchq", *(f"subtask_{_seq(n)}.json" for n in range(1, count + 1))}
    assert {p.name for p in folder.iterdir()} == expected, "temp files were left behind"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("count", [12, 100])
def test_concurrent_complete_processes_lose_nothing(
    make_feature: MakeFeature, subtask_data: SubtaskData, count: int
) -> None:
    assert BATCHQ.is_file(), f"console script missing: {BATCHQ}"
    root = make_feature([subtask_data(_seq(n)) for n in range(1, count + 1)])
    results = _complete_all(root, count)
    _check(root, count, results)
