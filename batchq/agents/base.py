"""The agent contract, the registry, and how a subtask picks its agent.

An agent turns one delegation into an :class:`AgentOutcome`. It never raises for the
subtask's own failure: a non-zero exit, a timeout or a cancellation is an outcome,
so the Celery chord always fires (TRAPS: a failed member kills the chord callback).
``check`` is called twice — by the producer before anything is enqueued and by the
worker before running — so a forged message cannot bypass the allow-lists.

Third parties add agents through the ``batchq.agents`` entry point group; an entry
point named ``foo`` must load a subclass of :class:`Agent`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import ClassVar

from batchq.errors import PolicyError
from batchq.models import Subtask
from batchq.settings import Settings

__all__ = [
    "TEMPORARY_EXIT",
    "Agent",
    "AgentOutcome",
    "Delegation",
    "agent_for",
    "agent_name",
    "registered_agents",
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


@cache
def registered_agents() -> dict[str, type[Agent]]:
    """Agent classes from the ``batchq.agents`` entry point group, by name.

    Cached: scanning installed distributions costs milliseconds, and the producer
    and every worker ask once per subtask."""
    found: dict[str, type[Agent]] = {}
    for ep in entry_points(group="batchq.agents"):
        cls = ep.load()
        if isinstance(cls, type) and issubclass(cls, Agent):
            found[ep.name] = cls
    return found


def agent_name(subtask: Subtask) -> str:
    """The agent a subtask asks for: ``suggested_agent``, else inferred from its
    ``execution`` block (a command means ``shell``, a callable means ``python``)."""
    if subtask.suggested_agent:
        return subtask.suggested_agent
    if subtask.execution and subtask.execution.callable_:
        return "python"
    if subtask.execution and subtask.execution.command:
        return "shell"
    return ""


def agent_for(subtask: Subtask, settings: Settings) -> Agent:
    """Build and policy-check the agent for a subtask, or raise :class:`PolicyError`."""
    name = agent_name(subtask)
    if not name:
        raise PolicyError(
            subtask.seq,
            f"subtask {subtask.seq}: suggested_agent: no agent given and no "
            "execution.command or execution.callable to infer one from",
        )
    registry = registered_agents()
    cls = registry.get(name)
    if cls is None:
        config = settings.agents.get(name)
        if config is None or not config.command:
            known = ", ".join(
                sorted(registry) + sorted(a for a in settings.agents if a not in registry)
            )
            raise PolicyError(
                name,
                f"subtask {subtask.seq}: suggested_agent: unknown agent {name!r}; "
                f'configure [agents.{name}] command = "..." in batchq.toml (known: {known})',
            )
        from batchq.agents.cli import CliAgent

        cls = CliAgent
    agent = cls(name, settings)
    agent.check(subtask)
    # execution.verify runs with bash whichever agent did the work, so the shell
    # allow-list applies to it for third-party agents too.
    from batchq.agents.shell import check_verify

    check_verify(subtask, settings)
    return agent
