"""Which Redis a command talks to, and the app and store built on it.

Order: ``BATCHQ_REDIS_URL``; else the stack recorded by ``batchq up``; else, for
commands that execute, a one-shot embedded stack (private redis-server plus local
workers) torn down afterwards — also on Ctrl-C and on failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from celery import Celery

from batchq.agents.registry import registered_agents
from batchq.errors import InfrastructureError
from batchq.protocol import CONTROL_QUEUE, agent_queue
from batchq.settings import Settings
from batchq.store.state import StateStore
from batchq.transport.app import create_app

__all__ = ["Connection", "all_queues", "connect"]


@dataclass
class Connection:
    settings: Settings
    app: Celery
    store: StateStore
    embedded: bool

    def close(self) -> None:
        self.store.close()


def all_queues(settings: Settings) -> list[str]:
    """The control queue and one queue per known agent (built-in, plug-in, configured)."""
    names = set(registered_agents()) | {n for n, c in settings.agents.items() if c.command}
    return [CONTROL_QUEUE, *(agent_queue(n) for n in sorted(names))]


def _open(settings: Settings, url: str, embedded: bool) -> Connection:
    settings = settings.model_copy(update={"redis_url": url})
    store = StateStore.from_settings(settings)
    store.ping(url)
    return Connection(settings, create_app(settings), store, embedded)


def _stack_url(root: Path) -> str | None:
    """The URL of the stack ``batchq up`` left running here, if any."""
    # lazy: the embedded stack's module (and Flower's helpers) only without BATCHQ_REDIS_URL
    from batchq.local import embedded

    return embedded.live_stack_url(root)


@contextmanager
def connect(
    settings: Settings, root: Path, *, embedded_ok: bool, workers: int | None = None
) -> Iterator[Connection]:
    """Yield a connection; start (and always stop) an embedded stack if allowed."""
    url = settings.redis_url or _stack_url(root)
    if url is not None:
        conn = _open(settings, url, embedded=False)
        try:
            yield conn
        finally:
            conn.close()
        return
    if not embedded_ok:
        raise InfrastructureError(
            "no Redis configured: set BATCHQ_REDIS_URL, or start a local stack with `batchq up`"
        )
    # lazy: only when no Redis is configured and embedded mode is allowed
    from batchq.local import embedded

    count = workers or 1
    with embedded.EmbeddedStack(
        workers=count,
        concurrency=settings.worker_concurrency or os.cpu_count() or 2,
        queues=all_queues(settings),
        cwd=root,
        redis_binary=embedded.redis_server_binary(override=settings.redis_server),
        settings=settings,
    ) as stack:
        conn = _open(settings, stack.url, embedded=True)
        try:
            yield conn
        finally:
            conn.close()
