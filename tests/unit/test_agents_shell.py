"""The shell agent: allow-list parsing, env rules, and real bash runs (no Redis, no Celery)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from batchq.agents import Delegation, agent_for
from batchq.agents.policy import agent_env, check_line
from batchq.agents.process import run_process, summary_line
from batchq.agents.shell import ShellAgent
from batchq.errors import PolicyError
from batchq.models import Subtask
from batchq.procs import group_members
from batchq.settings import Settings


def make_subtask(seq: str = "03", **execution: Any) -> Subtask:
    return Subtask.model_validate(
        {
            "id": f"feat-{seq}",
            "seq": seq,
            "title": "Do the thing",
            "suggested_agent": "shell",
            "acceptance_criteria": ["it is done"],
            "deliverables": ["out.txt"],
            "execution": execution,
        }
    )


def shell(*patterns: str) -> ShellAgent:
    return ShellAgent("shell", Settings(shell_allow=list(patterns)))


def delegation(tmp_path: Path, subtask: Subtask, timeout_s: float = 60.0) -> Delegation:
    workspace = tmp_path / "ws"
    workspace.mkdir(exist_ok=True)
    return Delegation(
        feature="feat",
        run_id="run1",
        batch=1,
        subtask=subtask,
        workspace=workspace,
        context="shared context",
        log_path=tmp_path / "logs" / f"{subtask.seq}.log",
        timeout_s=timeout_s,
    )


def never() -> bool:
    return False


def wait_group_reaped(pgid: int) -> None:
    """The group is gone once init has reaped its killed orphans (on its own clock)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.killpg(pgid, 0)


# --- the allow-list ----------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "echo hi",
        "echo 'a; rm -rf x'",
        'echo "a && rm x | sh"',
        "echo a\\;rm",
        "echo a 2>&1",
        "FOO=bar echo hi",
        'FOO="a b" BAR=1 echo hi && echo there',
        "echo a # ; rm x",
    ],
)
def test_allowed_lines_pass(line: str) -> None:
    shell("echo *").check(make_subtask(command=line))


@pytest.mark.parametrize(
    ("line", "segment"),
    [
        ("echo hi; rm -rf x", "rm -rf x"),
        ("echo a && rm x", "rm x"),
        ("echo a || rm x", "rm x"),
        ("echo a | sh", "sh"),
        ("echo a\nrm x", "rm x"),
    ],
)
def test_every_simple_command_must_match_a_pattern(line: str, segment: str) -> None:
    with pytest.raises(PolicyError) as info:
        shell("echo *").check(make_subtask(command=line))
    assert str(info.value) == (
        f"subtask 03: execution.command: {segment!r} is not allowed by the shell "
        "allow-list (patterns: 'echo *')"
    )
    assert info.value.subject == "03"


@pytest.mark.parametrize(
    ("line", "construct"),
    [
        ("echo a & rm x", "a background '&'"),
        ("FOO=1", "the bare assignment 'FOO=1'"),
        ("(echo a)", "a subshell"),
        ("echo () ( touch X ); echo hi", "function"),
    ],
)
def test_constructs_outside_the_grammar_are_refused_by_name(line: str, construct: str) -> None:
    with pytest.raises(PolicyError) as info:
        shell("echo *").check(make_subtask(command=line))
    assert construct in str(info.value)
    assert str(info.value).endswith("(patterns: 'echo *')")


def test_a_single_quoted_substitution_is_data() -> None:
    shell("echo *").check(make_subtask(command="echo '$(rm x)'"))


@pytest.mark.parametrize(
    "line",
    [
        "echo $(rm x)",
        "echo `rm x`",
        'echo "$(rm x)"',
        "echo $\\(rm x\\)",
        "cat <(rm x)",
        "echo a > >(sh)",
        "cat <<EOF\nrm x\nEOF",
        "echo ${x@P}",
    ],
)
def test_substitution_is_refused_unless_everything_is_allowed(line: str) -> None:
    with pytest.raises(PolicyError, match="refused"):
        shell("echo *", "cat *").check(make_subtask(command=line))
    shell("*").check(make_subtask(command=line))


def test_the_default_empty_list_allows_nothing_and_says_how_to_configure() -> None:
    with pytest.raises(PolicyError, match="patterns: none; set BATCHQ_SHELL_ALLOW"):
        shell().check(make_subtask(command="echo hi"))


def test_a_missing_command_is_refused() -> None:
    with pytest.raises(PolicyError, match=r"subtask 03: execution\.command: missing"):
        shell("*").check(make_subtask())


def test_an_unterminated_quote_is_refused() -> None:
    with pytest.raises(PolicyError, match="cannot be parsed as bash"):
        shell("echo *").check(make_subtask(command="echo 'a; rm x"))


def test_the_allow_list_is_read_from_the_agents_table_too() -> None:
    settings = Settings(agents={"shell": {"allow": ["touch *"]}})
    ShellAgent("shell", settings).check(make_subtask(command="touch a"))
    with pytest.raises(PolicyError):
        ShellAgent("shell", settings).check(make_subtask(command="echo a"))


@pytest.mark.parametrize(
    "name", ["PATH", "LD_PRELOAD", "PYTHONPATH", "BASH_ENV", "BASH_FUNC_echo%%"]
)
def test_env_may_not_set_variables_that_change_what_runs(name: str) -> None:
    shown = re.escape(name)
    with pytest.raises(
        PolicyError, match=f"execution.env: (may not set {shown}|'{shown}' is not a variable name)"
    ):
        shell("*").check(make_subtask(command="echo hi", env={name: "/tmp/evil"}))


@pytest.mark.parametrize("line", ["PATH=/tmp echo hi", "LD_PRELOAD=/x.so echo hi"])
def test_inline_assignments_of_those_variables_are_refused(line: str) -> None:
    with pytest.raises(PolicyError, match="which a subtask may not change"):
        shell("echo *").check(make_subtask(command=line))


def test_verify_is_held_to_the_same_allow_list() -> None:
    with pytest.raises(PolicyError, match=r"subtask 03: execution.verify: 'rm x' is not"):
        shell("echo *").check(make_subtask(command="echo hi", verify="rm x"))


def test_agent_for_builds_and_checks_the_shell_agent() -> None:
    settings = Settings(shell_allow=["echo *"])
    assert isinstance(agent_for(make_subtask(command="echo hi"), settings), ShellAgent)
    with pytest.raises(PolicyError):
        agent_for(make_subtask(command="rm x"), settings)


def test_check_line_names_the_field_it_was_given() -> None:
    with pytest.raises(PolicyError, match=r"subtask 07: some\.field: 'ls' is not allowed"):
        check_line("07", "some.field", "ls", ["echo *"])


# --- running --------------------------------------------------------------------


def test_a_command_runs_in_the_workspace_with_the_subtask_environment(tmp_path: Path) -> None:
    sub = make_subtask(
        command='echo "$GREETING $BATCHQ_FEATURE/$BATCHQ_SEQ $BATCHQ_RUN_ID" > out.txt; '
        'cat "$BATCHQ_CONTEXT_FILE"; echo; echo wrote out.txt',
        env={"GREETING": "hello"},
    )
    d = delegation(tmp_path, sub)
    outcome = shell("*").run(d, never)
    assert outcome.ok, outcome
    assert outcome.exit_code == 0
    assert (d.workspace / "out.txt").read_text() == "hello feat/03 run1\n"
    assert outcome.summary == "wrote out.txt"
    assert "shared context" in outcome.output
    assert "wrote out.txt" in d.log_path.read_text()


def test_a_non_zero_exit_is_a_failed_outcome_not_an_exception(tmp_path: Path) -> None:
    outcome = shell("*").run(
        delegation(tmp_path, make_subtask(command="echo nope >&2; exit 3")), never
    )
    assert not outcome.ok
    assert outcome.exit_code == 3
    assert outcome.error == "exit code 3"
    assert outcome.error_type == "NonZeroExit"
    assert not outcome.temporary
    assert "nope" in outcome.output


def test_exit_75_asks_for_a_retry(tmp_path: Path) -> None:
    outcome = shell("*").run(delegation(tmp_path, make_subtask(command="exit 75")), never)
    assert not outcome.ok
    assert outcome.temporary


def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    sub = make_subtask(command="sleep 30 & echo pgid=$$; sleep 30")
    outcome = shell("*").run(delegation(tmp_path, sub, timeout_s=0.5), never)
    assert outcome.timed_out
    assert not outcome.ok
    match = re.search(r"pgid=(\d+)", outcome.output)
    assert match, outcome.output
    pgid = int(match.group(1))
    assert group_members(pgid) == []
    wait_group_reaped(pgid)
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


def test_should_stop_cancels_a_running_command(tmp_path: Path) -> None:
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 2

    outcome = shell("*").run(
        delegation(tmp_path, make_subtask(command="echo pgid=$$; sleep 30")), stop
    )
    assert outcome.cancelled
    assert not outcome.ok
    match = re.search(r"pgid=(\d+)", outcome.output)
    assert match
    assert group_members(int(match.group(1))) == []


def test_a_background_child_left_behind_by_a_finished_command_is_killed(tmp_path: Path) -> None:
    result = run_process("sleep 30 & echo pgid=$$", cwd=tmp_path)
    assert result.ok
    match = re.search(r"pgid=(\d+)", result.output)
    assert match
    assert group_members(int(match.group(1))) == []


def test_the_summary_is_the_last_non_empty_line_cut_to_200(tmp_path: Path) -> None:
    sub = make_subtask(command="echo first; printf 'x%.0s' $(seq 300); echo; echo")
    outcome = shell("*").run(delegation(tmp_path, sub), never)
    assert len(outcome.summary) == 200
    assert outcome.summary.startswith("xxx")


def test_a_summary_marker_line_wins_over_later_output(tmp_path: Path) -> None:
    sub = make_subtask(command="echo working; echo '  SUMMARY: wrote out.txt '; echo bye")
    outcome = shell("*").run(delegation(tmp_path, sub), never)
    assert outcome.ok
    assert outcome.summary == "wrote out.txt"


@pytest.mark.parametrize(
    ("output", "summary"),
    [
        ("SUMMARY: first\nSUMMARY: second\ntrailing\n", "second"),
        ("SUMMARY: kept\nSUMMARY:   \nlast\n", "kept"),
        ("SUMMARY:\nlast line\n", "last line"),
        ("no marker\n\n", "no marker"),
        ("the SUMMARY: is not at the start\n", "the SUMMARY: is not at the start"),
        ("", ""),
    ],
)
def test_summary_line_takes_the_last_marker_with_text_else_the_last_line(
    output: str, summary: str
) -> None:
    assert summary_line(output) == summary


def test_a_long_marked_summary_is_cut_to_the_limit() -> None:
    text = summary_line("SUMMARY: " + "y" * 300 + "\nafter\n")
    assert len(text) == 200
    assert text.startswith("yyy")
    assert text.endswith("…")


def test_run_refuses_what_check_refuses(tmp_path: Path) -> None:
    d = delegation(tmp_path, make_subtask(command="rm -rf x"))
    outcome = shell("echo *").run(d, never)
    assert not outcome.ok
    assert outcome.error_type == "PolicyError"


def test_a_missing_executable_is_an_outcome(tmp_path: Path) -> None:
    result = run_process(["batchq-no-such-program"], cwd=tmp_path)
    assert not result.ok
    assert result.error == "executable not found: 'batchq-no-such-program'"


def test_a_missing_working_directory_is_an_outcome(tmp_path: Path) -> None:
    result = run_process("true", cwd=tmp_path / "nope")
    assert result.error is not None
    assert "working directory not found" in result.error


def test_only_the_tail_of_a_long_output_is_kept(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    result = run_process("seq 100000", cwd=tmp_path, tail_bytes=1000, log_path=log)
    assert result.ok
    assert len(result.output.encode()) <= 1000
    assert result.output.endswith("100000\n")
    assert result.truncated_bytes > 0
    assert log.read_text().startswith("1\n2\n")


def test_the_worker_secrets_are_not_passed_to_the_child(tmp_path: Path) -> None:
    d = delegation(tmp_path, make_subtask(command="true", env={"A": "1"}))
    env = agent_env(d, base={"BATCHQ_REDIS_URL": "redis://:pw@h", "HOME": "/root"})
    assert "BATCHQ_REDIS_URL" not in env
    assert env["HOME"] == "/root"
    assert env["A"] == "1"
    assert env["BATCHQ_SEQ"] == "03"


def test_no_variable_batchq_sets_for_an_agent_is_also_a_setting(tmp_path: Path) -> None:
    """An agent that runs ``batchq complete`` loads Settings from its own environment
    (prefix ``BATCHQ_``): a variable that tells it its subtask must never be read back
    as a setting (``BATCHQ_WORKSPACE`` once named the agent's folder and the
    ``workspace = shared|git`` setting, and every self-completion failed)."""
    from batchq.agents.sandbox import BASE_ENV
    from batchq.settings import Settings

    d = delegation(tmp_path, make_subtask(command="true"))
    told = {name for name in agent_env(d, base={}) if name.startswith("BATCHQ_")}
    told |= {"BATCHQ_CONTEXT_FILE", "BATCHQ_PROMPT_FILE"}  # the shell and CLI agents' own
    assert told <= {name for name in BASE_ENV if name.startswith("BATCHQ_")}
    settings = {f"BATCHQ_{field.upper()}" for field in Settings.model_fields}
    assert told and not told & settings
    assert "BATCHQ_WORKSPACE_DIR" in told
