"""Callables the python agent's tests delegate to."""

from __future__ import annotations

import sys
import time
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from batchq.models import Subtask

not_callable = 3


def write_deliverable(subtask: Subtask, context: Any) -> str:
    target = context.workspace / subtask.deliverables[0]
    target.write_text(f"{context.feature}/{context.seq}: {context}")
    print(f"wrote {subtask.deliverables[0]}")
    return f"wrote {subtask.deliverables[0]} for {subtask.title}"


def prints_only(subtask: Subtask, context: str) -> None:
    print("first line")
    print("the last line", file=sys.stderr)


def returns_dict(subtask: Subtask, context: str) -> dict[str, Any]:
    return {"summary": "from a dict", "other": 1}


def reports_failure(subtask: Subtask, context: str) -> dict[str, Any]:
    return {"ok": False, "error": "nothing to do"}


def raises(subtask: Subtask, context: str) -> None:
    print("about to fail")
    raise ValueError("boom")


def exits_temporarily(subtask: Subtask, context: str) -> None:
    sys.exit(75)


def hits_soft_time_limit(subtask: Subtask, context: str) -> None:
    raise SoftTimeLimitExceeded()


class Steps:
    @staticmethod
    def nested(subtask: Subtask, context: str) -> str:
        return "nested ok"


def sleeps_past_timeout(subtask: Subtask, context: Any) -> None:
    time.sleep(60)


def fails_once(subtask: Subtask, context: Any) -> str:
    """Asks for a retry (exit 75) on its first attempt, then writes its deliverable."""
    marker = context.workspace / f".tried-{context.seq}"
    if not marker.exists():
        marker.touch()
        sys.exit(75)
    return write_deliverable(subtask, context)


def quick(subtask: Subtask, context: Any) -> str:
    """Writes its deliverable; used only where a test counts this callable's runs."""
    return write_deliverable(subtask, context)


def breaks_the_worker_next(subtask: Subtask, context: Any) -> str:
    """Writes its deliverable, then makes the worker's own next step (verification)
    raise once: a stand-in for any bug outside the agent, inside a real worker."""
    from batchq.executor import runner

    original = runner.verify_delegation

    def broken(*args: Any, **kwargs: Any) -> Any:
        runner.verify_delegation = original
        raise RuntimeError("injected fault in the worker")

    runner.verify_delegation = broken
    return write_deliverable(subtask, context)
