"""The shell rules every bash line batchq runs must pass, and the environment agents get.

A subtask file is written by an orchestrator, often an LLM, so ``execution.command``
and ``execution.verify`` are untrusted input. The allow-list (``BATCHQ_SHELL_ALLOW``
or ``[agents.shell] allow``) holds fnmatch patterns; an empty list allows nothing.
Lines are judged on a real bash parse tree (:mod:`batchq.agents.bashgrammar`): only
words, simple commands, pipelines, ``;``/``&&``/``||`` lists and redirections pass,
and every simple command must match a pattern; anything else (substitutions,
functions, parameter operators, arithmetic, ANSI-C quoting, here-documents…) is
refused unless the list is exactly ``["*"]``. The allow-list is a guardrail against
mistakes and casual injection; the sandbox (:mod:`batchq.agents.sandbox`) is what
contains an agent.

``execution.env`` may never set ``PATH``, ``LD_*`` or ``PYTHON*`` (SPEC 3), nor the
variables that make bash itself run other code before the command (``BASH_ENV``,
``ENV``, ``BASH_FUNC_*`` exported functions, ``SHELLOPTS``, ``BASHOPTS``, ``IFS``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from batchq.agents.base import Delegation
from batchq.agents.bashgrammar import check_env_value, check_line, forbidden_env_name, simple_argv
from batchq.models import Subtask
from batchq.settings import Settings

__all__ = [
    "SECRET_ENV",
    "agent_env",
    "check_env",
    "check_line",
    "check_verify",
    "forbidden_env_name",
    "shell_command",
]

SECRET_ENV = ("BATCHQ_REDIS_URL", "BATCHQ_RESULT_URL", "BATCHQ_FLOWER_PASSWORD", "BATCHQ_MCP_TOKEN")
"""Secrets of the worker's own configuration: never handed to the processes it runs."""


def shell_command(line: str) -> str | list[str]:
    """What to run for an allowed line: its argv when it is one simple command of
    literal words (no shell: nothing of bash is left to misread), else the line for
    ``bash -c``."""
    argv = simple_argv(line)
    return line if argv is None else argv


def check_verify(subtask: Subtask, settings: Settings) -> None:
    """Raise :class:`~batchq.errors.PolicyError` unless ``execution.verify`` passes the
    shell allow-list and ``execution.env`` (its environment) sets nothing forbidden;
    every agent applies it in ``check``, and
    :func:`batchq.agents.agent_for` for third-party agents too."""
    if subtask.execution and subtask.execution.verify:
        check_line(
            subtask.seq, "execution.verify", subtask.execution.verify, settings.allow_for("shell")
        )
        check_env(subtask)


def check_env(subtask: Subtask) -> None:
    """Refuse an ``execution.env`` entry that is not a plain variable name, sets a
    variable no subtask may set, or holds a NUL byte; values are data bash never
    evaluates (:func:`batchq.agents.bashgrammar.check_env_value`)."""
    env = subtask.execution.env if subtask.execution else {}
    for name, value in env.items():
        check_env_value(subtask.seq, name, value)


def agent_env(
    delegation: Delegation,
    base: Mapping[str, str] | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of an agent's child: the worker's own (minus batchq's secrets),
    then ``execution.env``, then ``BATCHQ_FEATURE``/``SEQ``/``RUN_ID``/``BATCH``/
    ``WORKSPACE``/``LOG`` so scripts can tell which subtask they serve."""
    env = dict(os.environ if base is None else base)
    for name in SECRET_ENV:
        env.pop(name, None)
    sub = delegation.subtask
    if sub.execution:
        env.update(sub.execution.env)
    env.update(
        {
            "BATCHQ_FEATURE": delegation.feature,
            "BATCHQ_SEQ": sub.seq,
            "BATCHQ_SUBTASK_ID": sub.id,
            "BATCHQ_RUN_ID": delegation.run_id,
            "BATCHQ_BATCH": str(delegation.batch),
            "BATCHQ_WORKSPACE_DIR": str(delegation.workspace),
            "BATCHQ_LOG": str(delegation.log_path),
        }
    )
    if extra:
        env.update(extra)
    return env
