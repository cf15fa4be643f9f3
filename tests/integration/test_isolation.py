"""Isolated delegations end to end: real git repositories, a real redis-server, real
prefork workers, shell agents each in a worktree of their own (issue 19)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchq.cli.main import main
from batchq.errors import UsageError
from batchq.files.taskfiles import load_feature
from batchq.models import BatchStatus, Isolation, ResultState, WriteCheck
from batchq.run.merge import subtask_patch
from batchq.run.orchestrator import Orchestrator, RunOptions, RunResult
from batchq.settings import Settings, load_settings
from batchq.store.state import StateStore
from batchq.transport.app import create_app
from tests.integration.gitrepo import (
    ISOLATED,
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

WORKER_ENV = {"BATCHQ_SHELL_ALLOW": "*", "BATCHQ_HEARTBEAT_S": "1"}


@pytest.fixture(scope="module")
def stack(redis_target: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with module_worker(redis_target.url, tmp_path_factory, WORKER_ENV) as url:
        yield url


Make = Callable[..., tuple[Orchestrator, StateStore]]


@pytest.fixture
def orchestrator(stack: str) -> Iterator[Make]:
    stores: list[StateStore] = []

    def make(
        root: Path, url: str | None = None, **overrides: Any
    ) -> tuple[Orchestrator, StateStore]:
        values: dict[str, Any] = {
            "redis_url": url or stack,
            "shell_allow": ["*"],
            "stall_s": 30.0,
        }
        values.update(overrides)
        settings: Settings = load_settings(root, **values)
        store = StateStore.from_url(values["redis_url"], prefix=settings.key_prefix)
        stores.append(store)
        return Orchestrator(root, "feat", settings, create_app(settings), store), store

    yield make
    for store in stores:
        store.close()


def statuses(root: Path) -> dict[str, str]:
    return {s.seq: s.status.value for s in load_feature(root, "feat").subtasks}


def test_agents_see_uncommitted_and_untracked_work_and_the_next_batch_sees_the_merge(
    repo, make_feature, subtask_data, orchestrator, capsys
):
    first = (
        "mkdir -p out && cat a.txt staged.txt notes.txt > out/01.txt"
        " && { test -e build/ignored.txt && echo ignored-seen || echo no-ignored; } >> out/01.txt"
        " && pwd > out/01.where && git status --porcelain > out/01.status"
    )
    make_feature(
        [
            subtask_data(
                "01", command=first, deliverables=["out/01.txt", "out/01.where", "out/01.status"]
            ),
            subtask_data("02", command="cat out/01.txt > out/02.txt", depends_on=["01"]),
        ],
        root=repo,
    )
    before = git_state(repo)
    orch, store = orchestrator(repo)
    result = orch.run(ISOLATED)

    assert result.ok, [r.error for b in result.reports for r in b.results]
    seen = "v2\ns2\nhello\nno-ignored\n"
    assert (repo / "out" / "01.txt").read_text() == seen
    assert (repo / "out" / "02.txt").read_text() == seen  # batch 2's snapshot had the merge
    where = (repo / "out" / "01.where").read_text().strip()
    assert where.startswith(str(worktrees_home(repo).resolve()))
    assert "?? out/" in (repo / "out" / "01.status").read_text()  # git works read-only
    first_result = result.reports[0].results[0]
    assert first_result.changed_paths == ["out/01.status", "out/01.txt", "out/01.where"]
    assert first_result.merged_paths == first_result.changed_paths
    assert first_result.undeclared_writes == []
    assert first_result.diffstat and first_result.diffstat.startswith("3 files changed")
    assert first_result.isolated_commit is not None
    assert git(repo, "rev-parse", f"refs/batchq/{result.run_id}/01").strip() == (
        first_result.isolated_commit
    )
    recorded = store.result(result.run_id, "01")
    assert recorded is not None and recorded.merged_paths == first_result.merged_paths
    patch = subtask_patch(load_feature(repo, "feat"), "01")
    assert "+++ b/out/01.txt" in patch and "+hello" in patch
    log = Path(first_result.log_path or "").read_text()
    assert "+++ b/out/01.txt" in log
    assert git_state(repo) == before
    assert leftovers(repo) == []
    assert (repo / "a.txt").read_text() == "v2\n"  # the user's uncommitted work stays
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["diff", "feat", "02", "--run", result.run_id, "--root", str(repo)])
    assert exit_info.value.code in (0, None)
    assert "+++ b/out/02.txt" in capsys.readouterr().out


def test_strays_are_reported_and_not_merged(repo, make_feature, subtask_data, orchestrator):
    command = "mkdir -p out && echo x > stray.txt && echo y > a.txt && echo d > out/01.txt"
    make_feature([subtask_data("01", command=command)], root=repo)
    orch, _ = orchestrator(repo)
    result = orch.run(ISOLATED)
    assert result.ok  # warn
    (only,) = result.reports[0].results
    assert only.undeclared_writes == ["a.txt", "stray.txt"]
    assert only.merged_paths == ["out/01.txt"]
    assert not (repo / "stray.txt").exists()
    assert (repo / "a.txt").read_text() == "v2\n"
    assert (repo / "out" / "01.txt").read_text() == "d\n"
    assert only.observed_writes == []  # no time windows under isolation


def test_under_fail_a_stray_fails_the_subtask_and_nothing_is_merged(
    repo, make_feature, subtask_data, orchestrator
):
    command = "mkdir -p out && echo x > stray.txt && echo d > out/01.txt"
    make_feature([subtask_data("01", command=command)], root=repo)
    orch, store = orchestrator(repo)
    result = orch.run(RunOptions(isolate=Isolation.WORKTREE, write_check=WriteCheck.FAIL))
    assert not result.ok
    (only,) = result.reports[0].results
    assert only.result is ResultState.FAILED and only.error_type == "UndeclaredWrite"
    assert "stray.txt" in (only.error or "")
    assert not (repo / "out" / "01.txt").exists() and not (repo / "stray.txt").exists()
    recorded = store.result(result.run_id, "01")
    assert recorded is not None and recorded.result is ResultState.FAILED
    assert statuses(repo) == {"01": "blocked"}
    assert result.reports[0].discrepancies == []


def test_a_deliverable_the_workspace_changed_during_the_batch_is_a_conflict(
    repo, make_feature, subtask_data, orchestrator
):
    command = (
        "touch started.flag && n=0; until [ -f go.flag ] || [ $n -ge 1200 ]; "
        "do sleep 0.05; n=$((n+1)); done; echo agent > a.txt"
    )
    make_feature(
        [subtask_data("01", command=command, deliverables=["a.txt"], timeout_s=120)], root=repo
    )
    orch, store = orchestrator(repo)
    thread, box = run_in_thread(orch, ISOLATED)
    flag = wait_for_glob(worktrees_home(repo), "*/01/started.flag", thread)
    (repo / "a.txt").write_text("user edit\n")  # the workspace changes the deliverable
    (flag.parent / "go.flag").touch()
    thread.join(120)
    (result,) = box
    assert isinstance(result, RunResult)
    assert not result.ok
    built = result.reports[0]
    assert built.status is BatchStatus.PARTIAL_FAILURE
    (only,) = built.results
    assert only.result is ResultState.FAILED and only.error_type == "MergeConflict"
    assert "a.txt" in (only.error or "")
    assert only.merged_paths == []
    assert (repo / "a.txt").read_text() == "user edit\n"  # the workspace keeps its version
    assert "+agent" in subtask_patch(load_feature(repo, "feat"), "01", result.run_id)
    recorded = store.result(result.run_id, "01")
    assert recorded is not None and recorded.result is ResultState.FAILED
    assert statuses(repo) == {"01": "blocked"}
    assert leftovers(repo) == []


def test_isolation_is_refused_outside_a_git_work_tree(
    tmp_path, make_feature, subtask_data, orchestrator
):
    plain = tmp_path / "plain"
    make_feature([subtask_data("01", command="true")], root=plain)
    orch, _ = orchestrator(plain)
    with pytest.raises(UsageError, match="not inside a git work tree"):
        orch.run(ISOLATED)
    assert statuses(plain) == {"01": "pending"}


__all__ = ["repo"]  # the imported fixture


def test_parallel_members_each_get_their_own_worktree_and_all_merge(
    repo, make_feature, subtask_data, orchestrator
):
    """Four members at once, each rewriting the same undeclared scratch file and its own
    deliverable: no one sees another's scratch, and the strays are each one's own."""
    subtasks = [
        subtask_data(
            seq,
            command=f"echo {seq} > scratch.txt && mkdir -p out && "
            f"cat a.txt scratch.txt > out/{seq}.txt",
        )
        for seq in ("01", "02", "03", "04")
    ]
    make_feature(subtasks, root=repo)
    orch, _ = orchestrator(repo)
    result = orch.run(ISOLATED)
    assert result.ok
    (built,) = result.reports
    assert built.undeclared_writes == []  # exact blame: no batch-level candidates
    for r in built.results:
        assert (repo / "out" / f"{r.seq}.txt").read_text() == f"v2\n{r.seq}\n"
        assert r.undeclared_writes == ["scratch.txt"]
        assert r.merged_paths == [f"out/{r.seq}.txt"]
    assert len({r.isolated_commit for r in built.results}) == 4
    assert not (repo / "scratch.txt").exists()
    assert leftovers(repo) == []


def test_a_project_root_inside_the_repository_is_the_agents_workspace(
    repo, make_feature, subtask_data, orchestrator
):
    project = repo / "app"
    project.mkdir()
    (project / "local.txt").write_text("local\n")
    # Outside the project the sandbox is read-only; without one the write is not merged.
    command = (
        "mkdir -p out && cat ../notes.txt local.txt > out/01.txt;"
        " { echo s > ../stray.txt; } 2>/dev/null; true"
    )
    make_feature([subtask_data("01", command=command)], root=project)
    (project / ".git").rmdir()  # make_feature's marker: here the repository is above
    before = git_state(repo)
    orch, _ = orchestrator(project)
    result = orch.run(ISOLATED)
    assert result.ok, [r.error for b in result.reports for r in b.results]
    (only,) = result.reports[0].results
    assert (project / "out" / "01.txt").read_text() == "hello\nlocal\n"
    assert only.changed_paths == ["out/01.txt"]  # relative to the project, as declared
    assert only.merged_paths == ["out/01.txt"]
    assert not (repo / "stray.txt").exists()  # outside the project: never merged
    base = f"refs/batchq/{result.run_id}/base-1"
    assert not [p for p in git(repo, "ls-tree", "-r", "--name-only", base).split() if ".tmp" in p]
    assert git_state(repo) == before
    assert leftovers(repo) == []
