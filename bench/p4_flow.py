"""P4 flow mode: random DAGs of 60 subtasks sleeping 0.1–2 s on 8 slots (2 workers × 4).

Subtask i depends on each earlier j with probability 0.08, tripled when i is a
multiple of 7; seeds 1–6. Reference figures computed from the DAG: the lower bound
max(critical path, work / slots), the makespan of an ideal zero-overhead list
scheduler (a subtask joins a FIFO queue the moment its last dependency finishes,
ties by seq; a free slot takes the queue's head: what flow mode does, minus every
overhead), and the same list scheduler behind batch barriers (one dependency level at
a time). Measured: ``batchq run --mode flow`` and ``batchq run`` (batch mode) on the
same DAG. Makespan = first subtask start to last subtask finish, from the start and
finish times the workers recorded (the reports' results).
"""

from __future__ import annotations

import argparse
import heapq
import random
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchq.models import RunMode
from batchq.run.orchestrator import RunOptions, RunResult
from bench.common import BatchqClient, python_subtask, redis, tmpdir, workers, write_feature

WORKERS, THREADS = 2, 4
SLOTS = WORKERS * THREADS


@dataclass(frozen=True)
class Dag:
    durations: list[float]  # index i is subtask i + 1
    deps: list[list[int]]  # 0-based indices of earlier subtasks


def random_dag(n: int, seed: int, p: float = 0.08) -> Dag:
    rng = random.Random(seed)
    durations: list[float] = []
    deps: list[list[int]] = []
    for i in range(1, n + 1):
        durations.append(round(rng.uniform(0.1, 2.0), 3))
        chance = 3 * p if i % 7 == 0 else p
        deps.append([j for j in range(i - 1) if rng.random() < chance])
    return Dag(durations, deps)


def critical_path(dag: Dag) -> float:
    finish: list[float] = []
    for d, deps in zip(dag.durations, dag.deps, strict=True):
        finish.append(max((finish[j] for j in deps), default=0.0) + d)
    return max(finish, default=0.0)


def lower_bound(dag: Dag, slots: int) -> float:
    return max(critical_path(dag), sum(dag.durations) / slots)


def list_schedule(dag: Dag, slots: int) -> float:
    """Zero-overhead list scheduling: FIFO in order of becoming ready, ties by seq."""
    n = len(dag.durations)
    unmet = [len(d) for d in dag.deps]
    dependents: list[list[int]] = [[] for _ in range(n)]
    for i, deps in enumerate(dag.deps):
        for j in deps:
            dependents[j].append(i)
    queue = [i for i in range(n) if unmet[i] == 0]
    running: list[tuple[float, int]] = []  # (finish time, index)
    now, head = 0.0, 0
    while head < len(queue) or running:
        while head < len(queue) and len(running) < slots:
            i = queue[head]
            head += 1
            heapq.heappush(running, (now + dag.durations[i], i))
        now, done = heapq.heappop(running)
        finished = [done]
        while running and running[0][0] == now:
            finished.append(heapq.heappop(running)[1])
        for i in sorted(finished):
            for k in dependents[i]:
                unmet[k] -= 1
                if unmet[k] == 0:
                    queue.append(k)
    return now


def levels(dag: Dag) -> list[list[int]]:
    level: list[int] = []
    for deps in dag.deps:
        level.append(1 + max((level[j] for j in deps), default=0))
    out: dict[int, list[int]] = {}
    for i, lv in enumerate(level):
        out.setdefault(lv, []).append(i)
    return [out[k] for k in sorted(out)]


def batch_schedule(dag: Dag, slots: int) -> float:
    """The same list scheduler, one dependency level (planned batch) at a time."""
    total = 0.0
    for members in levels(dag):
        free = [0.0] * slots
        for i in members:
            heapq.heappush(free, heapq.heappop(free) + dag.durations[i])
        total += max(free)
    return total


def _feature(root: Path, dag: Dag, scale: float) -> None:
    out = root / "out"
    out.mkdir(parents=True, exist_ok=True)
    subs = []
    for i, d in enumerate(dag.durations, start=1):
        seq = f"{i:02d}"
        (out / f"{seq}.txt").touch()
        sub = python_subtask(
            seq, "bench.tasks:sleep", f"out/{seq}.txt", env={"BENCH_SLEEP_S": str(d * scale)}
        )
        sub["depends_on"] = [f"{j + 1:02d}" for j in dag.deps[i - 1]]
        subs.append(sub)
    write_feature(root, "p4", subs)


def makespan(result: RunResult) -> float:
    """First recorded start to last recorded finish, over every subtask of the run."""
    assert result.ok, [(r.batch, r.status) for r in result.reports]
    results = [r for report in result.reports for r in report.results]
    starts = [r.started_at for r in results if r.started_at is not None]
    ends = [r.finished_at for r in results if r.finished_at is not None]
    assert len(starts) == len(ends) == len(results)
    return (max(ends) - min(starts)).total_seconds()


def run_mode(client: BatchqClient, dag: Dag, mode: RunMode, scale: float) -> float:
    root = tmpdir(f"bench-p4-{mode.value}-")
    try:
        _feature(root, dag, scale)
        return makespan(client.orchestrator(root, "p4").run(RunOptions(mode=mode)))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> dict[int, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--seeds", default="1,2,3,4,5,6")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every duration")
    args = parser.parse_args(argv)
    rows: dict[int, dict[str, float]] = {}
    with redis() as server:
        client = BatchqClient(server.url)
        try:
            with workers(
                server.url, "batchq.worker", count=WORKERS, concurrency=THREADS, pool="threads"
            ):
                for seed in (int(s) for s in args.seeds.split(",")):
                    dag = random_dag(args.n, seed)
                    scaled = Dag([d * args.scale for d in dag.durations], dag.deps)
                    row: dict[str, Any] = {
                        "lower_bound": lower_bound(scaled, SLOTS),
                        "ideal_flow": list_schedule(scaled, SLOTS),
                        "ideal_batch": batch_schedule(scaled, SLOTS),
                        "flow": run_mode(client, dag, RunMode.FLOW, args.scale),
                        "batch": run_mode(client, dag, RunMode.BATCH, args.scale),
                    }
                    rows[seed] = row
                    lb, ideal = row["lower_bound"], row["ideal_flow"]
                    print(
                        f"P4 seed {seed}: bound {lb:.2f}s, ideal flow {ideal:.2f}s "
                        f"(×{ideal / lb:.2f}), ideal batch ×{row['ideal_batch'] / lb:.2f}; "
                        f"measured flow {row['flow']:.2f}s (×{row['flow'] / lb:.2f}, "
                        f"×{row['flow'] / ideal:.2f} of ideal), batch {row['batch']:.2f}s "
                        f"(×{row['batch'] / lb:.2f})",
                        flush=True,
                    )
        finally:
            client.close()
    worst = max(r["flow"] / r["ideal_flow"] for r in rows.values())
    print(
        f"P4 goal: flow within 1.10 × simulated ideal on every seed: worst ×{worst:.2f} "
        f"{'met' if worst <= 1.10 else 'NOT met'}",
        flush=True,
    )
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
