"""The reference row: the same fan-out/fan-in with dramatiq, another Redis queue.

A ``group`` of N no-op actors with dramatiq's Redis results backend, the producer
waiting for every result (``get_results(block=True)``), on the bench's Redis. Workers
load this module (``python -m dramatiq bench.dramatiq_ref``); run as a script it is
the user's whole program, one process per repetition::

    python bench/dramatiq_ref.py --url redis+socket:///path/redis.sock --n 5000

It prints one JSON line: ``{"group_s": ...}``, the in-process time of the group.
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402

import dramatiq  # noqa: E402
from dramatiq.brokers.redis import RedisBroker  # noqa: E402
from dramatiq.results import Results  # noqa: E402
from dramatiq.results.backends.redis import RedisBackend  # noqa: E402

from bench.urls import redis_url as bare_redis_url  # noqa: E402


def redis_py_url(url: str) -> str:
    """kombu's ``redis+socket://PATH`` as redis-py's ``unix://PATH``."""
    return "unix://" + url.removeprefix("redis+socket://") if url.startswith("redis+") else url


_URL = redis_py_url(bare_redis_url())
broker = RedisBroker(url=_URL)
broker.add_middleware(Results(backend=RedisBackend(url=_URL)))
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True, queue_name="bench_dramatiq")
def noop() -> None:
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One dramatiq fan-out/fan-in program.")
    parser.add_argument("--url", required=True, help="must be the worker's BATCHQ_REDIS_URL")
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args(argv)
    if redis_py_url(args.url) != _URL:
        raise SystemExit("--url differs from BATCHQ_REDIS_URL, which configured the broker")
    import_s = time.perf_counter() - _T0
    start = time.perf_counter()
    job = dramatiq.group(noop.message() for _ in range(args.n)).run()
    results = list(job.get_results(block=True, timeout=int(args.timeout * 1000)))
    elapsed = time.perf_counter() - start
    if len(results) != args.n:
        raise SystemExit(f"{len(results)} results, expected {args.n}")
    print(json.dumps({"group_s": elapsed, "import_s": import_s}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
