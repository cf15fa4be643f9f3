"""Reads of paths that task files or agents name cannot hang, and cannot leak a
protected file under another name (FIFOs, devices, symlinks, hard links).

Each test has a per-test timeout far above what it needs: a read that blocks (a FIFO
with no writer) or never ends (``/dev/zero``) fails the test instead of hanging CI.
No test measures time."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from batchq.agents import Delegation
from batchq.agents.prompt import render_prompt
from batchq.files.fingerprint import hash_file_set
from batchq.files.reading import NotRegular, open_regular
from batchq.models import Subtask
from batchq.settings import DEFAULT_PROTECTED

pytestmark = pytest.mark.timeout(30)


def subtask(**fields: Any) -> Subtask:
    data = {
        "id": "feat-01",
        "seq": "01",
        "title": "Read things",
        "acceptance_criteria": ["done"],
        "deliverables": ["out/"],
    }
    data.update(fields)
    return Subtask.model_validate(data)


def prompt_for(sub: Subtask, workspace: Path) -> str:
    delegation = Delegation(
        feature="feat",
        run_id="r1",
        batch=1,
        subtask=sub,
        workspace=workspace,
        context="",
        log_path=workspace / "01.log",
        timeout_s=5,
    )
    return render_prompt(delegation, DEFAULT_PROTECTED)


def test_open_regular_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(NotRegular, match="a FIFO"):
        open_regular(tmp_path / "pipe")


def test_open_regular_refuses_a_device_and_a_final_symlink(tmp_path: Path) -> None:
    with pytest.raises(NotRegular, match="a device"):
        open_regular("/dev/zero")
    (tmp_path / "z").symlink_to("/dev/zero")
    with pytest.raises(NotRegular, match="a symlink"):
        open_regular(tmp_path / "z")


def test_open_regular_can_refuse_a_second_hard_link(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SECRET=1\n")
    os.link(tmp_path / ".env", tmp_path / "notes.txt")
    with open_regular(tmp_path / "notes.txt") as handle:
        assert handle.read() == b"SECRET=1\n"
    with pytest.raises(NotRegular, match="2 hard links"):
        open_regular(tmp_path / "notes.txt", max_links=1)


def test_a_fifo_context_file_is_noted_not_read(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "ctx.md")
    prompt = prompt_for(subtask(context_files=["ctx.md"]), tmp_path)
    assert "ctx.md" in prompt
    assert "not read: not a regular file" in prompt


def test_a_hard_linked_env_file_is_never_inlined(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("BATCHQ_REDIS_URL=redis://:hunter2@db/0\n")
    os.link(tmp_path / ".env", tmp_path / "config.txt")
    prompt = prompt_for(subtask(context_files=["config.txt"]), tmp_path)
    assert "hunter2" not in prompt
    assert "hard links" in prompt


def test_fingerprinting_a_folder_with_a_link_to_dev_zero_and_a_fifo_ends(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("a")
    (out / "z").symlink_to("/dev/zero")
    os.mkfifo(out / "pipe")
    hashes = hash_file_set(tmp_path, ["out/", "out/pipe", "out/z"], DEFAULT_PROTECTED)
    assert set(hashes) == {"out/", "out/pipe", "out/z"}
    assert hashes["out/pipe"] == "not read: a FIFO"
    assert hashes["out/z"] == "outside the project: not read"
    again = hash_file_set(tmp_path, ["out/"], DEFAULT_PROTECTED)
    assert again["out/"] == hashes["out/"]
    (out / "a.txt").write_text("b")
    assert hash_file_set(tmp_path, ["out/"], DEFAULT_PROTECTED)["out/"] != hashes["out/"]


@pytest.mark.parametrize("name", ["batchq.toml", ".tmp/tasks/feat/subtask_01.json", ".git/config"])
def test_batchq_s_own_files_are_always_protected(name: str) -> None:
    from batchq.core.paths import is_protected
    from batchq.settings import Settings

    assert is_protected(name, Settings(protected_paths=["*.pem"]).protected_paths)
