"""Container healthcheck for the batchq image: exit 0 when healthy, 1 otherwise.

``python healthcheck.py worker`` (the default) asks this container's Celery worker,
by name, to answer a control ``ping`` through the broker: it proves the process is
alive, consumes its queues and reaches Redis. ``python healthcheck.py flower`` reads
Flower's ``/healthcheck`` page, which needs no auth.
"""

from __future__ import annotations

import argparse
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path


def worker_healthy(name: str, timeout_s: float) -> bool:
    from batchq.settings import load_settings
    from batchq.transport.app import create_app

    app = create_app(load_settings(Path.cwd()))
    try:
        replies = app.control.ping(destination=[name], timeout=timeout_s)
    finally:
        app.close()
    return any(name in reply for reply in replies or [])


def flower_healthy(port: int, timeout_s: float) -> bool:
    url = f"http://127.0.0.1:{port}/healthcheck"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", nargs="?", choices=["worker", "flower"], default="worker")
    parser.add_argument(
        "--name",
        default=f"batchq-0@{socket.gethostname()}",
        help="worker node name (batchq worker's default: batchq-0@<hostname>)",
    )
    parser.add_argument("--port", type=int, default=5555, help="Flower's port")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.role == "flower":
        healthy = flower_healthy(args.port, args.timeout)
    else:
        healthy = worker_healthy(args.name, args.timeout)
    print("healthy" if healthy else "unhealthy")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
