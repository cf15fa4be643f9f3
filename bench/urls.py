"""Where a bench process finds its Redis, importing nothing heavy (the bare-Celery and
dramatiq reference processes are timed whole, start-up included)."""

from __future__ import annotations

import os


def redis_url() -> str:
    """The Redis this process is pointed at: ``BATCHQ_REDIS_URL``, or the file that
    ``BATCHQ_REDIS_URL_FILE`` names (how batchq hands the URL to workers it starts,
    keeping it out of their environment block)."""
    url = os.environ.get("BATCHQ_REDIS_URL")
    if url:
        return url
    path = os.environ.get("BATCHQ_REDIS_URL_FILE")
    if path:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    return "redis://127.0.0.1:6379/0"
