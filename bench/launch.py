"""``python -S -E bench/launch.py CLOCK ARGV...``: run ARGV, write its wall time and peak
RSS to the file CLOCK (one JSON object), and exit as it exited.

Why a launcher: Linux keeps a process's RSS high-water mark across ``fork`` and
``exec`` (``exec`` folds the old image's mark into the one ``wait4`` reports), so a
program the bench spawns directly reports at least the bench's own size: a
``batchq run`` of 5,000 subtasks, 97 MiB measured from a small parent, showed 113–149
MiB when the bench, grown to 160 MiB by its bare-Celery runs, started it. Started from
this small process instead, the figure is the program's own. The wall time is taken
here too, so the launcher's start-up is on no side's clock.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time


def main() -> None:
    clock, argv = sys.argv[1], sys.argv[2:]
    start = time.perf_counter()
    child = subprocess.Popen(argv)  # this environment, folder and output
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    with open(clock, "w", encoding="utf-8") as out:
        json.dump({"wall_s": wall, "peak_mb": usage.ru_maxrss / 1024}, out)
    if os.WIFSIGNALED(status):  # die the same way, so the bench sees what happened
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those have no handler to reset
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
