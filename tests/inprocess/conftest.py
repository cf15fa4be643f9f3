"""The in-process lane: batchq's Celery tasks on a real worker running in threads of the
test process, against the session's real ``redis-server`` (``redis_target``,
:mod:`tests.servers`).

What runs here is the real thing except the process model: ``create_app(settings)``
(every setting batchq relies on, the batched task events, the custom result backend),
the real kombu transport and chord counter on Redis, Celery's own ``WorkController``
consuming ``batchq.control``, ``batchq.shell`` and ``batchq.python``. No eager mode and
no fake Redis. Starting it costs no process start, so the lane is fast enough to run
with the unit tests (``make test-fast``).

How the worker is loaded, and why not through pytest-celery
------------------------------------------------------------
pytest-celery 1.x registers one pytest plugin (entry point ``celery`` ->
``pytest_celery.plugin``) that star-imports the legacy ``celery.contrib.pytest``
fixtures and then its own Docker ones over them: its ``celery_worker`` (a parametrized
container worker) replaces the legacy in-thread fixture of the same name
(celery/pytest-celery#442, celery/celery#9126), and the plugin imports
``pytest_docker_tools``/``docker``. There is no Docker engine here, so ``pyproject``
keeps ``-p no:celery`` and the plugin is never loaded. pytest-celery 1.x offers no
switch to load only the legacy half: the legacy fixtures are not its code, they ship
with Celery itself (``celery.contrib.pytest``, ``celery.contrib.testing``).

Nor does the lane load ``celery.contrib.pytest`` as a plugin: its
``celery_session_app`` builds a ``TestApp`` rather than batchq's app, and its
``celery_session_worker`` is session-scoped, so in a ``make test`` session its worker
would still be consuming batchq's queues while ``tests/integration`` starts subprocess
workers on the same Redis, and would steal their messages. The lane calls what that
fixture calls, :func:`celery.contrib.testing.worker.start_worker`, from a
``scope="package"`` fixture (``__init__.py`` makes this folder a package): one worker
for the whole lane, stopped after the lane's last test. So the suite uses Celery's own
testing module, which the ``celery`` dependency pins; pytest-celery is not a dev
dependency (see the README's Testing section).

Worker settings: ``pool="threads"`` with 4 slots (several subtasks of a batch really
run at once), ``perform_ping_check=False`` (the ping is a ``celery.ping`` task the app
would have to register; ``start_worker`` already waits until the consumer is ready,
and every test's own round trip proves the worker consumes).

What the threads pool cannot show (those stay in ``tests/integration`` and
``tests/reliability``, on subprocess workers): prefork child loss, Celery time
limits, redelivery after a lost worker, signals (TERM, Ctrl-C). And two limits the
lane's subtasks respect:

- the ``python`` agent times a callable with a ``SIGALRM`` timer, which only the main
  thread can arm, and Celery's soft time limit needs prefork: a python subtask here
  is never interrupted, so none of the lane's callables relies on its timeout (a
  *shell* subtask's timeout is the agent's own deadline and works in threads);
- the ``python`` agent captures output with ``redirect_stdout``, which swaps the
  process-wide stream: two callables in two threads at once would interleave and can
  leave ``sys.stdout`` pointing at a finished subtask's buffer. At most one python
  message is in flight at a time in this lane (a chunk runs its members one after
  the other in one thread).

The worker serves the lane's own :class:`~batchq.settings.Settings` (allow-lists,
backoff): tests override only producer-side settings.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery import _state as celery_state
from celery.contrib.testing.worker import start_worker

from batchq.protocol import DEFAULT_QUEUES
from batchq.run.orchestrator import Orchestrator
from batchq.settings import Settings, load_settings
from batchq.store.state import StateStore, wait_until
from batchq.transport.app import create_app
from tests.servers import RedisTarget

CALLABLES = "tests.fixtures_pkg.callables"
"""The lane's callables; never ``quick``, which ``tests/integration/test_chunks.py``
counts the runs of."""
KEY_PREFIX = "batchq-inprocess:"
SLOTS = 4
EVENT_WAIT_S = 30.0
"""Bound on waiting for task events, which may trail a report (batched every 0.1 s)."""
PROBE = "batchq-probe"
"""An event type of the lane's own, sent until the receiver is known to listen."""


@pytest.fixture(scope="package")
def lane_url(redis_target: RedisTarget) -> str:
    """The session's Redis, emptied first when it is ours to empty: a message a
    previous test left queued must not reach this lane's worker."""
    if not redis_target.external or os.environ.get("BATCHQ_TEST_REDIS_FLUSH") == "1":
        with redis.Redis.from_url(redis_target.redis_py_url, socket_timeout=5.0) as client:
            client.flushdb()
    return redis_target.url


@pytest.fixture(scope="package")
def lane_settings(lane_url: str) -> Settings:
    """What the worker runs with, and the producer's defaults. Its own key prefix keeps
    what the lane's runs record (results, reports, and what batchq learns of each
    callable's duration, which decides chunking) away from the tests that come after
    it on the same Redis."""
    return load_settings(
        None,
        redis_url=lane_url,
        key_prefix=KEY_PREFIX,
        shell_allow=["*"],
        python_allow=["tests.fixtures_pkg"],
        stall_s=30.0,
        retry_backoff_s=0.1,
        heartbeat_s=1.0,
    )


@pytest.fixture(scope="package")
def lane_app(lane_settings: Settings) -> Iterator[Celery]:
    """batchq's own app (:func:`batchq.transport.app.create_app`), shared by the
    worker and every producer of the lane."""
    app = create_app(lane_settings, main="batchq-inprocess")
    yield app
    app.close()


@pytest.fixture(scope="package")
def lane_worker(lane_app: Celery) -> Iterator[Any]:
    """A Celery worker in a thread of this process, threads pool, 4 slots, consuming
    batchq's default queues; stopped (and its running tasks awaited) after the lane.

    ``start_worker`` makes the app the process's current and default app; both are
    put back afterwards, so later tests see no leftover app."""
    previous_default = celery_state.default_app
    previous_current = getattr(celery_state._tls, "current_app", None)
    try:
        with start_worker(
            lane_app,
            pool="threads",
            concurrency=SLOTS,
            queues=list(DEFAULT_QUEUES),
            perform_ping_check=False,
            loglevel="WARNING",
            shutdown_timeout=60.0,
        ) as worker:
            yield worker
    finally:
        celery_state.set_default_app(previous_default)
        celery_state._tls.current_app = previous_current


@pytest.fixture
def store(lane_worker: Any, lane_settings: Settings) -> Iterator[StateStore]:
    """A state store on the lane's Redis (the worker is running)."""
    opened = StateStore.from_url(lane_settings.redis_url or "", prefix=lane_settings.key_prefix)
    yield opened
    opened.close()


MakeOrchestrator = Callable[..., Orchestrator]


@pytest.fixture
def orchestrator(lane_app: Celery, lane_settings: Settings, store: StateStore) -> MakeOrchestrator:
    """Factory: ``orchestrator(root, name="feat", **producer_settings)``."""

    def make(root: Path, name: str = "feat", **overrides: Any) -> Orchestrator:
        settings = lane_settings.model_copy(update=overrides)
        return Orchestrator(root, name, settings, lane_app, store)

    return make


class TaskEvents:
    """Every task event on the broker, received as Flower receives them (an
    ``app.events.Receiver`` on the event exchange, ``task-multi`` lists unpacked), and
    folded into Celery's event ``State`` as Flower folds them."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.seen: list[dict[str, Any]] = []
        self.state = app.events.State()
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.probed = threading.Event()
        self.receiver: Any = None
        self.thread = threading.Thread(target=self._capture, name="task-events", daemon=True)

    def _on_event(self, event: dict[str, Any]) -> None:
        if event["type"] == PROBE:
            self.probed.set()
            return
        with self.lock:
            self.seen.append(event)
            self.state.event(event)

    def _capture(self) -> None:
        with self.app.connection_for_read() as conn:
            self.receiver = self.app.events.Receiver(
                conn, handlers={"*": self._on_event}, app=self.app
            )
            self.ready.set()
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def start(self) -> TaskEvents:
        """Start receiving, and return once an event sent now is received: kombu's
        Redis transport subscribes to the event exchange only on its first poll, and
        an event published before that is never seen."""
        self.thread.start()
        assert self.ready.wait(10), "the event receiver never started"
        with self.app.events.default_dispatcher() as probe:
            for _ in range(50):
                probe.send(PROBE)
                if self.probed.wait(0.2):
                    return self
        raise AssertionError("the event receiver never got an event")

    def stop(self) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True
        self.thread.join(10)

    def events(
        self, kind: str | None = None, feature: str | None = None, **fields: Any
    ) -> list[dict[str, Any]]:
        """The events of ``kind`` (all kinds if None) whose fields match; with
        ``feature``, only those of that feature's tasks: an earlier test's chord
        callback (or its last events, flushed every 0.1 s) may still trail in."""
        with self.lock:
            found = list(self.seen)
        if feature is not None:
            mark = f"feature={feature} "
            ours = {e["uuid"] for e in found if mark in str(e.get("args", ""))}
            found = [e for e in found if e.get("uuid") in ours]
        return [
            e
            for e in found
            if (kind is None or e["type"] == kind) and all(e.get(k) == v for k, v in fields.items())
        ]

    def of(self, task_id: str) -> list[str]:
        """The kinds of one task's events, in arrival order."""
        return [e["type"] for e in self.events(uuid=task_id)]

    def wait_for(self, predicate: Callable[[TaskEvents], bool]) -> bool:
        return wait_until(lambda: predicate(self), EVENT_WAIT_S)


@pytest.fixture
def task_events(lane_app: Celery, lane_worker: Any) -> Iterator[TaskEvents]:
    """Task events from now on (start it before publishing: a receiver only gets what
    is sent after its queue is bound)."""
    events = TaskEvents(lane_app).start()
    yield events
    events.stop()
