"""The store contract's two implementations, one harness each.

``store`` is parametrized: ``redis`` is :class:`~batchq.store.state.StateStore` on
the session's real redis-server (marked ``integration``: ``make test-fast`` leaves it
out), ``memory`` is :class:`~batchq.store.memory.MemoryStore` on a manual clock. The
one place the two differ is how time passes: the memory store's clock is advanced,
the Redis one is waited for, in a bounded poll that never asserts on elapsed time.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import redis

from batchq.store.contract import Store
from batchq.store.memory import ManualClock, MemoryStore
from batchq.store.state import StateStore, wait_until

PATIENCE_S = 10.0
"""How long a Redis TTL may take to be seen as expired (a loaded machine)."""


@dataclass
class Harness:
    store: Store
    kind: str
    clock: ManualClock | None = None

    def pass_time(self, seconds: float, until: Callable[[], bool]) -> None:
        """Let ``seconds`` go by, then require ``until()``: on the fake clock at once,
        on Redis within a bounded poll (TTLs are real there)."""
        if self.clock is not None:
            self.clock.advance(seconds + 0.01)
            assert until()
        else:
            assert wait_until(until, PATIENCE_S + seconds, interval_s=0.02)


@pytest.fixture(
    params=[pytest.param("redis", marks=pytest.mark.integration), "memory"],
)
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    if request.param == "memory":
        clock = ManualClock()
        yield Harness(MemoryStore(prefix="t:", clock=clock), "memory", clock)
        return
    target = request.getfixturevalue("redis_target")
    client = redis.Redis.from_url(target.redis_py_url, decode_responses=True, socket_timeout=5)
    # A prefix of its own per test: no FLUSHDB, so an external server is safe too.
    store = StateStore(client, prefix=f"batchq-contract:{uuid.uuid4().hex}:", ttl_s=3600)
    try:
        yield Harness(store, "redis")
    finally:
        store.close()


@pytest.fixture
def store(harness: Harness) -> Store:
    return harness.store
