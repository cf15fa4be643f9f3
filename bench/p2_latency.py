"""P2 small-batch latency: a batch of 4 no-op subtasks, submit to report, many runs.

In-process (submit to report, the figure a long-lived orchestrator sees):
  bare:   ``chord(group(noop.s() × 4), done.s())().get()`` in ``python bench/bare.py
          --runs K`` processes;
  batchq: ``Orchestrator.run()`` on a fresh 4-subtask feature of one project each time
          (validation, lock, run token, publish, wait, file mirroring, saved report), in
          ``python -m bench.p2_latency --inproc`` processes.
  The two alternate in blocks, each block a fresh process (never the bench's own).
Whole programs (what a user times): ``python bench/bare.py --n 4`` against
  ``batchq run <feature>``, one process each, alternating.
One fresh worker per side (2 prefork processes) on an emptied Redis.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import (
    BatchqClient,
    Stats,
    bare_process,
    batchq_argv,
    batchq_env,
    measure,
    noop_feature,
    redis,
    run_process,
    tmpdir,
    workers,
)

SIZE = 4
BLOCK = 5


def _inproc_batchq(url: str, root: Path, runs: int, start: int) -> tuple[list[float], list[float]]:
    """``runs`` batchq runs in this process, each on a fresh feature: the whole
    ``Orchestrator.run()``, and within it submit to report (from the batch's
    ``submitted_at``, taken just before its messages are built and published, to the
    report handed to ``on_report``, after the files are mirrored and the report saved)."""
    from batchq.run.orchestrator import RunOptions

    client = BatchqClient(url)
    values: list[float] = []
    inner: list[float] = []
    try:
        for k in range(start, start + runs):
            name = f"p2-{k}"
            noop_feature(root, name, SIZE)
            marks: dict[str, float] = {}

            def submitted(sub: Any, marks: dict[str, float] = marks) -> None:
                marks["submitted"] = sub.submitted_at.timestamp()

            def reported(_: Any, marks: dict[str, float] = marks) -> None:
                marks["reported"] = time.time()

            options = RunOptions(on_submit=submitted, on_report=reported)
            elapsed, result = measure(partial(client.orchestrator(root, name).run, options))
            assert result.ok
            values.append(elapsed)
            inner.append(marks["reported"] - marks["submitted"])
    finally:
        client.close()
    return values, inner


def run_pair(url: str, runs: int, cli_runs: int) -> dict[str, Stats]:
    """The first run of every block is not counted: it pays for the process's
    connections and warms its caches, and may start while the other side's last run
    still has work in flight (batchq's chord callback, batched task events). batchq
    uses one project, a fresh 4-subtask feature per run, which is what a user has (the
    workers' per-workspace set-up, such as the write check's watch, is paid once, as in
    use)."""
    bare_values: list[float] = []
    values: list[float] = []
    inner: list[float] = []
    bare_cli: list[float] = []
    ours_cli: list[float] = []
    root = tmpdir("bench-p2-")
    count = itertools.count()
    env = batchq_env(url)
    try:
        with workers(url, "bench.bare"), workers(url, "batchq.worker"):
            while len(values) < runs:
                block = min(BLOCK, runs - len(values))
                bare_values += bare_process(url, SIZE, runs=block + 1).json_line()["chord_s"][1:]
                argv = [sys.executable, "-m", "bench.p2_latency", "--inproc", url, str(root)]
                argv += ["--runs", str(block + 1), "--start", str(next(count) * 100)]
                run = run_process(argv, env=env).check("p2 --inproc")
                values += run.json_line()["times"][1:]
                inner += run.json_line()["submit_to_report"][1:]
            for k in range(cli_runs):
                bare_cli.append(bare_process(url, SIZE).wall_s)
                name = f"p2-cli-{k}"
                noop_feature(root, name, SIZE)
                argv = [*batchq_argv(), "run", name, "--root", str(root)]
                ours_cli.append(run_process(argv, env=env).check("batchq run").wall_s)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "bare": Stats(bare_values),
        "batchq": Stats(values),
        "batchq_submit": Stats(inner),
        "bare_process": Stats(bare_cli),
        "batchq_process": Stats(ours_cli),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--cli-runs", type=int, default=15)
    parser.add_argument("--inproc", nargs=2, metavar=("URL", "ROOT"), help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inproc:
        times, inner = _inproc_batchq(args.inproc[0], Path(args.inproc[1]), args.runs, args.start)
        print(json.dumps({"times": times, "submit_to_report": inner}), flush=True)
        return {}
    with redis() as server:
        server.client().flushall()
        stats = run_pair(server.url, args.runs, args.cli_runs)
    bare, ours = stats["bare"], stats["batchq"]
    print(
        f"P2 batch of {SIZE}: bare p50 {bare.median * 1000:.1f} ms "
        f"p95 {bare.pct(95) * 1000:.1f} ms; "
        f"batchq p50 {ours.median * 1000:.1f} ms p95 {ours.pct(95) * 1000:.1f} ms; "
        f"ratio p50 ×{ours.median / bare.median:.2f}; whole programs: python bare.py "
        f"{stats['bare_process'].fmt()}, batchq run {stats['batchq_process'].fmt()}",
        flush=True,
    )
    return stats


if __name__ == "__main__":
    main(sys.argv[1:])
