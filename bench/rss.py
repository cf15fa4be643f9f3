"""``python -m bench.rss --n 5000 --reps 3``: the orchestrator's peak RSS, alone.

``batchq run`` of N no-op subtasks as P1 runs it (a fresh project per run, one fresh
worker on an emptied Redis, the console script's command, timed and measured by
``bench/launch.py``), without P1's bare-Celery and dramatiq sides: a change's effect
on memory in some ten seconds a run at 5,000. Prints min / median / max of the peak.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence

from bench.common import (
    Stats,
    batchq_argv,
    batchq_env,
    fresh_workers,
    noop_feature,
    redis,
    run_process,
    tmpdir,
)


def main(argv: Sequence[str] | None = None) -> Stats:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    peaks: list[float] = []
    with redis() as server:
        for _ in range(args.reps):
            root = tmpdir("bench-rss-")
            try:
                noop_feature(root, "rss", args.n)
                with fresh_workers(server, "batchq.worker"):
                    command = [*batchq_argv(), "run", "rss", "--root", str(root)]
                    done = run_process(command, env=batchq_env(server.url))
                    done.check("batchq run")
                peaks.append(done.peak_mb)
            finally:
                shutil.rmtree(root, ignore_errors=True)
    stats = Stats(peaks)
    spread = f"{stats.lo:.1f} / {stats.median:.1f} / {stats.hi:.1f}"
    print(f"orchestrator peak RSS N={args.n}: {spread} MiB", flush=True)
    return stats


if __name__ == "__main__":
    main(sys.argv[1:])
