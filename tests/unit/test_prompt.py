"""Prompt rendering: what goes into a CLI agent's prompt, and what never does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from batchq.agents import Delegation
from batchq.agents.prompt import FILE_CAP_BYTES, parse_line_ranges, render_prompt
from batchq.models import BatchMember, Subtask
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


def delegation(subtask: Subtask, workspace: Path, context: str = "", **brief: Any) -> Delegation:
    return Delegation(
        feature="auth-system",
        run_id="run-1",
        batch=2,
        subtask=subtask,
        workspace=workspace,
        context=context,
        log_path=workspace / "04.log",
        timeout_s=60,
        **brief,
    )


def render(subtask: Subtask, workspace: Path, context: str = "", **brief: Any) -> str:
    return render_prompt(delegation(subtask, workspace, context, **brief), list(DEFAULT_PROTECTED))


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
    text = render(
        make_subtask(),
        tmp_path,
        context="Use Postgres.\n",
        feature_name="Authentication System",
        objective="Add login",
        subtask_file=".tmp/tasks/auth-system/subtask_04.json",
    )
    assert text.startswith("# Subtask 04: Implement auth service\n")
    assert "- Feature: `auth-system` (Authentication System)" in text
    assert "- Objective: Add login\n" in text
    assert (
        "- Subtask: `feat-04` (seq 04), defined in `.tmp/tasks/auth-system/subtask_04.json`" in text
    )
    assert f"- Workspace (project root): `{tmp_path}`" in text
    assert "## Session context\n\nUse Postgres.\n" in text
    assert "## Acceptance criteria\n\n- login works\n- tests pass\n" in text
    assert "## Deliverables\n\n- `src/auth.py`\n- `tests/`\n" in text


def test_without_a_brief_the_prompt_says_so_instead_of_leaving_holes(tmp_path: Path) -> None:
    """An old producer's message has no objective or siblings: the prompt says none."""
    text = render(make_subtask(), tmp_path)
    assert "- Feature: `auth-system` (auth-system)" in text
    assert "- Objective: None given in task.json." in text
    assert "- Batch 2: no other subtask runs beside this one." in text
    assert "None: this subtask is alone in its batch." in text
    assert "## Session context\n\nNone given.\n" in text
    assert "{" not in text.replace("{{", "")


def test_siblings_are_named_with_their_deliverables(tmp_path: Path) -> None:
    siblings = (
        BatchMember(seq="02", title="Configure database", deliverables=["config/db.js"]),
        BatchMember(seq="03", title="Install deps", deliverables=["package.json", "lib/"]),
    )
    text = render(make_subtask(), tmp_path, siblings=siblings, siblings_total=2)
    assert "- Batch 2 running in parallel with subtasks 02 and 03.\n" in text
    assert "- 02 - Configure database: `config/db.js`\n" in text
    assert "- 03 - Install deps: `package.json`, `lib/`\n" in text


def test_one_sibling_and_unlisted_siblings_read_naturally(tmp_path: Path) -> None:
    one = (BatchMember(seq="07", title="Other", deliverables=["b.py"]),)
    assert "running in parallel with subtask 07." in render(
        make_subtask(), tmp_path, siblings=one, siblings_total=1
    )
    text = render(make_subtask(), tmp_path, siblings=one, siblings_total=41)
    assert "running in parallel with subtasks 07 and 40 more." in text
    assert "- … and 40 more subtasks of this batch (not listed)" in text


def test_the_completion_paragraph_keeps_the_agent_out_of_the_task_files(tmp_path: Path) -> None:
    sub = make_subtask(execution={"verify": "pytest -q"})
    text = render(sub, tmp_path, subtask_file=".tmp/tasks/auth-system/subtask_04.json")
    completion = text.split("## Completion\n\n", 1)[1]
    assert "verifies the deliverables and the verify command" in completion
    assert "marks subtask 04 completed in `.tmp/tasks/auth-system/subtask_04.json`" in completion
    assert "Do not create, edit or delete anything under `.tmp/tasks/`" in completion
    assert "`SUMMARY: added login endpoint`" in completion
    assert "`completion_summary`" in completion
    assert "then runs `pytest -q` there; it must exit 0." in text


def test_backticks_in_a_verify_command_stay_inline_code(tmp_path: Path) -> None:
    text = render(make_subtask(execution={"verify": "test `cat n` = 1"}), tmp_path)
    assert "runs ``test `cat n` = 1`` there" in text


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
