"""Keep the benchmarks runnable: every scenario at a tiny size (figures not checked)."""

from __future__ import annotations

import pytest

from bench import __main__ as bench_main
from bench import p3_makespan

pytestmark = pytest.mark.integration


def test_the_reference_schedules_are_computed_from_the_durations() -> None:
    refs = p3_makespan.references([1.0, 1.0, 2.0], slots=2)
    assert refs["lower_bound"] == 2.0
    assert refs["ideal_blind"] == 3.0  # the long one starts last, after a short one
    assert refs["lpt"] == 2.0


def test_every_scenario_runs_at_a_tiny_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main.main(["--quick"]) == 0
    out = capsys.readouterr().out
    for heading in ("## P1", "## P2", "## P3"):
        assert heading in out
    assert "speed-up" in out and "p50 ratio" in out and "second run" in out
