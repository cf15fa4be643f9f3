"""P2 small-batch latency: a batch of 4 no-op subtasks, submit to report, many runs.

bare:   ``chord(group(noop.s() × 4), done.s())().get()``.
batchq: ``Orchestrator.run()`` on a fresh 4-subtask feature of one project each time
        (validation, lock, run token, publish, wait, file mirroring, saved report).
The two alternate in blocks of runs.
"""

from __future__ import annotations

import argparse
import itertools
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
    timed,
    tmpdir,
    workers,
)

SIZE = 4
BLOCK = 5


def run_pair(url: str, runs: int) -> tuple[Stats, Stats]:
    """Bare and batchq latencies in alternating blocks of back-to-back runs, so that
    both see the same machine (see P1). The first run of every block is not counted:
    it starts while the other side's last run may still have work in flight (batchq's
    chord callback, batched task events), and after the other side warmed the caches.
    batchq: one project, a fresh 4-subtask feature per run, which is what a user has
    (the workers' per-workspace set-up, such as the write check's watch, is paid once,
    as in use)."""
    bare = bare_app(url)
    client = BatchqClient(url)
    bare_values: list[float] = []
    values: list[float] = []
    root = tmpdir("bench-p2-")
    count = itertools.count()

    def bare_once() -> float:
        return timed(
            lambda: chord(group(bare.noop.s() for _ in range(SIZE)), bare.done.s())().get(
                timeout=60
            )
        )

    def batchq_once() -> float:
        name = f"p2-{next(count)}"
        noop_feature(root, name, SIZE)
        elapsed, result = measure(client.orchestrator(root, name).run)
        assert result.ok
        return elapsed

    try:
        with workers(url, "bench.bare"), workers(url, "batchq.worker"):
            while len(values) < runs:
                block = min(BLOCK, runs - len(values))
                bare_values += [bare_once() for _ in range(block + 1)][1:]
                values += [batchq_once() for _ in range(block + 1)][1:]
    finally:
        client.close()
        shutil.rmtree(root, ignore_errors=True)
    return Stats(bare_values), Stats(values)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args(argv)
    with redis() as server:
        bare, ours = run_pair(server.url, args.runs)
    print(
        f"P2 batch of {SIZE}: bare p50 {bare.median * 1000:.1f} ms "
        f"p95 {bare.pct(95) * 1000:.1f} ms; "
        f"batchq p50 {ours.median * 1000:.1f} ms p95 {ours.pct(95) * 1000:.1f} ms; "
        f"ratio p50 ×{ours.median / bare.median:.2f}",
        flush=True,
    )
    return {"bare": bare, "batchq": ours}


if __name__ == "__main__":
    main(sys.argv[1:])
