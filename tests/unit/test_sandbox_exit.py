"""How a sandboxed process's end is noticed (issue #24): through the sandbox's PID 1.

``Sandbox.run`` learns the PID 1 of bwrap's PID namespace (``--info-fd``) and waits on
its pidfd instead of scanning ``/proc`` for the process group. These tests check that
the shortcut keeps the guarantees of the scan: nothing the command left behind runs
once ``run`` returned, a deadline, a cancellation and the worker's death still kill
everything, and a report that cannot be trusted falls back to the scan. No clock is
read; what is counted is whether the group scan ran.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchq.agents import process
from batchq.agents.process import PidNamespace, run_process
from batchq.agents.sandbox import Sandbox, SandboxMode, bwrap_status, resolve_sandbox
from batchq.procs import wait_group_gone

_WORKS, _REASON = bwrap_status()
needs_bwrap = pytest.mark.skipif(not _WORKS, reason=f"bubblewrap unusable here: {_REASON}")
pgrep = pytest.mark.skipif(shutil.which("pgrep") is None, reason="pgrep (procps) not installed")
REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    ws = tmp_path / "ws"
    ws.mkdir()
    made = resolve_sandbox(
        SandboxMode.REQUIRED,
        workspace=ws,
        env={"PATH": os.environ.get("PATH", os.defpath), "HOME": str(tmp_path)},
    )
    assert made is not None
    return made


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The process groups :func:`process._stop_group` was asked to check."""
    seen: list[int] = []
    original = process._stop_group

    def counting(proc: subprocess.Popen[bytes], pgid: int, grace_s: float) -> None:
        seen.append(pgid)
        original(proc, pgid, grace_s)

    monkeypatch.setattr(process, "_stop_group", counting)
    yield seen


def _live(marker: str) -> list[str]:
    """pids of live (not zombie) processes whose command line holds ``marker``."""
    found = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True, check=False)
    alive = []
    for pid in found.stdout.split():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rfind(")") + 2 :].split()[0] not in ("Z", "X"):
            alive.append(pid)
    return alive


def _left_behind(marker: str) -> str:
    """A command that exits at once and leaves three sleepers: a plain one, one that
    ignores SIGTERM, one that left the process group (setsid)."""
    return (
        f"(exec -a {marker}-plain sleep 300) & "
        f"(trap '' TERM; exec -a {marker}-noterm sleep 300) & "
        f"setsid -f bash -c 'exec -a {marker}-setsid sleep 300'; "
        "echo started"
    )


@needs_bwrap
@pgrep
def test_nothing_the_command_left_runs_once_run_returns(sandbox: Sandbox, scans: list[int]) -> None:
    marker = f"batchq-exit-{uuid.uuid4().hex}"
    result = sandbox.run(_left_behind(marker))
    assert result.ok, result.output
    assert "started" in result.output
    # Looked at once, without waiting: the namespace was gone before run returned.
    assert _live(marker) == []
    assert scans == []  # the PID 1 said so; no /proc scan was needed


@needs_bwrap
def test_a_finished_command_is_noticed_without_scanning_the_group(
    sandbox: Sandbox, scans: list[int]
) -> None:
    for command in ("true", "exit 3", "echo out; echo err >&2"):
        result = sandbox.run(command)
        assert result.exit_code == (3 if command == "exit 3" else 0), result.output
    assert sandbox.run("echo out; echo err >&2").output == "out\nerr\n"
    assert scans == []


def _exited_children() -> list[int]:
    """This process's children that have exited and wait to be reaped (zombies)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat[stat.rfind(")") + 2 :].split()[:2]
        if int(ppid) == os.getpid() and state == "Z":
            found.append(int(entry.name))
    return found


@needs_bwrap
def test_a_command_that_ends_during_the_spawn_hook_is_noticed_without_a_scan(
    sandbox: Sandbox, scans: list[int]
) -> None:
    """The hook (a held verify's set-up) may outlast a trivial command: here it returns
    only once bwrap itself has exited. The namespace's report was read before the hook
    ran, so its end is still known exactly."""
    seen: list[int] = []

    def hook() -> None:
        deadline = time.monotonic() + 20
        while not (exited := _exited_children()) and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.extend(exited)

    result = sandbox.run(["true"], on_spawn=hook)
    assert result.ok, result.output
    assert seen, "bwrap had not exited while the hook ran"
    assert scans == []


@needs_bwrap
@pgrep
def test_a_deadline_still_kills_everything_in_the_sandbox(
    sandbox: Sandbox, scans: list[int]
) -> None:
    marker = f"batchq-exit-{uuid.uuid4().hex}"
    result = sandbox.run(_left_behind(marker).replace("echo started", "sleep 300"), timeout_s=1)
    assert result.timed_out
    assert "timed out" in result.output
    assert len(scans) == 1  # the group is stopped the general way
    assert _live(marker) == []


@needs_bwrap
@pgrep
def test_a_cancellation_still_kills_everything_in_the_sandbox(
    sandbox: Sandbox, scans: list[int]
) -> None:
    marker = f"batchq-exit-{uuid.uuid4().hex}"
    calls = 0

    def stop_once_running() -> bool:
        nonlocal calls
        calls += 1
        return len(_live(f"{marker}-")) >= 3

    result = sandbox.run(
        _left_behind(marker).replace("echo started", "sleep 300"),
        should_stop=stop_once_running,
    )
    assert result.cancelled
    assert calls >= 1
    assert len(scans) == 1
    assert _live(marker) == []


def test_a_report_naming_someone_elses_process_falls_back_to_the_scan(
    tmp_path: Path, scans: list[int]
) -> None:
    """A child that reports a pid which is not its own child (here: the test process)
    is not believed: the group is scanned and stopped as without a report, and the
    named process is left alone."""
    namespace = PidNamespace()
    report = json.dumps({"child-pid": os.getpid()})
    result = run_process(
        ["bash", "-c", f"echo '{report}' >&{namespace.write_fd}; sleep 300 & echo $!"],
        cwd=tmp_path,
        pid_namespace=namespace,
    )
    assert result.ok, result.output
    assert scans != []
    assert wait_group_gone(scans[0], 10.0)
    assert namespace.read_fd == -1 and namespace.write_fd == -1  # both ends closed


def test_a_child_that_never_reports_falls_back_to_the_scan(
    tmp_path: Path, scans: list[int]
) -> None:
    result = run_process(["true"], cwd=tmp_path, pid_namespace=PidNamespace())
    assert result.ok
    assert len(scans) == 1


@needs_bwrap
@pgrep
def test_the_sandbox_dies_with_its_worker(sandbox: Sandbox) -> None:
    """No SIGKILL-on-parent-death is set before exec for bwrap (it would cost Python's
    vfork); ``--die-with-parent`` must do it: a worker SIGKILLed mid-run leaves no
    agent process behind."""
    marker = f"batchq-exit-{uuid.uuid4().hex}"
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from batchq.agents.sandbox import SandboxMode, resolve_sandbox\n"
        f"box = resolve_sandbox(SandboxMode.REQUIRED, workspace=Path({str(sandbox.workspace)!r}),"
        " env={'PATH': '/usr/bin:/bin'})\n"
        f"box.run({f'exec -a {marker} sleep 300'!r})\n"
    )
    worker = subprocess.Popen(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        start_new_session=True,
    )
    try:
        for _ in range(600):
            if _live(marker):
                break
            assert worker.poll() is None, "the worker ended before its agent ran"
            time.sleep(0.05)
        assert _live(marker), "the sandboxed sleeper never started"
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        for _ in range(200):
            if not _live(marker):
                break
            time.sleep(0.05)
        assert _live(marker) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)


@needs_bwrap
def test_the_report_pipe_is_out_of_the_agents_reach(sandbox: Sandbox) -> None:
    """bwrap's report pipe must not reach the command: an agent holding it could
    write a report of its own. Inside, only stdin, the output pipe and the listing's
    own descriptor are open."""
    result = sandbox.run("ls /proc/self/fd")
    assert result.ok, result.output
    assert sorted(result.output.split()) == ["0", "1", "2", "3"]
