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
        [--profile out.prof] [--count] [--no-follow-parents] [--poll S]

It prints one JSON line: ``{"chord_s": [...], "publish_s": [...], "get_s": [...],
"import_s": ...}``: the in-process time of each ``chord(...)().get()``, split into
publishing and ``get()``, and the time its imports and app took.
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

from bench.urls import redis_url  # noqa: E402


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
    redis_url(),
    tuned=os.environ.get("BENCH_BARE_TUNED") == "1",
)


def run_chord(
    bare: Celery,
    n: int,
    timeout_s: float = 900,
    *,
    follow_parents: bool = True,
    poll_s: float | None = None,
    phases: list[float] | None = None,
) -> float:
    """One ``chord(group(noop.s() × n), done.s())().get()``: its wall time.

    ``follow_parents=False`` is not what a user writes (it is Celery's default); it
    shows where the slow mode goes (docs/benchmarks.md). ``poll_s`` is what a user who
    knows the slow mode writes: poll ``ready()``, then ``get()``. ``phases`` receives
    the publish time and the ``get()`` time (polling included)."""
    noop, done = bare.tasks["bare.noop"], bare.tasks["bare.done"]
    start = time.perf_counter()
    async_result = chord(group(noop.s() for _ in range(n)), done.s())()
    published = time.perf_counter()
    if poll_s is not None:
        # The slow mode's way out (docs/benchmarks.md): ask the callback's state with a
        # GET every poll_s, and call get() only once it is ready, so get() never
        # drains the backlog of pub/sub replies.
        deadline = published + timeout_s
        while not async_result.ready() and time.perf_counter() < deadline:
            time.sleep(poll_s)
    result = async_result.get(timeout=timeout_s, follow_parents=follow_parents)
    elapsed = time.perf_counter() - start
    if phases is not None:
        phases += [published - start, elapsed - (published - start)]
    if result != n:
        raise SystemExit(f"chord returned {result!r}, expected {n}")
    return elapsed


def count_calls() -> dict[str, int]:
    """Count the calls that make the slow mode: each drain of one pub/sub reply, each
    check of the group's 5,000 results that follows it, and each GET of a result the
    producer has not seen yet. The counts fill in as the chords run."""
    from celery.backends import redis as redis_backend
    from celery.result import GroupResult

    counts: dict[str, int] = {}
    targets = [
        (redis_backend.ResultConsumer, "_drain_one", "pubsub replies drained"),
        (GroupResult, "maybe_throw", "group checks (each walks every result)"),
        (redis_backend.RedisBackend, "get_task_meta", "result GETs"),
    ]
    for cls, name, label in targets:
        counts[label] = 0
        original = getattr(cls, name)

        def counted(*args: Any, _o: Any = original, _l: str = label, **kwargs: Any) -> Any:
            counts[_l] += 1
            return _o(*args, **kwargs)

        setattr(cls, name, counted)
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One bare-Celery fan-out/fan-in program.")
    parser.add_argument("--url", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--profile", help="write a cProfile of the chords to this file")
    parser.add_argument("--count", action="store_true", help="count drains, checks and GETs")
    parser.add_argument("--no-follow-parents", action="store_true")
    parser.add_argument(
        "--poll", type=float, metavar="S", help="poll ready() every S seconds before get()"
    )
    args = parser.parse_args(argv)
    bare = make_app(args.url)
    counts = count_calls() if args.count else None
    import_s = time.perf_counter() - _T0
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    phases: list[float] = []
    follow = not args.no_follow_parents
    times = [
        run_chord(
            bare, args.n, args.timeout, follow_parents=follow, poll_s=args.poll, phases=phases
        )
        for _ in range(args.runs)
    ]
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
    report: dict[str, Any] = {"chord_s": times, "import_s": import_s}
    report["publish_s"], report["get_s"] = phases[0::2], phases[1::2]
    if counts is not None:
        report["counts"] = counts
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
