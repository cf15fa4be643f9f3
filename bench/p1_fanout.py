"""P1 fan-out/fan-in: one batch of N no-op subtasks, submit to report.

bare:   ``chord(group(noop.s() × N), done.s())().get()`` — what a user writes.
batchq: ``Orchestrator.run()`` on a feature folder of N ``python``-agent subtasks,
        including validation, planning, file mirroring and the verified report.
Both on one worker with 2 prefork processes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from typing import Any

from celery import chord, group

from bench.common import (
    BatchqClient,
    Stats,
    bare_app,
    measure,
    noop_feature,
    redis,
    reset_peak_rss,
    self_peak_mb,
    timed,
    tmpdir,
    workers,
)


def run_bare(url: str, n: int, reps: int) -> Stats:
    bare = bare_app(url)
    with workers(url, "bench.bare"):
        values = []
        for _ in range(reps):
            values.append(
                timed(
                    lambda: chord(group(bare.noop.s() for _ in range(n)), bare.done.s())().get(
                        timeout=900
                    )
                )
            )
    return Stats(values)


def run_batchq(url: str, n: int, reps: int) -> tuple[Stats, float, float]:
    """Wall times, the worker's peak RSS and the orchestrator's (this process's, from
    the first batchq run: the bare producer's own peak is not counted)."""
    client = BatchqClient(url)
    values = []
    peak = 0.0
    reset_peak_rss()
    try:
        with workers(url, "batchq.worker") as group_:
            for _ in range(reps):
                root = tmpdir("bench-p1-")
                noop_feature(root, "p1", n)
                elapsed, run = measure(client.orchestrator(root, "p1").run)
                values.append(elapsed)
                assert run.ok and run.reports[0].completed == n, run.reports[0].status
                shutil.rmtree(root, ignore_errors=True)
            from batchq.procs import child_pids
            from bench.common import proc_peak_mb

            for child in group_.children:
                peak = max(
                    [peak, proc_peak_mb(child.pid)]
                    + [proc_peak_mb(p) for p in child_pids(child.pid)]
                )
    finally:
        client.close()
    return Stats(values), peak, self_peak_mb()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="500,2000,5000")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: dict[str, Any] = {}
    with redis() as server:
        for n in sizes:
            bare = run_bare(server.url, n, args.reps)
            ours, worker_peak, orchestrator_peak = run_batchq(server.url, n, args.reps)
            rows[str(n)] = {
                "bare": bare,
                "batchq": ours,
                "worker_peak_mb": worker_peak,
                "orchestrator_peak_mb": orchestrator_peak,
            }
            print(
                f"P1 N={n:>5}: bare {bare.fmt()}  batchq {ours.fmt()}  "
                f"speed-up ×{bare.median / ours.median:.2f}  "
                f"batchq per subtask {ours.median / n * 1000:.2f} ms",
                flush=True,
            )
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
