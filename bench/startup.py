"""Start-up: ``batchq --version`` and ``batchq status`` on a 10-subtask feature.

What every command pays before it does anything: the interpreter, the imports, the
settings and (for ``status``) loading and validating the feature's files. Each command
runs as a whole process, one warm-up run first (the page cache), then ``--runs`` runs.
Needs no Redis. ``python -X importtime -m batchq --version`` shows where the time goes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

from bench.common import REPO, Stats, batchq_argv, compile_tree, noop_feature, run_process, tmpdir

GOAL_MS = 150.0


def measure_commands(runs: int) -> dict[str, Stats]:
    compile_tree()
    root = tmpdir("bench-startup-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHQ_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    commands = {
        "batchq --version": ["--version"],
        "batchq status (10 subtasks)": ["status", "p1", "--root", str(root)],
    }
    out: dict[str, Stats] = {}
    try:
        noop_feature(root, "p1", 10)
        for label, args in commands.items():
            argv = [*batchq_argv(), *args]
            run_process(argv, env=env, cwd=root).check(label)  # warm-up
            out[label] = Stats(
                [run_process(argv, env=env, cwd=root).check(label).wall_s for _ in range(runs)]
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args(argv)
    stats = measure_commands(args.runs)
    for label, s in stats.items():
        print(f"start-up {label}: {s.fmt('s')} (goal median ≤ {GOAL_MS:.0f} ms)", flush=True)
    return stats


if __name__ == "__main__":
    main(sys.argv[1:])
