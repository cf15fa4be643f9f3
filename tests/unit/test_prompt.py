"""Prompt rendering: what goes into a CLI agent's prompt, and what never does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from batchq.agents.prompt import FILE_CAP_BYTES, parse_line_ranges, render_prompt
from batchq.models import Subtask
from batchq.settings import DEFAULT_PROTECTED


def make_subtask(**fields: Any) -> Subtask:
    data: dict[str, Any] = {
        "id": "feat-04",
        "seq": "04",
        "title": "Implement auth service",
        "acceptance_criteria": ["login works", "tests pass"],
        "deliverables": ["src/auth.py", "tests/"],
    }
    data.update(fields)
    return Subtask.model_validate(data)


def render(subtask: Subtask, workspace: Path, context: str = "") -> str:
    return render_prompt(subtask, "auth-system", context, workspace, list(DEFAULT_PROTECTED))


def numbered(n: int) -> str:
    return "".join(f"line {i}\n" for i in range(1, n + 1))


@pytest.mark.parametrize(
    ("spec", "ranges"),
    [("10-50", [(10, 50)]), ("7", [(7, 7)]), ("10-", [(10, None)]), ("1-2, 5-6", [(1, 2), (5, 6)])],
)
def test_line_ranges_parse(spec: str, ranges: list[tuple[int, int | None]]) -> None:
    assert parse_line_ranges(spec) == ranges


@pytest.mark.parametrize("spec", ["", "a-b", "0-3", "5-2", "1-2-3"])
def test_bad_line_ranges_are_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_line_ranges(spec)


def test_the_prompt_has_title_feature_context_criteria_and_deliverables(tmp_path: Path) -> None:
    text = render(make_subtask(), tmp_path, context="Use Postgres.\n")
    assert text.startswith("# Subtask 04: Implement auth service\n")
    assert "- Feature: `auth-system`" in text
    assert "## Session context\n\nUse Postgres.\n" in text
    assert "## Acceptance criteria\n\n- login works\n- tests pass\n" in text
    assert "## Deliverables\n\n- `src/auth.py`\n- `tests/`\n" in text


def test_a_line_range_includes_only_those_lines(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "db.py").write_text(numbered(100))
    sub = make_subtask(
        context_files=[{"path": "src/db.py", "lines": "10-12", "reason": "the schema"}]
    )
    text = render(sub, tmp_path)
    assert "### `src/db.py` (lines 10-12)" in text
    assert "Why: the schema" in text
    assert "```python\nline 10\nline 11\nline 12\n```" in text
    assert "line 9\n" not in text
    assert "line 13\n" not in text


def test_a_string_entry_includes_the_whole_file(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("hello\nworld\n")
    text = render(make_subtask(reference_files=["notes.md"]), tmp_path)
    assert "## Reference files" in text
    assert "```markdown\nhello\nworld\n```" in text


@pytest.mark.parametrize("name", [".env", "config/.env.local", "certs/server.key", ".git/config"])
def test_protected_files_are_never_read(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("SECRET=hunter2\n")
    text = render(make_subtask(context_files=[name]), tmp_path)
    assert "hunter2" not in text
    assert "protected path: not included" in text


def test_a_symlink_to_a_protected_file_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SECRET=hunter2\n")
    (tmp_path / "innocent.txt").symlink_to(tmp_path / ".env")
    text = render(make_subtask(context_files=["innocent.txt"]), tmp_path)
    assert "hunter2" not in text


@pytest.mark.parametrize("name", ["../outside.txt", "/etc/hostname"])
def test_paths_outside_the_workspace_are_not_read(tmp_path: Path, name: str) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (tmp_path / "outside.txt").write_text("private\n")
    text = render(make_subtask(context_files=[name]), workspace)
    assert "private" not in text
    assert "not read:" in text


def test_a_symlink_out_of_the_workspace_is_not_followed(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (tmp_path / "outside.txt").write_text("private\n")
    (workspace / "link.txt").symlink_to(tmp_path / "outside.txt")
    text = render(make_subtask(context_files=["link.txt"]), workspace)
    assert "private" not in text
    assert "resolves outside the workspace" in text


def test_a_missing_file_is_noted_not_fatal(tmp_path: Path) -> None:
    text = render(make_subtask(context_files=["docs/missing.md"]), tmp_path)
    assert "### `docs/missing.md`" in text
    assert "missing: the file does not exist" in text


def test_a_big_file_is_capped_with_a_note(tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_text("x" * (FILE_CAP_BYTES * 3))
    text = render(make_subtask(context_files=["big.txt"]), tmp_path)
    assert text.count("x") <= FILE_CAP_BYTES + 10
    assert "cut at 64 KiB" in text


def test_a_binary_file_is_left_out(tmp_path: Path) -> None:
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02binary")
    text = render(make_subtask(context_files=["blob.bin"]), tmp_path)
    assert "binary file: not included" in text


def test_an_invalid_range_shows_the_whole_file_with_a_note(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(numbered(3))
    text = render(make_subtask(context_files=[{"path": "a.txt", "lines": "x-y"}]), tmp_path)
    assert "line 1\nline 2\nline 3" in text
    assert "invalid line range" in text


def test_backticks_in_a_file_do_not_break_the_fence(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("```bash\nls\n```\n")
    text = render(make_subtask(context_files=["README.md"]), tmp_path)
    assert "````markdown\n```bash\nls\n```\n````" in text
