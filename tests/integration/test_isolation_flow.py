"""Flow mode under isolation end to end: real git repositories, a real redis-server,
a real prefork worker (4 slots), shell agents each in a worktree of their own at the
snapshot of the wave that published them (issue 19).

Overlap is made by files the agents and the test write, never by timing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchq.files.taskfiles import load_feature
from batchq.models import Isolation, ResultState, RunMode
from batchq.run.orchestrator import Orchestrator, RunOptions, RunResult
from batchq.settings import load_settings
from batchq.store.state import StateStore
from batchq.transport.app import create_app
from tests.integration.gitrepo import (
    git,
    git_state,
    leftovers,
    repo,
    run_in_thread,
    wait_for_glob,
    worktrees_home,
)
from tests.servers import module_worker

pytestmark = pytest.mark.integration

__all__ = ["repo"]  # the imported fixture

FLOW_ISOLATED = RunOptions(isolate=Isolation.WORKTREE, mode=RunMode.FLOW)
WAIT_FOR_GO = (
    "touch started.flag && n=0; until [ -f go.flag ] || [ $n -ge 2400 ]; "
    "do sleep 0.05; n=$((n+1)); done; test -f go.flag"
)
"""An agent that says it started, then waits (up to 2 minutes) for the test's go."""


@pytest.fixture(scope="module")
def stack(redis_target: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"BATCHQ_SHELL_ALLOW": "*", "BATCHQ_HEARTBEAT_S": "1"}
    with module_worker(redis_target.url, tmp_path_factory, env) as url:
        yield url


Make = Callable[[Path], tuple[Orchestrator, StateStore]]


@pytest.fixture
def orchestrator(stack: str) -> Iterator[Make]:
    stores: list[StateStore] = []

    def make(root: Path) -> tuple[Orchestrator, StateStore]:
        settings = load_settings(root, redis_url=stack, shell_allow=["*"], stall_s=60.0)
        store = StateStore.from_url(stack, prefix=settings.key_prefix)
        stores.append(store)
        return Orchestrator(root, "feat", settings, create_app(settings), store), store

    yield make
    for store in stores:
        store.close()


def _finish(thread: Any, box: list[Any]) -> RunResult:
    thread.join(180)
    assert not thread.is_alive(), "the run did not end"
    (result,) = box
    assert isinstance(result, RunResult), result
    return result


def _by_seq(result: RunResult) -> dict[str, Any]:
    return {r.seq: r for built in result.reports for r in built.results}


def test_a_dependent_sees_its_dependencys_merge_while_an_independent_one_still_runs(
    repo, make_feature, subtask_data, orchestrator
):
    """01 -> 02 (02 reads 01's deliverable from its wave's snapshot); 03 depends on
    nothing and is still running when 02 has been published, run and merged."""
    make_feature(
        [
            subtask_data("01", command="mkdir -p out && cat a.txt > out/01.txt"),
            subtask_data(
                "02", command="mkdir -p out && cat out/01.txt notes.txt > out/02.txt",
                depends_on=["01"],
            ),
            subtask_data(
                "03", command=f"{WAIT_FOR_GO} && mkdir -p out && echo three > out/03.txt",
                timeout_s=150,
            ),
        ],
        root=repo,
    )  # fmt: skip
    before = git_state(repo)
    orch, store = orchestrator(repo)
    thread, box = run_in_thread(orch, FLOW_ISOLATED)
    flag = wait_for_glob(worktrees_home(repo), "*/03/started.flag", thread)
    # 02 merged while 03 waits: it was published on 01's merge, not at 03's end.
    wait_for_glob(repo / "out", "02.txt", thread)
    assert not (repo / "out" / "03.txt").exists()
    (flag.parent / "go.flag").touch()
    result = _finish(thread, box)

    assert result.ok, [r.error for b in result.reports for r in b.results]
    assert (repo / "out" / "01.txt").read_text() == "v2\n"  # the uncommitted a.txt
    assert (repo / "out" / "02.txt").read_text() == "v2\nhello\n"
    assert (repo / "out" / "03.txt").read_text() == "three\n"
    results = _by_seq(result)
    assert {seq: r.merged_paths for seq, r in results.items()} == {
        "01": ["out/01.txt"], "02": ["out/02.txt"], "03": ["out/03.txt"],
    }  # fmt: skip
    # Each started from its own wave's snapshot: 01 and 03 from the first, 02 from the
    # one recorded after 01's merge, which holds 01's deliverable.
    run = result.run_id
    first = git(repo, "rev-parse", f"refs/batchq/{run}/base-w1").strip()
    second = git(repo, "rev-parse", f"refs/batchq/{run}/base-w2").strip()

    def parent(seq: str) -> str:
        return git(repo, "rev-parse", f"{results[seq].isolated_commit}^").strip()

    assert (parent("01"), parent("02"), parent("03")) == (first, second, first)
    assert git(repo, "show", f"{second}:out/01.txt") == "v2\n"
    assert "out/01.txt" not in git(repo, "ls-tree", "-r", "--name-only", first)
    recorded = store.result(run, "02")
    assert recorded is not None and recorded.merged_paths == ["out/02.txt"]
    assert {s.seq: s.status.value for s in load_feature(repo, "feat").subtasks} == {
        "01": "completed", "02": "completed", "03": "completed",
    }  # fmt: skip
    assert all(not b.discrepancies for b in result.reports), [
        b.discrepancies for b in result.reports
    ]
    assert git_state(repo) == before  # HEAD, branch, index, stash, worktree list
    assert leftovers(repo) == []


def test_a_conflict_in_flow_mode_fails_the_subtask_and_skips_its_dependents(
    repo, make_feature, subtask_data, orchestrator
):
    make_feature(
        [
            subtask_data(
                "01", command=f"{WAIT_FOR_GO} && echo agent > a.txt", deliverables=["a.txt"],
                timeout_s=150,
            ),
            subtask_data("02", command="mkdir -p out && cat a.txt > out/02.txt", depends_on=["01"]),
            subtask_data("03", command="mkdir -p out && echo three > out/03.txt"),
        ],
        root=repo,
    )  # fmt: skip
    before = git_state(repo)
    orch, store = orchestrator(repo)
    thread, box = run_in_thread(orch, FLOW_ISOLATED)
    flag = wait_for_glob(worktrees_home(repo), "*/01/started.flag", thread)
    (repo / "a.txt").write_text("user edit\n")  # the workspace changes 01's deliverable
    (flag.parent / "go.flag").touch()
    result = _finish(thread, box)

    assert not result.ok
    results = _by_seq(result)
    failed = results["01"]
    assert failed.result is ResultState.FAILED and failed.error_type == "MergeConflict"
    assert "a.txt" in (failed.error or "") and failed.merged_paths == []
    assert (repo / "a.txt").read_text() == "user edit\n"  # the workspace keeps its version
    assert results["03"].result is ResultState.COMPLETED  # independent: not skipped
    assert (repo / "out" / "03.txt").read_text() == "three\n"
    skipped = {s.seq: s.reason for built in result.reports for s in built.skipped}
    assert list(skipped) == ["02"] and "01" in skipped["02"]
    assert not (repo / "out" / "02.txt").exists()
    recorded = store.result(result.run_id, "01")
    assert recorded is not None and recorded.result is ResultState.FAILED
    assert {s.seq: s.status.value for s in load_feature(repo, "feat").subtasks} == {
        "01": "blocked", "02": "pending", "03": "completed",
    }  # fmt: skip
    assert all(not b.discrepancies for b in result.reports), [
        b.discrepancies for b in result.reports
    ]
    assert git_state(repo) == before
    assert leftovers(repo) == []


def test_the_cli_runs_flow_mode_isolated(
    repo, make_feature, subtask_data, stack, monkeypatch, capsys
):
    from batchq.cli.main import main

    make_feature(
        [
            subtask_data("01", command="mkdir -p out && cat notes.txt > out/01.txt"),
            subtask_data("02", command="mkdir -p out && cat out/01.txt > out/02.txt",
                         depends_on=["01"]),
        ],
        root=repo,
    )  # fmt: skip
    monkeypatch.setenv("BATCHQ_REDIS_URL", stack)
    monkeypatch.setenv("BATCHQ_SHELL_ALLOW", "*")
    with pytest.raises(SystemExit) as info:
        main(["run", "feat", "--root", str(repo), "--mode", "flow", "--isolate", "worktree"])
    out = capsys.readouterr().out
    assert info.value.code in (0, None), out
    assert (repo / "out" / "02.txt").read_text() == "hello\n"
    assert out.count("   - Diff: 1 file changed") == 2
    assert leftovers(repo) == []
