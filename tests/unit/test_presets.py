"""Coding-agent presets: ``[agents.NAME] preset = ...`` expands to the CLI's command
line, the network and its API-key names; the table's own values win."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchq.agents.cli import PLACEHOLDERS, build_argv, template_fields
from batchq.errors import SpecError
from batchq.presets import PRESETS
from batchq.protocol import agent_queue
from batchq.settings import Settings, load_settings

PROMPT = "/work space/.tmp/tasks/f/.batchq/logs/r1/01.prompt.md"
EXPECTED = {
    "opencode": [
        "opencode",
        "run",
        "Carry out the task described in the attached file.",
        "--file",
        PROMPT,
    ],
    "claude": [
        "sh",
        "-c",
        'exec claude -p --permission-mode acceptEdits "Carry out the task given on standard '
        'input." < "$1"',
        "claude",
        PROMPT,
    ],
    "codex": [
        "sh",
        "-c",
        'exec codex exec --sandbox workspace-write --skip-git-repo-check - < "$1"',
        "codex",
        PROMPT,
    ],
    "aider": ["aider", "--message-file", PROMPT, "--yes-always", "--no-auto-commits"],
    "gemini": [
        "sh",
        "-c",
        'exec gemini --approval-mode auto_edit -p "Carry out the task given on standard '
        'input." < "$1"',
        "gemini",
        PROMPT,
    ],
}


def test_every_documented_preset_is_defined() -> None:
    assert set(PRESETS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_preset_expands_to_its_cli_command_line(name: str) -> None:
    config = Settings(agents={"Coder": {"preset": name}}).agents["Coder"]
    assert config.command is not None
    assert set(template_fields(config.command)) <= PLACEHOLDERS
    argv = build_argv(config.command, dict.fromkeys(PLACEHOLDERS, "x") | {"prompt_file": PROMPT})
    assert argv == EXPECTED[name]
    assert config.network is True
    assert config.max_concurrency == PRESETS[name].max_concurrency
    assert config.env == list(PRESETS[name].env)
    assert all(key.isupper() for key in config.env)


def test_a_hostile_prompt_path_stays_one_argument() -> None:
    config = Settings(agents={"C": {"preset": "codex"}}).agents["C"]
    assert config.command is not None
    path = "/w/$(rm -rf ~)\"; x'.md"
    argv = build_argv(config.command, {"prompt_file": path})
    assert argv[-1] == path
    assert len(argv) == 5


def test_the_table_wins_over_its_preset_and_env_adds_to_it() -> None:
    config = Settings(
        agents={
            "C": {
                "preset": "claude",
                "command": "claude -p --model opus {prompt_file}",
                "network": False,
                "max_concurrency": 5,
                "env": ["ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY"],
            }
        }
    ).agents["C"]
    assert config.command == "claude -p --model opus {prompt_file}"
    assert config.network is False
    assert config.max_concurrency == 5
    assert config.env == ["ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_BASE_URL"]


def test_an_unknown_preset_names_the_file_and_the_known_ones(tmp_path: Path) -> None:
    (tmp_path / "batchq.toml").write_text('[agents.Coder]\npreset = "cursor"\n')
    with pytest.raises(SpecError) as caught:
        load_settings(tmp_path)
    message = str(caught.value)
    assert "batchq.toml" in message
    assert "cursor" in message
    assert "opencode" in message
    assert caught.value.exit_code == 2


def test_a_preset_agent_gets_a_queue_like_any_configured_cli() -> None:
    # lazy: celery is only needed here
    from batchq.local.connection import all_queues

    settings = Settings(agents={"Reviewer": {"preset": "gemini"}})
    assert agent_queue("Reviewer") in all_queues(settings)
