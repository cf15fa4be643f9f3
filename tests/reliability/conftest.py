"""Fault injection on real processes: a redis-server, prefork workers, orchestrators.

Everything starts through :mod:`batchq.procs` (own process group, log file, reaped at
teardown and at exit). Set ``BATCHQ_TEST_REDIS_URL`` to use an external server:
tests that restart Redis or delete messages from its queues then skip. Set
``BATCHQ_RELIABILITY_FIGURES=<file>`` to collect each trial's figures (JSON lines).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchq.local.embedded import RedisServer
from batchq.run.orchestrator import Orchestrator
from batchq.store.state import StateStore
from batchq.transport.app import create_app
from tests.reliability.faults import (
    FAULT_ENV,
    REPO_ROOT,
    NamedWorkers,
    fault_settings,
)
from tests.servers import RedisTarget

WorkerFactory = Callable[..., NamedWorkers]


@pytest.fixture
def private_redis(redis_target: RedisTarget) -> Iterator[Callable[..., RedisServer]]:
    """Factory for a redis-server of this test alone (to restart, kill or tamper with)."""
    redis_target.skip_if_external()
    servers: list[RedisServer] = []

    def start(*, aof: bool = False) -> RedisServer:
        server = RedisServer(aof=aof)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.cleanup()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[WorkerFactory]:
    """Factory: ``start_worker(url, env=..., concurrency=2, wait=True)``. Every worker
    is stopped (its group killed after a short grace) at teardown."""
    started: list[NamedWorkers] = []

    def start(
        url: str,
        *,
        env: dict[str, str] | None = None,
        concurrency: int = 2,
        wait: bool = True,
        name: str | None = None,
    ) -> NamedWorkers:
        name = name or f"w{len(started)}"
        group = NamedWorkers(
            url,
            name,
            concurrency=concurrency,
            env=FAULT_ENV if env is None else env,
            log_dir=tmp_path / f"worker-{name}",
            cwd=REPO_ROOT,
        )
        started.append(group)
        group.start()
        if wait:
            group.wait_ready(90)
        return group

    yield start
    for group in started:
        group.stop(grace_s=3.0)


@pytest.fixture
def orchestrator() -> Iterator[Callable[..., Orchestrator]]:
    """Factory: ``orchestrator(root, url, name="feat", **settings)`` with fault settings."""
    stores: list[StateStore] = []

    def make(root: Path, url: str, name: str = "feat", **overrides: Any) -> Orchestrator:
        settings = fault_settings(root, url, **overrides)
        store = StateStore.from_url(url, prefix=settings.key_prefix, timeout_s=5.0)
        stores.append(store)
        return Orchestrator(root, name, settings, create_app(settings), store)

    yield make
    for store in stores:
        store.close()
