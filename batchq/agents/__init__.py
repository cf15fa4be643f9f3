"""Agents carry out subtasks: ``shell``, ``python``, CLI agents, and third-party ones
registered through the ``batchq.agents`` entry point group (see :mod:`.base`)."""

from batchq.agents.base import (
    TEMPORARY_EXIT,
    Agent,
    AgentOutcome,
    Delegation,
    agent_for,
    agent_name,
    registered_agents,
)

__all__ = [
    "TEMPORARY_EXIT",
    "Agent",
    "AgentOutcome",
    "Delegation",
    "agent_for",
    "agent_name",
    "registered_agents",
]
