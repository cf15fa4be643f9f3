"""P1 fan-out/fan-in: one batch of N no-op subtasks, submit to report.

Every repetition of every side is a fresh program against a freshly started worker
on an emptied Redis, as a user runs it; the bench process only starts them and reads
their clocks:

bare:     ``python bench/bare.py``: ``chord(group(noop.s() × N), done.s())().get()``;
          the chord's in-process time and the whole process's wall time.
polled:   the same program polling the callback's ``ready()`` every 10 ms before
          ``get()``: the way out of the bare chord's slow mode (docs/benchmarks.md), so
          the best bare Celery can do; the goals are judged against the better of both.
dramatiq: ``python bench/dramatiq_ref.py``: a group with its Redis results backend
          (the reference row, another queue on the same Redis).
batchq:   ``batchq run p1`` on a feature folder of N ``python``-agent subtasks:
          the whole CLI process (start-up, loading and validating N files, planning,
          mirroring, the verified report) and the report's own submit-to-report
          ``wall_s`` (read from the saved report); the process's peak RSS is the
          orchestrator's memory.

One worker with 2 processes for each side; the sides alternate within a repetition
(bare, dramatiq, batchq), so a burst of load on the shared machine lands on all.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchq.files.taskfiles import load_feature
from batchq.run.orchestrator import saved_reports
from bench.common import (
    REPO,
    InodeQuiet,
    Stats,
    bare_process,
    bare_within,
    batchq_argv,
    batchq_env,
    dramatiq_workers,
    fresh_workers,
    noop_feature,
    redis,
    run_process,
    tmpdir,
    worker_peak_mb,
)


@dataclass
class Row:
    """The figures of one size: each list holds one value per repetition."""

    bare_chord: list[float] = field(default_factory=list)
    bare_process: list[float] = field(default_factory=list)
    polled_chord: list[float] = field(default_factory=list)
    polled_process: list[float] = field(default_factory=list)
    dramatiq_group: list[float] = field(default_factory=list)
    dramatiq_process: list[float] = field(default_factory=list)
    batchq_report: list[float] = field(default_factory=list)
    batchq_process: list[float] = field(default_factory=list)
    inode_wait_s: float = 0.0
    """Slept before batchq's runs for freed inodes to age (bench.common.InodeQuiet)."""
    bare_timed_out: int = 0
    """Plain bare runs whose chord did not return within ``PLAIN_LIMIT_S``."""
    orchestrator_peaks_mb: list[float] = field(default_factory=list)
    """Each ``batchq run``'s peak RSS: the table shows their spread, the goal the max."""
    worker_peak_mb: float = 0.0

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            key: Stats(getattr(self, key))
            for key in (
                "bare_chord",
                "bare_process",
                "polled_chord",
                "polled_process",
                "dramatiq_group",
                "dramatiq_process",
                "batchq_report",
                "batchq_process",
            )
            if getattr(self, key)
        }
        out["bare_timed_out"] = self.bare_timed_out
        out["inode_wait_s"] = self.inode_wait_s
        out["orchestrator_peak_mb"] = max(self.orchestrator_peaks_mb, default=0.0)
        out["orchestrator_peaks_mb"] = list(self.orchestrator_peaks_mb)
        out["worker_peak_mb"] = self.worker_peak_mb
        return out


PLAIN_LIMIT_S = 300.0
"""The plain bare program's limit. In its slow mode ``get()`` grows with the square of
N (docs/benchmarks.md): about 30 s at 5,000, hours at 20,000. A run past it is counted
as timed out, and the size's remaining repetitions skip the plain program (the polled
one still runs them all)."""

POLL_S = 0.01
"""The polled bare variant's interval: a GET of the callback's result every 10 ms."""


def bare_best(stats: dict[str, Any]) -> float:
    """The best whole-process run of either bare variant: what the goals are judged
    against."""
    return float(min(stats[k].lo for k in ("bare_process", "polled_process") if k in stats))


def plain_cell(stats: dict[str, Any], key: str = "bare_process") -> str:
    """The plain bare program's min / median / max, and how many runs timed out."""
    timed_out = stats.get("bare_timed_out", 0)
    value = stats.get(key)
    parts = [f"{value.lo:.2f} / {value.median:.2f} / {value.hi:.2f} s"] if value else []
    if timed_out:
        parts.append(f"{timed_out} run(s) over {PLAIN_LIMIT_S:.0f} s (timed out)")
    return "; ".join(parts) or "n/a"


def dramatiq_available() -> bool:
    return importlib.util.find_spec("dramatiq") is not None


def run_size(server: Any, n: int, reps: int, *, with_dramatiq: bool = True) -> Row:
    row = Row()
    quiet = InodeQuiet(Path(tempfile.gettempdir()), n)
    quiet.deleted()  # by whatever ran before: unknown, so count it
    timeout = max(900.0, n * 0.2)
    for _ in range(reps):
        if not row.bare_timed_out:
            with fresh_workers(server, "bench.bare"):
                plain = bare_within(server.url, n, PLAIN_LIMIT_S)
            if plain is None:
                row.bare_timed_out += 1
            else:
                row.bare_process.append(plain.wall_s)
                row.bare_chord.append(plain.json_line()["chord_s"][0])
        with fresh_workers(server, "bench.bare"):
            run = bare_process(server.url, n, timeout_s=timeout, poll_s=POLL_S)
        row.polled_process.append(run.wall_s)
        row.polled_chord.append(run.json_line()["chord_s"][0])
        if with_dramatiq:
            with dramatiq_workers(server):
                argv = [sys.executable, str(REPO / "bench" / "dramatiq_ref.py")]
                argv += ["--url", server.url, "--n", str(n), "--timeout", str(timeout)]
                run = run_process(argv, env=batchq_env(server.url), timeout_s=timeout + 60)
                run.check("dramatiq_ref.py")
            row.dramatiq_process.append(run.wall_s)
            row.dramatiq_group.append(run.json_line()["group_s"])
        root = tmpdir("bench-p1-")
        try:
            noop_feature(root, "p1", n)  # set-up, before the clock
            row.inode_wait_s += quiet.wait()
            with fresh_workers(server, "batchq.worker") as group:
                argv = [*batchq_argv(), "run", "p1", "--root", str(root)]
                run = run_process(argv, env=batchq_env(server.url), timeout_s=timeout + 60)
                run.check("batchq run")
                row.worker_peak_mb = max(row.worker_peak_mb, worker_peak_mb(group))
            row.batchq_report.append(report_wall_s(root, "p1", n))
        finally:
            quiet.remove(root)
        row.batchq_process.append(run.wall_s)
        row.orchestrator_peaks_mb.append(run.peak_mb)
    return row


def report_wall_s(root: Path, name: str, n: int) -> float:
    """The submit-to-report time batchq's saved reports record, checked complete."""
    reports = saved_reports(load_feature(root, name))
    if sum(r.completed for r in reports) != n:
        raise RuntimeError(f"batchq completed {[r.completed for r in reports]} of {n}")
    return sum(r.wall_s for r in reports)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--sizes",
        default="1000,5000,20000",
        help="three sizes: the per-subtask reference, the P1 goal size, the scale size",
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--big-reps", type=int, default=3, help="repetitions at the last size")
    parser.add_argument("--no-dramatiq", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    with_dramatiq = dramatiq_available() and not args.no_dramatiq
    rows: dict[str, Any] = {}
    with redis() as server:
        for i, n in enumerate(sizes):
            reps = args.big_reps if i == len(sizes) - 1 and len(sizes) > 1 else args.reps
            stats = run_size(server, n, reps, with_dramatiq=with_dramatiq).stats()
            rows[str(n)] = stats
            best = bare_best(stats)
            ours = stats["batchq_process"]
            print(
                f"P1 N={n:>5}: "
                f"bare process {plain_cell(stats)}, "
                f"polled process {stats['polled_process'].fmt()}; "
                f"batchq run process {ours.fmt()}; median/bare best ×"
                f"{ours.median / best:.2f}; per subtask {ours.median / n * 1000:.2f} ms; "
                f"orchestrator {stats['orchestrator_peak_mb']:.0f} MiB, "
                f"worker {stats['worker_peak_mb']:.0f} MiB; "
                f"slept {stats['inode_wait_s']:.0f} s for freed inodes",
                flush=True,
            )
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
