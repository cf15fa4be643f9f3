"""The agent contract: a delegation in, an outcome out.

An agent turns one delegation into an :class:`AgentOutcome`. It never raises for the
subtask's own failure: a non-zero exit, a timeout or a cancellation is an outcome,
so the Celery chord always fires (TRAPS: a failed member kills the chord callback).
``check`` is called twice — by the producer before anything is enqueued and by the
worker before running — so a forged message cannot bypass the allow-lists.

Which agent a subtask gets is decided in :mod:`batchq.agents.registry`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from batchq.models import BatchMember, Subtask
from batchq.settings import Settings

__all__ = [
    "TEMPORARY_EXIT",
    "Agent",
    "AgentOutcome",
    "Delegation",
]

TEMPORARY_EXIT = 75
"""EX_TEMPFAIL: an agent exiting with it asks for a retry."""

StopCheck = Callable[[], bool]


@dataclass(frozen=True)
class Delegation:
    """Everything an agent needs to carry out one subtask on this worker."""

    feature: str
    run_id: str
    batch: int
    subtask: Subtask
    workspace: Path
    context: str
    log_path: Path
    timeout_s: float
    feature_name: str = ""
    """``task.json`` ``name``; the fields below are what a coding agent's prompt says
    about the delegation (:mod:`batchq.agents.prompt`)."""
    objective: str | None = None
    subtask_file: str = ""
    """The subtask's file relative to the workspace, which the agent must not edit."""
    siblings: tuple[BatchMember, ...] = ()
    """The other members of the batch, running beside it: their deliverables are
    off limits."""
    siblings_total: int = 0
    """How many other members the batch has (``siblings`` may list fewer)."""
    started: Callable[[], object] | None = field(default=None, compare=False, repr=False)
    """Called once the agent's process has been started
    (:func:`~batchq.agents.sandbox.run_confined` calls it), while it runs: the worker
    sets up ``execution.verify``'s sandbox then (:mod:`batchq.executor.verify`)."""


@dataclass
class AgentOutcome:
    """What running an agent produced. ``ok`` means the agent itself succeeded;
    deliverable verification happens afterwards, outside the agent."""

    ok: bool
    exit_code: int | None = None
    output: str = ""
    summary: str = ""
    error: str | None = None
    error_type: str | None = None
    temporary: bool = False
    timed_out: bool = False
    cancelled: bool = False
    extra_log: list[str] = field(default_factory=list)


class Agent(abc.ABC):
    """Base class of every agent. Subclasses are built once per worker process."""

    kind: ClassVar[str] = "agent"

    def __init__(self, name: str, settings: Settings) -> None:
        self.name = name
        self.settings = settings

    @abc.abstractmethod
    def check(self, subtask: Subtask) -> None:
        """Raise :class:`PolicyError` if this subtask may not run on this agent."""

    @abc.abstractmethod
    def run(self, delegation: Delegation, should_stop: StopCheck) -> AgentOutcome:
        """Carry out the delegation. ``should_stop`` turns true when the batch is
        cancelled under ``terminate``; long-running agents poll it and stop early."""

    @property
    def max_concurrency(self) -> int | None:
        config = self.settings.agents.get(self.name)
        return config.max_concurrency if config else None
