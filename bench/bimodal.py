"""Why the bare chord is bimodal: ``python -m bench.bimodal --n 5000 --reps 6``.

Each repetition is ``python bench/bare.py --count`` in a fresh process against a
freshly started worker on an emptied Redis (as P1 runs it), printing the publish and
``get()`` times and the counts of the calls that make the slow mode. With
``--no-follow-parents`` the producer waits with ``get(follow_parents=False)``.
See docs/benchmarks.md, "Why the bare chord is bimodal".
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bench.common import REPO, batchq_env, fresh_workers, redis, run_process


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--no-follow-parents", action="store_true")
    args = parser.parse_args(argv)
    with redis() as server:
        for rep in range(args.reps):
            with fresh_workers(server, "bench.bare"):
                cmd = [sys.executable, str(REPO / "bench" / "bare.py"), "--url", server.url]
                cmd += ["--n", str(args.n), "--count"]
                if args.no_follow_parents:
                    cmd.append("--no-follow-parents")
                run = run_process(cmd, env=batchq_env(server.url)).check("bare.py")
            got = run.json_line()
            counts = ", ".join(f"{k} {v}" for k, v in got["counts"].items())
            print(
                f"rep {rep}: process {run.wall_s:.2f} s, chord {got['chord_s'][0]:.2f} s "
                f"(publish {got['publish_s'][0]:.2f} s, get {got['get_s'][0]:.2f} s); {counts}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
