"""How batchq's durable task-file writes scale: ``python -m bench.writes --n 5000``.

Times :func:`batchq.files.jsonfile.write_many` (temp file, fsync in 16 threads,
atomic rename) on N small files against the same without fsync and against one
candidate for batching the durability (every temp file written first, then a single
``syncfs(2)`` of the file system, then the renames). Run it on a quiet machine before
choosing: on a shared one (load 10+) the non-durable writes were as slow as the durable
ones (10.5 s against 10.9 s for 5,000 files), so the fsyncs were not the cost there.
Not part of ``make bench``.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from batchq.files import jsonfile
from bench.common import tmpdir

TEXT = '{\n  "id": "bench-0001",\n  "status": "completed",\n  "summary": "ok"\n}\n' * 8
Items = list[tuple[Path, str]]


def _syncfs_batch(items: Items) -> None:
    staged = [jsonfile._stage(path, text, durable=False) for path, text in items]
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(items[0][0].parent, os.O_RDONLY)
    try:
        if libc.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs")
    finally:
        os.close(fd)
    for path, tmp in staged:
        os.replace(tmp, path)


VARIANTS: dict[str, Callable[[Items], None]] = {
    "write_many (fsync each, 16 threads)": lambda items: jsonfile.write_many(items),
    "write_many durable=False": lambda items: jsonfile.write_many(items, durable=False),
    "write all, one syncfs, rename all": _syncfs_batch,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    for label, write in VARIANTS.items():
        times = []
        for _ in range(args.reps):
            folder = tmpdir("bench-writes-")
            items = [(folder / f"subtask_{i}.json", TEXT) for i in range(args.n)]
            for path, text in items:
                path.write_text(text)
            os.sync()  # the set-up's own dirty pages are not the variant's to pay
            start = time.perf_counter()
            write(items)
            times.append(time.perf_counter() - start)
            shutil.rmtree(folder, ignore_errors=True)
            os.sync()
        print(f"{label:38s} n={args.n}: " + " ".join(f"{t:.3f}" for t in times) + " s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
