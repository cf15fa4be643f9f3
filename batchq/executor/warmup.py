"""What a worker pays once, when it starts, instead of on its first subtasks.

Several answers are cached per process because they never change while a worker
runs: the agents the ``batchq.agents`` entry points name (scanning the installed
distributions and importing them costs ~100 ms), whether bubblewrap works here (a
trial sandbox, ~10–60 ms), bwrap's path and the worker's own Python under ``/tmp``.
Left to the first subtasks, every pool slot pays them at once when a batch arrives —
16 slots of a 4 × 4 fleet each ran their first subtask 0.3–0.5 s late on a 2-core
machine, which alone put the P3 makespan 6–10 % above the ideal. Called from the
worker's ``worker_init`` signal, in the main process before the pool starts, so
prefork children inherit the answers and threads share them.
"""

from __future__ import annotations

import logging

from batchq.agents import sandbox
from batchq.agents.registry import registered_agents
from batchq.models import SandboxMode
from batchq.settings import Settings

__all__ = ["warm_up"]

log = logging.getLogger("batchq.executor.warmup")


def warm_up(settings: Settings) -> None:
    """Fill the per-process caches the first subtask would otherwise fill. Never
    raises: a failure here is met again, and reported, by the subtask that needs it."""
    try:
        registered_agents()
        if SandboxMode(settings.sandbox) is not SandboxMode.OFF:
            sandbox.bwrap_status()
            sandbox.sandbox_paths()
    except Exception as exc:  # the subtask that needs it says what is wrong
        log.debug("warm-up skipped: %s", exc)
