"""Check what an agent claims to have done, after it reports success (SPEC 3).

An agent's exit status says little: a coding-agent CLI exits 0 when it gave up
politely. So a successful run is followed by two checks, in this order:

1. every deliverable exists in the workspace — a path ending in ``/`` must be a
   folder, anything else a file (:func:`verify_deliverables`);
2. ``execution.verify``, if any, exits 0 — run in the workspace like a shell agent's
   command (:func:`verify_delegation`: same sandbox). It is policy-checked by the
   shell allow-list when the subtask is checked (every built-in agent's ``check``,
   and :func:`check_verify` for anyone else), not here.

:func:`first_failure` turns the two into the one-line reason a failed subtask carries,
e.g. ``deliverable missing: src/a.py`` or ``verify failed (exit 1): <tail>``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from batchq.agents.base import Delegation
from batchq.agents.policy import check_verify
from batchq.agents.process import ProcessResult, last_line
from batchq.agents.sandbox import HeldConfined, hold_confined, run_confined
from batchq.core.paths import PathError, is_protected, normalise
from batchq.files.agentlog import append_text
from batchq.models import DeliverableCheck, Subtask
from batchq.settings import Settings

__all__ = [
    "Verification",
    "VerifyHold",
    "check_verify",
    "first_failure",
    "hold_verify",
    "verify_delegation",
    "verify_deliverables",
]

_REASON_TAIL_CHARS = 300

log = logging.getLogger(__name__)


def verify_deliverables(
    subtask: Subtask, workspace: Path, protected: Sequence[str] = ()
) -> list[DeliverableCheck]:
    """One check per deliverable, in the order the subtask lists them. A path that
    escapes the workspace (absolute, ``..``, or a symlink leading out) never verifies,
    nor one whose resolved path is protected (``gitlink/config`` with ``gitlink`` a
    link to ``.git``): the pre-flight judged the name as written, this the file.
    Worked on strings (``os.path.realpath`` is what ``Path.resolve`` calls): every
    subtask of a batch passes here, and ``pathlib`` cost several times the lookups."""
    root = os.path.realpath(workspace)
    prefix = root if root.endswith("/") else root + "/"
    checks: list[DeliverableCheck] = []
    for item in subtask.deliverables:
        try:
            name = normalise(item)
        except PathError:
            checks.append(DeliverableCheck(path=item, verified=False))
            continue
        target = os.path.realpath(os.path.join(root, name))
        inside = target == root or target.startswith(prefix)
        found = os.path.isdir(target) if name.endswith("/") else os.path.isfile(target)
        real = target[len(prefix) :] if inside and target != root else ""
        hit = is_protected(real, protected) if real else None
        if found and inside and hit is not None:
            problem = f"{item} resolves to {real}, protected by {hit!r}"
            checks.append(DeliverableCheck(path=item, verified=False, problem=problem))
            continue
        checks.append(DeliverableCheck(path=item, verified=inside and found))
    return checks


def first_failure(
    checks: Sequence[DeliverableCheck], verify: ProcessResult | None = None
) -> str | None:
    """The reason verification failed, or None when it passed."""
    refused = [check.problem for check in checks if check.problem]
    if refused:
        return "deliverable refused: " + "; ".join(refused)
    missing = [check.path for check in checks if not check.verified]
    if len(missing) == 1:
        return f"deliverable missing: {missing[0]}"
    if missing:
        return f"deliverables missing: {', '.join(missing)}"
    if verify is None or verify.ok:
        return None
    if verify.error:
        return f"verify could not run: {verify.error}"
    if verify.timed_out:
        return f"verify timed out after {verify.duration_s:.0f}s"
    if verify.cancelled:
        return "verify cancelled"
    code = verify.exit_code or 0
    status = f"exit {code}" if code > 0 else verify.describe()
    tail = last_line(verify.output, _REASON_TAIL_CHARS)
    return f"verify failed ({status})" + (f": {tail}" if tail else "")


@dataclass
class Verification:
    """Both checks for one delegation; ``failure`` is None when the subtask passed."""

    deliverables: list[DeliverableCheck] = field(default_factory=list)
    verify: ProcessResult | None = None
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None


def hold_verify(delegation: Delegation, settings: Settings) -> HeldConfined | None:
    """The sandbox of ``execution.verify``, set up now and held until
    :func:`verify_delegation` runs it (or discarded: the caller must call
    :meth:`~batchq.agents.sandbox.HeldConfined.discard` when it is done either way).
    :class:`VerifyHold` calls it while the agent runs. None when there is no verify
    command, or no sandbox to set up ahead."""
    line = delegation.subtask.execution.verify if delegation.subtask.execution else None
    return hold_confined(line, delegation, settings, "shell") if line else None


class VerifyHold:
    """``execution.verify``'s sandbox, set up once its agent's process has started
    and held until :func:`verify_delegation` runs it.

    :meth:`attach` gives the delegation to run the agent with: its
    :attr:`~batchq.agents.base.Delegation.started` is this object, which
    :func:`~batchq.agents.sandbox.run_confined` calls once the agent's process runs.
    Set up then, bwrap's start costs the subtask nothing, not even the worker's wait
    for its ``exec`` before the agent starts. An agent that starts no process (an
    in-process one) gets nothing held: its verify is set up when it runs, as without.
    :meth:`take` ends the window (nothing is held after it) and returns what was held;
    :meth:`discard` kills it unless it ran. Call both, in that order, every time, and
    on the thread that runs the agent: ``bwrap --die-with-parent`` is a parent-death
    signal, which the kernel sends when the thread that started it ends."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.delegation: Delegation | None = None
        self.held: HeldConfined | None = None
        self._open = True

    def attach(self, delegation: Delegation) -> Delegation:
        execution = delegation.subtask.execution
        if not (execution and execution.verify):
            return delegation  # nothing to hold
        self.delegation = dataclasses.replace(delegation, started=self)
        return self.delegation

    def __call__(self) -> None:
        if self._open and self.delegation is not None:
            self._open = False
            try:
                self.held = hold_verify(self.delegation, self.settings)
            except Exception:  # the agent runs on; verify is set up when it runs
                log.exception(
                    "subtask %s: verify's sandbox not set up ahead", self.delegation.subtask.seq
                )

    def take(self) -> HeldConfined | None:
        self._open = False
        return self.held

    def discard(self) -> None:
        self._open = False
        if self.held is not None:
            self.held.discard()  # nothing once released


def verify_delegation(
    delegation: Delegation,
    settings: Settings,
    should_stop: Callable[[], bool] | None = None,
    held: HeldConfined | None = None,
) -> Verification:
    """Deliverables first, then ``execution.verify`` (skipped when a deliverable is
    missing: the reason is already known), run like a shell agent's command — the
    same allow-list, sandbox and reduced environment — with the subtask's timeout.
    Its output is appended to the subtask's log after a header line. ``held``: its
    sandbox from :func:`hold_verify`, used when verify runs, discarded otherwise."""
    try:
        checks = verify_deliverables(
            delegation.subtask, delegation.workspace, settings.protected_paths
        )
        result = Verification(deliverables=checks)
        line = delegation.subtask.execution.verify if delegation.subtask.execution else None
        if line and all(check.verified for check in checks):
            with append_text(delegation.log_path) as handle:
                handle.write(f"\n[batchq] verify: {line}\n")
            if held is not None:
                result.verify = held.release(delegation, should_stop)
            else:
                result.verify = run_confined(
                    line, delegation, settings, "shell", should_stop=should_stop
                )
        result.failure = first_failure(checks, result.verify)
        return result
    finally:
        if held is not None:
            held.discard()  # nothing once released
