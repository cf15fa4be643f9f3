"""Embedded mode end to end: `batchq run` with no BATCHQ_REDIS_URL, as a user runs it.

Each test runs the real CLI as a subprocess in a short private directory (``/tmp/bq-*``,
short enough for the Redis Unix socket path) with ``TMPDIR`` pointing inside it, so
every process the run starts — redis-server (its config lives there), workers and
their pool children (their cwd is the project), agents (their cwd is the workspace) —
can be found afterwards by scanning ``/proc``. The contract: nothing survives the
command, whether it succeeded, failed, or was interrupted with Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from batchq import procs
from batchq.local.stackfile import STACK_FILE, read_stack_file

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
BATCHQ = [sys.executable, "-m", "batchq"]
RUN_TIMEOUT_S = 300.0


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def processes_under(base: Path) -> dict[int, str]:
    """Live processes whose command line or working directory is inside ``base``."""
    marker = str(base)
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        pid = int(name)
        cmdline = _cmdline(pid)
        if (marker in cmdline or _cwd(pid).startswith(marker)) and procs.pid_alive(pid):
            found[pid] = cmdline
    return found


def assert_no_process_left(base: Path, grace_s: float = 15.0) -> None:
    """Nothing the command started may survive it (a short grace for exiting zombies)."""
    deadline = time.monotonic() + grace_s
    left = processes_under(base)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = processes_under(base)
    assert left == {}, f"processes left behind: {left}"


class Sandbox:
    """A short private directory, an environment without BATCHQ_*, and the CLI."""

    def __init__(self, base: Path) -> None:
        self.base = base
        (base / "tmp").mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHQ_")}
        self.env.update(
            TMPDIR=str(base / "tmp"), BATCHQ_WORKER_CONCURRENCY="2", PYTHONUNBUFFERED="1"
        )

    def example(self, name: str) -> Path:
        """A fresh copy of ``examples/<name>``, so the committed files stay pending."""
        target = self.base / name
        shutil.copytree(EXAMPLES / name, target)
        return target

    def popen(self, *args: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*BATCHQ, *args],
            cwd=self.base,
            env={**self.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # our own group: teardown can always kill it
        )

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        proc = self.popen(*args, **env)
        try:
            out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"batchq {' '.join(args)} did not finish:\n{out}\n{err}")
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    base = Path(tempfile.mkdtemp(prefix="bq-", dir="/tmp")).resolve()
    try:
        yield Sandbox(base)
    finally:
        for pid in processes_under(base):  # only processes this test started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        stack_file = next(base.glob(f"*/{STACK_FILE}"), None)
        if stack_file is not None:  # a failed `up` test must not leave its stack
            from batchq.local.stackfile import stop_recorded_stack

            stop_recorded_stack(stack_file.parents[2], grace_s=5.0)
        shutil.rmtree(base, ignore_errors=True)


def subtask_files(root: Path, feature: str) -> dict[str, dict[str, Any]]:
    folder = root / ".tmp" / "tasks" / feature
    return {
        path.stem.removeprefix("subtask_"): json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(folder.glob("subtask_*.json"))
    }


def task_file(root: Path, feature: str) -> dict[str, Any]:
    path = root / ".tmp" / "tasks" / feature / "task.json"
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def test_the_demo_runs_to_completion_and_leaves_no_process(sandbox: Sandbox) -> None:
    root = sandbox.example("demo")
    result = sandbox.run("run", "demo", "--root", str(root))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "✅ ALL COMPLETED" in result.stdout
    assert "PARTIAL FAILURE" not in result.stdout
    statuses = {seq: data["status"] for seq, data in subtask_files(root, "demo").items()}
    assert statuses == dict.fromkeys(statuses, "completed") and len(statuses) == 6
    task = task_file(root, "demo")
    assert task["status"] == "completed" and task["completed_at"]
    assert (root / "mathkit" / "stats.py").is_file()
    assert_no_process_left(sandbox.base)
    # The private Redis directory went with the stack.
    assert list((sandbox.base / "tmp").glob("batchq-redis-*")) == []


def test_the_broken_example_shows_a_partial_failure_and_leaves_no_process(
    sandbox: Sandbox,
) -> None:
    root = sandbox.example("broken")
    result = sandbox.run("run", "broken", "--root", str(root))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "❌ PARTIAL FAILURE" in result.stdout
    assert 'relation "user_tokens" does not exist' in result.stdout  # the stderr tail
    assert "Recommendation: Fix subtask 02 before proceeding to Batch 2." in result.stdout
    # advice that works as printed: the --root given is kept
    assert f"rerun `batchq run broken --root {root}` once it is fixed" in result.stdout
    files = subtask_files(root, "broken")
    assert files["02"]["status"] == "blocked"
    assert files["02"]["batchq"]["result"] == "failed"
    assert files["03"]["status"] == "pending"  # the next batch never started
    assert_no_process_left(sandbox.base)


def test_ctrl_c_mid_batch_cancels_tears_down_and_leaves_no_process(
    sandbox: Sandbox,
    make_feature: Callable[..., Path],
    subtask_data: Callable[..., dict[str, Any]],
) -> None:
    root = make_feature(
        [
            subtask_data("01", command="sleep 300", deliverables=["out/01.txt"]),
            subtask_data("02", command="sleep 1", deliverables=["out/02.txt"], depends_on=["01"]),
        ],
        name="slow",
        root=sandbox.base / "proj",
    )
    proc = sandbox.popen("run", "slow", "--root", str(root), BATCHQ_SHELL_ALLOW="sleep *")
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not any("sleep 300" in c for c in processes_under(sandbox.base).values()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the sleeping agent never started"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode != 0
    assert "interrupted" in err, out + err
    assert_no_process_left(sandbox.base)
    files = subtask_files(root, "slow")
    assert files["01"]["status"] != "completed"
    assert files["02"]["status"] == "pending"


def test_a_redis_server_that_does_not_exist_is_exit_3_and_starts_nothing(
    sandbox: Sandbox,
) -> None:
    root = sandbox.example("demo")
    missing = sandbox.base / "no-redis-server"
    result = sandbox.run("run", "demo", "--root", str(root), BATCHQ_REDIS_SERVER=str(missing))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "not an executable file" in result.stdout + result.stderr
    assert all(d["status"] == "pending" for d in subtask_files(root, "demo").values())
    assert_no_process_left(sandbox.base)


def test_up_then_status_and_run_use_the_recorded_stack_and_down_stops_it(
    sandbox: Sandbox,
) -> None:
    root = sandbox.example("demo")
    up = sandbox.run("up", "--workers", "1", "--root", str(root))
    assert up.returncode == 0, up.stdout + up.stderr
    record = read_stack_file(root)
    assert record is not None and record.redis_alive()
    started = set(processes_under(sandbox.base))
    assert started  # the stack outlives `up`

    status = sandbox.run("status", "demo", "--root", str(root))
    assert status.returncode == 0, status.stdout + status.stderr
    assert "[demo]" in status.stdout

    run = sandbox.run("run", "demo", "--root", str(root))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "✅ ALL COMPLETED" in run.stdout
    # The run went through the recorded stack: its Redis holds the run, and the
    # stack's processes are the same ones (no one-shot stack came and went).
    with redis.Redis.from_url(record.redis_py_url, socket_timeout=10) as client:
        assert any(True for _ in client.scan_iter("batchq:*", count=1000))
    assert all(p.alive() for p in record.processes)
    assert set(processes_under(sandbox.base)) >= {p.pid for p in record.processes}

    down = sandbox.run("down", "--root", str(root))
    assert down.returncode == 0, down.stdout + down.stderr
    assert not (root / STACK_FILE).exists()
    assert_no_process_left(sandbox.base)
