"""Coding-agent presets: ``[agents.NAME] preset = "claude"`` instead of a command line.

Each preset is the CLI's documented non-interactive command line fed the prompt batchq
renders (``{prompt_file}``), the network (they call a model API) and the names of the
API-key variables the CLI reads, which the sandbox otherwise drops. What a table sets
itself wins: ``command``, ``network``, ``max_concurrency``; ``env`` adds to the
preset's names. Placeholders stay bare: batchq shell-quotes every value.

Three CLIs take the prompt on standard input, which batchq's agents do not get (it is
``/dev/null``): their command is ``sh -c '… < "$1"' NAME {prompt_file}``, a fixed
script with the prompt file as its one argument, so the prompt never has to fit in one
argv string (Linux caps that at 128 KiB).

Sources, read when these were written (check them when a CLI changes its flags):

- opencode: https://opencode.ai/docs/cli/ (``opencode run [message..]``, ``--file``)
- claude: https://docs.anthropic.com/en/docs/claude-code/cli-reference (``-p``, piped
  input, ``--permission-mode acceptEdits``)
- codex: https://developers.openai.com/codex/noninteractive (``codex exec``, ``-`` reads
  the prompt from stdin, ``--sandbox workspace-write``, ``--skip-git-repo-check``)
- aider: https://aider.chat/docs/scripting.html (``--message-file``, ``--yes-always``,
  ``--no-auto-commits``)
- gemini: https://geminicli.com/docs/cli/headless/ (``-p`` is appended to stdin,
  ``--approval-mode auto_edit``)

Part of the shared vocabulary (like :mod:`batchq.protocol`): :mod:`batchq.settings`
expands presets while it reads ``batchq.toml``, and it may import no layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["PRESETS", "Preset", "expand_preset"]


@dataclass(frozen=True)
class Preset:
    command: str
    env: tuple[str, ...]
    docs: str
    max_concurrency: int = 2
    """Parallel copies across all workers: model APIs rate-limit, and each copy is a
    whole coding agent with its own context."""


def _stdin(argv: str, name: str) -> str:
    return f"sh -c 'exec {argv} < \"$1\"' {name} {{prompt_file}}"


TASK = "Carry out the task described in the attached file."
ON_STDIN = "Carry out the task given on standard input."

PRESETS: dict[str, Preset] = {
    "opencode": Preset(
        command=f"opencode run '{TASK}' --file {{prompt_file}}",
        env=(
            "ANTHROPIC_API_KEY",
            "OPENAI_API_KEY",
            "OPENROUTER_API_KEY",
            "GOOGLE_GENERATIVE_AI_API_KEY",
        ),
        docs="https://opencode.ai/docs/cli/",
    ),
    "claude": Preset(
        command=_stdin(f'claude -p --permission-mode acceptEdits "{ON_STDIN}"', "claude"),
        env=("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"),
        docs="https://docs.anthropic.com/en/docs/claude-code/cli-reference",
    ),
    "codex": Preset(
        command=_stdin("codex exec --sandbox workspace-write --skip-git-repo-check -", "codex"),
        env=("OPENAI_API_KEY", "CODEX_API_KEY"),
        docs="https://developers.openai.com/codex/noninteractive",
    ),
    "aider": Preset(
        command="aider --message-file {prompt_file} --yes-always --no-auto-commits",
        env=(
            "ANTHROPIC_API_KEY",
            "OPENAI_API_KEY",
            "GEMINI_API_KEY",
            "DEEPSEEK_API_KEY",
            "OPENROUTER_API_KEY",
        ),
        docs="https://aider.chat/docs/scripting.html",
    ),
    "gemini": Preset(
        command=_stdin(f'gemini --approval-mode auto_edit -p "{ON_STDIN}"', "gemini"),
        env=("GEMINI_API_KEY", "GOOGLE_API_KEY"),
        docs="https://geminicli.com/docs/cli/headless/",
    ),
}


def expand_preset(table: dict[str, Any]) -> dict[str, Any]:
    """An ``[agents.NAME]`` table with its preset filled in (unchanged without one);
    ValueError naming the known presets for an unknown one."""
    name = table.get("preset")
    if name is None:
        return table
    preset = PRESETS.get(name) if isinstance(name, str) else None
    if preset is None:
        known = ", ".join(sorted(PRESETS))
        raise ValueError(f"preset {name!r} is unknown; known presets: {known}")
    expanded = dict(table)
    expanded.setdefault("command", preset.command)
    expanded.setdefault("network", True)
    expanded.setdefault("max_concurrency", preset.max_concurrency)
    own = table.get("env") or []
    if isinstance(own, list):
        expanded["env"] = [*preset.env, *(n for n in own if n not in preset.env)]
    return expanded
