"""A module outside ``mypkg`` that ``mypkg`` imports: reaching it through ``mypkg``'s
namespace must not count as allowed."""

from __future__ import annotations

CALLS: list[str] = []


def run(subtask: object, context: str) -> str:
    CALLS.append("run")
    return "helper_mod.run ran"
