"""Render the Markdown prompt a CLI agent (a coding-agent CLI) receives for a subtask.

The prompt is self-contained, so a CLI that starts with an empty conversation knows
what to do, what not to touch and when it is done. It is rendered from one template
(:mod:`batchq.agents.prompttemplate`, overridable per agent) and carries the feature's
name and objective; the subtask's id, seq, title and file; its batch and the siblings
running beside it with their deliverables; the shared session context; the text of
each context/reference file; acceptance criteria, deliverables, what is verified
afterwards, the workspace; and the completion paragraph: batchq records completion,
the agent never edits ``.tmp/tasks/`` and ends with a ``SUMMARY: …`` line.

File contents are included with care, because the prompt leaves the machine:

- protected paths (``settings.protected_paths``: ``.git/``, ``*.env*``, ``*.key``…)
  are never read, neither by the name in the task file nor by where a symlink leads;
- paths must stay inside the workspace (absolute paths and ``..`` escapes are noted,
  not read);
- ``lines: "10-50"`` (1-based, inclusive; also ``"7"``, ``"10-"`` and
  comma-separated ranges) narrows a file to those lines;
- each file is capped at :data:`FILE_CAP_BYTES`, binary files are left out, and a
  missing file is noted rather than failing the subtask.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from batchq.agents.base import Delegation
from batchq.agents.process import SUMMARY_CHARS, SUMMARY_MARKER
from batchq.agents.prompttemplate import DEFAULT_TEMPLATE
from batchq.core.paths import PathError, is_protected, normalise
from batchq.files.reading import NotRegular, open_regular
from batchq.layout import TASKS_DIR
from batchq.models import BatchMember, FileRef

__all__ = ["FILE_CAP_BYTES", "parse_line_ranges", "prompt_fields", "render_prompt"]

FILE_CAP_BYTES = 64 * 1024
"""Most of one file that goes into a prompt; the rest is replaced by a note."""

_RANGE = re.compile(r"^\s*(\d+)\s*(?:(-)\s*(\d*)\s*)?$")


def parse_line_ranges(spec: str) -> list[tuple[int, int | None]]:
    """``"10-50"`` -> ``[(10, 50)]``; ``"7"`` -> ``[(7, 7)]``; ``"10-"`` -> ``[(10, None)]``;
    comma-separated ranges are allowed. Raises ValueError for anything else."""
    ranges: list[tuple[int, int | None]] = []
    for part in spec.split(","):
        match = _RANGE.match(part)
        if not match:
            raise ValueError(f"invalid line range {spec!r}; expected e.g. '10-50'")
        start = int(match.group(1))
        end: int | None = start
        if match.group(2):
            end = int(match.group(3)) if match.group(3) else None
        if start < 1 or (end is not None and end < start):
            raise ValueError(f"invalid line range {spec!r}; expected 1 <= start <= end")
        ranges.append((start, end))
    return ranges


def render_prompt(
    delegation: Delegation, protected: Sequence[str], template: str = DEFAULT_TEMPLATE
) -> str:
    """The Markdown prompt for ``delegation``, from a template already checked by
    :func:`~batchq.agents.prompttemplate.check_template`."""
    text = template.format_map(prompt_fields(delegation, protected))
    return text.rstrip("\n") + "\n"


def prompt_fields(delegation: Delegation, protected: Sequence[str]) -> dict[str, str]:
    """Every template placeholder's text for ``delegation`` (see ``PLACEHOLDERS``)."""
    sub = delegation.subtask
    workspace = delegation.workspace
    verify = sub.execution.verify if sub.execution else None
    return {
        "feature": delegation.feature,
        "feature_name": delegation.feature_name or delegation.feature,
        "objective": delegation.objective or "None given in task.json.",
        "subtask_id": sub.id,
        "seq": sub.seq,
        "title": sub.title,
        "subtask_file": delegation.subtask_file,
        "batch": str(delegation.batch),
        "batch_line": _batch_line(delegation),
        "siblings": _siblings(delegation),
        "session_context": delegation.context.strip() or "None given.",
        "acceptance_criteria": "\n".join(f"- {item}" for item in sub.acceptance_criteria),
        "deliverables": "\n".join(f"- {_code(item)}" for item in sub.deliverables),
        "context_files": _files(sub.context_files, workspace, protected),
        "reference_files": _files(sub.reference_files, workspace, protected),
        "verify": _verify(verify),
        "workspace": str(workspace),
        "run_id": delegation.run_id,
        "completion": _completion(delegation, verify),
    }


def _others(delegation: Delegation) -> tuple[list[str], int]:
    """The listed siblings' seqs and how many more the batch has beyond them."""
    listed = [m.seq for m in delegation.siblings]
    return listed, max(delegation.siblings_total - len(listed), 0)


def _batch_line(delegation: Delegation) -> str:
    listed, more = _others(delegation)
    if not listed and not more:
        return f"Batch {delegation.batch}: no other subtask runs beside this one."
    names = [*listed, f"{more} more"] if more else listed
    joined = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    word = "subtask" if len(listed) + more == 1 else "subtasks"
    return f"Batch {delegation.batch} running in parallel with {word} {joined}."


def _siblings(delegation: Delegation) -> str:
    listed, more = _others(delegation)
    if not listed and not more:
        return "None: this subtask is alone in its batch."
    lines = [_sibling(member) for member in delegation.siblings]
    if more:
        lines.append(f"- … and {more} more subtasks of this batch (not listed)")
    return "\n".join(lines)


def _sibling(member: BatchMember) -> str:
    paths = ", ".join(_code(p) for p in member.deliverables) or "no deliverables"
    return f"- {member.seq} - {member.title}: {paths}"


def _files(entries: Sequence[str | FileRef], workspace: Path, protected: Sequence[str]) -> str:
    if not entries:
        return "None."
    out: list[str] = []
    for entry in entries:
        out += _file_section(entry, workspace, protected)
    return "\n".join(out).rstrip("\n")


def _verify(verify: str | None) -> str:
    text = "When you finish, batchq checks that every deliverable exists in the workspace"
    if verify:
        return f"{text}, then runs {_code(verify)} there; it must exit 0."
    return f"{text}; there is no verify command."


def _completion(delegation: Delegation, verify: str | None) -> str:
    checks = "the deliverables and the verify command" if verify else "the deliverables"
    tasks = TASKS_DIR.as_posix() + "/"
    return (
        f"batchq, not you, records this subtask's completion: after you exit it verifies "
        f"{checks} and marks subtask {delegation.subtask.seq} completed in "
        f"{_code(delegation.subtask_file)}. Do not create, edit or delete anything under "
        f"{_code(tasks)} (this subtask's file, `task.json`, the other subtasks), and do not "
        f"run a task CLI to mark the subtask complete: batchq is the only writer of those "
        f"files. End by printing one line that starts with `{SUMMARY_MARKER}` and says in "
        f"at most {SUMMARY_CHARS} characters what you did, e.g. "
        f"`{SUMMARY_MARKER} added login endpoint`; batchq records the text after the last "
        f"such line as the subtask's `completion_summary` (without one, your last output "
        f"line)."
    )


def _code(text: str) -> str:
    """``text`` as Markdown inline code, whatever backticks it holds."""
    fence = "`" * (_longest_backtick_run(text) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _file_section(entry: str | FileRef, workspace: Path, protected: Sequence[str]) -> list[str]:
    ref = FileRef(path=entry) if isinstance(entry, str) else entry
    label = f"### `{ref.path}`" + (f" (lines {ref.lines})" if ref.lines else "")
    lines = [label, ""]
    if ref.reason:
        lines += [f"Why: {ref.reason}", ""]
    body, note = _read(ref, workspace, protected)
    if body is not None:
        fence = "`" * max(3, _longest_backtick_run(body) + 1)
        lines += [fence + _language(ref.path), body.rstrip("\n"), fence]
    if note:
        lines += [f"_{note}_"]
    return [*lines, ""]


def _read(ref: FileRef, workspace: Path, protected: Sequence[str]) -> tuple[str | None, str]:
    """The text to include and a note about it; ``(None, reason)`` when not read."""
    try:
        name = normalise(ref.path)
        if is_protected(name, protected):
            return None, "protected path: not included"
    except PathError as exc:
        return None, f"not read: {exc.reason}"
    root = workspace.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        return None, "not read: resolves outside the workspace"
    if path != root and is_protected(path.relative_to(root).as_posix(), protected):
        return None, "protected path: not included"
    if path.is_dir():
        return None, "a folder: its files are not inlined"
    if not path.is_file():
        if path.exists():  # a FIFO, device or socket: reading it could block forever
            return None, "not read: not a regular file"
        return None, "missing: the file does not exist (yet)"
    ranges: list[tuple[int, int | None]] | None = None
    note = ""
    if ref.lines:
        try:
            ranges = parse_line_ranges(ref.lines)
        except ValueError as exc:
            note = f"{exc}; the whole file is shown"
    try:
        # One link at most: a hard link is another name of a file, perhaps a protected one.
        with open_regular(path, max_links=1) as handle:
            if b"\0" in handle.read(8192):
                return None, "binary file: not included"
            handle.seek(0)
            text, capped = _collect(handle, ranges)
    except NotRegular as exc:
        return None, f"not read: {exc.strerror}"
    except OSError as exc:
        return None, f"not readable: {exc.strerror or exc}"
    if capped:
        note = (note + "; " if note else "") + f"cut at {FILE_CAP_BYTES // 1024} KiB"
    return text, note


def _collect(handle: BinaryIO, ranges: list[tuple[int, int | None]] | None) -> tuple[str, bool]:
    """Lines of the file in ``ranges`` (all when None), at most :data:`FILE_CAP_BYTES`.

    Reads in bounded pieces, so a huge one-line file costs no more than the cap."""
    ends = [end for _, end in ranges or ()]
    last = None if ranges is None or None in ends else max(e for e in ends if e is not None)
    kept: list[bytes] = []
    size = 0
    number = 1
    while last is None or number <= last:
        piece = handle.readline(FILE_CAP_BYTES + 1)
        if not piece:
            break
        wanted = ranges is None or any(
            start <= number and (end is None or number <= end) for start, end in ranges
        )
        if piece.endswith(b"\n"):
            number += 1
        if not wanted:
            continue
        if size + len(piece) > FILE_CAP_BYTES:
            kept.append(piece[: FILE_CAP_BYTES - size])
            return b"".join(kept).decode("utf-8", errors="replace"), True
        kept.append(piece)
        size += len(piece)
    return b"".join(kept).decode("utf-8", errors="replace"), False


def _longest_backtick_run(text: str) -> int:
    return max((len(run) for run in re.findall(r"`+", text)), default=0)


_LANGUAGES = {
    ".py": "python",
    ".js": "javascript",
    ".ts": "typescript",
    ".tsx": "tsx",
    ".json": "json",
    ".md": "markdown",
    ".sh": "bash",
    ".toml": "toml",
    ".yml": "yaml",
    ".yaml": "yaml",
    ".go": "go",
    ".rs": "rust",
    ".sql": "sql",
    ".html": "html",
    ".css": "css",
}


def _language(path: str) -> str:
    return _LANGUAGES.get(Path(path).suffix.lower(), "")
