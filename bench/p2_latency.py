"""P2 small-batch latency: a batch of 4 no-op subtasks, submit to report, many runs.

bare:   ``chord(group(noop.s() × 4), done.s())().get()``.
batchq: ``Orchestrator.run()`` on a fresh 4-subtask feature of one project each time
        (validation, lock, run token, publish, wait, file mirroring, saved report).
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
    timed,
    tmpdir,
    workers,
)

SIZE = 4


def run_bare(url: str, runs: int) -> Stats:
    bare = bare_app(url)
    with workers(url, "bench.bare"):
        chord(group(bare.noop.s() for _ in range(SIZE)), bare.done.s())().get(timeout=60)  # warm
        return Stats(
            [
                timed(
                    lambda: chord(group(bare.noop.s() for _ in range(SIZE)), bare.done.s())().get(
                        timeout=60
                    )
                )
                for _ in range(runs)
            ]
        )


def run_batchq(url: str, runs: int) -> Stats:
    """One project, a fresh 4-subtask feature per run: what a user has (the workers'
    per-workspace set-up, such as the write check's watch, is paid once, as in use)."""
    client = BatchqClient(url)
    values: list[float] = []
    root = tmpdir("bench-p2-")
    try:
        with workers(url, "batchq.worker"):
            for i in range(runs + 1):
                name = f"p2-{i}"
                noop_feature(root, name, SIZE)
                elapsed, result = measure(client.orchestrator(root, name).run)
                assert result.ok
                if i:  # the first run warms the worker processes
                    values.append(elapsed)
    finally:
        client.close()
        shutil.rmtree(root, ignore_errors=True)
    return Stats(values)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args(argv)
    with redis() as server:
        bare = run_bare(server.url, args.runs)
        ours = run_batchq(server.url, args.runs)
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
