"""Render the Markdown prompt a CLI agent (a coding-agent CLI) receives for a subtask.

The prompt is self-contained — title, feature, the shared session context, acceptance
criteria, deliverables, and the text of each context/reference file — so a CLI that
starts with an empty conversation knows what to do and when it is done.

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

from batchq.core.paths import PathError, is_protected, normalise
from batchq.files.reading import NotRegular, open_regular
from batchq.models import FileRef, Subtask

__all__ = ["FILE_CAP_BYTES", "parse_line_ranges", "render_prompt"]

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
    subtask: Subtask,
    feature_name: str,
    context: str,
    workspace: Path,
    protected: Sequence[str],
) -> str:
    """The Markdown prompt for ``subtask``; see the module docstring for what is read."""
    out: list[str] = [f"# Subtask {subtask.seq}: {subtask.title}", ""]
    out += [f"- Feature: `{feature_name}`", f"- Subtask id: `{subtask.id}`"]
    out += [f"- Workspace (project root): `{workspace}`", ""]
    out += [
        "You are one of several agents working on this feature in parallel. Work only "
        "inside the workspace, create or change only the deliverables listed below, and "
        "finish when every acceptance criterion holds.",
        "",
    ]
    if context.strip():
        out += ["## Session context", "", context.strip(), ""]
    out += ["## Acceptance criteria", ""]
    out += [f"- {item}" for item in subtask.acceptance_criteria]
    out += ["", "## Deliverables", ""]
    out += [f"- `{item}`" for item in subtask.deliverables]
    out.append("")
    for heading, entries in (
        ("Context files", subtask.context_files),
        ("Reference files", subtask.reference_files),
    ):
        if entries:
            out += [f"## {heading}", ""]
            for entry in entries:
                out += _file_section(entry, workspace, protected)
    return "\n".join(out).rstrip("\n") + "\n"


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
