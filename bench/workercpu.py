"""Worker CPU per no-op subtask: a batchq worker against a bare Celery worker.

With two cores every millisecond a worker spends per subtask is ~2.5 s of P1 at
5,000, whatever the wall clock of one run says; this reads the CPU time itself. Each
repetition starts a fresh worker (one, 2 prefork processes, as in P1) on an emptied
Redis, waits until it is ready, reads the CPU time (user + system, from
``/proc/<pid>/stat``) of its main process and pool processes, runs the user's whole
program (``python bench/bare.py`` for bare, ``batchq run`` of a no-op feature for
batchq), reads the CPU time again while the worker still lives, and divides the
difference by N. The idle cost of a worker over the same wall time (its timers,
batchq's heartbeat thread) is in the figure, as it is in a user's run.

    python -m bench.workercpu --n 5000 --reps 3 [--only bare|batchq]

Prints, per side, min / median / max of the worker's CPU per subtask (ms), split into
the main process and the pool processes, and the wall time of the program.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from batchq.local.embedded import LocalWorkers
from batchq.procs import child_pids
from bench.common import (
    REPO,
    Stats,
    bare_process,
    batchq_argv,
    batchq_env,
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


def measure(side: str, n: int, url: str, server: object, root: Path) -> tuple[float, float, float]:
    """One repetition: (main ms, pool ms) per subtask and the program's wall seconds."""
    app = "bench.bare" if side == "bare" else "batchq.worker"
    with fresh_workers(server, app) as group:  # type: ignore[arg-type]
        main0, pool0 = worker_cpu(group)
        if side == "bare":
            wall = bare_process(url, n).wall_s
        else:
            name = f"wcpu-{os.urandom(3).hex()}"
            noop_feature(root, name, n)
            argv = [*batchq_argv(), "run", name, "--root", str(root)]
            done = run_process(argv, env=batchq_env(url), cwd=root).check("batchq run")
            wall = done.wall_s
        main1, pool1 = worker_cpu(group)
    return (main1 - main0) * 1000 / n, (pool1 - pool0) * 1000 / n, wall


def main(argv: Sequence[str] | None = None) -> dict[str, Stats]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", choices=("bare", "batchq"))
    args = parser.parse_args(argv)
    sides = [args.only] if args.only else ["bare", "batchq"]
    figures: dict[str, dict[str, list[float]]] = {
        s: {"main": [], "pool": [], "total": [], "wall": []} for s in sides
    }
    with redis() as server:
        root = tmpdir("bench-wcpu-")
        try:
            for _ in range(args.reps):
                for side in sides:  # interleaved: the machine's load hits both alike
                    main_ms, pool_ms, wall = measure(side, args.n, server.url, server, root)
                    got = figures[side]
                    got["main"].append(main_ms)
                    got["pool"].append(pool_ms)
                    got["total"].append(main_ms + pool_ms)
                    got["wall"].append(wall)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    out = {}
    for side, got in figures.items():
        out[side] = Stats(got["total"])
        print(
            f"{side} ({REPO}) N={args.n}: worker CPU per subtask {Stats(got['total']).fmt('ms')}"
            f" (main {Stats(got['main']).fmt('ms')}, pool {Stats(got['pool']).fmt('ms')});"
            f" program wall {Stats(got['wall']).fmt()}",
            flush=True,
        )
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
