"""CLI agents: delegate a subtask to a coding-agent command line (opencode, claude, …).

Any agent name with ``[agents.NAME] command = "..."`` in ``batchq.toml`` is one::

    [agents.CoderAgent]
    command = "opencode run --agent {agent} --prompt-file {prompt_file}"
    max_concurrency = 3

The worker renders the prompt (:func:`batchq.agents.prompt.render_prompt`, from the
agent's ``prompt_template`` or the built-in one) to
``<log>.prompt.md`` beside the subtask's log, fills the template and runs it **without
a shell**: every value is ``shlex.quote``-d before substitution and the result is cut
with ``shlex.split``, so a title like ``Fix "auth"; rm -rf ~`` stays one argument.
Write placeholders bare (``--title {title}``), not inside quotes of your own: inside
``'...'`` or ``"..."`` the quotes batchq adds would close the template's own, so a
title could write shell code into ``sh -c 'echo {title}'``. Such a template is
refused at pre-flight (:func:`quoted_placeholders`); to hand a value to a shell
script, pass it as an argument: ``sh -c 'echo "$1"' _ {title}``.

Placeholders: ``{agent}``, ``{prompt_file}``, ``{workspace}``, ``{seq}``,
``{feature}``, ``{title}``, ``{run_id}``, ``{log_file}``; ``{{``/``}}`` are literal
braces. An unknown placeholder, a missing command or a template ``shlex`` cannot
split is a :class:`~batchq.errors.PolicyError` before anything is enqueued.
The timeout is the subtask's ``execution.timeout_s`` (the delegation's timeout);
exit code 75 asks for a retry.
"""

from __future__ import annotations

import functools
import shlex
import string
from collections.abc import Callable, Mapping
from typing import ClassVar

from batchq.agents.base import Agent, AgentOutcome, Delegation
from batchq.agents.policy import check_env, check_verify
from batchq.agents.prompt import render_prompt
from batchq.agents.prompttemplate import load_template
from batchq.agents.sandbox import run_confined
from batchq.agents.shell import outcome_from_process
from batchq.errors import PolicyError
from batchq.files.agentlog import append_text
from batchq.models import Subtask

__all__ = ["PLACEHOLDERS", "CliAgent", "build_argv", "quoted_placeholders", "template_fields"]

PLACEHOLDERS: frozenset[str] = frozenset(
    {"agent", "prompt_file", "workspace", "seq", "feature", "title", "run_id", "log_file"}
)

StopCheck = Callable[[], bool]


def template_fields(template: str) -> list[str]:
    """The placeholder names of a command template; ValueError if it is malformed
    (unbalanced braces) or uses positional, indexed or formatted fields."""
    names: list[str] = []
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if not name or spec or conversion or not name.isidentifier():
            raise ValueError(f"placeholder {{{name}}} must be a bare name like {{title}}")
        names.append(name)
    return names


def quoted_placeholders(template: str) -> list[str]:
    """The placeholders that sit inside the template's own single or double quotes,
    read as :func:`shlex.split` reads them (POSIX rules: a backslash escapes outside
    quotes and, before ``\\``, ``"``, ``$`` or a backtick, inside double quotes)."""
    found: list[str] = []
    quote: str | None = None
    for literal, name, _, _ in string.Formatter().parse(template):
        index = 0
        while index < len(literal):
            char = literal[index]
            if quote is None:
                if char == "\\":
                    index += 1
                elif char in "'\"":
                    quote = char
            elif quote == '"' and char == "\\":
                index += 1
            elif char == quote:
                quote = None
            index += 1
        if name is not None and quote is not None:
            found.append(name)
    return found


def build_argv(template: str, values: Mapping[str, str]) -> list[str]:
    """Fill ``template`` with shell-quoted ``values`` and split it into an argv."""
    quoted = {key: shlex.quote(value) for key, value in values.items()}
    return shlex.split(template.format_map(quoted))


@functools.lru_cache(maxsize=64)
def _template_problem(template: str) -> str | None:
    """What is wrong with a command template, or None. A pure function of the
    template, so it is worked out once per template and process: every subtask is
    checked twice (by :func:`~batchq.agents.registry.agent_for` and again when it
    runs), and the trial split with :mod:`shlex` was the CLI agent's largest
    Python cost per subtask after the process itself."""
    try:
        unknown = sorted(set(template_fields(template)) - PLACEHOLDERS)
        if unknown:
            raise ValueError(
                f"unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)}; "
                f"known: {', '.join('{' + p + '}' for p in sorted(PLACEHOLDERS))}"
            )
        if not build_argv(template, dict.fromkeys(PLACEHOLDERS, "x")):
            raise ValueError("the command is empty")
        quoted = quoted_placeholders(template)
        if quoted:
            shown = ", ".join("{" + name + "}" for name in quoted)
            raise ValueError(
                f"placeholder(s) {shown} inside the template's own quotes; batchq "
                "shell-quotes every value, so write placeholders bare "
                "(--title {title}, not '{title}' or \"{title}\"); to give a value to "
                "a shell script, pass it as an argument: sh -c 'echo \"$1\"' _ {title}"
            )
    except ValueError as exc:
        return str(exc)
    return None


class CliAgent(Agent):
    """Runs the configured command line for a subtask, with a rendered prompt file."""

    kind: ClassVar[str] = "cli"

    @property
    def template(self) -> str | None:
        config = self.settings.agents.get(self.name)
        return config.command if config else None

    def check(self, subtask: Subtask) -> None:
        where = f"subtask {subtask.seq}: agents.{self.name}.command"
        template = self.template
        if not template or not template.strip():
            raise PolicyError(
                self.name,
                f'{where}: missing; configure [agents.{self.name}] command = "..." in batchq.toml',
            )
        problem = _template_problem(template)
        if problem is not None:
            raise PolicyError(self.name, f"{where}: {problem}")
        check_env(subtask)
        check_verify(subtask, self.settings)

    def run(self, delegation: Delegation, should_stop: StopCheck) -> AgentOutcome:
        sub = delegation.subtask
        try:
            self.check(sub)
            prompt_template = load_template(self.name, self.settings, delegation.workspace)
        except PolicyError as exc:
            return AgentOutcome(ok=False, error=str(exc), error_type="PolicyError")
        assert self.template is not None
        prompt_file = delegation.log_path.with_name(delegation.log_path.stem + ".prompt.md")
        prompt = render_prompt(delegation, self.settings.protected_paths, prompt_template)
        prompt_file.parent.mkdir(parents=True, exist_ok=True)
        prompt_file.write_text(prompt, encoding="utf-8")
        values = {
            "agent": self.name,
            "prompt_file": str(prompt_file),
            "workspace": str(delegation.workspace),
            "seq": sub.seq,
            "feature": delegation.feature,
            "title": sub.title,
            "run_id": delegation.run_id,
            "log_file": str(delegation.log_path),
        }
        argv = build_argv(self.template, values)
        _log_header(delegation, argv, prompt_file, prompt)
        result = run_confined(
            shlex.join(argv),
            delegation,
            self.settings,
            self.name,
            extra_env={"BATCHQ_PROMPT_FILE": str(prompt_file)},
            should_stop=should_stop,
            argv=argv,
        )
        return outcome_from_process(result, extra_log=[f"prompt: {prompt_file}"])


def _log_header(delegation: Delegation, argv: list[str], prompt_file: object, prompt: str) -> None:
    """Keep the rendered prompt in the subtask's log too (SPEC 3), before the output."""
    with append_text(delegation.log_path) as handle:
        handle.write(f"[batchq] prompt ({prompt_file}):\n{prompt}\n")
        handle.write(f"[batchq] running: {shlex.join(argv)}\n")
