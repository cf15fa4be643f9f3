"""Planner benchmark: ``validate`` + ``plan`` on random DAG features, in memory.

Run it as ``.venv/bin/python bench/plan.py [--sizes 1000,10000,50000] [--seed N]``.
Each subtask depends on a few earlier ones (so the graph is a DAG), a fifth of them
are completed (a prefix, so completed subtasks only wait on completed ones), most are
``parallel: true``, and deliverables come from a path alphabet small enough that files
and folders overlap. Building the feature is not timed; the goal is linear growth
(10k subtasks within 0.5 s on a 2-core machine).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from batchq.core import planner
from batchq.models import Feature, Subtask, SubtaskStatus, TaskFile

DEFAULT_SIZES = (1_000, 10_000, 50_000)


def make_feature(size: int, seed: int = 0) -> Feature:
    """A random, valid feature of ``size`` subtasks."""
    rng = random.Random(seed)
    width = len(str(size)) if size > 99 else 2
    seqs = [str(i).zfill(width) for i in range(1, size + 1)]
    modules = max(1, size // 20)
    done = size // 5
    subtasks = []
    for i, seq in enumerate(seqs):
        deps = rng.sample(seqs[:i], k=min(i, rng.randint(0, 3)))
        module = f"src/m{rng.randrange(modules)}"
        deliverables = [f"{module}/f{rng.randrange(10)}.py"]
        if rng.random() < 0.05:
            deliverables.append(f"{module}/")
        if rng.random() < 0.3:
            deliverables.append(f"tests/test_m{rng.randrange(modules)}.py")
        subtasks.append(
            Subtask(
                id=f"bench-{seq}",
                seq=seq,
                title=f"Subtask {seq}",
                status=SubtaskStatus.COMPLETED if i < done else SubtaskStatus.PENDING,
                depends_on=deps,
                parallel=rng.random() < 0.9,
                acceptance_criteria=["done"],
                deliverables=deliverables,
                context_files=[f"{module}/README.md"],
            )
        )
    return Feature(
        name="bench",
        root=Path("."),
        path=Path(".tmp/tasks/bench"),
        task=TaskFile(id="bench", name="Bench"),
        subtasks=subtasks,
    )


def measure(size: int, seed: int = 0, repeat: int = 3) -> tuple[float, int]:
    """Best wall time of ``validate`` + ``plan`` over ``repeat`` runs, and the batch count."""
    feature = make_feature(size, seed)
    best = float("inf")
    batches = 0
    for _ in range(repeat):
        start = time.perf_counter()
        planner.validate(feature)
        result = planner.plan(feature)
        best = min(best, time.perf_counter() - start)
        batches = len(result.batches)
    return best, batches


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    sizes = [int(part) for part in args.sizes.split(",") if part.strip()]
    print(f"{'subtasks':>9} {'batches':>8} {'validate+plan':>14} {'per subtask':>12}")
    for size in sizes:
        seconds, batches = measure(size, args.seed, args.repeat)
        per = seconds / size * 1e6
        print(f"{size:>9} {batches:>8} {seconds:>12.3f} s {per:>9.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
