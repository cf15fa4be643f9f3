"""Callables the benchmarks delegate to through batchq's ``python`` agent."""

from __future__ import annotations

import time
from typing import Any


def noop(subtask: Any, context: str) -> None:
    """The cheapest possible subtask: measures batchq's own overhead."""


def sleep(subtask: Any, context: str) -> str:
    """Sleep for the seconds in ``execution.env['BENCH_SLEEP_S']`` (P3 makespan)."""
    seconds = float(subtask.execution.env["BENCH_SLEEP_S"])
    time.sleep(seconds)
    return f"slept {seconds:.2f}s"
