"""A worker SIGKILLed while its agent works in an isolated worktree: the next run
removes what it left (its own module: it needs workers no other test shares)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from batchq.run.orchestrator import Orchestrator, RunResult
from batchq.settings import load_settings
from batchq.store.state import StateStore
from batchq.transport.app import create_app
from tests.integration.gitrepo import (
    ISOLATED,
    git,
    leftovers,
    repo,
    run_in_thread,
    wait_for_glob,
    worktrees_home,
)

pytestmark = pytest.mark.integration

__all__ = ["repo"]  # the imported fixture


def _orchestrator(root: Path, url: str) -> tuple[Orchestrator, StateStore]:
    values: dict[str, Any] = {
        "redis_url": url,
        "shell_allow": ["*"],
        "claim_ttl_s": 2.0,
        "heartbeat_s": 1.0,
        "stall_s": 4.0,
    }
    settings = load_settings(root, **values)
    store = StateStore.from_url(url, prefix=settings.key_prefix)
    return Orchestrator(root, "feat", settings, create_app(settings), store), store


def test_a_worker_killed_mid_delegation_leaves_nothing_after_the_next_run(
    repo, make_feature, subtask_data, workers, redis_url, redis_client
):
    # The first run's agent waits (boundedly) for a flag that never comes; the second
    # run's snapshot has `proceed`, so its agent finishes at once.
    command = (
        "if [ -f proceed ]; then mkdir -p out && echo ok > out/01.txt; else touch started.flag;"
        " n=0; until [ $n -ge 600 ]; do sleep 0.05; n=$((n+1)); done; fi"
    )
    make_feature([subtask_data("01", command=command, timeout_s=120)], root=repo)
    env = {"BATCHQ_SHELL_ALLOW": "*", "BATCHQ_HEARTBEAT_S": "1", "BATCHQ_CLAIM_TTL_S": "2"}
    group = workers(count=1, concurrency=1, env=env)
    orch, store = _orchestrator(repo, redis_url)
    thread, box = run_in_thread(orch, ISOLATED)
    wait_for_glob(worktrees_home(repo), "*/01/started.flag", thread)
    group.kill_worker(0)
    thread.join(120)
    (first,) = box
    assert isinstance(first, RunResult) and not first.ok
    assert any(name.endswith("01.owner") for name in leftovers(repo))  # the crash left it
    assert "batchq-worktrees" in git(repo, "worktree", "list")

    (repo / "proceed").write_text("go\n")
    workers(count=1, concurrency=1, env=env)
    store.close()
    orch, store = _orchestrator(repo, redis_url)
    second = orch.run(ISOLATED)
    store.close()
    assert second.ok, [r.error for b in second.reports for r in b.results]
    assert (repo / "out" / "01.txt").read_text() == "ok\n"
    assert leftovers(repo) == []
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
