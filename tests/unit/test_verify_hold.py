"""A verify command's sandbox set up while its agent runs, and held until it may run
(agents/process.Held, agents/sandbox.hold_confined, executor/verify.hold_verify).

Real processes and, where it works, real bwrap. What is checked: a held command
runs only when released, never on a discard or on end of file; its deadline counts
from the release; and an agent cannot reach the held sandbox — its processes are not
in the agent's PID namespace, and a ``setsid`` job the agent leaves behind is dead
before verify starts, so it can neither make verify fail nor make it pass."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from batchq.agents import sandbox as sandbox_module
from batchq.agents.base import Delegation
from batchq.agents.process import Held, gated, hold_process, run_process
from batchq.agents.sandbox import (
    HeldConfined,
    Sandbox,
    bwrap_status,
    hold_confined,
    run_confined,
)
from batchq.executor import isolation
from batchq.executor import verify as verify_module
from batchq.executor.runner import execute
from batchq.executor.verify import VerifyHold, hold_verify
from batchq.files import gitsnap
from batchq.models import Isolation, ResultState, Subtask
from batchq.settings import Settings
from batchq.store.memory import ManualClock, MemoryStore
from tests.conftest import MakeFeature, subtask
from tests.memrun import message, settings
from tests.minirepo import init_repo

_WORKS, _REASON = bwrap_status()
needs_bwrap = pytest.mark.skipif(not _WORKS, reason=f"bubblewrap unusable here: {_REASON}")


def _hold(tmp_path: Path, command: str) -> Held:
    held = hold_process(gated(["bash", "-c", command]), cwd=tmp_path)
    assert isinstance(held, Held), held
    return held


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_a_held_command_runs_only_once_released(tmp_path: Path) -> None:
    held = _hold(tmp_path, "echo ran > marker; echo done")
    time.sleep(0.2)  # plenty of time to run, were it not held
    assert not (tmp_path / "marker").exists()
    result = held.release(log_path=tmp_path / "log")
    assert result.ok and result.output == "done\n"
    assert (tmp_path / "marker").read_text() == "ran\n"
    assert (tmp_path / "log").read_text() == "done\n"
    held.discard()  # after a release: nothing (its group id may be someone else's)


def test_a_discarded_command_never_runs_and_leaves_no_process(tmp_path: Path) -> None:
    held = _hold(tmp_path, "touch marker")
    pid = held.proc.pid
    held.discard()
    assert not _alive(pid)
    time.sleep(0.1)
    assert not (tmp_path / "marker").exists()


def test_end_of_file_on_the_gate_does_not_run_the_command(tmp_path: Path) -> None:
    # What a dying worker leaves behind: its end of the gate closed, no word sent.
    held = _hold(tmp_path, "touch marker")
    os.close(held.gate)
    held.gate = -1
    assert held.proc.wait(timeout=10) == 125
    assert not (tmp_path / "marker").exists()
    held.discard()


def test_a_release_that_cannot_open_its_log_kills_the_held_command(tmp_path: Path) -> None:
    held = _hold(tmp_path, "touch marker")
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OSError):
        held.release(log_path=tmp_path / "file" / "01.log")
    assert not _alive(held.proc.pid)
    assert not (tmp_path / "marker").exists()


def test_a_held_commands_deadline_counts_from_its_release(tmp_path: Path) -> None:
    held = _hold(tmp_path, "sleep 0.2; echo in time")
    time.sleep(0.5)  # longer than the timeout below, spent held
    result = held.release(timeout_s=5)
    assert result.ok, result.describe()
    slow = _hold(tmp_path, "sleep 30")
    timed = slow.release(timeout_s=0.3, grace_s=0.2)
    assert timed.timed_out and not _alive(slow.proc.pid)


def test_a_held_command_is_cancelled_like_any_other(tmp_path: Path) -> None:
    held = _hold(tmp_path, "sleep 30")
    result = held.release(should_stop=lambda: True, poll_s=0.05, grace_s=0.2)
    assert result.cancelled and not _alive(held.proc.pid)


def _delegation(workspace: Path, tmp_path: Path, verify: str | None = None) -> Delegation:
    execution = {"verify": verify} if verify else {}
    sub = Subtask.model_validate(
        {
            "id": "f-01",
            "seq": "01",
            "title": "t",
            "acceptance_criteria": ["x"],
            "deliverables": ["out.txt"],
            "execution": {"command": "true", **execution},
        }
    )
    return Delegation(
        feature="f", run_id="r1", batch=1, subtask=sub, workspace=workspace, context="",
        log_path=tmp_path / "logs" / "01.log", timeout_s=30,
    )  # fmt: skip


def _gate_running(pid: int) -> bool:
    """Whether the held sandbox's gate (``sh -c ... batchq-gate``) runs yet, from the
    host's view: a descendant of bwrap ``pid`` whose command line names it."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if b"batchq-gate" in cmdline and "bwrap" not in cmdline.decode(errors="replace"):
            ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
            if ppid == pid or _parent(ppid) == pid:
                return True
    return False


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat[stat.rfind(")") + 2 :].split()[1])


@needs_bwrap
def test_an_agent_cannot_see_the_held_verify_sandbox(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    settings_ = Settings(shell_allow=["*"])
    delegation = _delegation(workspace, tmp_path, verify="test -f out.txt")
    held = hold_confined("test -f out.txt", delegation, settings_, "shell")
    assert held is not None
    try:
        deadline = time.monotonic() + 10
        while not _gate_running(held.held.proc.pid):  # set up and waiting at its gate
            assert time.monotonic() < deadline, "the held sandbox never reached its gate"
            time.sleep(0.01)
        agent = run_confined(
            "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done; touch out.txt",
            delegation,
            settings_,
            "shell",
        )
        assert agent.ok, agent.output
        assert "batchq-gate" not in agent.output  # another PID namespace: nothing to ptrace
        assert "for p in" in agent.output  # it did list its own processes
        assert held.release(delegation).ok
    finally:
        held.discard()


@needs_bwrap
def test_a_held_verify_sandbox_is_its_own_sandbox(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    sandbox = Sandbox.create(workspace, env={"PATH": os.environ.get("PATH", os.defpath)})
    held = sandbox.hold("test ! -e /tmp/planted && echo $$ && ls /proc | grep -c '^[0-9]'")
    assert isinstance(held, Held)
    planted = sandbox.run("touch /tmp/planted && echo planted")
    assert planted.ok and planted.output == "planted\n"
    result = held.release()
    assert result.ok, result.output  # the agent's /tmp is not verify's
    pid, count = result.output.split()
    # A fresh PID namespace: bwrap's PID 1, the gate become bash, ls and grep.
    assert pid == "2" and int(count) <= 4


@pytest.fixture
def root(make_feature: MakeFeature) -> Path:
    made = make_feature([subtask("01", command="true")])
    (made / "out").mkdir()
    return made


@needs_bwrap
@pytest.mark.parametrize(
    ("agent", "verify"),
    [
        # A job that would delete the deliverable while verify looks: verify would fail.
        (
            "setsid bash -c 'sleep 0.5; rm -f out/01.txt' </dev/null >/dev/null 2>&1 & "
            "touch out/01.txt",
            "bash -c 'sleep 1; test -f out/01.txt'",
        ),
        # A job that would create what verify wants after the deliverable check: verify
        # would pass although the agent left it missing at its end.
        (
            "setsid bash -c 'sleep 0.5; touch out/ok' </dev/null >/dev/null 2>&1 & "
            "touch out/01.txt",
            "bash -c 'sleep 1; test ! -e out/ok'",
        ),
    ],
)
def test_a_setsid_job_the_agent_left_is_dead_before_verify_starts(
    root: Path, agent: str, verify: str
) -> None:
    msg = message(root, subtask("01", command=agent, verify=verify))
    store = MemoryStore(clock=ManualClock())
    result = execute(msg, store, settings(shell_allow=["*"]))
    assert result.result is ResultState.COMPLETED, (result.error, result.output_tail)
    assert not (root / "out" / "ok").exists()
    assert (root / "out" / "01.txt").exists()


@needs_bwrap
def test_a_failed_agent_discards_the_held_verify(root: Path) -> None:
    msg = message(root, subtask("01", command="false", verify="touch out/verified"))
    store = MemoryStore(clock=ManualClock())
    result = execute(msg, store, settings(shell_allow=["*"]))
    assert result.result is ResultState.FAILED
    time.sleep(0.2)
    assert not (root / "out" / "verified").exists()
    assert not [p for p in Path("/proc").glob("[0-9]*/cmdline") if _is_gate(p)]


def _is_gate(cmdline: Path) -> bool:
    try:
        return b"touch out/verified" in cmdline.read_bytes()
    except OSError:
        return False


def test_no_verify_command_holds_nothing(tmp_path: Path) -> None:
    assert hold_verify(_delegation(tmp_path, tmp_path), Settings(shell_allow=["*"])) is None


@needs_bwrap
def test_verify_is_held_once_the_agents_process_runs(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    settings_ = Settings(shell_allow=["*"])
    hold = VerifyHold(settings_)
    delegation = hold.attach(_delegation(workspace, tmp_path, verify="test -f out.txt"))
    assert hold.held is None  # nothing before the agent starts
    finished, seen = threading.Event(), threading.Event()

    def watch() -> None:  # (the agent runs on this thread: bwrap dies with its thread)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not finished.is_set():
            held = hold.held
            if held is not None and _gate_running(held.held.proc.pid):
                seen.set()  # set up and waiting at its gate while the agent still runs
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        agent = run_confined("sleep 1; touch out.txt", delegation, settings_, "shell")
        finished.set()
        watcher.join()
        assert agent.ok, agent.output
        assert seen.is_set(), "verify was not held while the agent ran"
        held = hold.take()
        assert held is not None
        verified = held.release(delegation)
        assert verified.ok, (verified.describe(), verified.output)
        # The same delegation's verify, run again unheld, holds nothing more.
        assert run_confined("test -f out.txt", delegation, settings_, "shell").ok
        assert hold.take() is held
    finally:
        finished.set()
        hold.discard()


@needs_bwrap
def test_verify_held_beside_another_agent_gets_its_own_environment_and_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A CLI agent keeps an API key, gets an extra variable and the network; the verify
    # held while it runs is derived from its sandbox's paths, and must still be exactly
    # the sandbox verify would get on its own: none of the agent's environment, no network.
    workspace = tmp_path / "ws"
    workspace.mkdir()
    monkeypatch.setenv("CODER_API_KEY", "k-123")
    coder = {"command": "true", "env": ["CODER_API_KEY"], "network": True}
    settings_ = Settings(shell_allow=["*"], agents={"Coder": coder})
    line = "env > seen.txt; test -f out.txt"
    hold = VerifyHold(settings_)
    delegation = hold.attach(_delegation(workspace, tmp_path, verify=line))
    resolved: list[Path] = []
    resolve = sandbox_module.resolve_sandbox

    def counting(*args: Any, **kwargs: Any) -> Sandbox | None:
        resolved.append(kwargs["workspace"])
        return resolve(*args, **kwargs)

    monkeypatch.setattr(sandbox_module, "resolve_sandbox", counting)
    try:
        agent = run_confined(
            "touch out.txt",
            delegation,
            settings_,
            "Coder",
            extra_env={"BATCHQ_PROMPT_FILE": "prompt.md"},
            argv=["touch", "out.txt"],
        )
        assert agent.ok, agent.output
        held = hold.take()
        assert held is not None
        assert resolved == [workspace]  # the agent's paths, resolved once for both
        alone = sandbox_module._confine(line, delegation, settings_, "shell", None, None)
        assert isinstance(alone, tuple) and alone[0] is not None
        assert held.sandbox == alone[0]
        assert not held.sandbox.network
        verified = held.release(delegation)
        assert verified.ok, (verified.describe(), verified.output)
        seen = (workspace / "seen.txt").read_text()
        assert "CODER_API_KEY" not in seen and "BATCHQ_PROMPT_FILE" not in seen
    finally:
        hold.discard()


def test_a_hold_taken_before_any_process_started_holds_nothing(tmp_path: Path) -> None:
    # An in-process agent starts no process: nothing is held, nothing set up late.
    hold = VerifyHold(Settings(shell_allow=["*"]))
    delegation = hold.attach(_delegation(tmp_path, tmp_path, verify="test -f out.txt"))
    assert delegation.started is hold
    assert hold.take() is None
    hold()  # too late: the window is closed
    assert hold.take() is None
    hold.discard()
    # Without a verify command the delegation is left as it was.
    plain = _delegation(tmp_path, tmp_path)
    assert VerifyHold(Settings()).attach(plain) is plain


@needs_bwrap
def test_a_worktree_run_holds_its_verify_in_the_worktree(
    tmp_path: Path, make_feature: MakeFeature, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = init_repo(tmp_path / "r", {".gitignore": "*.o\n"})
    data = subtask("01", command="touch 01.txt", deliverables=["01.txt"], verify="test -f 01.txt")
    make_feature([data], root=repo)
    msg = message(repo, data)
    ref = isolation.wave_ref(msg.run_id, 1)
    msg = msg.model_copy(update={"isolate": Isolation.WORKTREE, "snapshot_ref": ref})
    gitsnap.snapshot(repo, ref, "snap")
    held_in: list[Path] = []

    def recording(delegation: Delegation, settings_: Settings) -> HeldConfined | None:
        held_in.append(delegation.workspace)
        return hold_verify(delegation, settings_)

    monkeypatch.setattr(verify_module, "hold_verify", recording)
    result = execute(msg, MemoryStore(clock=ManualClock()), settings(shell_allow=["*"]))
    assert result.result is ResultState.COMPLETED, (result.error, result.output_tail)
    assert len(held_in) == 1 and held_in[0] != repo  # held once, for the worktree
    assert result.changed_paths == ["01.txt"] and not (repo / "01.txt").exists()


def test_a_raising_on_spawn_hook_leaves_no_process_behind(tmp_path: Path) -> None:
    def failing() -> None:
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        run_process("sleep 31.25", cwd=tmp_path, on_spawn=failing)
    assert not [p for p in Path("/proc").glob("[0-9]*/cmdline") if _runs(p, b"31.25")]


def _runs(cmdline: Path, word: bytes) -> bool:
    try:
        return word in cmdline.read_bytes()
    except OSError:
        return False
