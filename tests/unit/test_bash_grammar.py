"""batchq.agents.bashgrammar: the allow-list judged on a real bash parse tree.

The refused lines are bypasses of the old hand-written splitter; the differential
tests run them in a real bash to prove each one really runs ``touch X``, and run the
accepted lines of a fuzzer to prove none of them runs anything but ``echo``."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchq.agents.bashgrammar import check_env_value, check_line, simple_argv
from batchq.errors import PolicyError

BASH = shutil.which("bash") or "/bin/bash"
ALLOW = ["echo *", "cp *", "mkdir *"]

BYPASSES = [
    "echo $'\\'';touch X;#'",
    "echo ${x:- #};touch X",
    "echo hi\rtouch X",
    "echo hi\r#;touch X",
    "echo hi\v#;touch X",
    "echo hi\f#;touch X",
    "echo () ( touch X ); echo hi",
    "echo $[X]",
    "echo $((X))",
    "echo ${x:=$(touch X)}",
    "echo $(touch X)",
    "echo `touch X`",
    "echo <(touch X)",
    "echo >(touch X)",
    "cat <<EOF\n$(touch X)\nEOF",
    "echo <<EOF\nhi\nEOF",
    "echo ${PS1@P}",
    "echo ${P@P}",
    "echo ${!X}",
    "echo ${#X}",
    "echo ${X[0]}",
    "PATH=/tmp echo hi",
    "path=/tmp echo hi",
    "LD_PRELOAD=x.so echo hi",
    "BASH_ENV=x echo hi",
    "IFS=/ echo hi",
    "PATH=/tmp; cp a b",
    "(touch X)",
    "{ touch X; }",
    "if true; then touch X; fi",
    "for i in 1; do touch X; done",
    "while false; do :; done",
    "case x in x) touch X;; esac",
    "[[ -v X ]]",
    "echo hi && touch X",
    "echo hi || touch X",
    "echo hi | touch X",
    "echo hi; touch X",
    "echo hi\ntouch X",
    'echo "$(touch X)"',
    'echo "${x:-$(touch X)}"',
    'echo "`touch X`"',
    'echo $"x"',
    "echo a\x00b",
    "echo hi & touch X",
    "echo hi &",
    "! echo hi",
    "time echo hi",
    "coproc echo hi",
    "export X=1",
    "declare -x X=1",
    "a=(1 2) echo hi",
    "a[0]=1 echo hi",
    "FOO=$(touch X) echo hi",
    "FOO=$X echo hi",
    "$X hi",
    "echo hi {X}>out",
    "echo hi <<< word",
    "echo hi;;",
    "ec\\\nho hi",
    "echo 'unterminated",
    "echo (",
    "FOO=bar",
    ">out",
]

ALLOWED = [
    "echo hi",
    "echo 'a b' \"c d\" > out.txt",
    "mkdir -p out && cp a.txt out/",
    "echo hi; echo there",
    "echo hi\necho there\n",
    "echo hi 2>&1 | cp a b",
    "echo hi |& cp a b",
    "FOO=bar echo hi",
    "FOO='a b' BAR=\"c\" echo hi",
    'echo $HOME ${HOME} "$HOME/x" a$HOME "${HOME}"',
    "echo hi # a comment",
    "# only a comment\necho hi",
    "echo a#b",
    "echo hi >> log 2>&1 < in",
    "echo hi &> log",
    "echo hi >| log 2>&-",
    "echo *.py {a,b} ~ [ab]",
    "echo \\$\\(touch X\\)",
    "echo '$(touch X)' \"\\$(touch X)\"",
    "mkdir -p out && cp a out/ 2>&1",
]


def refusal(line: str, patterns: list[str] | None = None) -> str:
    with pytest.raises(PolicyError) as info:
        check_line("7", "execution.command", line, ALLOW if patterns is None else patterns)
    return str(info.value)


@pytest.mark.parametrize("line", BYPASSES)
def test_every_bypass_is_refused_with_a_one_line_message(line: str) -> None:
    message = refusal(line)
    assert message.startswith("subtask 7: execution.command: ")
    assert "\n" not in message and "\r" not in message
    if "sets" not in message:
        assert "'echo *', 'cp *', 'mkdir *'" in message


@pytest.mark.parametrize("line", ALLOWED)
def test_plain_commands_of_allowed_programs_pass(line: str) -> None:
    check_line("7", "execution.command", line, ALLOW)


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("echo $(touch X)", "command substitution '$(touch X)'"),
        ("echo () ( touch X ); echo hi", "function definition"),
        ("echo ${x:- #};touch X", "'${x:- #}'"),
        ("echo $'\\'';touch X;#'", "ANSI-C string"),
        ("echo hi | touch X", "'touch X' is not allowed"),
        ("PATH=/tmp echo hi", "'PATH=/tmp echo hi' sets PATH"),
        ("echo hi\r#;touch X", "'\\r'"),
        ("echo (", "cannot be parsed"),
    ],
)
def test_the_message_names_the_offending_part(line: str, named: str) -> None:
    assert named in refusal(line)


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("echo \\ a", "not understood"),  # tree-sitter skips the escaped blank
        ("echo ''\\,x", "touch"),  # tree-sitter reads two words, bash one
        ("echo ]\\]", "touch"),
        ("echo hi {X}>out", "assigns a variable"),
    ],
)
def test_where_tree_sitter_and_bash_disagree_the_line_is_refused(line: str, named: str) -> None:
    assert named in refusal(line)
    assert simple_argv(line) is None


def test_an_empty_line_or_allow_list_is_refused() -> None:
    assert "is empty" in refusal("  \n")
    message = refusal("echo hi", [])
    assert "none; set BATCHQ_SHELL_ALLOW or [agents.shell] allow in batchq.toml" in message


def test_the_pattern_sees_the_command_without_assignments_with_redirections() -> None:
    check_line("1", "f", "FOO=1 cp a b > log", ["cp a b > log"])
    assert "'cp a b'" in refusal("FOO=1 cp a b", ["FOO=1 cp a b"])
    # tree-sitter hangs this redirection on the list; bash gives it to the last command.
    check_line("1", "f", "mkdir d && cp a b 2>&1", ["mkdir d", "cp a b 2>&1"])


def test_star_allows_anything_but_nul() -> None:
    # With "*" bash itself judges the syntax: tree-sitter does not parse every valid line.
    for line in [*BYPASSES[:20], "echo hi\r#;touch X", "echo 'x", "echo $\\(rm x\\)"]:
        if "\x00" not in line:
            check_line("1", "f", line, ["*"])
    assert "NUL" in refusal("echo a\x00b", ["*"])


def run_bash(line: str, cwd: Path, env: dict[str, str] | None = None) -> None:
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd)}
    full.update(env or {})
    subprocess.run(
        [BASH, "-c", line], cwd=cwd, env=full, capture_output=True, timeout=10, check=False
    )


# Each form, run by bash, really runs `touch X` while an allow-list of `echo *` looks
# at it: the refusals above target real bypasses (with the environment they need).
REAL_BYPASSES = [
    ("echo $'\\'';touch X;#'", {}),
    ("echo ${x:- #};touch X", {}),
    ("echo hi\r#;touch X", {}),
    ("echo hi\v#;touch X", {}),
    ("echo () ( touch X ); echo hi", {}),
    ("echo $[X]", {"X": "a[$(touch X)]"}),
    ("echo $((X))", {"X": "a[$(touch X)]"}),
    ("echo ${!X}", {"X": "a[$(touch X)]"}),
    ("echo ${x:=$(touch X)}", {}),
    ("echo $(touch X)", {}),
    ("echo `touch X`", {}),
    ("cat <<EOF\n$(touch X)\nEOF", {}),
    ("echo ${P@P}", {"P": "$(touch X)"}),
    ('echo "$(touch X)"', {}),
    ('echo "${x:-$(touch X)}"', {}),
    ("echo hi && touch X", {}),
    ("echo hi | touch X", {}),
]


@pytest.mark.parametrize(("line", "env"), REAL_BYPASSES)
def test_bash_really_runs_the_hidden_command_of_a_refused_bypass(
    line: str, env: dict[str, str], tmp_path: Path
) -> None:
    run_bash(line, tmp_path, env)
    assert (tmp_path / "X").exists(), "bash did not run touch X: not a real bypass"
    refusal(line)


def test_a_value_from_the_environment_is_data_to_an_allowed_line(tmp_path: Path) -> None:
    value = "a[$(touch X)]"
    check_env_value("1", "X", value)
    line = 'echo $X "${X}" ${X} > out.txt'
    check_line("1", "f", line, ALLOW)
    run_bash(line, tmp_path, {"X": value})
    assert not (tmp_path / "X").exists()
    assert (tmp_path / "out.txt").read_text() == f"{value} {value} {value}\n"


@pytest.mark.parametrize("name", ["PATH", "ld_preload", "PYTHONPATH", "BASH_FUNC_echo%%", "IFS"])
def test_env_may_not_set_forbidden_names(name: str) -> None:
    with pytest.raises(PolicyError, match=r"execution\.env"):
        check_env_value("1", name, "x")


@pytest.mark.parametrize("name", ["", "A=B", "A\x00", "1A", "A-B", "A B", "É"])
def test_env_names_must_be_plain_variable_names(name: str) -> None:
    with pytest.raises(PolicyError, match="not a variable name"):
        check_env_value("1", name, "x")


def test_env_values_may_hold_anything_but_nul() -> None:
    check_env_value("1", "X", "$(touch X); `x` \r\n ${a:-b} () { :; }")
    with pytest.raises(PolicyError, match="NUL"):
        check_env_value("1", "X", "a\x00b")


def bash_words(line: str, cwd: Path) -> list[str] | None:
    """The argv bash makes of ``line``'s words, or None when bash refuses it."""
    out = subprocess.run(
        [BASH, "-c", "printf '%s\\0' " + line],
        cwd=cwd,
        capture_output=True,
        timeout=10,
        check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"},
    )
    if out.returncode != 0:
        return None
    return out.stdout.decode("utf-8", "surrogateescape").split("\0")[:-1]


ARGV_LINES = [
    "ls hi",
    "cp 'a b' c",
    "ls \"a b\" 'c d' e\\ f",
    'ls "a\\"b" "a\\\\b" "a\\$b" "a\\`b" "a\\xb"',
    "ls a'b'\"c\"d",
    "ls \\' \\\" \\\\ \\a",
    "ls '' \"\"",
    "ls 'it''s'",
    "ls a=b -x --y=z",
    "ls a#b",
    "ls '$HOME' \"\\$HOME\"",
    "ls é 'ü'",
    "ls 1 22 0x1",
    "python -c 'print(1)'",
    "ls '\\'",
    "ls \t tab",
]


@pytest.mark.parametrize("line", ARGV_LINES)
def test_simple_argv_removes_quotes_as_bash_does(line: str, tmp_path: Path) -> None:
    argv = simple_argv(line)
    assert argv is not None
    assert argv == bash_words(line, tmp_path)


@pytest.mark.parametrize(
    "line",
    [
        "echo hi > out",
        "echo $HOME",
        'echo "$HOME"',
        "FOO=1 echo hi",
        "echo hi; echo there",
        "echo a && echo b",
        "echo *",
        "echo a?",
        "echo [ab]",
        "echo {a,b}",
        "echo ~",
        "echo a=~",
        "echo hi # comment",
        "echo $(x)",
        "time echo",
        "echo hi\r",
        "echo 'x",
        "",
    ],
)
def test_simple_argv_is_none_unless_one_plain_literal_command(line: str) -> None:
    assert simple_argv(line) is None


@pytest.mark.parametrize(
    "line", ["exit 75", "echo hi", "cd out", "true", "export A=1", "test -f x"]
)
def test_simple_argv_leaves_builtins_to_bash(line: str) -> None:
    """Without a shell another program (or none) would run instead of the builtin."""
    assert simple_argv(line) is None


WORD_PIECES = st.sampled_from(
    ["a", "b", " ", "\t", "'", '"', "\\", "$", "=", "-", "#", "x y", "é", "*", "~", "{", ","]
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tail=st.lists(WORD_PIECES, min_size=1, max_size=10).map("".join))
def test_simple_argv_agrees_with_bash_word_splitting(tail: str, tmp_path: Path) -> None:
    line = "ls " + tail
    argv = simple_argv(line)
    if argv is not None:
        assert argv == bash_words(line, tmp_path), line


FUZZ_TOKENS = st.sampled_from(
    [
        " ", " ", "x", "1", "touch X", ";", "'", '"', "\\", "$", "(", ")", "{", "}", "#",
        "\n", "\r", "\v", "&", "|", "<", ">", "`", "=", ":", "-", "[", "]", "@", "!", "~",
        "*", "P", "$'", '$"', "${", "$(", "<(", "<<", "<<<", "EOF", "&&", "||", ">&",
        "#;", "\\'", '\\"', "\\$", "{x}", "a=", "\u00a0", "\u2028", "\u0085",
    ]
)  # fmt: skip

TRAP = (
    "set -T\n"
    "trap 'case $BASH_COMMAND in echo*|[A-Za-z_]*=*\\ echo*) ;; "
    '*) printf "%s\\n" "$BASH_COMMAND" >> "$CANARY";; esac\' DEBUG\n'
)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tail=st.lists(FUZZ_TOKENS, min_size=1, max_size=12).map("".join))
def test_an_accepted_line_runs_nothing_but_the_allowed_command(tail: str, tmp_path: Path) -> None:
    """Differential: whatever check_line accepts with ``echo *``, bash — told by a
    DEBUG trap (inherited by subshells and substitutions) to log every simple command
    it is about to run — runs nothing that does not start with ``echo``."""
    line = "echo " + tail
    try:
        check_line("1", "f", line, ["echo *"])
    except PolicyError:
        return
    work = tmp_path / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    trap, canary = tmp_path / "trap.sh", tmp_path / "canary"
    trap.write_text(TRAP)
    canary.unlink(missing_ok=True)
    run_bash(line, work, {"BASH_ENV": str(trap), "CANARY": str(canary)})
    assert not canary.exists(), f"{line!r} ran {canary.read_text()!r}"


def test_the_fuzz_oracle_sees_a_hidden_command(tmp_path: Path) -> None:
    trap, canary = tmp_path / "trap.sh", tmp_path / "canary"
    trap.write_text(TRAP)
    run_bash(
        "echo a; FOO=1 echo b; echo $(true x)",
        tmp_path,
        {"BASH_ENV": str(trap), "CANARY": str(canary)},
    )
    assert canary.read_text() == "true x\n"
