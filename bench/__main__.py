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

from bench import p1_fanout, p2_latency, p3_makespan, p4_flow, p5_overhead, p7_scaleout
from bench import startup as startup_bench
from bench.common import REPO, Stats


def _commit() -> str:
    """The checkout measured, so a figure names the code it belongs to."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"
    return f"{head} with uncommitted changes" if dirty else head


def _started() -> str:
    """When the run began and how busy the machine was then (a busy one inflates all)."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"started {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average then: {load}"


def _machine(command: str = "", started: str = "") -> list[str]:
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
        f"- `{command or 'python -m bench'}` at {_commit()}, {started or _started()}; "
        f"figures written {datetime.now(UTC):%H:%M} UTC",
    ]


STARTUP_GOAL_MS = 150.0
NOTES_MARKER = "<!-- Notes: written by hand; `python -m bench` keeps everything from here on. -->"


def with_notes(text: str, previous: str) -> str:
    """The generated figures followed by the hand-written notes of ``previous`` (the
    file being replaced): the explanation of the baseline outlives every re-run."""
    at = previous.find(NOTES_MARKER)
    return text + ("\n" + previous[at:] if at >= 0 else "")


def _fmt(s: Stats) -> str:
    """min / median / max: the spread matters (bare Celery is bimodal)."""
    return f"{s.lo:.2f} / {s.median:.2f} / {s.hi:.2f} s"


def _ms(s: Stats) -> str:
    return f"{s.lo * 1000:.0f} / {s.median * 1000:.0f} / {s.hi * 1000:.0f} ms"


def _p1_section(p1: dict[str, Any]) -> list[str]:
    lines = [
        "## P1 fan-out/fan-in (submit to report, no-op subtasks, 1 worker × 2 processes)",
        "",
        "Every repetition of every side is a fresh process against a freshly started "
        "worker on an emptied Redis. *In-process* is the program's own clock around the "
        "fan-out/fan-in (batchq: the saved report's submit-to-report `wall_s`); "
        "*process* is the whole program as a user times it (batchq: `batchq run` with "
        "CLI start-up, loading and validating N files, planning and mirroring). Cells "
        "are min / median / max. *Polled* is the same bare program polling the "
        "callback's `ready()` every 10 ms before `get()`, the way out of the bare "
        "chord's slow mode. The ratio is batchq's median process against the **best** "
        "process run of either bare variant.",
        "",
        "| N | bare chord in-process | `python bare.py` process | polled in-process | "
        "polled process | dramatiq group in-process | dramatiq process | batchq "
        "in-process | `batchq run` process | batchq median / bare best | batchq per "
        "subtask |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    first = None
    for n, row in p1.items():
        ours = row["batchq_process"]
        per = ours.median / int(n) * 1000
        first = first or per
        dram = row.get("dramatiq_group"), row.get("dramatiq_process")
        lines.append(
            f"| {n} | {p1_fanout.plain_cell(row, 'bare_chord')} | "
            f"{p1_fanout.plain_cell(row)} | "
            f"{_fmt(row['polled_chord'])} | {_fmt(row['polled_process'])} | "
            f"{_fmt(dram[0]) if dram[0] else 'n/a'} | {_fmt(dram[1]) if dram[1] else 'n/a'} | "
            f"{_fmt(row['batchq_report'])} | {_fmt(ours)} | "
            f"×{ours.median / p1_fanout.bare_best(row):.2f} | {per:.2f} ms "
            f"(×{per / first:.2f} of N={next(iter(p1))}) |"
        )
    lines += [
        "",
        "Peak RSS (MiB): the `batchq run` process (the orchestrator, imports "
        "included; highest over the repetitions, and the lowest to highest when there were "
        "several) and one worker process (largest of main and pool processes).",
        "",
        "| N | orchestrator | worker |",
        "|---|---|---|",
    ]
    for n, row in p1.items():
        peaks = row.get("orchestrator_peaks_mb") or [row["orchestrator_peak_mb"]]
        spread = f" ({min(peaks):.0f}–{max(peaks):.0f} over {len(peaks)})" if len(peaks) > 1 else ""
        lines.append(
            f"| {n} | {row['orchestrator_peak_mb']:.0f}{spread} | {row['worker_peak_mb']:.0f} |"
        )
    slept = {n: row.get("inode_wait_s", 0.0) for n, row in p1.items()}
    if any(slept.values()):
        lines += [
            "",
            "Before each `batchq run` the bench waited for inodes freed in the minute "
            "before it to age (ext4 without a journal, see [the notes](#freed-inodes)): "
            + ", ".join(f"{v:.0f} s in all at N={n}" for n, v in slept.items())
            + ".",
        ]
    return [*lines, ""]


def _p2_section(p2: dict[str, Any]) -> list[str]:
    bare, ours = p2["bare"], p2["batchq"]
    bp, op = p2["bare_process"], p2["batchq_process"]
    return [
        "## P2 small-batch latency (batch of 4 no-op subtasks, submit to report)",
        "",
        "In-process: runs in fresh processes (`bare.py --runs K`, and an Orchestrator "
        "per run in a helper process), the first of each block not counted. Process: "
        "the whole `python bare.py --n 4` against the whole `batchq run`. The goal is "
        "judged on the whole `Orchestrator.run()` (pre-flight, lock, run record, "
        "mirroring and the saved report included); *submit → report* is the part from "
        "the batch's publishing to its report handed over, files mirrored.",
        "",
        "| | p50 | p95 | min / median / max | runs |",
        "|---|---|---|---|---|",
        f"| bare chord().get(), in-process | {bare.median * 1000:.1f} ms | "
        f"{bare.pct(95) * 1000:.1f} ms | {_ms(bare)} | {len(bare.values)} |",
        f"| batchq Orchestrator.run(), in-process | {ours.median * 1000:.1f} ms | "
        f"{ours.pct(95) * 1000:.1f} ms | {_ms(ours)} | {len(ours.values)} |",
        *(
            [
                f"| of which batchq submit → report handed over | {inner.median * 1000:.1f} ms | "
                f"{inner.pct(95) * 1000:.1f} ms | {_ms(inner)} | {len(inner.values)} |"
            ]
            if (inner := p2.get("batchq_submit")) is not None
            else []
        ),
        f"| `python bare.py --n 4` process | {bp.median * 1000:.0f} ms | "
        f"{bp.pct(95) * 1000:.0f} ms | {_ms(bp)} | {len(bp.values)} |",
        f"| `batchq run` process | {op.median * 1000:.0f} ms | {op.pct(95) * 1000:.0f} ms | "
        f"{_ms(op)} | {len(op.values)} |",
        "",
        f"p50 ratio batchq / bare: ×{ours.median / bare.median:.2f} in-process, "
        f"×{op.median / bp.median:.2f} as whole processes",
        "",
    ]


def render(
    p1: dict[str, Any] | None,
    p2: dict[str, Any] | None,
    p3: dict[str, Any] | None,
    reps: int,
    p4: dict[int, dict[str, float]] | None = None,
    p5: dict[str, Any] | None = None,
    startup: dict[str, Stats] | None = None,
    *,
    command: str = "",
    started: str = "",
) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Produced by `make bench` (`python -m bench`); every ratio compares figures "
        f"measured in the same run ({reps} repetitions per P1 size unless the row says "
        "otherwise). How the baseline is measured, and why bare Celery's figures spread "
        "so widely, is in [the notes below the figures](#how-the-baseline-is-measured).",
        "",
    ]
    lines += [*_machine(command, started), ""]
    if p1:
        lines += _p1_section(p1)
    if p2:
        lines += _p2_section(p2)
    if startup:
        lines += [
            "## Start-up (whole process, no Redis)",
            "",
            "| command | min / median / max | goal median |",
            "|---|---|---|",
        ]
        for label, st in startup.items():
            ok = "✅" if st.median * 1000 <= STARTUP_GOAL_MS else "❌"
            lines.append(f"| `{label}` | {_ms(st)} | {ok} ≤ {STARTUP_GOAL_MS:.0f} ms |")
        lines.append("")
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
            ("batchq_first", "batchq, python sleeps, first run"),
            ("batchq_second", "batchq, python sleeps, second run (learned durations, LPT)"),
            ("batchq_first_shell", "batchq, shell `sleep` subtasks (sandboxed), first run"),
            ("batchq_second_shell", "batchq, shell `sleep` subtasks (sandboxed), second run"),
        ]:
            if key in p3:
                lines.append(f"| {label} | {p3[key]:.2f} s | ×{p3[key] / lb:.2f} |")
        lines.append("")
        for suffix, way in (("", "python sleeps"), ("_shell", "shell sleeps")):
            if f"batchq_first{suffix}" in p3:
                lines.append(
                    f"batchq first run / ideal duration-blind, {way}: "
                    f"×{p3[f'batchq_first{suffix}'] / p3['ideal_blind']:.2f}  "
                )
        lines.append("")
    if p4:
        lines += _p4_section(p4)
    if p5:
        lines += _p5_section(p5)
    lines += _goals(p1, p2, p3, p4, p5, startup)
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
        "coding-agent script in the workspace.",
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
    startup: dict[str, Stats] | None = None,
) -> list[str]:
    """The goals (issues 7 and 18), each with its measured figure and whether it is met."""
    out = ["## Goals", ""]

    def mib(text: str, value: float, limit: float) -> None:
        met = "✅" if value <= limit else "❌"
        out.append(f"- {met} {text}: {value:.0f} MiB (goal ≤ {limit:.0f} MiB)")

    def goal(text: str, value: float, limit: float, *, at_least: bool = False) -> None:
        met = value >= limit if at_least else value <= limit
        out.append(
            f"- {'✅' if met else '❌'} {text}: ×{value:.2f} (goal "
            f"{'≥' if at_least else '≤'} ×{limit:.2f})"
        )

    if p1:
        sizes = list(p1)
        small, mid, big = (p1[sizes[0]], p1[sizes[min(1, len(sizes) - 1)]], p1[sizes[-1]])
        n_mid, n_big = sizes[min(1, len(sizes) - 1)], sizes[-1]
        goal(
            f"P1 at N={n_mid}: median `batchq run` process vs the best bare process",
            mid["batchq_process"].median / p1_fanout.bare_best(mid),
            1.0,
        )
        per_big = big["batchq_process"].median / int(n_big)
        per_small = small["batchq_process"].median / int(sizes[0])
        goal(f"P1 batchq per-subtask cost at N={n_big} vs N={sizes[0]}", per_big / per_small, 1.1)
        mib(f"orchestrator peak RSS at N={n_mid}", mid["orchestrator_peak_mb"], 100)
        mib(f"orchestrator peak RSS at N={n_big}", big["orchestrator_peak_mb"], 200)
        worker = max(row["worker_peak_mb"] for row in p1.values())
        mib("one worker process's peak RSS (any size)", worker, 120)
    if p2:
        goal("P2 p50 latency vs the bare chord", p2["batchq"].median / p2["bare"].median, 1.2)
        goal(
            "P2 `batchq run` process vs `python bare.py` (medians)",
            p2["batchq_process"].median / p2["bare_process"].median,
            1.5,
        )
    if startup:
        for label, st in startup.items():
            ms = st.median * 1000
            out.append(
                f"- {'✅' if ms <= STARTUP_GOAL_MS else '❌'} start-up `{label}` median: "
                f"{ms:.0f} ms (goal ≤ {STARTUP_GOAL_MS:.0f} ms)"
            )
    if p3:
        for suffix, way in (("", "python sleeps"), ("_shell", "shell sleeps")):
            if f"batchq_first{suffix}" not in p3:
                continue
            goal(
                f"P3 ({way}) first run vs the ideal duration-blind dispatcher",
                p3[f"batchq_first{suffix}"] / p3["ideal_blind"],
                1.05,
            )
            goal(
                f"P3 ({way}) second run vs the lower bound",
                p3[f"batchq_second{suffix}"] / p3["lower_bound"],
                1.10,
            )
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
    parser.add_argument("--only", default="startup,p1,p2,p3,p4,p5,p7")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--sizes", default="1000,5000,20000", help="P1: three sizes")
    parser.add_argument("--big-reps", type=int, default=3, help="P1 repetitions at the last size")
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    started = _started()
    command = " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])])
    reps = 1 if args.quick else args.reps
    p1 = p2 = p3 = None
    startup = None
    if "startup" in only:  # first: nothing of the other scenarios in the page cache yet
        startup = startup_bench.main(["--runs", "3" if args.quick else "15"])
    # P2 first: P1 deletes thousands of files, and on a file system mounted with
    # `discard` (this VM's) the next journal commit trims their blocks, which any fsync
    # (batchq's durable task-file writes) then waits for.
    if "p2" in only:
        p2 = p2_latency.main(["--runs", "3", "--cli-runs", "2"] if args.quick else ["--runs", "50"])
    p5 = None
    if "p5" in only:  # before P1 too: it syncs small task files
        p5 = p5_overhead.main(["--n", "4", "--reps", "1"] if args.quick else [])
    if "p1" in only:
        sizes = "5,10,20" if args.quick else args.sizes
        big_reps = "1" if args.quick else str(args.big_reps)
        p1 = p1_fanout.main(["--sizes", sizes, "--reps", str(reps), "--big-reps", big_reps])
    if "p3" in only:
        p3 = p3_makespan.main(["--n", "8", "--scale", "0.05"] if args.quick else [])
    p4 = None
    if "p4" in only:
        p4 = p4_flow.main(["--n", "10", "--seeds", "1", "--scale", "0.05"] if args.quick else [])
    text = render(p1, p2, p3, reps, p4, p5, startup, command=command, started=started)
    if "p7" in only:  # scale-out through each workspace transport (issue 20)
        quick = ["--n", "8", "--scale", "0.05", "--procs", "1,2", "--reps", "1"]
        p7 = p7_scaleout.main(quick if args.quick else [])
        text += "\n".join(p7_scaleout.section(p7)) + "\n"
    print(text)
    if not args.quick:
        out = Path(args.out)
        previous = out.read_text(encoding="utf-8") if out.exists() else ""
        out.write_text(with_notes(text, previous), encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
