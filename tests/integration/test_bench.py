"""Keep the benchmarks runnable: every scenario at a tiny size (figures not checked)."""

from __future__ import annotations

import pytest

from bench import __main__ as bench_main
from bench import p3_makespan, p4_flow

pytestmark = pytest.mark.integration


def test_the_reference_schedules_are_computed_from_the_durations() -> None:
    refs = p3_makespan.references([1.0, 1.0, 2.0], slots=2)
    assert refs["lower_bound"] == 2.0
    assert refs["ideal_blind"] == 3.0  # the long one starts last, after a short one
    assert refs["lpt"] == 2.0


def test_the_flow_references_are_computed_from_the_dag() -> None:
    # 1 -> 3, 2 alone, 3 -> 4 (durations 1, 3, 1, 1) on 2 slots.
    dag = p4_flow.Dag([1.0, 3.0, 1.0, 1.0], [[], [], [0], [2]])
    assert p4_flow.critical_path(dag) == 3.0
    assert p4_flow.lower_bound(dag, 2) == 3.0
    assert p4_flow.list_schedule(dag, 2) == 3.0  # 3 and 4 run beside the long 2
    assert p4_flow.batch_schedule(dag, 2) == 5.0  # level 1 waits for 2 (3 s)
    assert p4_flow.random_dag(60, 1) == p4_flow.random_dag(60, 1)


def test_every_scenario_runs_at_a_tiny_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main.main(["--quick"]) == 0
    out = capsys.readouterr().out
    for heading in ("## P1", "## P2", "## P3", "## P4", "## P5"):
        assert heading in out
    assert "speed-up" in out and "p50 ratio" in out and "second run" in out
    assert "P4 flow within 1.10" in out
    assert "P5 shell without verify" in out and "P5 cli with verify" in out
