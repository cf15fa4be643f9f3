"""Interrupted runs, with real processes: Ctrl-C (SIGINT) and SIGKILL of a real
`batchq run`, in embedded mode and on a `batchq up` stack.

Every subtask command appends a line to ``marks/<seq>`` before it does anything else,
so the number of lines is the number of times it was executed. The contract: an
interrupted run never leaves a file ``in_progress`` without a live run, and never
executes a completed subtask again.

Subtask 02 waits for a ``go`` file the test creates when it wants 02 to finish: it is
running, deterministically, whenever the test interrupts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_embedded_run import (
    RUN_TIMEOUT_S,
    Sandbox,
    assert_no_process_left,
    sandbox,
    subtask_files,
)

pytestmark = pytest.mark.integration
__all__ = ["sandbox"]  # the fixture, imported for these tests

ENV = {"BATCHQ_SHELL_ALLOW": "*", "BATCHQ_UNDECLARED_WRITES": "off"}


def step(seq: str, wait_for_go: bool = False) -> str:
    gate = "while ! test -e go; do sleep 0.1; done && " if wait_for_go else ""
    return f"mkdir -p marks out && echo run >> marks/{seq} && {gate}echo ok > out/{seq}.txt"


def project(
    sandbox: Sandbox,
    make_feature: Callable[..., Path],
    subtask_data: Callable[..., dict[str, Any]],
) -> Path:
    return make_feature(
        [
            subtask_data("01", command=step("01")),
            subtask_data("02", command=step("02", wait_for_go=True)),
            subtask_data("03", command=step("03"), depends_on=["01", "02"]),
        ],
        name="slow",
        root=sandbox.base / "proj",
    )


def runs_of(root: Path, seq: str) -> int:
    marks = root / "marks" / seq
    return len(marks.read_text().splitlines()) if marks.exists() else 0


def wait_for(what: str, predicate: Callable[[], bool], proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not predicate():
        assert proc.poll() is None, (what, proc.communicate())
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.1)


def mid_batch(root: Path, proc: subprocess.Popen[str]) -> None:
    """01 completed in its file, 02 running."""
    wait_for("01 completed", lambda: status(root, "01") == "completed", proc)
    wait_for("02 running", lambda: runs_of(root, "02") == 1, proc)


def status(root: Path, seq: str) -> str:
    try:
        return str(subtask_files(root, "slow")[seq]["status"])
    except (OSError, ValueError, KeyError):
        return ""


def finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def assert_settled(root: Path) -> None:
    """No file claims a run that is not there."""
    for seq, data in subtask_files(root, "slow").items():
        assert data["status"] != "in_progress", (seq, data)
        if data["status"] == "pending":
            assert data.get("agent_id") is None and data.get("started_at") is None, data


def test_ctrl_c_in_embedded_mode_settles_the_files_and_saves_the_report(
    sandbox: Sandbox,
    make_feature: Callable[..., Path],
    subtask_data: Callable[..., dict[str, Any]],
) -> None:
    root = project(sandbox, make_feature, subtask_data)
    proc = sandbox.popen("run", "slow", "--root", str(root), **ENV)
    mid_batch(root, proc)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
    out, err = finish(proc)
    assert proc.returncode == 130, out + err
    assert "interrupted" in err and f"batchq report slow --root {root}" in err, err
    assert_no_process_left(sandbox.base)
    files = subtask_files(root, "slow")
    assert files["01"]["status"] == "completed"
    assert files["02"]["status"] == "pending" and files["02"]["batchq"]["result"] == "cancelled"
    assert files["03"]["status"] == "pending"
    assert_settled(root)

    shown = sandbox.run("report", "slow", "--root", str(root))
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "CANCELLED" in shown.stdout and "01" in shown.stdout

    (root / "go").touch()
    again = sandbox.run("run", "slow", "--root", str(root), **ENV)
    assert again.returncode == 0, again.stdout + again.stderr
    assert {s: d["status"] for s, d in subtask_files(root, "slow").items()} == dict.fromkeys(
        ["01", "02", "03"], "completed"
    )
    # 01 completed before the interrupt: never executed again.
    assert (runs_of(root, "01"), runs_of(root, "02"), runs_of(root, "03")) == (1, 2, 1)
    assert_no_process_left(sandbox.base)


def test_batchq_cancel_interrupts_an_embedded_run_as_printed(
    sandbox: Sandbox,
    make_feature: Callable[..., Path],
    subtask_data: Callable[..., dict[str, Any]],
) -> None:
    root = project(sandbox, make_feature, subtask_data)
    proc = sandbox.popen("run", "slow", "--root", str(root), **ENV)
    mid_batch(root, proc)
    refused = sandbox.run("run", "slow", "--root", str(root), **ENV)
    assert refused.returncode == 2
    advice = f"`batchq cancel slow --root {root}`"
    assert advice in refused.stderr, refused.stderr
    cancel = sandbox.run(*advice.strip("`").split()[1:])
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    assert "Interrupted the embedded run" in cancel.stdout
    out, err = finish(proc)
    assert proc.returncode == 130, out + err
    assert_settled(root)
    assert status(root, "01") == "completed"
    assert_no_process_left(sandbox.base)


def stack(sandbox: Sandbox, root: Path) -> None:
    up = sandbox.run("up", "--workers", "1", "--root", str(root), **ENV)
    assert up.returncode == 0, up.stdout + up.stderr


def down(sandbox: Sandbox, root: Path) -> None:
    sandbox.run("down", "--root", str(root))


def test_ctrl_c_on_a_stack_then_watch_records_what_the_workers_finished(
    sandbox: Sandbox,
    make_feature: Callable[..., Path],
    subtask_data: Callable[..., dict[str, Any]],
) -> None:
    root = project(sandbox, make_feature, subtask_data)
    stack(sandbox, root)
    try:
        proc = sandbox.popen("run", "slow", "--root", str(root), **ENV)
        mid_batch(root, proc)
        proc.send_signal(signal.SIGINT)
        out, err = finish(proc)
        assert proc.returncode == 130, out + err
        assert "the run goes on on the workers" in err
        assert f"batchq watch slow --root {root}" in err
        (root / "go").touch()  # 02 finishes on the workers, with no orchestrator
        watched = sandbox.run("watch", "slow", "--root", str(root))
        assert watched.returncode == 0, watched.stdout + watched.stderr
        assert "recorded run" in watched.stderr
        files = subtask_files(root, "slow")
        assert (files["01"]["status"], files["02"]["status"]) == ("completed", "completed")
        assert files["03"]["status"] == "pending"  # batch 2 never started
        assert_settled(root)
        again = sandbox.run("run", "slow", "--root", str(root), **ENV)
        assert again.returncode == 0, again.stdout + again.stderr
        assert (runs_of(root, "01"), runs_of(root, "02"), runs_of(root, "03")) == (1, 1, 1)
        listed = sandbox.run("runs", "slow", "--root", str(root), "--json")
        rows = json.loads(listed.stdout)
        assert [r["status"] for r in rows] == ["completed", "completed"], rows
    finally:
        down(sandbox, root)
    assert_no_process_left(sandbox.base)


def test_sigkill_of_the_orchestrator_is_adopted_at_once_by_the_next_run(
    sandbox: Sandbox,
    make_feature: Callable[..., Path],
    subtask_data: Callable[..., dict[str, Any]],
) -> None:
    root = project(sandbox, make_feature, subtask_data)
    stack(sandbox, root)
    try:
        proc = sandbox.popen("run", "slow", "--root", str(root), **ENV)
        mid_batch(root, proc)
        os.kill(proc.pid, signal.SIGKILL)
        finish(proc)
        assert status(root, "02") == "in_progress"  # as the dead orchestrator left it
        # Not refused for the lease's minute: its holder is a dead pid on this host.
        again = sandbox.popen("run", "slow", "--root", str(root), **ENV)
        wait_for("the next run holds the feature", lambda: adopted(root), again)
        (root / "go").touch()
        out, err = finish(again)
        assert again.returncode == 0, out + err
        assert "adopted the interrupted run" in err and "2 completed" in err, err
        assert (runs_of(root, "01"), runs_of(root, "02"), runs_of(root, "03")) == (1, 1, 1)
        assert_settled(root)
    finally:
        down(sandbox, root)
    assert_no_process_left(sandbox.base)


def adopted(root: Path) -> bool:
    """The new run holds the feature: its lock file names a live process again."""
    from batchq.layout import orchestrator_lock
    from batchq.run import holder

    found = holder.recorded(orchestrator_lock(root / ".tmp/tasks/slow"))
    return found is not None
