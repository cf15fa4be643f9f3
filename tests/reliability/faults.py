"""Helpers of the reliability tests: fault settings, named workers, the audit of a run.

Workers get settings that make redelivery quick (TRAPS: kombu restores abandoned
messages only every ``unacked_restore_interval`` x ``throttle``, about 100 s by
default), so a lost message comes back within seconds.
"""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

from batchq import procs
from batchq.local.embedded import LocalWorkers
from batchq.settings import Settings, load_settings
from batchq.store.state import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
PAYLOADS = "tests.reliability.payloads"
QUEUES = ("batchq.shell", "batchq.python", "batchq.control")

VISIBILITY_S = 5
"""Small, so a whole lost worker's messages come back quickly."""
FAST_TIMEOUT_S = 4
"""``timeout_s`` of fault-test subtasks: within the visibility budget (0.9 x 5 s)."""

FAULT_ENV = {
    "BATCHQ_SHELL_ALLOW": "*",
    "BATCHQ_PYTHON_ALLOW": f"tests.fixtures_pkg,{PAYLOADS}",
    "BATCHQ_VISIBILITY_TIMEOUT_S": str(VISIBILITY_S),
    "BATCHQ_UNACKED_RESTORE_INTERVAL_S": "1",
    "BATCHQ_CLAIM_TTL_S": "3",
    "BATCHQ_HEARTBEAT_S": "1",
    "BATCHQ_MAX_STARTS": "3",
    "BATCHQ_RETRY_BACKOFF_S": "0.2",
}


def client_for(redis_py_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_py_url, socket_timeout=10, decode_responses=True)


class NamedWorkers(LocalWorkers):
    """One worker process with its own node name, so a replacement can join later."""

    def __init__(self, redis_url: str, name: str, **opts: Any) -> None:
        super().__init__(redis_url, count=1, **opts)
        self.name = name

    def argv(self, index: int) -> list[str]:
        argv = super().argv(index)
        argv[argv.index("-n") + 1] = f"{self.name}@%h"
        return argv

    @property
    def pid(self) -> int:
        return self.children[0].pid

    def pool_children(self) -> list[int]:
        return procs.child_pids(self.pid)


def fault_settings(root: Path, url: str, **overrides: Any) -> Settings:
    """Producer-side settings matching :data:`FAULT_ENV`."""
    values: dict[str, Any] = {
        "redis_url": url,
        "shell_allow": ["*"],
        "python_allow": ["tests.fixtures_pkg", PAYLOADS],
        "visibility_timeout_s": float(VISIBILITY_S),
        "claim_ttl_s": 3.0,
        "heartbeat_s": 1.0,
        "max_starts": 3,
        "stall_s": 60.0,
    }
    values.update(overrides)
    return load_settings(root, **values)


def marked(seq: str, seconds: float = 1.5, extra: str = "") -> str:
    """A shell command that logs each start to ``marks/<seq>`` (time and pid), works
    for ``seconds``, then writes its deliverable ``out/<seq>.txt``."""
    return (
        f'mkdir -p marks out && echo "$(date +%s.%N) $$" >> marks/{seq}; {extra}'
        f"sleep {seconds}; echo done-{seq} > out/{seq}.txt && echo wrote {seq}"
    )


@dataclass
class Audit:
    """What Redis and the workspace say about one run's subtasks."""

    expected: list[str]
    results: dict[str, str] = field(default_factory=dict)
    finished_events: Counter[str] = field(default_factory=Counter)
    starts: dict[str, int] = field(default_factory=dict)
    start_marks: dict[str, list[float]] = field(default_factory=dict)
    finished_at: dict[str, float] = field(default_factory=dict)

    @property
    def lost(self) -> list[str]:
        """Expected subtasks without a recorded result."""
        return [s for s in self.expected if s not in self.results]

    @property
    def doubly_recorded(self) -> list[str]:
        """Subtasks with more than one ``finished`` event in the run's stream."""
        return [s for s, n in self.finished_events.items() if n > 1]

    @property
    def started_after_completion(self) -> list[str]:
        """Completed subtasks whose agent started again after the recorded finish."""
        return [
            s
            for s, done in self.finished_at.items()
            if self.results.get(s) == "completed" and any(t > done for t in self.start_marks[s])
        ]

    @property
    def restarted(self) -> list[str]:
        """Subtasks started more than once (at-least-once: allowed after a loss)."""
        return [s for s, n in self.starts.items() if n > 1]

    def assert_clean(self) -> None:
        assert self.lost == [], f"lost: {self.lost}"
        assert self.doubly_recorded == [], f"recorded twice: {self.finished_events}"
        assert self.started_after_completion == [], (
            f"started after completion: {self.started_after_completion} "
            f"(marks {self.start_marks}, finished {self.finished_at})"
        )
        for seq in self.expected:
            assert self.finished_events[seq] == 1, (seq, self.finished_events)


def audit(client: redis.Redis, run_id: str, expected: list[str], root: Path) -> Audit:
    """Count ``finished`` events per seq, read each ``sub:<run>:<seq>`` hash, and the
    start marks the subtask's command left in the workspace."""
    found = Audit(expected=list(expected))
    for _id, fields in client.xrange(f"batchq:events:{run_id}"):
        if fields.get("kind") == "finished":
            found.finished_events[fields["seq"]] += 1
    for seq in expected:
        info = client.hgetall(f"batchq:sub:{run_id}:{seq}")
        found.starts[seq] = int(info.get("starts", 0))
        if "result" in info:
            result = json.loads(info["result"])
            found.results[seq] = result["result"]
            found.finished_at[seq] = datetime.fromisoformat(result["finished_at"]).timestamp()
        marks = root / "marks" / seq
        lines = marks.read_text().splitlines() if marks.exists() else []
        found.start_marks[seq] = [float(line.split()[0]) for line in lines if line.strip()]
    return found


def wait_drained(client: redis.Redis, timeout_s: float = 90.0) -> None:
    """Wait until no message is queued or unacked, so no redelivery can still come."""

    def drained() -> bool:
        queued = sum(int(client.llen(q)) for q in QUEUES)
        return queued == 0 and int(client.hlen("unacked")) == 0

    assert wait_until(drained, timeout_s, 0.2), "messages still queued or unacked"


def record_figures(scenario: str, found: Audit, **extra: Any) -> None:
    """Append one trial's figures for docs/reliability.md (opt-in by env)."""
    target = os.environ.get("BATCHQ_RELIABILITY_FIGURES")
    if not target:
        return
    line = {
        "scenario": scenario,
        "subtasks": len(found.expected),
        "lost": len(found.lost),
        "doubly_recorded": len(found.doubly_recorded),
        "started_after_completion": len(found.started_after_completion),
        "restarted": len(found.restarted),
        **extra,
    }
    with open(target, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")


def pool_pid(event_worker: str) -> int:
    """The pid in a ``started`` event's worker id (``host:pid``)."""
    return int(event_worker.rsplit(":", 1)[1])


def kill_pool_child(pid: int, owners: list[NamedWorkers]) -> None:
    """SIGKILL a pool child, but only one of the workers this test started."""
    ours = {p for w in owners for p in w.pool_children()}
    assert pid in ours, f"pid {pid} is not a pool child of our workers ({sorted(ours)})"
    os.kill(pid, signal.SIGKILL)


def json_files_valid(root: Path, feature: str = "feat") -> None:
    """Every task file of the feature parses as JSON (atomic writes, even under faults)."""
    folder = root / ".tmp" / "tasks" / feature
    for path in sorted(folder.glob("*.json")):
        json.loads(path.read_text(encoding="utf-8"))


class Fleet:
    """Named workers on one Redis that outlive single tests: a lost one is replaced
    at once (started without waiting), so the next test finds two ready workers."""

    def __init__(self, url: str, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.url, self.log_dir = url, log_dir
        self.env = FAULT_ENV if env is None else env
        self.live: list[NamedWorkers] = []
        self.every: list[NamedWorkers] = []

    def add(self, concurrency: int = 2) -> NamedWorkers:
        name = f"fleet{len(self.every)}"
        worker = NamedWorkers(
            self.url,
            name,
            concurrency=concurrency,
            env=self.env,
            log_dir=self.log_dir / name,
            cwd=REPO_ROOT,
        )
        self.every.append(worker)
        self.live.append(worker)
        worker.start()
        return worker

    def ready(self, timeout_s: float = 90.0) -> list[NamedWorkers]:
        for worker in self.live:
            worker.wait_ready(timeout_s)
        return list(self.live)

    def owner_of(self, pid: int) -> NamedWorkers:
        (owner,) = [w for w in self.live if pid in w.pool_children()]
        return owner

    def lose(self, worker: NamedWorkers) -> None:
        """SIGKILL the worker's whole group (a lost host) and start a replacement."""
        worker.kill_worker(0)
        self.live.remove(worker)
        self.add()

    def stop(self) -> None:
        for worker in self.every:
            worker.stop(grace_s=3.0)
