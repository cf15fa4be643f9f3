"""``create_app(settings) -> Celery``: every Celery and kombu setting batchq relies on.

The settings here are the guarantees of SPEC 3, not tuning knobs: JSON only,
late acks with requeue on worker loss, prefetch 1, a visibility timeout longer than
any allowed subtask, bounded socket waits. Creating the app opens no connection.
"""

from __future__ import annotations

import ssl
from typing import Any

from celery import Celery

from batchq.protocol import AGGREGATE_TASK, CONTROL_QUEUE
from batchq.settings import Settings
from batchq.transport.events import BatchedEvents
from batchq.transport.tasks import register

__all__ = ["create_app", "max_subtask_budget_s"]


def max_subtask_budget_s(settings: Settings) -> float:
    """The longest a subtask may hold its message unacked: visibility timeout less a
    safety margin. Larger ``timeout_s`` (times retries plus backoff) is refused."""
    return settings.visibility_timeout_s * 0.9


def _transport_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "visibility_timeout": int(settings.visibility_timeout_s),
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.socket_timeout_s,
        "health_check_interval": 25,
    }
    if settings.unacked_restore_interval_s is not None:
        options["unacked_restore_interval"] = settings.unacked_restore_interval_s
        options["unacked_restore_throttle"] = 1
    return options


def _tls_options(broker: str, backend: str) -> dict[str, Any]:
    """``rediss://`` without ``ssl_cert_reqs``: verify the server's certificate.

    Celery's result backend refuses a ``rediss://`` URL that does not say how to check
    certificates; the safe answer (what redis-py does by default) is to require one.
    An explicit ``?ssl_cert_reqs=...`` in the URL still wins.
    """
    options: dict[str, Any] = {}
    required = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if broker.startswith("rediss://") and "ssl_cert_reqs" not in broker:
        options["broker_use_ssl"] = dict(required)
    if backend.startswith("rediss://") and "ssl_cert_reqs" not in backend:
        options["redis_backend_use_ssl"] = dict(required)
    return options


def create_app(settings: Settings, *, main: str = "batchq") -> Celery:
    """Build the Celery app for these settings and register batchq's tasks on it."""
    broker = settings.redis_url or "redis://127.0.0.1:6379/0"
    app = Celery(main, broker=broker, backend=settings.backend_url or broker, set_as_current=False)
    app.loader.override_backends = {
        "redis": "batchq.transport.backend:RedisBackend",
        "rediss": "batchq.transport.backend:RedisBackend",
    }
    transport = _transport_options(settings)
    app.conf.update(_tls_options(broker, settings.backend_url or broker))
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        result_backend_transport_options=dict(transport),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=settings.socket_timeout_s,
        # Not True: on a broker blip Celery would terminate every running subtask and
        # mark it revoked in the (same, unreachable) backend, and a revoked member fails
        # the whole chord (TRAPS). Running subtasks go on; their unacked messages come
        # back after the visibility timeout and find the recorded result (claim, record
        # once), so nothing is lost or run twice to completion.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        redis_socket_timeout=settings.socket_timeout_s,
        redis_socket_connect_timeout=settings.socket_timeout_s,
        redis_backend_health_check_interval=25,
        redis_retry_on_timeout=True,
        result_expires=settings.state_ttl_s,
        result_extended=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=False,
        task_default_queue=CONTROL_QUEUE,
        task_routes={AGGREGATE_TASK: {"queue": CONTROL_QUEUE}},
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_disable_rate_limits=True,
        batchq_settings=settings,
    )
    app.steps["consumer"].add(BatchedEvents)
    register(app, settings)
    return app
