"""The ``shell`` agent: ``execution.command`` run with ``bash -c`` in the workspace.

The line must pass the shell allow-list first (:mod:`batchq.agents.policy`), checked
by the producer before anything is enqueued and again here before it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

from batchq.agents.base import TEMPORARY_EXIT, Agent, AgentOutcome, Delegation
from batchq.agents.policy import check_env, check_line, check_verify
from batchq.agents.process import ProcessResult, summary_line
from batchq.agents.sandbox import run_confined
from batchq.errors import PolicyError
from batchq.models import Subtask

__all__ = ["ShellAgent", "outcome_from_process", "write_context_file"]


def write_context_file(delegation: Delegation) -> Path | None:
    """Write the shared session context beside the log (``<seq>.context.md``) so a
    child can read it from ``BATCHQ_CONTEXT_FILE``; None when there is none."""
    if not delegation.context:
        return None
    path = delegation.log_path.with_name(delegation.log_path.stem + ".context.md")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(delegation.context, encoding="utf-8")
    return path


def outcome_from_process(result: ProcessResult, extra_log: Sequence[str] = ()) -> AgentOutcome:
    """Map a finished child to an outcome: exit 0 succeeds, exit 75 (EX_TEMPFAIL)
    asks for a retry, and the summary is the text of the last ``SUMMARY:`` line, else
    the last non-empty output line (:func:`~batchq.agents.process.summary_line`)."""
    ok = result.ok
    error_type = result.error_type
    if not ok and error_type is None:
        error_type = "NonZeroExit" if (result.exit_code or 0) > 0 else "Killed"
    return AgentOutcome(
        ok=ok,
        exit_code=result.exit_code,
        output=result.output,
        summary=summary_line(result.output),
        error=None if ok else result.describe(),
        error_type=None if ok else error_type,
        temporary=result.exit_code == TEMPORARY_EXIT and not result.timed_out,
        timed_out=result.timed_out,
        cancelled=result.cancelled,
        extra_log=list(extra_log),
    )


StopCheck = Callable[[], bool]


class ShellAgent(Agent):
    """Runs ``execution.command`` in the workspace (the feature's root), under the
    allow-list: one simple command of literal words runs as an argv, anything else
    with ``bash -c``."""

    kind: ClassVar[str] = "shell"

    @property
    def patterns(self) -> list[str]:
        return self.settings.allow_for("shell")

    def check(self, subtask: Subtask) -> None:
        command = subtask.execution.command if subtask.execution else None
        if not command:
            raise PolicyError(
                subtask.seq,
                f"subtask {subtask.seq}: execution.command: missing; the shell agent "
                "needs a bash command line to run",
            )
        check_line(subtask.seq, "execution.command", command, self.patterns)
        check_env(subtask)
        check_verify(subtask, self.settings)

    def run(self, delegation: Delegation, should_stop: StopCheck) -> AgentOutcome:
        sub = delegation.subtask
        try:
            # Checked again here so a caller that skipped agent_for() cannot bypass it.
            self.check(sub)
        except PolicyError as exc:
            return AgentOutcome(ok=False, error=str(exc), error_type="PolicyError")
        assert sub.execution is not None and sub.execution.command is not None
        extra: dict[str, str] = {}
        context_file = write_context_file(delegation)
        if context_file is not None:
            extra["BATCHQ_CONTEXT_FILE"] = str(context_file)
        result = run_confined(
            sub.execution.command,
            delegation,
            self.settings,
            self.name,
            extra_env=extra,
            should_stop=should_stop,
        )
        return outcome_from_process(result)
