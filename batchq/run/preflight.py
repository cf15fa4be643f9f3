"""The one pre-flight: every check ``run`` makes before it enqueues anything.

``validate`` and ``run`` used to check different things (``validate`` passed an unknown
agent that ``run`` refused), and ``run`` checked some twice. Both now call
:func:`check`: every format problem of every file, the seed's own rules the loader
does not enforce, the dependency graph, and, for each subtask the run would execute,
its agent, allow-lists, environment and time budget against the broker's visibility
timeout; under ``workspace = git``, the remote and the work tree
(:func:`batchq.run.remote.problems`). Nothing is enqueued unless it passes; the
orchestrator calls it once per run.
The read-only views never call it: they print what they can (SPEC 1).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from batchq.agents.cli import CliAgent
from batchq.agents.prompttemplate import load_template
from batchq.agents.registry import agent_for
from batchq.core import planner
from batchq.errors import BatchqError, InputError, PolicyError, SpecError
from batchq.files.taskfiles import load_feature, spec_problems
from batchq.layout import TASK_FILE, subtask_file
from batchq.models import DEFAULT_TIMEOUT_S, Feature, Subtask, SubtaskStatus, Workspace
from batchq.run import remote
from batchq.settings import Settings
from batchq.transport.app import max_subtask_budget_s

__all__ = [
    "Checked",
    "PreflightError",
    "agent_problems",
    "budget_s",
    "check",
    "require",
    "seed_problems",
]


class PreflightError(InputError):
    """Several problems at once; ``problems`` holds each one's own error."""

    def __init__(self, problems: Sequence[BatchqError]) -> None:
        self.problems = list(problems)
        super().__init__(
            f"{len(self.problems)} problems: " + "; ".join(str(p) for p in self.problems)
        )


@dataclass
class Checked:
    """The feature (None when a file does not load) and every problem found."""

    feature: Feature | None
    problems: list[BatchqError] = field(default_factory=list)


def budget_s(sub: Subtask, settings: Settings) -> float:
    """The longest a subtask may hold its message: every attempt's timeout and the
    back-off between them."""
    retries = sub.execution.retries if sub.execution else 0
    return sub.timeout_s * (retries + 1) + settings.retry_backoff_max_s * retries


def check(
    root: Path,
    name: str,
    settings: Settings,
    *,
    seqs: Collection[str] | None = None,
    workspace: Workspace | None = None,
) -> Checked:
    """Every problem that would stop ``run``, whose agents are checked for the subtasks
    not completed (``seqs``: ``batch``'s members instead), and those of ``workspace``
    (None: ``settings.workspace``). ``run --changed`` checks the completed ones it
    reruns with :func:`agent_problems`."""
    unreadable: list[BatchqError] = list(spec_problems(root, name))
    found = unreadable + remote.problems(root, settings, workspace or settings.workspace)
    if unreadable:
        return Checked(None, found)
    feature = load_feature(root, name)
    found += seed_problems(feature)
    try:
        planner.validate(feature, settings.protected_paths)
    except BatchqError as exc:  # every graph problem, in one error
        found.append(exc)
    if seqs is not None:
        todo = [s for s in feature.subtasks if s.seq in seqs]
    else:
        todo = [s for s in feature.subtasks if s.status is not SubtaskStatus.COMPLETED]
    found += agent_problems(todo, settings, feature.root)
    return Checked(feature, found)


def require(
    root: Path,
    name: str,
    settings: Settings,
    *,
    seqs: Collection[str] | None = None,
    workspace: Workspace | None = None,
) -> Feature:
    """The feature, or the problem (one) or a :class:`PreflightError` (several)."""
    checked = check(root, name, settings, seqs=seqs, workspace=workspace)
    if len(checked.problems) == 1:
        raise checked.problems[0]
    if checked.problems:
        raise PreflightError(checked.problems)
    assert checked.feature is not None
    return checked.feature


def seed_problems(feature: Feature) -> list[BatchqError]:
    """The seed format's rules the tolerant loader lets through: ``subtask_count``
    agrees with the files (it is never silently rewritten to agree), and each id is
    ``<feature>-NN``."""
    found: list[BatchqError] = []
    count = feature.task.subtask_count
    if count is not None and count != len(feature.subtasks):
        found.append(
            SpecError(
                feature.path / TASK_FILE,
                "subtask_count",
                f"says {count}, but the folder holds {len(feature.subtasks)} subtask files; "
                "add the missing files or correct the count",
            )
        )
    for sub in feature.subtasks:
        if not sub.id.startswith(f"{feature.name}-"):
            found.append(
                SpecError(
                    feature.path / subtask_file(sub.seq),
                    "id",
                    f"expected it to start with the feature name, "
                    f"{feature.name + '-' + sub.seq!r}; got {sub.id!r}",
                )
            )
    return found


def agent_problems(
    subtasks: Sequence[Subtask], settings: Settings, root: Path | None = None
) -> list[BatchqError]:
    """Each subtask's agent (unknown, unconfigured), allow-lists and environment, its
    time budget against what the broker's visibility timeout allows, and (given the
    project ``root``) each CLI agent's ``prompt_template``, once per agent."""
    found: list[BatchqError] = []
    limit = max_subtask_budget_s(settings)
    templates: set[str] = set()
    for sub in subtasks:
        try:
            agent = agent_for(sub, settings)
            if root is not None and agent.kind == CliAgent.kind and agent.name not in templates:
                templates.add(agent.name)
                load_template(agent.name, settings, root)
        except BatchqError as exc:
            found.append(exc)
        needed = budget_s(sub, settings)
        if needed > limit:
            found.append(PolicyError(sub.seq, _budget_message(sub, needed, limit, settings)))
    return found


def _budget_message(sub: Subtask, needed: float, limit: float, settings: Settings) -> str:
    retries = sub.execution.retries if sub.execution else 0
    default = sub.execution is None or sub.timeout_s == DEFAULT_TIMEOUT_S
    timeout = f"timeout_s {sub.timeout_s:g}s{' (the default)' if default else ''}"
    what = f"{retries + 1} attempts of {timeout}" if retries else timeout
    field_name = "execution.retries" if retries else "execution.timeout_s"
    return (
        f"subtask {sub.seq}: {field_name}: {what} need up to {needed:g}s, but a message "
        f"may stay unacknowledged only {limit:g}s (90% of the broker's visibility "
        f"timeout, {settings.visibility_timeout_s:g}s); lower execution.timeout_s or "
        "retries, or raise BATCHQ_VISIBILITY_TIMEOUT_S (visibility_timeout_s in batchq.toml)"
    )
