"""P7 scale-out: P3's workload on 1, 2 and 4 worker processes, through each transport.

P3's 64 subtasks sleeping 0.1–2 s (fixed seed), each worker process a threads pool of
4 slots, one batch. Three transports of the same project:

- ``shared``: workers see the project folder (no isolation);
- ``worktree``: ``--isolate worktree`` on the shared folder (a worktree per subtask);
- ``git``: ``--workspace git`` through a bare repository on this host (``file://``):
  the snapshot pushed, each worker process fetching it into a cached clone (one cache
  shared by the processes, as on one host), a worktree per subtask, the result and
  its log pushed, then fetched and merged.

Every run is a fresh project on an emptied Redis with fresh workers (the first run of
the feature: no learned durations). The figure per transport is the whole run's
makespan; the transport's cost per subtask is what it adds in slot time,
``(makespan - shared makespan) × slots / N`` (medians), and ``git - worktree`` is
the remote's own share (push, fetch, the orchestrator's fetch) beyond isolation's.

    python -m bench.p7_scaleout --reps 3
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import (
    BatchqClient,
    Stats,
    fresh_workers,
    python_subtask,
    redis,
    timed,
    tmpdir,
    write_feature,
)
from bench.p3_makespan import durations

SLOTS = 4
TRANSPORTS = ("shared", "worktree", "git")


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def _project(root: Path, ds: Sequence[float]) -> None:
    """P3's feature in a git work tree (its deliverables touched, uncommitted)."""
    out = root / "out"
    out.mkdir(parents=True, exist_ok=True)
    subs = []
    for i, d in enumerate(ds, start=1):
        seq = f"{i:02d}"
        (out / f"{seq}.txt").touch()
        subs.append(
            python_subtask(
                seq, "bench.tasks:sleep", f"out/{seq}.txt", env={"BENCH_SLEEP_S": str(d)}
            )
        )
    write_feature(root, "p7", subs)
    shutil.rmtree(root / ".git")
    _git(root, "init", "-q", "-b", "main")
    (root / ".gitignore").write_text(".tmp/\n")
    _git(root, "add", ".gitignore")
    _git(root, "-c", "user.email=b@example.com", "-c", "user.name=b", "commit", "-qm", "init")


def one_run(server: Any, transport: str, procs: int, ds: Sequence[float]) -> float:
    """The makespan of one fresh run of the feature through ``transport``."""
    base = tmpdir("bench-p7-")
    root, remote, cache = base / "project", base / "remote.git", base / "cache"
    root.mkdir()
    _project(root, ds)
    overrides: dict[str, Any] = {}
    if transport == "worktree":
        overrides["isolate"] = "worktree"
    elif transport == "git":
        subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
        overrides.update(workspace="git", git_remote=remote.as_uri())
    env = {"BATCHQ_WORKER_CACHE": str(cache)}
    client = BatchqClient(server.url, **overrides)
    try:
        with fresh_workers(
            server, "batchq.worker", count=procs, concurrency=SLOTS, pool="threads", env=env
        ):
            orch = client.orchestrator(root, "p7")
            seconds = timed(lambda: _ok(orch.run()))
    finally:
        client.close()
        shutil.rmtree(base, ignore_errors=True)
    return seconds


def _ok(result: Any) -> None:
    assert result.ok, [(r.seq, r.error) for b in result.reports for r in b.results]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every duration")
    parser.add_argument("--procs", default="1,2,4", help="worker process counts")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    ds = [d * args.scale for d in durations(args.n, args.seed)]
    counts = [int(p) for p in args.procs.split(",")]
    found: dict[int, dict[str, Stats]] = {}
    with redis() as server:
        for procs in counts:
            runs: dict[str, list[float]] = {t: [] for t in TRANSPORTS}
            for _ in range(args.reps):  # interleaved: a load spike hits every transport
                for transport in TRANSPORTS:
                    runs[transport].append(one_run(server, transport, procs, ds))
            found[procs] = {t: Stats(v) for t, v in runs.items()}
            print(f"P7 {procs} worker process(es): " + _line(found[procs], procs, len(ds)))
    return {"n": len(ds), "work_s": sum(ds), "longest_s": max(ds), "reps": args.reps, "rows": found}


def cost_ms(row: dict[str, Stats], transport: str, procs: int, n: int) -> float:
    """Slot time ``transport`` adds per subtask over ``shared`` (medians), in ms."""
    return (row[transport].median - row["shared"].median) * procs * SLOTS / n * 1000


def _line(row: dict[str, Stats], procs: int, n: int) -> str:
    return ", ".join(
        f"{t} {row[t].median:.2f}s"
        + (f" (+{cost_ms(row, t, procs, n):.0f} ms/subtask)" if t != "shared" else "")
        for t in TRANSPORTS
    )


def section(p7: dict[str, Any]) -> list[str]:
    """The Markdown section ``python -m bench`` writes."""
    n, work, reps = p7["n"], p7["work_s"], p7["reps"]
    lines = [
        f"## P7 scale-out ({n} sleeping subtasks, {work:.1f} s of work, worker processes "
        f"× {SLOTS} slots, `python -m bench.p7_scaleout`)",
        "",
        f"Makespan of one fresh run, min / median / max of {reps}; the bound is "
        f"max(work / slots, longest). Cost per subtask: slot time added over `shared` "
        "(medians × slots / N).",
        "",
        "| processes | bound | shared | worktree | git | worktree cost / subtask | "
        "git cost / subtask | git − worktree / subtask |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for procs, row in p7["rows"].items():
        bound = max(work / (procs * SLOTS), p7["longest_s"])
        wt, gt = cost_ms(row, "worktree", procs, n), cost_ms(row, "git", procs, n)
        lines.append(
            f"| {procs} | {bound:.2f} s | {_fmt(row['shared'])} | {_fmt(row['worktree'])} | "
            f"{_fmt(row['git'])} | {wt:.0f} ms | {gt:.0f} ms | {gt - wt:.0f} ms |"
        )
    return [*lines, ""]


def _fmt(s: Stats) -> str:
    return f"{s.lo:.2f} / {s.median:.2f} / {s.hi:.2f} s"


if __name__ == "__main__":
    print("\n".join(section(main(sys.argv[1:]))))
