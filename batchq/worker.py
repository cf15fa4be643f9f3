"""Celery's ``-A`` target for worker processes: ``celery -A batchq.worker worker``.

Settings come from the environment (and ``batchq.toml`` in the working directory)
when the worker starts; building the app connects to nothing. Importing this module
also hooks batchq's structured logs (:mod:`batchq.logs`) into Celery's logging setup,
in the format ``BATCHQ_LOG_FORMAT`` names.
"""

from __future__ import annotations

from pathlib import Path

from batchq import logs
from batchq.app import create_app
from batchq.settings import load_settings

settings = load_settings(Path.cwd())
app = create_app(settings)
logs.install(settings.log_format)
