"""A/B: ``batchq run`` of N no-op subtasks from two source trees, alternating.

For judging a change on a shared machine, where a figure alone is noise: each
repetition runs the command from every tree in turn (``PYTHONPATH`` set to the tree),
each against a freshly started worker on an emptied Redis, in one project root, and
prints min / median / max and the peak RSS per tree. The workers run this tree's code.
On ext4 without a journal each run waits a minute for inodes freed before it to age
(bench.common.InodeQuiet), so every run is timed as a first run in its folder.

    python -m bench.ab --trees /work/main,/work/wt-NAME --n 2000 --reps 3

``--p2-runs K`` A/Bs P2's in-process figure instead: in each repetition every tree in
turn runs K ``Orchestrator.run()``s of a fresh 4-subtask feature in a fresh process
(``python -m bench.p2_latency --inproc``, its first run not counted), all against one
worker on one Redis, in one project root (as P2 runs them).

    python -m bench.ab --trees /work/main,/work/wt-NAME --p2-runs 20 --reps 6
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.common import (
    InodeQuiet,
    Stats,
    batchq_env,
    compile_tree,
    fresh_workers,
    noop_feature,
    redis,
    run_process,
    tmpdir,
    workers,
)

CODE = "import sys; sys.argv[0] = 'batchq'; from batchq.entry import main; sys.exit(main())"


def main(argv: Sequence[str] | None = None) -> dict[str, Stats]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trees", required=True, help="comma-separated source trees")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--p2-runs", type=int, default=0, help="A/B P2 in-process instead")
    args = parser.parse_args(argv)
    trees = args.trees.split(",")
    for tree in trees:
        compile_tree(Path(tree))
    if args.p2_runs:
        return p2(trees, args.reps, args.p2_runs)
    walls: dict[str, list[float]] = {tree: [] for tree in trees}
    peaks: dict[str, list[float]] = {tree: [] for tree in trees}
    with redis() as server:
        root = tmpdir("bench-ab-")
        quiet = InodeQuiet(root, args.n)
        quiet.deleted()  # what ran before (a previous bench) is unknown
        try:
            for k in range(args.reps):
                for i, tree in enumerate(trees):
                    name = f"ab-{i}-{k}"
                    noop_feature(root, name, args.n)
                    argv_ = [sys.executable, "-c", CODE, "run", name, "--root", str(root)]
                    quiet.wait()
                    with fresh_workers(server, "batchq.worker"):
                        done = run_process(argv_, env=_tree_env(server.url, tree), cwd=root)
                    done.check(f"{tree}: batchq run")
                    quiet.deleted()  # its rewrites freed N inodes
                    walls[tree].append(done.wall_s)
                    peaks[tree].append(done.peak_mb)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return _printed(
        walls,
        lambda tree, stats: (
            f"batchq run N={args.n} {stats.fmt()}, "
            f"peak RSS {min(peaks[tree]):.0f}–{max(peaks[tree]):.0f} MiB"
        ),
    )


def p2(trees: Sequence[str], reps: int, runs: int) -> dict[str, Stats]:
    """P2's in-process ``Orchestrator.run()`` from each tree, alternating (see above)."""
    times: dict[str, list[float]] = {tree: [] for tree in trees}
    with redis() as server:
        server.client().flushall()
        root = tmpdir("bench-ab-p2-")
        try:
            with workers(server.url, "batchq.worker"):
                start = 0
                for _ in range(reps):
                    for tree in trees:
                        argv_ = [sys.executable, "-m", "bench.p2_latency", "--inproc"]
                        argv_ += [server.url, str(root), "--runs", str(runs + 1)]
                        argv_ += ["--start", str(start)]
                        start += 1000
                        env = _tree_env(server.url, tree)
                        done = run_process(argv_, env=env, cwd=Path(tree)).check(f"{tree}: p2")
                        times[tree] += done.json_line()["times"][1:]
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return _printed(
        times,
        lambda _tree, stats: (
            f"P2 Orchestrator.run() p50 {stats.median * 1000:.2f} ms "
            f"(p25 {stats.pct(25) * 1000:.2f}, p75 {stats.pct(75) * 1000:.2f}), "
            f"min / max {stats.lo * 1000:.2f} / {stats.hi * 1000:.2f} ms, {len(stats.values)} runs"
        ),
    )


def _tree_env(url: str, tree: str) -> dict[str, str]:
    """A user's environment on this Redis that imports batchq (and bench) from ``tree``."""
    env = batchq_env(url)
    env["PYTHONPATH"] = tree
    return env


def _printed(values: dict[str, list[float]], line: Callable[[str, Stats], str]) -> dict[str, Stats]:
    """Each tree's figures as ``Stats``, one printed line each."""
    out = {tree: Stats(found) for tree, found in values.items()}
    for tree, stats in out.items():
        print(f"{tree}: {line(tree, stats)}", flush=True)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
