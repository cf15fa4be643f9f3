"""Celery's ``-A`` target for worker processes: ``celery -A batchq.worker worker``.

Settings are the whole object the starter handed over in ``BATCHQ_SETTINGS_FILE``
(embedded and ``batchq up`` workers), else the environment and ``batchq.toml`` in the
working directory; building the app connects to nothing. Importing this module
also hooks batchq's structured logs (:mod:`batchq.executor.logs`) into Celery's logging setup,
in the format ``BATCHQ_LOG_FORMAT`` names, and pays the per-process start-up costs at
``worker_init`` (:mod:`batchq.executor.warmup`) rather than on the first subtasks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import signals

from batchq.executor import logs
from batchq.executor.warmup import warm_up
from batchq.settings import worker_settings
from batchq.transport.app import create_app

settings = worker_settings(Path.cwd())
app = create_app(settings)
logs.install(settings.log_format)


def _warm(**_: Any) -> None:
    warm_up(settings)


signals.worker_init.connect(_warm, weak=False)
