"""The one template a CLI (coding) agent's prompt is rendered from, and its overrides.

The built-in :data:`DEFAULT_TEMPLATE` is Markdown with ``{placeholder}`` fields that
:func:`batchq.agents.prompt.render_prompt` fills (``{{``/``}}`` are literal braces).
An agent may bring its own, a file relative to the project root::

    [agents.CoderAgent]
    command = "opencode run --agent {agent} --prompt-file {prompt_file}"
    prompt_template = "docs/agent-prompt.md"

A template is checked before anything is enqueued (``batch``/``run`` pre-flight) and
again on the worker: the file must stay inside the root, must not be a protected path
(``.tmp/tasks/``, ``*.env*``… — neither by its name nor where a symlink leads), must be
a regular UTF-8 file of at most :data:`TEMPLATE_CAP_BYTES`, may use only
:data:`PLACEHOLDERS`, and must contain ``{completion}``: that paragraph is the contract
that batchq, not the agent, records completion, and how the agent's summary is read.
"""

from __future__ import annotations

import string
from pathlib import Path

from batchq.core.paths import PathError, is_protected, normalise
from batchq.errors import PolicyError
from batchq.files.reading import NotRegular, open_regular
from batchq.settings import Settings

__all__ = [
    "DEFAULT_TEMPLATE",
    "PLACEHOLDERS",
    "REQUIRED",
    "TEMPLATE_CAP_BYTES",
    "check_template",
    "load_template",
]

TEMPLATE_CAP_BYTES = 64 * 1024
"""Largest template file accepted: a template is instructions, not a document."""

PLACEHOLDERS: dict[str, str] = {
    "feature": "the feature's folder name (task.json `id`)",
    "feature_name": "task.json `name`",
    "objective": "task.json `objective`",
    "subtask_id": "the subtask's `id`",
    "seq": "the subtask's `seq`",
    "title": "the subtask's `title`",
    "subtask_file": "the subtask's file, relative to the workspace",
    "batch": "the batch number",
    "batch_line": 'e.g. "Batch 1 running in parallel with subtasks 02 and 03."',
    "siblings": "the batch's other members with their deliverables, one per line",
    "session_context": "the shared session context (`--context FILE`)",
    "acceptance_criteria": "the acceptance criteria, one per line",
    "deliverables": "the deliverables, one per line",
    "context_files": "each context file with its line range, reason and text",
    "reference_files": "each reference file, likewise",
    "verify": "what batchq checks afterwards: the deliverables and `execution.verify`",
    "workspace": "the workspace (project root) path",
    "run_id": "the run's id",
    "completion": "how completion is recorded and the `SUMMARY:` line (required)",
}
"""Every field a template may use, with what it holds (the README lists them too)."""

REQUIRED: frozenset[str] = frozenset({"completion"})

DEFAULT_TEMPLATE = """\
# Subtask {seq}: {title}

You are a coding agent, delegated one subtask of a feature by batchq. Work only inside
the workspace, create or change only the deliverables listed below, and finish when
every acceptance criterion holds.

- Feature: `{feature}` ({feature_name})
- Objective: {objective}
- Subtask: `{subtask_id}` (seq {seq}), defined in `{subtask_file}`
- {batch_line}
- Workspace (project root): `{workspace}`

## Running beside you

Other agents work on these subtasks at the same time, in the same workspace. Do not
create, change or delete their deliverables:

{siblings}

## Session context

{session_context}

## Acceptance criteria

{acceptance_criteria}

## Deliverables

{deliverables}

## Verification

{verify}

## Context files

{context_files}

## Reference files

{reference_files}

## Completion

{completion}
"""


def check_template(text: str) -> None:
    """Raise ValueError unless ``text`` is a usable template: balanced braces, bare
    known placeholder names only, and every :data:`REQUIRED` one present."""
    used: set[str] = set()
    for _, name, spec, conversion in string.Formatter().parse(text):
        if name is None:
            continue
        if not name or spec or conversion or not name.isidentifier():
            raise ValueError(f"placeholder {{{name}}} must be a bare name like {{title}}")
        if name not in PLACEHOLDERS:
            known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
            raise ValueError(f"unknown placeholder {{{name}}}; known: {known}")
        used.add(name)
    missing = sorted(REQUIRED - used)
    if missing:
        raise ValueError(
            f"missing {', '.join('{' + m + '}' for m in missing)}: the completion paragraph "
            "tells the agent that batchq records completion and how its summary is read"
        )


check_template(DEFAULT_TEMPLATE)  # the built-in template obeys its own rules


def load_template(agent: str, settings: Settings, workspace: Path) -> str:
    """The template of ``agent``: its ``prompt_template`` file, else the built-in one.
    Raises :class:`PolicyError` naming the setting and the file when it is unusable."""
    config = settings.agents.get(agent)
    if config is None or config.prompt_template is None:
        return DEFAULT_TEMPLATE
    where = f"agents.{agent}.prompt_template: {config.prompt_template}"
    try:
        raw = _read(config.prompt_template, workspace, settings.protected_paths)
        text = raw.decode("utf-8")
        check_template(text)
    except UnicodeDecodeError:
        raise PolicyError(agent, f"{where}: not UTF-8 text") from None
    except ValueError as exc:
        raise PolicyError(agent, f"{where}: {exc}") from None
    return text


def _read(name: str, workspace: Path, protected: list[str]) -> bytes:
    """The template file's bytes; ValueError saying why it may not be used."""
    try:
        rel = normalise(name)
        pattern = is_protected(rel, protected)
    except PathError as exc:
        raise ValueError(f"{exc.reason}; expected a path relative to the project root") from None
    if pattern:
        raise ValueError(f"a protected path (pattern {pattern}) cannot be a template")
    root = workspace.resolve()
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        raise ValueError("resolves outside the project root")
    target = path.relative_to(root).as_posix()
    if path != root and (pattern := is_protected(target, protected)):
        raise ValueError(f"leads to the protected path {target} (pattern {pattern})")
    try:
        with open_regular(path, max_links=1) as handle:
            data = handle.read(TEMPLATE_CAP_BYTES + 1)
    except NotRegular as exc:
        raise ValueError(f"not a regular file: {exc.strerror}") from None
    except FileNotFoundError:
        raise ValueError(f"no such file under {root}") from None
    except OSError as exc:
        raise ValueError(f"cannot read: {exc.strerror or exc}") from None
    if len(data) > TEMPLATE_CAP_BYTES:
        raise ValueError(f"over {TEMPLATE_CAP_BYTES // 1024} KiB")
    return data
