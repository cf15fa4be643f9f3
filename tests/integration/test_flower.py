"""Flower sees every subtask: real Redis, real Flower, a real prefork worker.

Flower starts first (it only knows tasks whose events it saw) and must have seen the
worker come online before anything is submitted; then one batch runs and Flower's
API, behind basic auth, must list every subtask under ``batchq.run_subtask`` with
its argument summary and final state, while ``/metrics`` (no auth) counts them.
The worker logs JSON (``BATCHQ_LOG_FORMAT=json``), so the same run checks that its
lines about a subtask carry feature, batch and seq.
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from batchq.local.embedded import LocalWorkers
from batchq.local.flower import start_flower
from batchq.procs import Child
from batchq.protocol import DEFAULT_QUEUES, RUN_TASK
from batchq.run.orchestrator import Orchestrator
from batchq.settings import load_settings
from batchq.store.state import StateStore
from batchq.transport.app import create_app

# Generous: Flower, a worker and a run start in the module fixture on a shared 2-core box.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO_ROOT = Path(__file__).resolve().parents[2]
USER, PASSWORD = "ops", "flower-test-pw"
TITLES = {
    "01": "Setup project structure",
    "02": "Configure database",
    "03": "Install dependencies (ü)",
}


@dataclass
class FlowerStack:
    url: str
    flower: Child
    workers: LocalWorkers
    redis_url: str

    def get(self, path: str, *, auth: bool = True) -> tuple[int, str]:
        request = urllib.request.Request(f"{self.url}{path}")
        if auth:
            token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, resp.read().decode("utf-8")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode("utf-8", "replace")


def wait_for(what: str, probe: Callable[[], Any], timeout_s: float = 90.0) -> Any:
    """Poll ``probe`` until it returns something truthy; bounded, no timing asserted."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"gave up waiting for {what}; last probe: {last!r}")


@pytest.fixture(scope="module")
def flower_stack(
    redis_target: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FlowerStack]:
    logs = tmp_path_factory.mktemp("flower-stack")
    settings = load_settings(
        None, redis_url=redis_target.url, flower_user=USER, flower_password=PASSWORD
    )
    flower, url = start_flower(settings, redis_target.url, logs / "flower.log", cwd=REPO_ROOT)
    workers = LocalWorkers(
        redis_target.url,
        count=1,
        concurrency=2,
        queues=DEFAULT_QUEUES,
        env={"BATCHQ_SHELL_ALLOW": "*", "BATCHQ_LOG_FORMAT": "json"},
        log_dir=logs,
        cwd=REPO_ROOT,
    )
    try:
        workers.start()
        workers.wait_ready(90)
        stack = FlowerStack(url, flower, workers, redis_target.url)
        # Healthy is not listening: wait until Flower has seen the worker's events.
        wait_for(
            "Flower to see the worker online",
            lambda: (
                'flower_worker_online{worker="batchq-0@' in stack.get("/metrics", auth=False)[1]
            ),
        )
        yield stack
    finally:
        workers.stop(grace_s=5)
        flower.terminate(5)


def run_feature(stack: FlowerStack, root: Path, name: str, commands: dict[str, str]) -> Any:
    """Write feature ``name`` (one parallel shell subtask per seq of ``commands``, titled
    from ``TITLES``) and run it on the stack's worker; returns the RunResult."""
    (root / ".git").mkdir(exist_ok=True)
    folder = root / ".tmp" / "tasks" / name
    folder.mkdir(parents=True)
    task = {
        "id": name,
        "name": "Flower feature",
        "status": "active",
        "objective": "seen in Flower",
        "context_files": [],
        "reference_files": [],
        "exit_criteria": ["done"],
        "subtask_count": len(commands),
        "completed_count": 0,
        "created_at": "2026-01-01T00:00:00.000Z",
    }
    (folder / "task.json").write_text(json.dumps(task, indent=2) + "\n", encoding="utf-8")
    for seq, command in commands.items():
        sub = {
            "id": f"{name}-{seq}",
            "seq": seq,
            "title": TITLES[seq],
            "status": "pending",
            "depends_on": [],
            "parallel": True,
            "suggested_agent": "shell",
            "context_files": [],
            "reference_files": [],
            "acceptance_criteria": ["file written"],
            "deliverables": [f"out/{seq}.txt"],
            "execution": {"command": command},
        }
        text = json.dumps(sub, indent=2, ensure_ascii=False) + "\n"
        (folder / f"subtask_{seq}.json").write_text(text, encoding="utf-8")
    settings = load_settings(root, redis_url=stack.redis_url, shell_allow=["*"], stall_s=60.0)
    store = StateStore.from_url(stack.redis_url, prefix=settings.key_prefix)
    try:
        return Orchestrator(root, name, settings, create_app(settings), store).run()
    finally:
        store.close()


@pytest.fixture(scope="module")
def finished_run(
    flower_stack: FlowerStack, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """One batch of three parallel shell subtasks, run to completion."""
    root = tmp_path_factory.mktemp("project")
    commands = {seq: f"mkdir -p out && echo {seq} > out/{seq}.txt" for seq in TITLES}
    result = run_feature(flower_stack, root, "flowerfeat", commands)
    assert result.ok, result.reports
    return {"run_id": result.run_id, "root": root}


@pytest.fixture(scope="module")
def failed_run(
    flower_stack: FlowerStack, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """01 completes, 02 fails (exit 3): Flower must tell them apart."""
    root = tmp_path_factory.mktemp("failing")
    commands = {
        "01": "mkdir -p out && echo 01 > out/01.txt",
        "02": "echo no database >&2; exit 3",
    }
    result = run_feature(flower_stack, root, "flowerfail", commands)
    assert not result.ok
    return {"run_id": result.run_id, "root": root}


def subtask_tasks(stack: FlowerStack) -> dict[str, dict[str, Any]]:
    status, body = stack.get(f"/api/tasks?taskname={RUN_TASK}&limit=1000")
    assert status == 200, body
    tasks: dict[str, dict[str, Any]] = json.loads(body)
    return tasks


def test_flowers_api_needs_auth_but_metrics_and_healthcheck_do_not(flower_stack):
    assert flower_stack.get("/api/tasks", auth=False)[0] == 401
    assert flower_stack.get("/healthcheck", auth=False) == (200, "OK")
    assert flower_stack.get("/metrics", auth=False)[0] == 200


def test_flower_lists_every_subtask_with_its_args_summary_and_final_state(
    flower_stack, finished_run
):
    def all_succeeded() -> dict[str, dict[str, Any]] | None:
        by_seq = {}
        for task in subtask_tasks(flower_stack).values():
            for seq in TITLES:
                if f"seq={seq} " in (task.get("args") or ""):
                    by_seq[seq] = task
        done = set(by_seq) == set(TITLES) and all(t["state"] == "SUCCESS" for t in by_seq.values())
        return by_seq if done else None

    by_seq = wait_for("every subtask to be SUCCESS in Flower", all_succeeded)
    for seq, task in by_seq.items():
        assert task["name"] == RUN_TASK
        args = task["args"]
        prefix = f"feature=flowerfeat batch=1 seq={seq} run={finished_run['run_id']} title="
        assert args.startswith(prefix), args
        assert TITLES[seq] in args
        assert task["received"] and task["started"] and task["succeeded"]
        assert task["worker"].startswith("batchq-0@")


def test_metrics_count_the_subtask_events_under_the_one_task_name(flower_stack, finished_run):
    def counted() -> str | None:
        body = flower_stack.get("/metrics", auth=False)[1]
        lines = [
            line
            for line in body.splitlines()
            if line.startswith("flower_events_total{")
            and 'type="task-succeeded"' in line
            and f'task="{RUN_TASK}"' in line
        ]
        total = sum(float(line.rsplit(" ", 1)[1]) for line in lines)
        return body if total >= len(TITLES) else None

    body = wait_for("task-succeeded counters for batchq.run_subtask", counted)
    task_labels = set(re.findall(r'^flower_events_total\{[^}]*\btask="([^"]*)"', body, re.M))
    assert RUN_TASK in task_labels
    assert not any("seq" in label or "flowerfeat" in label for label in task_labels)
    assert "flower_task_runtime_seconds" in body


def test_a_failed_subtask_is_failure_in_flower_with_its_error_and_counted(flower_stack, failed_run):
    run_id = failed_run["run_id"]

    def final() -> dict[str, dict[str, Any]] | None:
        by_seq = {}
        for task in subtask_tasks(flower_stack).values():
            args = task.get("args") or ""
            for seq in ("01", "02"):
                if args.startswith(f"feature=flowerfail batch=1 seq={seq} run={run_id} "):
                    by_seq[seq] = task
        states = {t["state"] for t in by_seq.values()}
        return by_seq if len(by_seq) == 2 and states <= {"SUCCESS", "FAILURE"} else None

    by_seq = wait_for("both subtasks of the failing run to finish in Flower", final)
    assert by_seq["01"]["state"] == "SUCCESS"
    assert by_seq["02"]["state"] == "FAILURE"
    assert by_seq["02"]["exception"].startswith("failed: ")
    assert "3" in by_seq["02"]["exception"]
    failed_filter = flower_stack.get(f"/api/tasks?taskname={RUN_TASK}&state=FAILURE&limit=1000")
    assert failed_filter[0] == 200
    stack_tasks = json.loads(failed_filter[1])
    assert by_seq["02"]["uuid"] in stack_tasks and by_seq["01"]["uuid"] not in stack_tasks

    def failed_counted() -> bool:
        body = flower_stack.get("/metrics", auth=False)[1]
        return any(
            line.startswith("flower_events_total{")
            and 'type="task-failed"' in line
            and f'task="{RUN_TASK}"' in line
            and float(line.rsplit(" ", 1)[1]) >= 1
            for line in body.splitlines()
        )

    assert wait_for("Flower's task-failed counter for run_subtask", failed_counted)


def test_worker_log_lines_about_a_subtask_are_json_with_feature_batch_and_seq(
    flower_stack, finished_run
):
    text = flower_stack.workers.children[0].read_log()
    records = []
    for line in text.splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    assert records, text[-2000:]
    about = [r for r in records if r.get("seq") in TITLES and r.get("feature") == "flowerfeat"]
    for seq in TITLES:
        mine = [r for r in about if r["seq"] == seq]
        messages = " | ".join(r["message"] for r in mine)
        assert any("received" in r["message"] for r in mine), messages
        assert any(f"subtask {seq} started" in r["message"] for r in mine), messages
        assert any(f"subtask {seq} completed" in r["message"] for r in mine), messages
        assert any("succeeded" in r["message"] for r in mine), messages
        assert all(r["batch"] == 1 for r in mine)
        started = next(r for r in mine if "started" in r["message"])
        assert started["run_id"] == finished_run["run_id"]
