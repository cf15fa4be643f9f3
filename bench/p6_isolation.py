"""P6 isolation cost: what ``--isolate worktree`` adds to a batch, in git work alone.

A repository of ``--files`` committed files (10 KB-ish of text spread over folders of
100), with local work on top (``--dirty`` modified and as many untracked files). One
batch of ``--batch`` isolated subtasks costs

- the orchestrator's **snapshot** at submit (temporary index seeded from the user's
  index, ``git add -A``, ``write-tree``, ``commit-tree``, ``update-ref``);
- per subtask on a worker: a **worktree** (``git worktree add --detach``: a checkout of
  the whole tree), the **result commit** after the agent (``git add -A`` in the
  worktree, diff, patch) and its **removal**;
- the orchestrator's **merge** of every result's one deliverable in seq order.

No Redis and no agents: these are the costs isolation adds on top of P5's per-subtask
overhead. Worktrees are made one after another here; on a worker they overlap with
other subtasks, so the batch's wall-clock share is about one worktree cycle per slot.

    python -m bench.p6_isolation --files 10000 --batch 8 --reps 3
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from batchq.executor import isolation
from batchq.files import gitsnap
from batchq.models import ResultState, SubtaskResult, WriteCheck
from batchq.run.merge import merge_one
from bench.common import Stats, measure, timed, tmpdir


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def make_repo(root: Path, files: int, dirty: int) -> None:
    """``files`` committed files, then ``dirty`` modified and ``dirty`` untracked."""
    root.mkdir(parents=True)
    _git(root, "init", "-q", "-b", "main")
    _git(root, "config", "user.email", "bench@example.com")
    _git(root, "config", "user.name", "bench")
    for i in range(files):
        folder = root / "src" / f"d{i // 100:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:05d}.txt").write_text(f"file {i}\n" * 40)
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "init")
    for i in range(min(dirty, files)):
        (root / "src" / f"d{i // 100:03d}" / f"f{i:05d}.txt").write_text(f"changed {i}\n")
        (root / "src" / f"d{i // 100:03d}" / f"new{i:05d}.txt").write_text(f"new {i}\n")


def one_batch(root: Path, run_id: str, batch: int, size: int) -> dict[str, float]:
    """Snapshot, ``size`` worktree cycles, then the merge; seconds per phase."""
    ref = isolation.base_ref(run_id, batch)
    snap_s, _ = measure(lambda: gitsnap.snapshot(root, ref, "bench snapshot"))
    add_s = record_s = remove_s = 0.0
    results: list[tuple[SubtaskResult, list[str]]] = []
    for n in range(1, size + 1):
        seq = f"{n:02d}"
        elapsed, tree = measure(lambda s=seq: isolation.open_worktree(root, run_id, ref, s))
        add_s += elapsed
        (tree.path / "out").mkdir(exist_ok=True)
        (tree.path / "out" / f"{seq}-{batch}.txt").write_text(f"made by {seq}\n")
        elapsed, recorded = measure(lambda t=tree: t.record([]))
        record_s += elapsed
        remove_s += timed(tree.close)
        result = SubtaskResult(
            feature="bench", run_id=run_id, batch=batch, seq=seq, title=seq,
            result=ResultState.COMPLETED, isolated_commit=recorded.commit,
            changed_paths=recorded.changed,
        )  # fmt: skip
        results.append((result, [f"out/{seq}-{batch}.txt"]))

    def merge_all() -> None:
        for result, deliverables in results:
            merged = merge_one(root, result, deliverables, WriteCheck.WARN)
            assert merged.ok and merged.merged_paths, merged.error

    merge_s = timed(merge_all)
    return {
        "snapshot": snap_s,
        "worktree add": add_s / size,
        "result commit": record_s / size,
        "worktree remove": remove_s / size,
        "merge (whole batch)": merge_s,
    }


def run(files: int, size: int, reps: int, dirty: int) -> dict[str, Stats]:
    base = tmpdir("batchq-p6-")
    try:
        root = base / "repo"
        make_repo(root, files, dirty)
        phases: dict[str, list[float]] = {}
        for rep in range(1, reps + 1):
            for name, value in one_batch(root, "bench", rep, size).items():
                phases.setdefault(name, []).append(value)
        return {name: Stats(values) for name, values in phases.items()}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def report(files: int, size: int, dirty: int, stats: dict[str, Stats]) -> list[str]:
    lines = [
        f"## P6 isolation: {files:,} files (+{dirty} modified, +{dirty} untracked), "
        f"a batch of {size}",
        "",
        "| phase | median | min – max |",
        "|---|---|---|",
    ]
    for name, value in stats.items():
        per = " per subtask" if name.startswith(("worktree", "result")) else ""
        lines.append(f"| {name}{per} | {value.median:.3f} s | {value.lo:.3f} – {value.hi:.3f} s |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dirty", type=int, default=100)
    args = parser.parse_args(argv)
    stats = run(args.files, args.batch, args.reps, args.dirty)
    sys.stdout.write("\n".join(report(args.files, args.batch, args.dirty, stats)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
