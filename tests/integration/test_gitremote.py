"""``workspace = git`` end to end (issue 20): a bare repository as the remote, real
redis-server, real prefork workers started in a private mount namespace where the
orchestrator's project folder is an empty tmpfs (``unshare -m``), real git."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchq.cli.main import main
from batchq.errors import UsageError
from batchq.executor.gitcache import Cache
from batchq.files import fingerprint
from batchq.files.taskfiles import load_feature
from batchq.local.connection import all_queues
from batchq.local.embedded import LocalWorkers
from batchq.models import ResultState, RunMode, SubtaskStatus, Workspace
from batchq.run.orchestrator import Orchestrator, RunOptions, RunResult
from batchq.settings import Settings, load_settings
from batchq.store.state import StateStore
from batchq.transport.app import create_app
from tests.integration.conftest import REPO_ROOT
from tests.integration.gitrepo import git

pytestmark = pytest.mark.integration

EXAMPLE = REPO_ROOT / "examples" / "auth-system"


def _can_unshare() -> str | None:
    """Why a private mount namespace cannot be made here (None: it can)."""
    if shutil.which("unshare") is None:
        return "no unshare binary"
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", "mount -t tmpfs none /mnt"],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"unshare -m is not permitted: {probe.stderr.decode(errors='replace').strip()}"
    return None


UNSHARE_PROBLEM = _can_unshare()
needs_unshare = pytest.mark.skipif(UNSHARE_PROBLEM is not None, reason=str(UNSHARE_PROBLEM))


class HiddenWorkers(LocalWorkers):
    """Workers that cannot see ``hidden`` (the orchestrator's folder, say) and may only
    read ``readonly``: each starts in a mount namespace of its own with an empty tmpfs
    over every hidden path and a read-only bind mount over every read-only one."""

    def __init__(
        self, hidden: list[Path], *args: Any, readonly: list[Path] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.hidden, self.readonly = hidden, readonly or []

    def argv(self, index: int) -> list[str]:
        steps = [f'mount -t tmpfs none "${i + 1}"' for i in range(len(self.hidden))]
        for i in range(len(self.hidden), len(self.hidden) + len(self.readonly)):
            steps.append(f'mount --bind "${i + 1}" "${i + 1}"')
            steps.append(f'mount -o remount,bind,ro "${i + 1}"')
        paths = [str(p) for p in (*self.hidden, *self.readonly)]
        script = " && ".join([*steps, f"shift {len(paths)}", 'exec "$@"'])
        return [
            *("unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"),
            *paths,
            *super().argv(index),
        ]


def commit_all(root: Path) -> None:
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "t@example.com")
    git(root, "config", "user.name", "t")
    if not (root / ".gitignore").exists():
        (root / ".gitignore").write_text(".tmp/\n__pycache__/\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "init")


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    path = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True)
    return path


@pytest.fixture
def auth_project(tmp_path: Path) -> Path:
    """A fresh copy of the seed's auth-system example, as a committed repository."""
    root = tmp_path / "auth-system"
    shutil.copytree(EXAMPLE, root)
    commit_all(root)
    return root


def git_settings(root: Path, redis_url: str, remote: Path, cache: Path, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "workspace": "git",
        "git_remote": remote.as_uri(),
        "worker_cache": str(cache),
        "stall_s": 60.0,
        "heartbeat_s": 1.0,
    }
    values.update(extra)
    return load_settings(root, **values)


@pytest.fixture
def hidden_workers(redis_url: str, tmp_path: Path) -> Iterator[Any]:
    started: list[LocalWorkers] = []

    def start(
        hidden: list[Path],
        settings: Settings,
        count: int = 1,
        readonly: list[Path] | None = None,
        **env: str,
    ) -> HiddenWorkers:
        group = HiddenWorkers(
            hidden,
            redis_url,
            readonly=readonly,
            count=count,
            concurrency=2,
            queues=all_queues(settings),  # every configured agent's, as embedded mode
            settings=settings,
            log_dir=tmp_path / f"workers-{len(started)}",
            cwd=REPO_ROOT,
            env={"PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{EXAMPLE}", **env},
        )
        started.append(group)
        group.start()
        group.wait_ready(60)
        return group

    yield start
    for group in started:
        group.stop(grace_s=5.0)


def orchestrate(root: Path, feature: str, settings: Settings, redis_url: str) -> RunResult:
    store = StateStore.from_url(redis_url, prefix=settings.key_prefix)
    try:
        orch = Orchestrator(root, feature, settings, create_app(settings), store)
        return orch.run(RunOptions())
    finally:
        store.close()


def remote_refs(remote: Path) -> list[str]:
    return git(remote, "for-each-ref", "--format=%(refname)", "refs/batchq/").split()


def sees(pid: int, path: Path) -> bool:
    """Whether process ``pid`` sees ``path`` (through its own mount namespace)."""
    return Path(f"/proc/{pid}/root{path}").exists()


@needs_unshare
def test_the_auth_system_feature_completes_on_workers_that_cannot_see_the_project(
    auth_project, remote, tmp_path, redis_url, redis_client, hidden_workers, capsys
):
    first = git(auth_project, "rev-parse", "HEAD").strip()
    (auth_project / "CHANGES.txt").write_text("history the workers never need\n")
    git(auth_project, "add", "CHANGES.txt")
    git(auth_project, "commit", "-q", "-m", "second")
    cache = tmp_path / "cache"
    settings = git_settings(auth_project, redis_url, remote, cache)
    group = hidden_workers([auth_project], settings)
    worker_pid = group.children[0].pid
    assert not sees(worker_pid, auth_project / "batchq.toml")  # the namespace hides it
    assert sees(os.getpid(), auth_project / "batchq.toml")

    result = orchestrate(auth_project, "auth-system", settings, redis_url)

    assert result.ok, [(r.seq, r.error) for b in result.reports for r in b.results]
    feature = load_feature(auth_project, "auth-system")
    assert all(s.status is SubtaskStatus.COMPLETED for s in feature.subtasks)
    for sub in feature.subtasks:
        for deliverable in sub.deliverables:
            assert (auth_project / deliverable).exists(), deliverable
    assert "def hash_password" in (auth_project / "authkit" / "passwords.py").read_text()
    # Fingerprints are the transport's business no more than isolation's: recorded at
    # completion, they match what this host computes, as under a shared workspace.
    shared = settings.model_copy(update={"workspace": Workspace.SHARED, "git_remote": None})
    assert fingerprint.stale(feature, settings) == {}
    for sub in feature.subtasks:
        assert sub.batchq is not None and sub.batchq.fingerprint is not None
        assert sub.batchq.fingerprint == fingerprint.fingerprint(sub, feature, shared)
    results = {r.seq: r for b in result.reports for r in b.results}
    assert results["04"].summary  # the test suite ran, on the merged deliverables
    for seq, res in results.items():
        log = Path(res.log_path or "")
        assert log.is_relative_to(auth_project), (seq, log)  # fetched back, not the worker's
        assert "[batchq] isolated result" in log.read_text()
    assert remote_refs(remote) == []  # the run deleted its refs on the remote
    assert not list((cache / "logs").rglob("*.log"))  # pushed, then dropped by the worker
    assert not list(cache.glob("repos/*/batchq-worktrees/*/*"))
    (clone,) = cache.glob("repos/*.git")  # the snapshots alone, not the project's history
    assert git(clone, "rev-parse", "--is-shallow-repository").strip() == "true"
    known = subprocess.run(["git", "-C", str(clone), "cat-file", "-e", first], check=False)
    assert known.returncode != 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["logs", "auth-system", "03", "--root", str(auth_project)])
    assert done.value.code in (0, None)
    assert "tests/test_authkit.py" in capsys.readouterr().out


@needs_unshare
def test_a_worker_that_cannot_reach_the_remote_fails_the_subtask_clearly(
    make_feature, subtask_data, remote, tmp_path, redis_url, redis_client, hidden_workers
):
    root = make_feature([subtask_data("01", command="echo hi > out.txt", deliverables=["out.txt"])])
    shutil.rmtree(root / ".git")
    commit_all(root)
    cache = tmp_path / "cache"
    settings = git_settings(root, redis_url, remote, cache, shell_allow=["*"])
    hidden_workers([root, remote], settings)  # the worker sees neither

    result = orchestrate(root, "feat", settings, redis_url)

    assert not result.ok
    (only,) = result.reports[0].results
    assert only.result is ResultState.FAILED
    assert only.error_type == "GitFetchFailed"
    assert "git fetch" in (only.error or "") and remote.as_uri() in (only.error or "")
    assert not (root / "out.txt").exists()
    assert remote_refs(remote) == []


@needs_unshare
def test_a_push_the_remote_refuses_is_a_retryable_failure_and_nothing_is_merged(
    make_feature, subtask_data, remote, tmp_path, redis_url, redis_client, hidden_workers
):
    sub = subtask_data("01", command="echo hi > out.txt", deliverables=["out.txt"], retries=1)
    root = make_feature([sub])
    shutil.rmtree(root / ".git")
    commit_all(root)
    cache = tmp_path / "cache"
    settings = git_settings(root, redis_url, remote, cache, shell_allow=["*"], retry_backoff_s=0.1)
    hidden_workers([root], settings, readonly=[remote])  # it fetches, but cannot push

    result = orchestrate(root, "feat", settings, redis_url)

    (only,) = result.reports[0].results
    assert only.result is ResultState.FAILED
    assert only.error_type == "GitPushFailed"
    assert only.attempts == 2  # retried once, as execution.retries says
    assert "could not be pushed" in (only.error or "") and "git push" in (only.error or "")
    assert not (root / "out.txt").exists()
    (repo,) = cache.glob("repos/*.git")
    assert not list(repo.glob("batchq-worktrees/*/*"))


@needs_unshare
def test_flow_mode_through_the_remote_gives_a_dependent_the_merged_deliverable(
    make_feature, subtask_data, remote, tmp_path, redis_url, redis_client, hidden_workers
):
    root = make_feature(
        [
            subtask_data("01", command="mkdir -p out && echo one > out/01.txt",
                         deliverables=["out/01.txt"]),
            subtask_data("02", command="mkdir -p out && echo two > out/02.txt",
                         deliverables=["out/02.txt"]),
            subtask_data("03", command="cat out/01.txt > out/03.txt", depends_on=["01"],
                         deliverables=["out/03.txt"]),
        ]
    )  # fmt: skip
    shutil.rmtree(root / ".git")
    commit_all(root)
    cache = tmp_path / "cache"
    settings = git_settings(root, redis_url, remote, cache, shell_allow=["*"])
    hidden_workers([root], settings)
    store = StateStore.from_url(redis_url, prefix=settings.key_prefix)
    try:
        orch = Orchestrator(root, "feat", settings, create_app(settings), store)
        result = orch.run(RunOptions(mode=RunMode.FLOW))
    finally:
        store.close()

    assert result.ok, [(r.seq, r.error) for b in result.reports for r in b.results]
    assert (root / "out" / "03.txt").read_text() == "one\n"  # from a later wave's snapshot
    assert (root / "out" / "02.txt").read_text() == "two\n"
    results = {r.seq: r for b in result.reports for r in b.results}
    assert all(Path(r.log_path or "").is_relative_to(root) for r in results.values())
    assert remote_refs(remote) == []


class _Silent:
    """A TCP server that accepts connections and never answers: a hung git server."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_a_remote_that_never_answers_is_refused_by_the_pre_flight_not_waited_for(
    make_feature, subtask_data, tmp_path, redis_url
):
    root = make_feature([subtask_data("01", command="true")])
    shutil.rmtree(root / ".git")
    commit_all(root)
    silent = _Silent()
    try:
        settings = load_settings(
            root,
            redis_url=redis_url,
            workspace="git",
            git_remote=f"git://127.0.0.1:{silent.port}/project.git",
            git_timeout_s=2.0,
            shell_allow=["*"],
        )
        with pytest.raises(UsageError, match="did not finish within 2s"):
            orchestrate(root, "feat", settings, redis_url)
    finally:
        silent.close()


@pytest.mark.parametrize(
    "command", [["run", "feat"], ["batch", "feat", "01"], ["validate", "feat"]]
)
def test_pre_flight_refuses_a_missing_remote_a_password_and_a_non_git_folder(
    make_feature, subtask_data, tmp_path, redis_url, capsys, command
):
    """``validate`` refuses what ``run`` and ``batch`` refuse, with the same words and
    exit code: it is the same pre-flight."""
    root = make_feature([subtask_data("01", command="true")])
    argv = [*command, "--root", str(root), "--workspace", "git"]
    for env, expected in [
        ({}, "needs a remote every worker reaches"),
        ({"BATCHQ_GIT_REMOTE": "https://me:hunter2@example.com/p.git"}, "holds a password"),
        ({"BATCHQ_GIT_REMOTE": (tmp_path / "x.git").as_uri()}, "not inside a git work tree"),
    ]:
        with pytest.MonkeyPatch.context() as patch:
            patch.delenv("BATCHQ_GIT_REMOTE", raising=False)
            patch.setenv("BATCHQ_SHELL_ALLOW", "*")
            for name, value in env.items():
                patch.setenv(name, value)
            capsys.readouterr()
            with pytest.raises(SystemExit) as done:
                main(argv)
            assert done.value.code == 2, expected
            shown = " ".join(capsys.readouterr())
            assert expected in " ".join(shown.split()), shown
            assert "hunter2" not in shown
            if "password" in expected:
                assert "https://me:***@example.com/p.git" in shown  # masked, still named


def test_validate_lists_every_git_problem_with_the_rest(make_feature, subtask_data, capsys):
    """A password in the URL, a folder that is not a work tree and a command no
    allow-list lets through: three problems, each on its line, in one ``validate``."""
    root = make_feature([subtask_data("01", command="rm -rf build")])  # .git: a bare folder
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BATCHQ_WORKSPACE", "git")
        patch.setenv("BATCHQ_GIT_REMOTE", "ssh://me:hunter2@example.com/p.git")
        patch.delenv("BATCHQ_SHELL_ALLOW", raising=False)
        capsys.readouterr()
        with pytest.raises(SystemExit) as done:
            main(["validate", "--root", str(root), "--json"])
    assert done.value.code == 2
    out, err = capsys.readouterr()
    assert "hunter2" not in out + err
    errors = json.loads(out)["feat"]["errors"]
    assert len(errors) == 3, errors
    assert errors[0].startswith("BATCHQ_GIT_REMOTE=ssh://me:***@example.com/p.git: ")
    assert "holds a password" in errors[0]
    assert "not inside a git work tree" in errors[1]
    assert "shell allow-list" in errors[2]


def test_validate_names_a_remote_that_does_not_answer_within_the_timeout(
    make_feature, subtask_data, remote, capsys
):
    root = make_feature([subtask_data("01", command="true")])
    shutil.rmtree(root / ".git")
    commit_all(root)
    silent = _Silent()
    argv = ["validate", "feat", "--root", str(root), "--workspace", "git", "--json"]
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("BATCHQ_SHELL_ALLOW", "*")
            patch.setenv("BATCHQ_GIT_TIMEOUT_S", "2")
            patch.setenv("BATCHQ_GIT_REMOTE", f"git://127.0.0.1:{silent.port}/project.git")
            capsys.readouterr()
            with pytest.raises(SystemExit) as done:
                main(argv)
            assert done.value.code == 2
            (problem,) = json.loads(capsys.readouterr().out)["feat"]["errors"]
            assert "the remote does not answer" in problem
            assert "did not finish within 2s" in problem
            patch.setenv("BATCHQ_GIT_REMOTE", remote.as_uri())  # one that answers
            with pytest.raises(SystemExit) as done:
                main(argv)
            assert done.value.code in (0, None)
            assert json.loads(capsys.readouterr().out)["feat"] == {"ok": True, "errors": []}
    finally:
        silent.close()


TOGETHER = (
    # Wait (bounded) until four worktrees of the run exist at once: all four pool
    # children of the two worker processes hold one, so the cache is shared for real.
    "i=0; while set -- ../*/ && [ $# -lt 4 ]; do i=$((i+1)); [ $i -gt 1200 ] && exit 3;"
    " sleep 0.05; done; "
)
WRITE = "mkdir -p out && echo {n} > out/{n}.txt"


@needs_unshare
def test_two_worker_processes_share_one_cache_and_a_batch_of_eight_completes(
    make_feature, subtask_data, remote, tmp_path, redis_url, redis_client, hidden_workers
):
    subs = [
        subtask_data(
            f"{i:02d}",
            command=(TOGETHER if i <= 4 else "") + WRITE.format(n=f"{i:02d}"),
            deliverables=[f"out/{i:02d}.txt"],
        )
        for i in range(1, 9)
    ]
    root = make_feature(subs)
    shutil.rmtree(root / ".git")
    commit_all(root)
    cache = tmp_path / "cache"
    settings = git_settings(root, redis_url, remote, cache, shell_allow=["*"])
    group = hidden_workers([root], settings, count=2)  # 2 processes x 2 pool children
    pools = [set(group.pool_pids(i)) for i in range(2)]

    result = orchestrate(root, "feat", settings, redis_url)

    assert result.ok, [(r.seq, r.error) for b in result.reports for r in b.results]
    ran_on = {int((r.worker or ":0").rsplit(":", 1)[1]) for r in result.reports[0].results}
    assert all(ran_on & pool for pool in pools), (ran_on, pools)  # both processes worked
    for i in range(1, 9):
        assert (root / "out" / f"{i:02d}.txt").read_text() == f"{i:02d}\n"
    (repo,) = cache.glob("repos/*.git")
    assert not list(repo.glob("batchq-worktrees/*/*"))
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1  # the bare one


def _base_commit(remote: Path, tmp_path: Path, run_id: str) -> str:
    """Put a snapshot ref on the remote as an orchestrator would."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    commit_all(src)
    ref = f"refs/batchq/{run_id}/base-1"
    git(src, "push", "-q", remote.as_uri(), f"HEAD:{ref}")
    return git(src, "rev-parse", "HEAD").strip()


HOLDER = """
import sys, time
from pathlib import Path
from batchq.executor.gitcache import Cache
cache = Cache(Path(sys.argv[1]), sys.argv[2], 30.0)
tree = cache.checkout(sys.argv[3], f"refs/batchq/{sys.argv[3]}/base-1", "01", "")
(cache.repo / "packed-refs.lock").write_text("")  # as a killed `git update-ref` leaves
(cache.repo / "refs" / "batchq" / sys.argv[3]).mkdir(parents=True, exist_ok=True)
(cache.repo / "refs" / "batchq" / sys.argv[3] / "01.lock").write_text("")  # its result ref
print(tree.path, flush=True)
time.sleep(600)
"""


def test_a_sigkilled_workers_worktree_and_git_locks_are_cleaned_by_the_next_one(remote, tmp_path):
    run_id = "20260101T000000-deadbeef"
    _base_commit(remote, tmp_path, run_id)
    cache_home = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(cache_home), remote.as_uri(), run_id],
        stdout=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        assert child.stdout is not None
        dead_tree = Path(child.stdout.readline().decode().strip())
        assert (dead_tree / "a.txt").is_file()
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    cache = Cache(cache_home, remote.as_uri(), 30.0)
    assert (cache.repo / "packed-refs.lock").exists()

    ref_lock = cache.repo / "refs" / "batchq" / run_id / "01.lock"
    tree = cache.checkout(run_id, f"refs/batchq/{run_id}/base-1", "02", "")
    try:
        assert not dead_tree.exists()  # the dead owner's worktree was pruned
        assert not (cache.repo / "packed-refs.lock").exists()
        assert ref_lock.exists()  # another subtask's ref: not judged by this one
        again = cache.checkout(
            run_id, f"refs/batchq/{run_id}/base-1", "01", ""
        )  # the killed subtask's retry
        assert not ref_lock.exists()
        cache.close(again)
        (tree.workspace / "b.txt").write_text("b\n")
        recorded = cache.record(tree, ["b.txt"])
        assert recorded.changed == ["b.txt"]
        log = tmp_path / "02.log"
        log.write_text("agent output\n")
        cache.publish(tree, log)
    finally:
        cache.close(tree)
    pushed = git(remote, "for-each-ref", "--format=%(refname)", f"refs/batchq/{run_id}/")
    assert set(pushed.split()) == {
        f"refs/batchq/{run_id}/base-1",
        f"refs/batchq/{run_id}/02",
        f"refs/batchq/{run_id}/log-02",
    }
    assert git(remote, "cat-file", "blob", f"refs/batchq/{run_id}/log-02:02.log") == (
        "agent output\n"
    )
    assert git(cache.repo, "worktree", "list", "--porcelain").count("worktree ") == 1


def test_batchq_gc_removes_an_ended_runs_refs_locally_and_on_the_remote(
    make_feature, subtask_data, remote, tmp_path, capsys, monkeypatch
):
    root = make_feature([subtask_data("01", command="true")])
    shutil.rmtree(root / ".git")
    commit_all(root)
    runs = root / ".tmp" / "tasks" / "feat" / ".batchq" / "runs"
    runs.mkdir(parents=True)
    ended, foreign = "20260101T000000-00000001", "20260101T000000-00000002"
    (runs / f"{ended}.token").write_text("t\n")
    for run_id in (ended, foreign):
        git(root, "update-ref", f"refs/batchq/{run_id}/base-1", "HEAD")
        git(root, "push", "-q", remote.as_uri(), f"HEAD:refs/batchq/{run_id}/base-1")
    monkeypatch.setenv("BATCHQ_GIT_REMOTE", remote.as_uri())
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["gc", "--root", str(root)])
    assert done.value.code in (0, None)
    shown = capsys.readouterr().out
    assert f"removed 1 ref(s) of run {ended} from the repository" in shown
    assert f"removed 1 ref(s) of run {ended} from {remote.as_uri()}" in shown
    assert foreign in shown and "did not start" in shown
    assert remote_refs(remote) == [f"refs/batchq/{foreign}/base-1"]
    local = git(root, "for-each-ref", "--format=%(refname)", "refs/batchq/").split()
    assert local == [f"refs/batchq/{foreign}/base-1"]


def test_the_workspace_setting_comes_from_batchq_toml(tmp_path):
    (tmp_path / "batchq.toml").write_text('workspace = "git"\ngit_remote = "file:///srv/p.git"\n')
    settings = load_settings(tmp_path)
    assert settings.workspace is Workspace.GIT
    assert settings.git_remote == "file:///srv/p.git"


FAKE_AGENT = REPO_ROOT / "tests" / "fakeagents" / "fake_agent.py"


@needs_unshare
def test_a_cli_agents_prompt_is_built_from_the_snapshot_not_the_workers_disk(
    make_feature, subtask_data, remote, tmp_path, redis_url, redis_client, hidden_workers
):
    """A context file never committed and a reference file edited since the last
    commit reach the coding agent's prompt through the snapshot: the worker cannot see
    the orchestrator's folder, so nothing else could have put them there."""
    sub = subtask_data("01", agent="FakeCoder", deliverables=["notes/out.txt"])
    sub["context_files"] = [{"path": "docs/brief.md", "reason": "what to write"}]
    sub["reference_files"] = [{"path": "docs/api.md", "reason": "the API as it is now"}]
    root = make_feature([sub])
    shutil.rmtree(root / ".git")
    (root / "docs").mkdir()
    (root / "docs" / "api.md").write_text("api: as committed\n")
    # The agent is part of the project, as a real one's tools are: the sandbox hides the
    # worker's /tmp, where a CI clone of this repository (and its tests/) may live.
    (root / "tools").mkdir()
    shutil.copy(FAKE_AGENT, root / "tools" / "fake_agent.py")
    command = f"{sys.executable} tools/fake_agent.py --file {{prompt_file}}"
    (root / "batchq.toml").write_text(f'[agents.FakeCoder]\ncommand = "{command}"\n')
    commit_all(root)
    (root / "docs" / "brief.md").write_text("brief: written, never committed\n")  # untracked
    (root / "docs" / "api.md").write_text("api: edited, not committed\n")
    changed = git(root, "status", "--porcelain", "docs").split()
    assert changed == ["M", "docs/api.md", "??", "docs/brief.md"]
    cache = tmp_path / "cache"
    settings = git_settings(root, redis_url, remote, cache)
    group = hidden_workers([root], settings)
    assert not sees(group.children[0].pid, root / "docs" / "brief.md")

    result = orchestrate(root, "feat", settings, redis_url)

    assert result.ok, [(r.seq, r.error) for b in result.reports for r in b.results]
    (record_path,) = cache.rglob("01.prompt.md.fake_agent.py.json")  # beside the worker's log
    record = json.loads(record_path.read_text())
    assert record["source"].startswith("--file ")
    assert not Path(record["cwd"]).is_relative_to(root)  # a worktree of the worker's clone
    prompt = record["prompt"]
    assert "### `docs/brief.md`" in prompt and "brief: written, never committed" in prompt
    assert "api: edited, not committed" in prompt and "as committed" not in prompt
    assert (root / "notes" / "out.txt").read_text() == "written by fake fake_agent.py\n"
    log = Path(next(r for b in result.reports for r in b.results).log_path or "")
    assert log.is_relative_to(root) and "brief: written, never committed" in log.read_text()
    assert remote_refs(remote) == []
