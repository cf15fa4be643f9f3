"""P5 per-subtask overhead: batches of 64 trivial subtasks, worker-side slot time.

Slot time is what the worker recorded for each subtask, from its claim (the result's
``started_at``) to its result (``finished_at``): agent process, write check and
verification included, queueing and the orchestrator not. Cases, one project each:

- agent: ``shell`` running ``true`` and ``touch oNN`` alternately, or a CLI agent: a
  fake coding-agent executable in the workspace (``.bench/fake-coder``, a tiny ``sh``
  script) that reads its prompt file and writes ``oNN``;
- ``execution.verify``: none, or ``test -f <deliverable>``;
- the write check (``BATCHQ_UNDECLARED_WRITES``): ``warn`` or ``off``;
- the workspace: a git work tree (``git status`` snapshots) or a plain folder
  (inotify tracker).

One worker × 2 prefork, as in P2. Each project first runs a 4-subtask feature that is
not counted (the workers' per-workspace set-up is paid once, as in use), then
``--reps`` batches of ``--n``. Goals (issue 24): shell median ≤ 15 ms without verify,
≤ 25 ms with; CLI agent median ≤ 30 ms.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchq.protocol import agent_queue
from bench.common import BATCHQ_QUEUES, BatchqClient, Stats, redis, tmpdir, workers, write_feature

CLI_AGENT = "FakeCoder"
# In the workspace: the agents' sandbox hides /tmp but the workspace (a program
# installed under /tmp would be out of sight, and so would a bin folder beside it).
CLI_COMMAND = (
    "sh {workspace}/.bench/fake-coder --prompt-file {prompt_file} --out {workspace}/o{seq}"
)
FAKE_CODER = """#!/bin/sh
# A fake coding-agent CLI: read the prompt, write the deliverable, say so.
while [ $# -gt 0 ]; do
  case "$1" in
    --prompt-file) prompt=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) shift ;;
  esac
done
cat "$prompt" > /dev/null
: > "$out"
echo "wrote $out"
"""
GOALS_MS = {
    ("shell", False): 15.0,
    ("shell", True): 25.0,
    ("cli", False): 30.0,
    ("cli", True): 30.0,
}


@dataclass(frozen=True)
class Case:
    agent: str  # "shell" or "cli"
    verify: bool
    writes: str  # "warn" or "off"
    git: bool

    @property
    def label(self) -> str:
        return (
            f"{self.agent}, {'verify' if self.verify else 'no verify'}, "
            f"writes {self.writes}, {'git work tree' if self.git else 'plain folder'}"
        )

    @property
    def goal_ms(self) -> float:
        return GOALS_MS[(self.agent, self.verify)]


CASES = [
    Case(agent, verify, writes, git)
    for agent in ("shell", "cli")
    for verify in (False, True)
    for writes in ("warn", "off")
    for git in (True, False)
]


def subtask(case: Case, index: int, width: int) -> dict[str, Any]:
    seq = str(index).zfill(width)
    execution: dict[str, Any] = {"timeout_s": 600}
    if case.agent == "cli":
        agent, deliverable = CLI_AGENT, f"o{seq}"
    elif index % 2:
        agent, deliverable = "shell", f"t{seq}"  # exists before the run
        execution["command"] = "true"
    else:
        agent, deliverable = "shell", f"o{seq}"
        execution["command"] = f"touch o{seq}"
    if case.verify:
        execution["verify"] = f"test -f {deliverable}"
    return {
        "id": f"p5-{seq}",
        "seq": seq,
        "title": f"trivial {seq}",
        "status": "pending",
        "depends_on": [],
        "parallel": True,
        "suggested_agent": agent,
        "acceptance_criteria": ["runs"],
        "deliverables": [deliverable],
        "execution": execution,
    }


def _git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", *args],
        cwd=root,
        check=True,
        capture_output=True,
    )


def _project(case: Case, n: int) -> Path:
    root = tmpdir("bench-p5-")
    (root / ".bench").mkdir()
    (root / ".bench" / "fake-coder").write_text(FAKE_CODER)
    width = max(2, len(str(n)))
    for i in range(1, n + 1, 2):
        (root / f"t{str(i).zfill(width)}").touch()
    if case.git:
        (root / ".gitignore").write_text(".tmp/\n")
        _git(root, "init", "-q")
        _git(root, "add", "-A")
        _git(root, "commit", "-q", "-m", "set-up")
    return root


def _feature(root: Path, case: Case, name: str, n: int) -> None:
    for old in root.glob("o*"):  # a fresh batch writes its outputs anew
        old.unlink()
    width = max(2, len(str(n)))
    write_feature(root, name, [subtask(case, i, width) for i in range(1, n + 1)])


def slot_times(client: BatchqClient, root: Path, name: str) -> list[float]:
    """Claim-to-record time of every subtask of one run, as the worker recorded it."""
    result = client.orchestrator(root, name).run()
    results = [r for report in result.reports for r in report.results]
    assert result.ok, [(r.seq, r.result, r.error) for r in results if not r.ok]
    times = [
        (r.finished_at - r.started_at).total_seconds()
        for r in results
        if r.started_at is not None and r.finished_at is not None
    ]
    assert len(times) == len(results)
    return times


def run_case(url: str, case: Case, n: int, reps: int, leftovers: list[Path]) -> Stats:
    """One case's slot times. Its project is left in ``leftovers``, removed once every
    case ran: on ext4 without a journal each file created walks past the inodes freed
    in the last minute (docs/benchmarks.md, "Freed inodes"), so deleting a project just
    before the next case made that case's log, prompt and output files slow to create,
    a cost of the bench's clean-up, not of batchq."""
    client = BatchqClient(
        url,
        shell_allow=["*"],
        undeclared_writes=case.writes,
        agents={CLI_AGENT: {"command": CLI_COMMAND}},
    )
    root = _project(case, n)
    leftovers.append(root)
    try:
        _feature(root, case, "warm", 4)
        slot_times(client, root, "warm")
        values: list[float] = []
        for rep in range(reps):
            name = f"p5-{rep}"
            _feature(root, case, name, n)
            values += slot_times(client, root, name)
        return Stats(values)
    finally:
        client.close()


@contextmanager
def _removed(roots: list[Path]) -> Iterator[None]:
    """Remove every project in ``roots`` on the way out, whatever happened."""
    try:
        yield
    finally:
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=64, help="subtasks per batch")
    parser.add_argument("--reps", type=int, default=3, help="counted batches per case")
    parser.add_argument("--only", default="", help="comma-separated agents: shell,cli")
    args = parser.parse_args(argv)
    agents = set(args.only.split(",")) if args.only else {"shell", "cli"}
    env = {
        "BATCHQ_SHELL_ALLOW": "*",
        "BATCHQ_AGENTS": json.dumps({CLI_AGENT: {"command": CLI_COMMAND}}),
    }
    rows: dict[str, Any] = {}
    leftovers: list[Path] = []
    with (
        _removed(leftovers),
        redis() as server,
        workers(
            server.url,
            "batchq.worker",
            env=env,
            queues=(*BATCHQ_QUEUES, agent_queue(CLI_AGENT)),
        ),
    ):
        for case in CASES:
            if case.agent not in agents:
                continue
            stats = run_case(server.url, case, args.n, args.reps, leftovers)
            rows[case.label] = {"case": case, "stats": stats}
            median, p95 = stats.median * 1000, stats.pct(95) * 1000
            print(
                f"P5 {case.label}: slot time p50 {median:.1f} ms p95 {p95:.1f} ms "
                f"(n={len(stats.values)}); goal p50 ≤ {case.goal_ms:.0f} ms "
                f"{'met' if median <= case.goal_ms else 'NOT met'}",
                flush=True,
            )
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
