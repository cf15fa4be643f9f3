"""How much a file's creation costs just after many were deleted, on this file system.

On ext4 without a journal, an inode freed less than a minute ago is not reused, and
every create walks past each such inode of its group (docs/benchmarks.md, "Freed
inodes"). This creates N small files in a fresh folder, then N more right after
deleting the first N, then once more, and prints the wall and system time of each.

    python -m bench.inodes [--n 5000] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import ext4_without_journal


def create(folder: Path, n: int) -> tuple[float, float]:
    """Create ``n`` 400-byte files in ``folder``: (wall, system) seconds."""
    folder.mkdir()
    start, before = time.perf_counter(), os.times().system
    for i in range(n):
        fd = os.open(folder / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, b"x" * 400)
        os.close(fd)
    return time.perf_counter() - start, os.times().system - before


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(dir=args.dir, prefix="bench-inodes-"))
    try:
        print(f"{base}: ext4 without a journal: {ext4_without_journal(base)}")
        cases = ["in a fresh folder", "just after deleting them", "after a second deletion"]
        for i, case in enumerate(cases):
            wall, system = create(base / str(i), args.n)
            print(f"{args.n} files {case}: {wall:.2f} s ({system:.2f} s system)", flush=True)
            shutil.rmtree(base / str(i))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
