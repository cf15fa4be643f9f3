"""Worker CPU per no-op subtask: a batchq worker against a bare Celery worker.

With two cores every millisecond a worker spends per subtask is ~2.5 s of P1 at
5,000, whatever the wall clock of one run says; this reads the CPU time itself. Each
repetition starts a fresh worker (one, 2 prefork processes, as in P1) on an emptied
Redis, waits until it is ready, reads the CPU time (user + system, from
``/proc/<pid>/stat``) of its main process and pool processes, runs the user's whole
program (``python bench/bare.py`` for bare, ``batchq run`` of a no-op feature for
batchq), reads the CPU time again while the worker still lives, and divides the
difference by N. The idle cost of a worker over the same wall time (its timers,
batchq's heartbeat thread) is in that figure, as it is in a user's run; but a bare
chord in its slow mode (docs/benchmarks.md) keeps the program running for a minute
or more after the worker's last task, so the worker's idle rate is also read (over
``--idle-s`` seconds before the program starts) and a figure net of it is printed:
``(cpu - idle rate x wall) / N``, the work the subtasks themselves cost.

    python -m bench.workercpu --n 5000 --reps 3 [--only bare|batchq]
        [--trees /work/main,/work/wt-NAME]

``--trees`` runs the batchq side once per source tree in each repetition (workers
started in that tree, ``batchq run`` importing it): an A/B of the worker's code.

Prints, per side, min / median / max of the worker's CPU per subtask (ms), split into
the main process and the pool processes, and the wall time of the program.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from batchq.local.embedded import LocalWorkers, RedisServer
from batchq.procs import child_pids
from bench.common import (
    BATCHQ_QUEUES,
    REPO,
    Stats,
    bare_process,
    batchq_argv,
    batchq_env,
    compile_tree,
    fresh_workers,
    noop_feature,
    redis,
    run_process,
    tmpdir,
)

TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (its own, not its reaped children's)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * TICK_S


def worker_cpu(group: LocalWorkers) -> tuple[float, float]:
    """CPU seconds of the workers' main processes and of their pool processes."""
    main = pool = 0.0
    for child in group.children:
        main += cpu_s(child.pid)
        pool += sum(cpu_s(p) for p in child_pids(child.pid))
    return main, pool


@contextmanager
def tree_workers(server: RedisServer, tree: Path) -> Iterator[LocalWorkers]:
    """One batchq worker (2 prefork processes) running ``tree``'s code, on an emptied
    Redis."""
    server.client().flushall()
    group = LocalWorkers(
        server.url,
        queues=BATCHQ_QUEUES,
        env={"BATCHQ_PYTHON_ALLOW": "bench", "BATCHQ_LOG_FORMAT": "text", "PYTHONPATH": str(tree)},
        cwd=tree,
    )
    group.start()
    try:
        group.wait_ready(90)
        yield group
    finally:
        group.stop(grace_s=10)


def measure(
    side: str, n: int, server: RedisServer, root: Path, tree: Path = REPO, idle_s: float = 5.0
) -> tuple[float, float, float, float]:
    """One repetition: (main ms, pool ms) per subtask, the program's wall seconds and
    the worker's idle CPU rate (seconds per second) read just before."""
    url = server.url
    bare = side == "bare"
    workers = fresh_workers(server, "bench.bare") if bare else tree_workers(server, tree)
    with workers as group:
        before = sum(worker_cpu(group))
        time.sleep(idle_s)
        main0, pool0 = worker_cpu(group)
        idle_rate = (main0 + pool0 - before) / idle_s
        if side == "bare":
            wall = bare_process(url, n).wall_s
        else:
            name = f"wcpu-{os.urandom(3).hex()}"
            noop_feature(root, name, n)
            env = {**batchq_env(url), "PYTHONPATH": str(tree)}
            argv = [*batchq_argv(), "run", name, "--root", str(root)]
            done = run_process(argv, env=env, cwd=root).check("batchq run")
            wall = done.wall_s
        main1, pool1 = worker_cpu(group)
    return (main1 - main0) * 1000 / n, (pool1 - pool0) * 1000 / n, wall, idle_rate


def main(argv: Sequence[str] | None = None) -> dict[str, Stats]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", choices=("bare", "batchq"))
    parser.add_argument("--trees", help="comma-separated source trees for the batchq side")
    parser.add_argument("--idle-s", type=float, default=5.0, help="seconds to read idle CPU")
    args = parser.parse_args(argv)
    trees = [Path(t) for t in args.trees.split(",")] if args.trees else [REPO]
    for tree in trees:
        compile_tree(tree)
    sides = [] if args.only == "batchq" else ["bare"]
    if args.only != "bare":
        sides += [f"batchq {tree}" for tree in trees]
    figures: dict[str, dict[str, list[float]]] = {
        s: {"main": [], "pool": [], "total": [], "net": [], "wall": []} for s in sides
    }
    with redis() as server:
        root = tmpdir("bench-wcpu-")
        try:
            for _ in range(args.reps):
                for side in sides:  # interleaved: the machine's load hits both alike
                    kind, _, where = side.partition(" ")
                    main_ms, pool_ms, wall, idle = measure(
                        kind, args.n, server, root, Path(where) if where else REPO, args.idle_s
                    )
                    got = figures[side]
                    got["main"].append(main_ms)
                    got["pool"].append(pool_ms)
                    got["total"].append(main_ms + pool_ms)
                    got["net"].append(main_ms + pool_ms - idle * wall * 1000 / args.n)
                    got["wall"].append(wall)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    out = {}
    for side, got in figures.items():
        out[side] = Stats(got["total"])
        print(
            f"{side} N={args.n}: worker CPU per subtask {Stats(got['total']).fmt('ms')}"
            f" (main {Stats(got['main']).fmt('ms')}, pool {Stats(got['pool']).fmt('ms')};"
            f" net of idle {Stats(got['net']).fmt('ms')});"
            f" program wall {Stats(got['wall']).fmt()}",
            flush=True,
        )
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
