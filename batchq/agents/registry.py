"""How a subtask picks its agent: the ``batchq.agents`` entry points, then the
CLI agents configured in ``batchq.toml``.

Third parties add agents through the ``batchq.agents`` entry point group; an entry
point named ``foo`` must load a subclass of :class:`~batchq.agents.base.Agent`. The
built-in ``shell`` and ``python`` agents are registered the same way (pyproject.toml).
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

from batchq.agents.base import Agent
from batchq.agents.cli import CliAgent
from batchq.agents.policy import check_verify
from batchq.errors import PolicyError
from batchq.models import Subtask, agent_name
from batchq.settings import Settings

__all__ = ["agent_for", "agent_name", "registered_agents"]


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
        cls = CliAgent
    agent = cls(name, settings)
    agent.check(subtask)
    # execution.verify runs with bash whichever agent did the work, so the shell
    # allow-list applies to it for third-party agents too.
    check_verify(subtask, settings)
    return agent
