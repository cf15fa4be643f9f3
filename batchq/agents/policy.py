"""The shell rules every bash line batchq runs must pass, and the environment agents get.

A subtask file is written by an orchestrator, often an LLM, so ``execution.command``
is untrusted input. The allow-list (``BATCHQ_SHELL_ALLOW`` or ``[agents.shell] allow``)
holds fnmatch patterns; an empty list allows nothing. :func:`split_commands` cuts the
line into simple commands the way bash would — at ``;``, ``&&``, ``||``, ``|``,
``|&``, ``&`` and newlines, outside quotes, honouring backslash escapes and ``#``
comments, and not at the ``&`` of ``2>&1``/``&>`` or the ``|`` of ``>|`` — and every
one of them, with its leading ``VAR=value`` words removed, must match a pattern.

Unless the list is exactly ``["*"]``, constructs that run code the patterns never
see are refused outright: command substitution (``$(...)``, backticks — also inside
single quotes, so a value built there cannot be expanded later), process
substitution (``<(...)``, ``>(...)``), here-documents (their bodies are not
commands) and the ``${var@P}`` transformation (prompt expansion runs ``$(...)`` held
in a variable). So are inline assignments to the variables below. The allow-list
is a guardrail against mistakes and casual injection, not a sandbox: an allowed
``python *`` or ``bash *`` runs anything.

``execution.env`` may never set ``PATH``, ``LD_*`` or ``PYTHON*`` (SPEC 3), nor the
variables that make bash itself run other code before the command (``BASH_ENV``,
``ENV``, ``BASH_FUNC_*`` exported functions, ``SHELLOPTS``, ``BASHOPTS``, ``IFS``).
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from batchq.agents.base import Delegation
from batchq.errors import PolicyError
from batchq.models import Subtask
from batchq.settings import Settings

__all__ = [
    "ParsedLine",
    "agent_env",
    "check_env",
    "check_line",
    "check_verify",
    "forbidden_env_name",
    "split_commands",
]

_EXACT_FORBIDDEN = frozenset({"PATH", "BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "IFS"})
_PREFIX_FORBIDDEN = ("LD_", "PYTHON", "BASH_FUNC_")
_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\+?=")
_PROMPT_TRANSFORM = re.compile(r"\$\{[^}]*@P\}")
# "$(" also when its parenthesis is escaped: a value built that way can be expanded
# later by arithmetic evaluation or prompt expansion.
_COMMAND_SUBSTITUTION = re.compile(r"\$\\*\(")
_WORD_START = " \t\r\n;&|()<>"
# Secrets of the worker's own configuration are not handed to the processes it runs.
_SECRET_ENV = ("BATCHQ_REDIS_URL", "BATCHQ_RESULT_URL", "BATCHQ_FLOWER_PASSWORD")


@dataclass
class ParsedLine:
    """A bash line cut into simple commands, with what the cut could not vouch for."""

    commands: list[str] = field(default_factory=list)
    hidden: list[str] = field(default_factory=list)
    """Constructs that run code outside the simple commands: ``$(``, ``<<``, …"""
    error: str | None = None


def forbidden_env_name(name: str) -> bool:
    """True for a variable no subtask may set: it would change what program runs."""
    upper = name.upper()
    return upper in _EXACT_FORBIDDEN or upper.startswith(_PREFIX_FORBIDDEN)


def split_commands(line: str) -> ParsedLine:
    """Cut ``line`` into its simple commands (stripped, empty ones dropped)."""
    parsed = ParsedLine()
    current: list[str] = []
    hidden: set[str] = set()
    if _COMMAND_SUBSTITUTION.search(line):
        hidden.add("$(")
    if "`" in line:
        hidden.add("`")
    if _PROMPT_TRANSFORM.search(line):
        hidden.add("${...@P}")

    def cut() -> None:
        text = "".join(current).strip()
        if text:
            parsed.commands.append(text)
        current.clear()

    i, n = 0, len(line)
    quote = ""
    word_start = True  # the next character starts a word (so '#' opens a comment)
    last = ""  # the previous unquoted, unescaped character
    while i < n:
        c = line[i]
        nxt = line[i + 1] if i + 1 < n else ""
        if quote == "'":
            current.append(c)
            quote = "" if c == "'" else quote
            i += 1
            continue
        if c == "\\":
            current.append(line[i : i + 2])
            i += 2
            if not quote:
                word_start, last = False, ""
            continue
        if quote == '"':
            current.append(c)
            quote = "" if c == '"' else quote
            i += 1
            continue
        if c in "'\"":
            quote = c
            current.append(c)
            word_start, last = False, ""
            i += 1
            continue
        if c == "#" and word_start:
            end = line.find("\n", i)
            i = n if end < 0 else end
            continue
        step, separator = 1, False
        if c in "<>" and nxt == "(":
            hidden.add(c + "(")
        elif c == "<" and nxt == "<":
            step = 3 if line[i : i + 3] == "<<<" else 2  # a here-string is harmless
            if step == 2:
                hidden.add("<<")
        elif c in ";\n":
            separator = True
        elif c == "&":
            if nxt == "&":
                separator, step = True, 2
            elif not (last in ("<", ">") or nxt == ">"):  # not 2>&1, <&3, &>file
                separator = True
        elif c == "|":
            if nxt in ("|", "&"):
                separator, step = True, 2
            elif last != ">":  # not the >| clobber redirection
                separator = True
        if separator:
            cut()
        else:
            current.append(line[i : i + step])
        word_start = separator or c in _WORD_START
        last = c
        i += step
    if quote:
        parsed.error = f"unterminated {quote} quote"
    cut()
    parsed.hidden = sorted(hidden)
    return parsed


def _strip_assignments(command: str) -> tuple[list[str], str]:
    """Leading ``NAME=value`` words of a simple command, and the rest of it."""
    names: list[str] = []
    pos, n = 0, len(command)
    while pos < n:
        match = _ASSIGNMENT.match(command, pos)
        if not match:
            break
        end, quote = match.end(), ""
        while end < n:
            c = command[end]
            if quote == "'":
                quote = "" if c == "'" else quote
            elif c == "\\":
                end += 1
            elif quote == '"':
                quote = "" if c == '"' else quote
            elif c in "'\"":
                quote = c
            elif c in " \t":
                break
            end += 1
        names.append(match.group(1))
        pos = end
        while pos < n and command[pos] in " \t":
            pos += 1
    return names, command[pos:].strip()


def _patterns_text(patterns: Sequence[str]) -> str:
    if not patterns:
        return "none; set BATCHQ_SHELL_ALLOW or [agents.shell] allow in batchq.toml"
    return ", ".join(repr(p) for p in patterns)


def check_line(seq: str, field_name: str, line: str, patterns: Sequence[str]) -> None:
    """Raise :class:`PolicyError` unless every simple command of ``line`` is allowed.

    The message is one line naming the subtask, the field and the offending part, so
    an orchestrator can show it as is."""
    where = f"subtask {seq}: {field_name}"
    if not line.strip():
        raise PolicyError(seq, f"{where}: is empty; expected a bash command line")
    if list(patterns) == ["*"]:
        return
    parsed = split_commands(line)
    if parsed.error:
        raise PolicyError(seq, f"{where}: {parsed.error}; cannot check it against the allow-list")
    if parsed.hidden:
        what = ", ".join(repr(h) for h in parsed.hidden)
        raise PolicyError(
            seq,
            f"{where}: {what} (command/process substitution, here-document or prompt "
            "expansion) is refused unless the shell allow-list is exactly '*'",
        )
    for command in parsed.commands:
        names, rest = _strip_assignments(command)
        bad = next((name for name in names if forbidden_env_name(name)), None)
        if bad is not None:
            raise PolicyError(
                seq, f"{where}: {command!r} sets {bad}, which a subtask may not change"
            )
        if not any(fnmatch.fnmatchcase(rest, pattern) for pattern in patterns):
            raise PolicyError(
                seq,
                f"{where}: {command!r} is not allowed by the shell allow-list "
                f"(patterns: {_patterns_text(patterns)})",
            )


def check_verify(subtask: Subtask, settings: Settings) -> None:
    """Raise :class:`~batchq.errors.PolicyError` unless ``execution.verify`` passes the
    shell allow-list and ``execution.env`` (its environment) sets nothing forbidden;
    every agent applies it in ``check``, and
    :func:`batchq.agents.agent_for` for third-party agents too."""
    if subtask.execution and subtask.execution.verify:
        check_line(
            subtask.seq, "execution.verify", subtask.execution.verify, settings.allow_for("shell")
        )
        check_env(subtask)


def check_env(subtask: Subtask) -> None:
    """Refuse an ``execution.env`` that sets a variable no subtask may set."""
    env = subtask.execution.env if subtask.execution else {}
    for name in env:
        if forbidden_env_name(name):
            raise PolicyError(
                subtask.seq,
                f"subtask {subtask.seq}: execution.env: may not set {name} "
                "(PATH, LD_*, PYTHON* and bash start-up variables are refused)",
            )


def agent_env(
    delegation: Delegation,
    base: Mapping[str, str] | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of an agent's child: the worker's own (minus batchq's secrets),
    then ``execution.env``, then ``BATCHQ_FEATURE``/``SEQ``/``RUN_ID``/``BATCH``/
    ``WORKSPACE``/``LOG`` so scripts can tell which subtask they serve."""
    env = dict(os.environ if base is None else base)
    for name in _SECRET_ENV:
        env.pop(name, None)
    sub = delegation.subtask
    if sub.execution:
        env.update(sub.execution.env)
    env.update(
        {
            "BATCHQ_FEATURE": delegation.feature,
            "BATCHQ_SEQ": sub.seq,
            "BATCHQ_SUBTASK_ID": sub.id,
            "BATCHQ_RUN_ID": delegation.run_id,
            "BATCHQ_BATCH": str(delegation.batch),
            "BATCHQ_WORKSPACE": str(delegation.workspace),
            "BATCHQ_LOG": str(delegation.log_path),
        }
    )
    if extra:
        env.update(extra)
    return env
