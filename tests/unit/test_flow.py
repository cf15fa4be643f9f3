"""Flow scheduling (pure): readiness without batch barriers, conflicts, skips."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchq.core import planner
from batchq.core.flowschedule import FlowSchedule, Skip
from batchq.core.paths import overlaps
from batchq.models import Feature, ResultState, Subtask, SubtaskStatus, TaskFile

OK = ResultState.COMPLETED


def sub(
    seq: str,
    *deps: str,
    status: str = "pending",
    parallel: bool = True,
    deliverables: Sequence[str] | None = None,
    **extra: Any,
) -> Subtask:
    return Subtask(
        id=f"feat-{seq}",
        seq=seq,
        title=f"Subtask {seq}",
        status=SubtaskStatus(status),
        depends_on=list(deps),
        parallel=parallel,
        acceptance_criteria=["it works"],
        deliverables=list(deliverables or [f"out/{seq}.txt"]),
        **extra,
    )


def feature(*subtasks: Subtask) -> Feature:
    return Feature(
        name="feat",
        root=Path("/project"),
        path=Path("/project/.tmp/tasks/feat"),
        task=TaskFile(id="feat", name="Feature"),
        subtasks=list(subtasks),
    )


def schedule(*subtasks: Subtask, weights: dict[str, float] | None = None) -> FlowSchedule:
    f = feature(*subtasks)
    return FlowSchedule(f, planner.plan(f), weights)


def start(flow: FlowSchedule) -> list[str]:
    seqs = flow.ready()
    for seq in seqs:
        flow.enqueued(seq)
    return seqs


def test_a_subtask_is_ready_when_its_own_dependencies_completed_not_its_batch() -> None:
    # Plan: batch 1 = 01, 02; batch 2 = 03 (after 01), 04 (after 02).
    flow = schedule(sub("01"), sub("02"), sub("03", "01"), sub("04", "02"))
    assert start(flow) == ["01", "02"]
    assert flow.finished("01", OK) == []
    assert start(flow) == ["03"]  # 02 of batch 1 still runs: no barrier
    assert flow.batch_of["03"] == 2
    assert flow.members_left(1) == 1 and flow.members_left(2) == 2


def test_completed_dependencies_outside_the_plan_count_as_met() -> None:
    flow = schedule(sub("01", status="completed"), sub("02", "01"))
    assert start(flow) == ["02"]


def test_overlapping_deliverables_never_fly_together() -> None:
    flow = schedule(
        sub("01", deliverables=["src/"]),
        sub("02", deliverables=["src/a.py"]),
        sub("03", deliverables=["docs/a.md"]),
    )
    assert start(flow) == ["01", "03"]
    assert flow.ready() == []
    flow.finished("01", OK)
    assert start(flow) == ["02"]


def test_a_parallel_false_subtask_runs_alone_and_holds_back_what_follows() -> None:
    flow = schedule(sub("01"), sub("02", parallel=False), sub("03", "01"), sub("04", "01"))
    assert start(flow) == ["01"]  # 02 waits for 01 to drain, ranked after it (batch 2)
    flow.finished("01", OK)
    # 02 (batch 2) ranks before 03, 04 (batch 3): it runs alone, they wait.
    assert start(flow) == ["02"]
    assert flow.ready() == []
    flow.finished("02", OK)
    assert start(flow) == ["03", "04"]


def test_longest_first_among_simultaneously_ready_subtasks() -> None:
    flow = schedule(sub("01"), sub("02"), sub("03"), weights={"02": 5.0, "03": 1.0})
    assert flow.ready() == ["02", "03", "01"]


def test_a_failure_skips_exactly_the_transitive_dependents_with_reasons() -> None:
    flow = schedule(
        sub("01"),
        sub("02"),
        sub("03", "01"),
        sub("04", "03"),
        sub("05", "02"),
        sub("06", "04", "05"),
    )
    start(flow)
    skips = flow.finished("01", ResultState.FAILED)
    assert skips == [
        Skip("03", "depends on 01, which failed", "01"),
        Skip("04", "depends on 03, which was skipped (01 failed)", "01"),
        Skip("06", "depends on 04, which was skipped (01 failed)", "01"),
    ]
    flow.finished("02", OK)
    assert start(flow) == ["05"]  # independent of 01: still runs
    flow.finished("05", OK)
    assert flow.done
    assert set(flow.skipped) == {"03", "04", "06"}


def test_a_timed_out_dependency_is_named_as_such() -> None:
    flow = schedule(sub("01"), sub("02", "01"))
    start(flow)
    assert flow.finished("01", ResultState.TIMED_OUT) == [
        Skip("02", "depends on 01, which timed out", "01")
    ]


def test_stop_skips_everything_waiting_and_enqueues_nothing_more() -> None:
    flow = schedule(sub("01"), sub("02", "01"), sub("03", deliverables=["out/01.txt"]))
    start(flow)
    skips = flow.stop("not started: 01 failed, policy terminate")
    assert [s.seq for s in skips] == ["02", "03"]
    assert flow.ready() == [] and not flow.done
    flow.finished("01", ResultState.FAILED)
    assert flow.done


def test_duplicate_and_unknown_finish_events_are_ignored() -> None:
    flow = schedule(sub("01"), sub("02", "01"))
    start(flow)
    flow.finished("01", OK)
    assert flow.finished("01", ResultState.FAILED) == []
    assert flow.finished("99", OK) == []
    assert flow.results["01"] is OK and flow.ready() == ["02"]


def test_enqueuing_a_subtask_that_is_not_ready_is_refused() -> None:
    flow = schedule(sub("01"), sub("02", "01"))
    with pytest.raises(ValueError, match="not ready"):
        flow.enqueued("02")


def test_blocked_subtasks_and_their_dependents_are_outside_the_schedule() -> None:
    flow = schedule(sub("01", status="blocked"), sub("02", "01"), sub("03"))
    assert set(flow.todo) == {"03"}
    assert start(flow) == ["03"]


# --- properties over random DAGs -------------------------------------------------------


@st.composite
def dags(draw: st.DrawFn) -> tuple[Feature, dict[str, bool], int]:
    n = draw(st.integers(1, 14))
    subs = []
    folders = ["a/", "a/x.txt", "b/y.txt", "c.txt"]
    for i in range(1, n + 1):
        seq = f"{i:02d}"
        deps = draw(st.sets(st.integers(1, i - 1), max_size=3)) if i > 1 else set()
        shared = draw(st.booleans())
        deliverable = draw(st.sampled_from(folders)) if shared else f"own/{seq}.txt"
        subs.append(
            sub(
                seq,
                *[f"{d:02d}" for d in sorted(deps)],
                parallel=draw(st.integers(0, 5)) > 0,
                deliverables=[deliverable],
            )
        )
    outcomes = {f"{i:02d}": draw(st.integers(0, 4)) > 0 for i in range(1, n + 1)}
    return feature(*subs), outcomes, draw(st.integers(0, 2**16))


@given(dags())
def test_random_runs_keep_every_rule(case: tuple[Feature, dict[str, bool], int]) -> None:
    f, outcomes, seed = case
    flow = FlowSchedule(f, planner.plan(f))
    by_seq = f.by_seq()
    rng = random.Random(seed)
    finished_order: list[str] = []
    for _ in range(10 * len(by_seq) + 10):
        for seq in start(flow):
            running = flow.in_flight - {seq}
            me = by_seq[seq]
            # dependencies always completed first
            assert all(flow.results.get(d) is OK for d in me.depends_on)
            for other in running:
                them = by_seq[other]
                assert me.parallel and them.parallel, "parallel: false must run alone"
                assert not any(
                    overlaps(a, b) for a in me.deliverables for b in them.deliverables
                ), f"{seq} and {other} overlap"
        if flow.done:
            break
        assert flow.in_flight, "nothing in flight while subtasks wait: a deadlock"
        seq = rng.choice(sorted(flow.in_flight))
        flow.finished(seq, OK if outcomes[seq] else ResultState.FAILED)
        finished_order.append(seq)
    assert flow.done
    # every subtask eventually ran or was skipped, and skipped ones had a failed ancestor
    assert set(flow.results) | set(flow.skipped) == set(by_seq)
    assert not set(flow.results) & set(flow.skipped)
    failed = {s for s, r in flow.results.items() if r is not OK}
    for seq in flow.skipped:
        assert _ancestors(by_seq, seq) & failed
    for seq in flow.results:
        assert not _ancestors(by_seq, seq) & failed
    assert all(flow.members_left(b.number) == 0 for b in flow.batches)


def _ancestors(by_seq: dict[str, Subtask], seq: str) -> set[str]:
    out: set[str] = set()
    stack = list(by_seq[seq].depends_on)
    while stack:
        dep = stack.pop()
        if dep not in out:
            out.add(dep)
            stack.extend(by_seq[dep].depends_on)
    return out
