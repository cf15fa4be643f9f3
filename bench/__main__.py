"""``python -m bench`` (``make bench``): every scenario, a table, docs/benchmarks.md.

Each figure is batchq's against bare Celery measured in the same run, on the same
redis-server and the same worker shape. ``--quick`` runs tiny sizes (what the test
suite does, so the bench cannot rot); figures from a quick run mean nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench import p1_fanout, p2_latency, p3_makespan, p4_flow, p5_overhead
from bench.common import REPO, Stats


def _machine() -> list[str]:
    redis_version = "?"
    try:
        from batchq.local.embedded import redis_server_binary

        out = subprocess.run(
            [str(redis_server_binary()), "--version"], capture_output=True, text=True, check=False
        ).stdout
        redis_version = out.split("v=")[1].split()[0] if "v=" in out else out.strip()
    except Exception:  # the table still prints without it
        pass
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    return [
        f"- Machine: {os.cpu_count()} cores ({cpu}), "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
        f"{platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}, celery {version('celery')}, "
        f"kombu {version('kombu')}, redis-py {version('redis')}, Redis server {redis_version}",
        f"- Run at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; load average before: "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}",
    ]


def _fmt(s: Stats) -> str:
    return f"{s.median:.3f} s ({s.lo:.3f}–{s.hi:.3f})"


def render(
    p1: dict[str, Any] | None,
    p2: dict[str, Any] | None,
    p3: dict[str, Any] | None,
    reps: int,
    p4: dict[int, dict[str, float]] | None = None,
    p5: dict[str, Any] | None = None,
) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Produced by `make bench` (`python -m bench`). Every ratio "
        "compares batchq with bare Celery measured in the same run (median of the "
        f"repetitions, min–max in brackets; {reps} repetitions per size).",
        "",
    ]
    lines += [*_machine(), ""]
    if p1:
        lines += [
            "## P1 fan-out/fan-in (submit to report, no-op subtasks, 1 worker × 2 prefork)",
            "",
            "| N | bare chord().get() | batchq run | speed-up | batchq per subtask |",
            "|---|---|---|---|---|",
        ]
        first = None
        for n, row in p1.items():
            per = row["batchq"].median / int(n) * 1000
            first = first or per
            lines.append(
                f"| {n} | {_fmt(row['bare'])} | {_fmt(row['batchq'])} | "
                f"×{row['bare'].median / row['batchq'].median:.2f} | {per:.2f} ms "
                f"(×{per / first:.2f} of the smallest) |"
            )
        last = list(p1.values())[-1]
        lines += [
            "",
            f"Peak memory at N={list(p1)[-1]}: the orchestrator (one run in a process of "
            "its own, imports included) "
            f"{last['orchestrator_peak_mb']:.0f} MiB, one worker (largest of main and pool "
            f"processes) {last['worker_peak_mb']:.0f} MiB.",
            "",
        ]
    if p2:
        bare, ours = p2["bare"], p2["batchq"]
        lines += [
            "## P2 small-batch latency (batch of 4 no-op subtasks, submit to report)",
            "",
            "| | p50 | p95 | runs |",
            "|---|---|---|---|",
            f"| bare chord().get() | {bare.median * 1000:.1f} ms | {bare.pct(95) * 1000:.1f} ms"
            f" | {len(bare.values)} |",
            f"| batchq run | {ours.median * 1000:.1f} ms | {ours.pct(95) * 1000:.1f} ms | "
            f"{len(ours.values)} |",
            "",
            f"p50 ratio batchq / bare: ×{ours.median / bare.median:.2f}",
            "",
        ]
    if p3:
        lb = p3["lower_bound"]
        lines += [
            "## P3 makespan (64 subtasks sleeping 0.1–2 s, seed 42, 4 workers × 4 threads)",
            "",
            "| | makespan | × lower bound |",
            "|---|---|---|",
        ]
        for key, label in [
            ("lower_bound", "lower bound max(work/slots, longest)"),
            ("ideal_blind", "ideal duration-blind list scheduling"),
            ("lpt", "longest-first (LPT), computed"),
            ("bare_default", "bare Celery, defaults"),
            ("bare_tuned", "bare Celery, prefetch 1 + acks_late"),
            ("batchq_first", "batchq, first run"),
            ("batchq_second", "batchq, second run (learned durations, LPT)"),
        ]:
            lines.append(f"| {label} | {p3[key]:.2f} s | ×{p3[key] / lb:.2f} |")
        lines += [
            "",
            f"batchq first run / ideal duration-blind: "
            f"×{p3['batchq_first'] / p3['ideal_blind']:.2f}",
            "",
        ]
    if p4:
        lines += _p4_section(p4)
    if p5:
        lines += _p5_section(p5)
    lines += _goals(p1, p2, p3, p4, p5)
    return "\n".join(lines) + "\n"


def _p4_section(p4: dict[int, dict[str, float]]) -> list[str]:
    lines = [
        "## P4 flow mode (random DAGs of 60 subtasks sleeping 0.1–2 s, 2 workers × 4 threads)",
        "",
        "Makespan = first subtask start to last subtask finish (recorded times). Ideal = "
        "zero-overhead list scheduler on the same DAG (FIFO by readiness), without and "
        "with batch barriers.",
        "",
        "| seed | bound | ideal flow | ideal batch | flow mode | batch mode | "
        "flow / ideal | batch / bound |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for seed, r in p4.items():
        lb = r["lower_bound"]
        lines.append(
            f"| {seed} | {lb:.2f} s | {r['ideal_flow']:.2f} s (×{r['ideal_flow'] / lb:.2f}) | "
            f"{r['ideal_batch']:.2f} s (×{r['ideal_batch'] / lb:.2f}) | "
            f"{r['flow']:.2f} s (×{r['flow'] / lb:.2f}) | {r['batch']:.2f} s "
            f"(×{r['batch'] / lb:.2f}) | ×{r['flow'] / r['ideal_flow']:.2f} | "
            f"×{r['batch'] / lb:.2f} |"
        )
    return [*lines, ""]


def _p5_section(p5: dict[str, Any]) -> list[str]:
    lines = [
        "## P5 per-subtask overhead (batches of 64 trivial subtasks, 1 worker × 2 prefork)",
        "",
        "Slot time = the worker's recorded claim-to-result time of each subtask (agent "
        "process, write check, verify). Shell: `true` and `touch oNN`; CLI: a fake "
        "coding-agent script on PATH.",
        "",
        "| case | p50 | p95 | subtasks | goal p50 |",
        "|---|---|---|---|---|",
    ]
    for label, row in p5.items():
        s, goal = row["stats"], row["case"].goal_ms
        lines.append(
            f"| {label} | {s.median * 1000:.1f} ms | {s.pct(95) * 1000:.1f} ms | "
            f"{len(s.values)} | {'✅' if s.median * 1000 <= goal else '❌'} ≤ {goal:.0f} ms |"
        )
    return [*lines, ""]


def _goals(
    p1: dict[str, Any] | None,
    p2: dict[str, Any] | None,
    p3: dict[str, Any] | None,
    p4: dict[int, dict[str, float]] | None = None,
    p5: dict[str, Any] | None = None,
) -> list[str]:
    """The goals of issue 7, each with its measured figure and whether it is met."""
    out = ["## Goals", ""]

    def goal(text: str, value: float, limit: float, *, at_least: bool = False) -> None:
        met = value >= limit if at_least else value <= limit
        out.append(
            f"- {'✅' if met else '❌'} {text}: ×{value:.2f} (goal "
            f"{'≥' if at_least else '≤'} ×{limit:.2f})"
        )

    if p1:
        sizes = list(p1)
        big, small = p1[sizes[-1]], p1[sizes[0]]
        goal(
            f"P1 speed-up over the bare chord at N={sizes[-1]}",
            big["bare"].median / big["batchq"].median,
            3.0,
            at_least=True,
        )
        per_big = big["batchq"].median / int(sizes[-1])
        per_small = small["batchq"].median / int(sizes[0])
        goal(f"P1 per-subtask cost at N={sizes[-1]} vs N={sizes[0]}", per_big / per_small, 1.3)
    if p2:
        goal("P2 p50 latency vs the bare chord", p2["batchq"].median / p2["bare"].median, 1.5)
    if p3:
        goal(
            "P3 first run vs the ideal duration-blind dispatcher",
            p3["batchq_first"] / p3["ideal_blind"],
            1.05,
        )
        goal("P3 second run vs the lower bound", p3["batchq_second"] / p3["lower_bound"], 1.10)
    if p4:
        worst = max(r["flow"] / r["ideal_flow"] for r in p4.values())
        goal("P4 flow within 1.10 × simulated ideal on every seed (worst seed)", worst, 1.10)
    if p5:
        groups: dict[str, tuple[float, float]] = {}
        for row in p5.values():
            case = row["case"]
            name = f"P5 {case.agent} {'with' if case.verify else 'without'} verify"
            worst_ms = max(groups.get(name, (0.0, 0.0))[0], row["stats"].median * 1000)
            groups[name] = (worst_ms, case.goal_ms)
        for name, (worst_ms, goal_ms) in groups.items():
            out.append(
                f"- {'✅' if worst_ms <= goal_ms else '❌'} {name}, worst p50 slot time over "
                f"write check × workspace: {worst_ms:.1f} ms (goal ≤ {goal_ms:.0f} ms)"
            )
    return [*out, ""]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes; figures meaningless")
    parser.add_argument("--only", default="p1,p2,p3,p4,p5")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    reps = 1 if args.quick else args.reps
    p1 = p2 = p3 = None
    # P2 first: P1 deletes thousands of files, and on a file system mounted with
    # `discard` (this VM's) the next journal commit trims their blocks, which any fsync
    # (batchq's durable task-file writes) then waits for.
    if "p2" in only:
        p2 = p2_latency.main(["--runs", "3" if args.quick else "50"])
    p5 = None
    if "p5" in only:  # before P1 too: it syncs small task files
        p5 = p5_overhead.main(["--n", "4", "--reps", "1"] if args.quick else [])
    if "p1" in only:
        sizes = "5,20" if args.quick else "500,2000,5000"
        p1 = p1_fanout.main(["--sizes", sizes, "--reps", str(reps)])
    if "p3" in only:
        p3 = p3_makespan.main(["--n", "8", "--scale", "0.05"] if args.quick else [])
    p4 = None
    if "p4" in only:
        p4 = p4_flow.main(["--n", "10", "--seeds", "1", "--scale", "0.05"] if args.quick else [])
    text = render(p1, p2, p3, reps, p4, p5)
    print(text)
    if not args.quick:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
