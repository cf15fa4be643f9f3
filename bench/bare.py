"""The baseline: what a user would write with bare Celery on the same Redis.

Celery's defaults, except JSON-only serialisation (batchq's security default, and
the default content type anyway). ``tuned`` adds prefetch 1 + acks_late, the usual
advice for long tasks (P3 reports both). Workers load ``bench.bare:app``, configured
from ``BATCHQ_REDIS_URL``/``BENCH_BARE_TUNED``; the bench process builds its own app
per Redis with :func:`make_app`, without touching its environment.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery


def make_app(url: str, tuned: bool = False) -> Celery:
    app = Celery("bare", broker=url, backend=url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False,
        task_default_queue="bare",
    )
    if tuned:
        app.conf.update(worker_prefetch_multiplier=1, task_acks_late=True)

    @app.task(name="bare.noop", shared=False)
    def noop(*args: Any) -> None:
        return None

    @app.task(name="bare.sleep", shared=False)
    def sleep(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @app.task(name="bare.done", shared=False)
    def done(results: list[Any]) -> int:
        return len(results)

    return app


app = make_app(
    os.environ.get("BATCHQ_REDIS_URL", "redis://127.0.0.1:6379/0"),
    tuned=os.environ.get("BENCH_BARE_TUNED") == "1",
)
