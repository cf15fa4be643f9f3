"""A stand-in for a coding-agent CLI (opencode, claude, codex, aider, gemini), installed
under each preset's executable name first on PATH by the tests.

It finds the rendered prompt where its preset's command line puts it (``--file`` or
``--message-file`` argument, else standard input), records its argv and how it got the
prompt beside the prompt file (in the run's log folder, writable in the sandbox, never
in the workspace), and writes every deliverable the prompt's ``## Deliverables``
section lists, as the real CLI would after a model call.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _prompt(argv: list[str]) -> tuple[str, str]:
    for flag in ("--file", "--message-file"):
        if flag in argv:
            path = argv[argv.index(flag) + 1]
            return Path(path).read_text(encoding="utf-8"), f"{flag} {path}"
    return sys.stdin.read(), "stdin"


def _deliverables(prompt: str) -> list[str]:
    lines = prompt.splitlines()
    start = lines.index("## Deliverables") + 1
    found = []
    for line in lines[start:]:
        if line.startswith("## "):
            break
        if line.startswith("- `") and line.endswith("`"):
            found.append(line[3:-1])
    return found


def main() -> int:
    name = Path(sys.argv[0]).name
    prompt, source = _prompt(sys.argv[1:])
    record = Path(os.environ["BATCHQ_PROMPT_FILE"] + f".{name}.json")
    record.write_text(
        json.dumps(
            {
                "name": name,
                "argv": sys.argv[1:],
                "source": source,
                "prompt": prompt,
                "cwd": os.getcwd(),
                "env": sorted(k for k in os.environ if k.endswith("_API_KEY")),
            }
        ),
        encoding="utf-8",
    )
    for item in _deliverables(prompt):
        path = Path(item)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"written by fake {name}\n", encoding="utf-8")
    print(f"fake {name}: wrote {len(_deliverables(prompt))} deliverable(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
