"""The baseline: what a user would write with bare Celery on the same Redis.

Celery's defaults, except JSON-only serialisation (batchq's security default, and
the default content type anyway). ``tuned`` adds prefetch 1 + acks_late, the usual
advice for long tasks (P3 reports both). Workers load ``bench.bare:app``, configured
from ``BATCHQ_REDIS_URL``/``BENCH_BARE_TUNED``; the bench process builds its own app
per Redis with :func:`make_app`, without touching its environment.

Run as a script, it is the user's whole program for P1 and P2, one process per
repetition (a long-lived process that repeats the chord is not what a user runs, and
its figures drift: see docs/benchmarks.md)::

    python bench/bare.py --url redis+socket:///path/redis.sock --n 5000 [--runs 1]
        [--profile out.prof]

It prints one JSON line: ``{"chord_s": [...], "import_s": ...}``, the in-process time
of each ``chord(...)().get()`` and the time its imports and app took.
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

from celery import Celery, chord, group  # noqa: E402


def make_app(url: str, tuned: bool = False) -> Celery:
    app = Celery("bare", broker=url, backend=url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False,
        task_default_queue="bare",
    )
    if tuned:
        app.conf.update(worker_prefetch_multiplier=1, task_acks_late=True)

    @app.task(name="bare.noop", shared=False)
    def noop(*args: Any) -> None:
        return None

    @app.task(name="bare.sleep", shared=False)
    def sleep(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @app.task(name="bare.done", shared=False)
    def done(results: list[Any]) -> int:
        return len(results)

    return app


app = make_app(
    os.environ.get("BATCHQ_REDIS_URL", "redis://127.0.0.1:6379/0"),
    tuned=os.environ.get("BENCH_BARE_TUNED") == "1",
)


def run_chord(bare: Celery, n: int, timeout_s: float = 900) -> float:
    """One ``chord(group(noop.s() × n), done.s())().get()``: its wall time."""
    noop, done = bare.tasks["bare.noop"], bare.tasks["bare.done"]
    start = time.perf_counter()
    result = chord(group(noop.s() for _ in range(n)), done.s())().get(timeout=timeout_s)
    elapsed = time.perf_counter() - start
    if result != n:
        raise SystemExit(f"chord returned {result!r}, expected {n}")
    return elapsed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One bare-Celery fan-out/fan-in program.")
    parser.add_argument("--url", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--profile", help="write a cProfile of the chords to this file")
    args = parser.parse_args(argv)
    bare = make_app(args.url)
    import_s = time.perf_counter() - _T0
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    times = [run_chord(bare, args.n, args.timeout) for _ in range(args.runs)]
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
    print(json.dumps({"chord_s": times, "import_s": import_s}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
