"""P1 fan-out/fan-in: one batch of N no-op subtasks, submit to report.

bare:   ``chord(group(noop.s() × N), done.s())().get()`` — what a user writes.
batchq: ``Orchestrator.run()`` on a feature folder of N ``python``-agent subtasks,
        including validation, planning, file mirroring and the verified report.
Both on one worker with 2 prefork processes; the repetitions alternate (bare, batchq, ...).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from celery import chord, group

from bench.common import (
    REPO,
    BatchqClient,
    Stats,
    bare_app,
    measure,
    noop_feature,
    redis,
    self_peak_mb,
    timed,
    tmpdir,
    workers,
)

SETTLE_S = 1.0


def run_pair(url: str, n: int, reps: int) -> tuple[Stats, Stats, float, float]:
    """Bare and batchq wall times, interleaved (bare, batchq, bare, ...) so that both
    see the same machine: on a shared VM a burst of load otherwise lands on one side.
    Each side has its own worker, idle while the other runs, and each run starts after
    a pause, so that neither side's leftover work lands in the other's figure. Also
    the batchq worker's peak RSS and the orchestrator's: one more run in a process of
    its own (this one's heap still holds what the bare runs used)."""
    bare = bare_app(url)
    client = BatchqClient(url)
    bare_values: list[float] = []
    values: list[float] = []
    roots: list[Path] = []
    try:
        with workers(url, "bench.bare"), workers(url, "batchq.worker") as group_:
            for _ in range(reps):
                bare_values.append(
                    timed(
                        lambda: chord(group(bare.noop.s() for _ in range(n)), bare.done.s())().get(
                            timeout=900
                        )
                    )
                )
                time.sleep(SETTLE_S)
                root = tmpdir("bench-p1-")
                roots.append(root)
                noop_feature(root, "p1", n)
                elapsed, run = measure(client.orchestrator(root, "p1").run)
                values.append(elapsed)
                assert run.ok and run.reports[0].completed == n, run.reports[0].status
                time.sleep(SETTLE_S)
            orchestrator_peak = _orchestrator_peak_mb(url, n)
            from batchq.procs import child_pids
            from bench.common import proc_peak_mb

            peak = 0.0
            for child in group_.children:
                peak = max(
                    [peak, proc_peak_mb(child.pid)]
                    + [proc_peak_mb(p) for p in child_pids(child.pid)]
                )
    finally:
        client.close()
        # Deleted after the scenario, not between runs: see the note on `discard` in
        # bench/__main__.py; a rep would otherwise pay for trimming the last one's files.
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)
    return Stats(bare_values), Stats(values), peak, orchestrator_peak


def _orchestrator_peak_mb(url: str, n: int) -> float:
    done = subprocess.run(
        [sys.executable, "-m", "bench.p1_fanout", "--memory-of", url, "--sizes", str(n)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    return float(done.stdout.split()[-1])


def _one_run_peak_mb(url: str, n: int) -> float:
    """This process's peak RSS over one batchq run of ``n`` (workers already serve
    ``url``): what an orchestrator needs, imports included."""
    client = BatchqClient(url)
    root = tmpdir("bench-p1-mem-")
    try:
        noop_feature(root, "p1", n)
        assert client.orchestrator(root, "p1").run().ok
    finally:
        client.close()
        shutil.rmtree(root, ignore_errors=True)
    return self_peak_mb()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="500,2000,5000")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--memory-of", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.memory_of:
        print(f"{_one_run_peak_mb(args.memory_of, sizes[0]):.1f}")
        return {}
    rows: dict[str, Any] = {}
    with redis() as server:
        for n in sizes:
            bare, ours, worker_peak, orchestrator_peak = run_pair(server.url, n, args.reps)
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
