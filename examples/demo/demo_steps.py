"""Python-agent steps of the demo feature: each writes one file of a tiny package."""

from __future__ import annotations

from pathlib import Path
from typing import Any

OPS = '''"""Arithmetic helpers."""


def add(a: float, b: float) -> float:
    return a + b


def mul(a: float, b: float) -> float:
    return a * b
'''

STATS = '''"""Statistics helpers."""


def mean(values: list[float]) -> float:
    if not values:
        raise ValueError("mean of nothing")
    return sum(values) / len(values)
'''

TESTS = """import unittest

from mathkit.ops import add, mul
from mathkit.stats import mean


class MathkitTest(unittest.TestCase):
    def test_add(self) -> None:
        self.assertEqual(add(2, 3), 5)

    def test_mul(self) -> None:
        self.assertEqual(mul(2, 3), 6)

    def test_mean(self) -> None:
        self.assertEqual(mean([1, 2, 3]), 2)


if __name__ == "__main__":
    unittest.main()
"""


def _write(context: str, path: str, text: str) -> str:
    # The context string carries the feature's workspace; the worker's cwd may differ.
    target = Path(getattr(context, "workspace", Path.cwd())) / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return f"wrote {path} ({len(text.splitlines())} lines)"


def write_ops(subtask: Any, context: str) -> str:
    return _write(context, "mathkit/ops.py", OPS)


def write_stats(subtask: Any, context: str) -> str:
    return _write(context, "mathkit/stats.py", STATS)


def write_tests(subtask: Any, context: str) -> str:
    return _write(context, "tests/test_mathkit.py", TESTS)
