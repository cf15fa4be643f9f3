"""The prompt template: the built-in one, an agent's own file, and what is refused."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from batchq.agents import Delegation
from batchq.agents.cli import CliAgent
from batchq.agents.prompt import render_prompt
from batchq.agents.prompttemplate import (
    DEFAULT_TEMPLATE,
    PLACEHOLDERS,
    TEMPLATE_CAP_BYTES,
    check_template,
    load_template,
)
from batchq.errors import PolicyError
from batchq.models import Subtask
from batchq.run.preflight import agent_problems
from batchq.settings import Settings

OWN = "Do {title} ({seq}) in {workspace}.\n\n{completion}\n"


def settings_with(template: str | None, **extra: Any) -> Settings:
    agent = {"command": "run {prompt_file}", "prompt_template": template}
    return Settings(agents={"CoderAgent": agent}, **extra)


def make_subtask() -> Subtask:
    return Subtask.model_validate(
        {
            "id": "feat-02",
            "seq": "02",
            "title": "Write the result",
            "suggested_agent": "CoderAgent",
            "acceptance_criteria": ["it exists"],
            "deliverables": ["src/result.txt"],
        }
    )


def test_every_placeholder_is_filled_by_the_renderer(tmp_path: Path) -> None:
    """A template using every documented field renders without a KeyError or a hole."""
    template = "\n".join("{" + name + "}" for name in PLACEHOLDERS)
    check_template(template)
    delegation = Delegation(
        feature="feat",
        run_id="r1",
        batch=1,
        subtask=make_subtask(),
        workspace=tmp_path,
        context="",
        log_path=tmp_path / "02.log",
        timeout_s=5,
    )
    text = render_prompt(delegation, [], template)
    assert "{" not in text
    assert text.splitlines()[0] == "feat"


def test_no_override_means_the_built_in_template(tmp_path: Path) -> None:
    assert load_template("CoderAgent", settings_with(None), tmp_path) == DEFAULT_TEMPLATE
    assert load_template("Unconfigured", Settings(), tmp_path) == DEFAULT_TEMPLATE


def test_an_agents_own_template_is_read_from_the_root(tmp_path: Path) -> None:
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "coder.md").write_text(OWN)
    text = load_template("CoderAgent", settings_with("prompts/coder.md"), tmp_path)
    assert text == OWN


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{title} {bogus} {completion}", r"unknown placeholder \{bogus\}"),
        ("{title!r} {completion}", "must be a bare name"),
        ("{title.upper} {completion}", "must be a bare name"),
        ("{title:>9} {completion}", "must be a bare name"),
        ("{title", "expected '}' before end of string"),
        ("Just {title}", r"missing \{completion\}"),
    ],
)
def test_a_bad_template_file_is_refused_naming_the_setting(
    tmp_path: Path, template: str, message: str
) -> None:
    (tmp_path / "t.md").write_text(template)
    with pytest.raises(PolicyError, match=message) as info:
        load_template("CoderAgent", settings_with("t.md"), tmp_path)
    assert "agents.CoderAgent.prompt_template: t.md" in str(info.value)


@pytest.mark.parametrize(
    "name", [".tmp/tasks/feat/prompt.md", "config/.env.md", ".git/prompt.md", "batchq.toml"]
)
def test_a_protected_template_is_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text(OWN)
    with pytest.raises(PolicyError, match="a protected path"):
        load_template("CoderAgent", settings_with(name), tmp_path)


def test_a_symlink_to_a_protected_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".tmp" / "tasks").mkdir(parents=True)
    (tmp_path / ".tmp" / "tasks" / "t.md").write_text(OWN)
    (tmp_path / "innocent.md").symlink_to(tmp_path / ".tmp" / "tasks" / "t.md")
    with pytest.raises(PolicyError, match=r"leads to the protected path \.tmp/tasks/t\.md"):
        load_template("CoderAgent", settings_with("innocent.md"), tmp_path)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("/etc/hostname", "expected a path relative to the project root"),
        ("../outside.md", "expected a path relative to the project root"),
        ("missing.md", "no such file"),
        ("folder", "not a regular file: a folder"),
    ],
)
def test_a_template_outside_the_root_or_missing_is_refused(
    tmp_path: Path, name: str, message: str
) -> None:
    root = tmp_path / "root"
    (root / "folder").mkdir(parents=True)
    (tmp_path / "outside.md").write_text(OWN)
    with pytest.raises(PolicyError, match=message):
        load_template("CoderAgent", settings_with(name), root)


def test_a_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside.md").write_text(OWN)
    (root / "link.md").symlink_to(tmp_path / "outside.md")
    with pytest.raises(PolicyError, match="resolves outside the project root"):
        load_template("CoderAgent", settings_with("link.md"), root)


def test_a_fifo_a_huge_file_and_bytes_that_are_not_utf8_are_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.md")
    with pytest.raises(PolicyError, match="not a regular file: a FIFO"):
        load_template("CoderAgent", settings_with("pipe.md"), tmp_path)
    (tmp_path / "huge.md").write_text(OWN + "x" * TEMPLATE_CAP_BYTES)
    with pytest.raises(PolicyError, match="over 64 KiB"):
        load_template("CoderAgent", settings_with("huge.md"), tmp_path)
    (tmp_path / "latin1.md").write_bytes(OWN.encode() + b"\xe9t\xe9")
    with pytest.raises(PolicyError, match="not UTF-8 text"):
        load_template("CoderAgent", settings_with("latin1.md"), tmp_path)


def test_a_hard_link_to_a_protected_file_is_refused_as_a_template(tmp_path: Path) -> None:
    """Another name of ``.env`` would put its secrets into every prompt."""
    (tmp_path / ".env").write_text("{completion} SECRET=hunter2\n")
    os.link(tmp_path / ".env", tmp_path / "prompt.md")
    with pytest.raises(PolicyError, match="2 hard links"):
        load_template("CoderAgent", settings_with("prompt.md"), tmp_path)


def test_pre_flight_refuses_a_bad_template_before_anything_is_enqueued(tmp_path: Path) -> None:
    settings = settings_with("missing.md")
    (problem,) = agent_problems([make_subtask()], settings, tmp_path)
    assert isinstance(problem, PolicyError)
    assert "prompt_template: missing.md: no such file" in str(problem)
    (tmp_path / "missing.md").write_text(OWN)
    assert agent_problems([make_subtask()], settings, tmp_path) == []


def test_the_worker_fails_the_subtask_on_a_bad_template_without_running_it(
    tmp_path: Path,
) -> None:
    """The worker checks again: a forged or stale message cannot bring in a protected file."""
    marker = tmp_path / "ran"
    settings = Settings(
        agents={"CoderAgent": {"command": f"touch {marker}", "prompt_template": ".env.prompt.md"}}
    )
    (tmp_path / ".env.prompt.md").write_text(OWN)
    delegation = Delegation(
        feature="feat",
        run_id="r1",
        batch=1,
        subtask=make_subtask(),
        workspace=tmp_path,
        context="",
        log_path=tmp_path / "logs" / "02.log",
        timeout_s=5,
    )
    outcome = CliAgent("CoderAgent", settings).run(delegation, lambda: False)
    assert not outcome.ok
    assert outcome.error_type == "PolicyError"
    assert "a protected path" in (outcome.error or "")
    assert not marker.exists()
