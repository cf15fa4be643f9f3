"""Agents carry out subtasks: ``shell``, ``python``, CLI agents, and third-party ones
registered through the ``batchq.agents`` entry point group (see :mod:`.registry`)."""

from batchq.agents.base import TEMPORARY_EXIT, Agent, AgentOutcome, Delegation
from batchq.agents.registry import agent_for, agent_name, registered_agents

__all__ = [
    "TEMPORARY_EXIT",
    "Agent",
    "AgentOutcome",
    "Delegation",
    "agent_for",
    "agent_name",
    "registered_agents",
]
