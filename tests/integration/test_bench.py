"""Keep the benchmarks runnable: every scenario at a tiny size (figures not checked)."""

from __future__ import annotations

import sys

import pytest

from bench import __main__ as bench_main
from bench import common, p3_makespan, p4_flow
from bench.common import Stats

pytestmark = pytest.mark.integration


def test_the_reference_schedules_are_computed_from_the_durations() -> None:
    refs = p3_makespan.references([1.0, 1.0, 2.0], slots=2)
    assert refs["lower_bound"] == 2.0
    assert refs["ideal_blind"] == 3.0  # the long one starts last, after a short one
    assert refs["lpt"] == 2.0


def test_the_shell_sleeps_are_the_python_sleeps_as_commands() -> None:
    data = p3_makespan.shell_subtask("07", 0.25, "out/07.txt")
    assert data["suggested_agent"] == "shell"
    assert data["execution"] == {"command": "sleep 0.25", "timeout_s": 600}
    assert data["deliverables"] == ["out/07.txt"] and data["seq"] == "07"


def test_the_flow_references_are_computed_from_the_dag() -> None:
    # 1 -> 3, 2 alone, 3 -> 4 (durations 1, 3, 1, 1) on 2 slots.
    dag = p4_flow.Dag([1.0, 3.0, 1.0, 1.0], [[], [], [0], [2]])
    assert p4_flow.critical_path(dag) == 3.0
    assert p4_flow.lower_bound(dag, 2) == 3.0
    assert p4_flow.list_schedule(dag, 2) == 3.0  # 3 and 4 run beside the long 2
    assert p4_flow.batch_schedule(dag, 2) == 5.0  # level 1 waits for 2 (3 s)
    assert p4_flow.random_dag(60, 1) == p4_flow.random_dag(60, 1)


@pytest.mark.timeout(900)  # every repetition starts its own worker and programs
def test_every_scenario_runs_at_a_tiny_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main.main(["--quick"]) == 0
    out = capsys.readouterr().out
    for heading in ("## P1", "## P2", "## P3", "## P4", "## P5", "## Start-up"):
        assert heading in out
    assert "bare best" in out and "p50 ratio" in out and "second run" in out
    assert "submit → report handed over" in out
    assert "dramatiq group" in out and "`batchq run` process" in out
    assert "polled process" in out
    assert "orchestrator peak RSS" in out and "start-up `batchq --version` median" in out
    assert "P4 flow within 1.10" in out
    assert "P3 (python sleeps) second run" in out and "P3 (shell sleeps) second run" in out
    assert "P5 shell without verify" in out and "P5 cli with verify" in out
    assert "## P7 scale-out" in out and "git cost / subtask" in out


def test_the_notes_below_the_marker_survive_a_rewrite() -> None:
    previous = f"# old figures\n\n{bench_main.NOTES_MARKER}\n## How\nkept\n"
    text = bench_main.with_notes("# new figures\n", previous)
    assert text.startswith("# new figures\n")
    assert "old figures" not in text and text.endswith("## How\nkept\n")
    assert bench_main.with_notes("# new\n", "no marker") == "# new\n"


def test_p1_goals_compare_the_median_with_the_bare_best_run() -> None:
    def row(bare: list[float], ours: list[float]) -> dict[str, object]:
        return {
            "bare_process": Stats(bare),
            "batchq_process": Stats(ours),
            "orchestrator_peak_mb": 50.0,
            "worker_peak_mb": 60.0,
        }

    # bare's best is 5 s although its median is 30 s: batchq's median 6 s fails.
    p1 = {
        "1": row([1.0], [0.001]),
        "5": row([5.0, 30.0, 31.0], [6.0, 6.0]),
        "20": row([1.0], [0.02]),
    }
    lines = bench_main._goals(p1, None, None)
    p1_goal = next(line for line in lines if "P1 at N=5" in line)
    assert p1_goal.startswith("- ❌") and "×1.20" in p1_goal
    per = next(line for line in lines if "per-subtask" in line)
    assert per.startswith("- ✅") and "×1.00" in per
    # The polled bare variant's best (4 s) is the better bare run, so it is the one.
    p1["5"]["polled_process"] = Stats([4.0, 4.5])
    p1_goal = next(line for line in bench_main._goals(p1, None, None) if "P1 at N=5" in line)
    assert p1_goal.startswith("- ❌") and "×1.50" in p1_goal


def test_the_bimodality_probe_counts_the_producer_calls(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bench import bimodal

    assert bimodal.main(["--n", "5", "--reps", "1"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("rep 0: process") and "publish" in line
    assert "pubsub replies drained" in line and "result GETs" in line


def test_a_plain_bare_run_that_timed_out_is_shown_and_the_polled_one_judges() -> None:
    from bench import p1_fanout

    row: dict[str, object] = {
        "polled_chord": Stats([4.0]),
        "polled_process": Stats([4.5, 5.0]),
        "batchq_report": Stats([3.0]),
        "batchq_process": Stats([4.5]),
        "bare_timed_out": 1,
        "orchestrator_peak_mb": 50.0,
        "worker_peak_mb": 60.0,
    }
    assert p1_fanout.bare_best(row) == 4.5
    table = "\n".join(bench_main._p1_section({"5": row}))
    assert "1 run(s) over 300 s (timed out)" in table and "×1.00" in table


def test_the_orchestrators_peak_rss_shows_its_spread_and_the_goal_its_highest() -> None:
    row: dict[str, object] = {
        "polled_chord": Stats([4.0]),
        "polled_process": Stats([4.5]),
        "batchq_report": Stats([3.0]),
        "batchq_process": Stats([4.5]),
        "orchestrator_peak_mb": 152.0,
        "orchestrator_peaks_mb": [108.0, 152.0, 113.0],
        "worker_peak_mb": 60.0,
    }
    table = "\n".join(bench_main._p1_section({"5000": row}))
    assert "| 5000 | 152 (108–152 over 3) | 60 |" in table
    lines = bench_main._goals({"1000": row, "5000": row, "20000": row}, None, None)
    memory = next(line for line in lines if "peak RSS at N=5000" in line)
    assert memory.startswith("- ❌") and "152 MiB" in memory


def test_a_programs_peak_rss_is_its_own_not_the_bigger_benchs_that_started_it() -> None:
    ballast = b"x" * (300 << 20)  # the bench grows past 150 MiB over its bare runs
    code = "import sys; data = b'x' * (40 << 20); sys.exit(3)"
    run = common.run_process([sys.executable, "-c", code])
    assert len(ballast) == 300 << 20
    assert run.returncode == 3  # as the program exited, not its launcher
    assert 40 < run.peak_mb < 150  # its own 40 MiB and an interpreter, not 300 more


def test_a_program_killed_by_a_signal_is_reported_so() -> None:
    run = common.run_process([sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"])
    assert run.returncode == -9
