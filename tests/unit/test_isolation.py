"""Isolation's parts without a broker: the merge verdict (pure), and the git plumbing,
worktree lifecycle and merge-back on real, small git repositories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from batchq.agents.base import Delegation
from batchq.agents.sandbox import bwrap_status, run_confined
from batchq.cli.main import main
from batchq.core.mergeplan import decide
from batchq.errors import SpecError, UsageError
from batchq.executor import isolation
from batchq.files import gitsnap
from batchq.models import Isolation, ResultState, Subtask, SubtaskResult, WriteCheck
from batchq.run.merge import merge_one, merge_results
from batchq.settings import Settings
from tests.minirepo import git, init_repo

_NOW = datetime(2026, 1, 1, tzinfo=UTC)
A = ("100644", "a" * 40)
B = ("100644", "b" * 40)
C = ("100644", "c" * 40)


# --- the verdict (pure) -----------------------------------------------------------------


def test_a_declared_path_the_workspace_left_alone_is_applied_and_strays_are_listed() -> None:
    verdict = decide(
        ["out/x.txt", "stray.txt"], ["out/"], {"out/x.txt": A}, {"out/x.txt": A},
        {"out/x.txt": B}, WriteCheck.WARN,
    )  # fmt: skip
    assert verdict.apply == ["out/x.txt"]
    assert verdict.strays == ["stray.txt"]
    assert verdict.failure is None


def test_a_declared_path_the_workspace_changed_is_a_conflict_and_nothing_applies() -> None:
    verdict = decide(
        ["a.txt", "b.txt"], ["a.txt", "b.txt"], {"a.txt": A, "b.txt": A},
        {"a.txt": C, "b.txt": A}, {"a.txt": B, "b.txt": B}, WriteCheck.WARN,
    )  # fmt: skip
    assert verdict.conflicts == ["a.txt"]
    assert verdict.apply == []
    assert verdict.failure is not None and "a.txt" in verdict.failure


def test_a_path_created_by_both_sides_alike_is_no_conflict_and_a_deletion_applies() -> None:
    same = decide(["new.txt"], ["new.txt"], {}, {"new.txt": B}, {"new.txt": B}, WriteCheck.WARN)
    assert same.apply == [] and same.failure is None
    gone = decide(["old.txt"], ["old.txt"], {"old.txt": A}, {"old.txt": A}, {}, WriteCheck.WARN)
    assert gone.apply == ["old.txt"]
    raced = decide(["new.txt"], ["new.txt"], {}, {"new.txt": C}, {"new.txt": B}, WriteCheck.WARN)
    assert raced.conflicts == ["new.txt"]


def test_strays_fail_under_fail_and_are_not_listed_under_off() -> None:
    args = (["out/x.txt", "s.txt"], ["out/x.txt"], {}, {}, {"out/x.txt": B})
    failed = decide(*args, WriteCheck.FAIL)
    assert failed.apply == [] and failed.strays == ["s.txt"]
    assert failed.failure == "undeclared write: s.txt (declared: out/x.txt); not merged"
    off = decide(*args, WriteCheck.OFF)
    assert off.apply == ["out/x.txt"] and off.strays == [] and off.failure is None


def test_the_mode_alone_is_not_a_conflict() -> None:
    exec_a = ("100755", A[1])
    verdict = decide(["a"], ["a"], {"a": A}, {"a": exec_a}, {"a": B}, WriteCheck.WARN)
    assert verdict.apply == ["a"]


# --- git plumbing on real repositories ----------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return init_repo(tmp_path / "r", {".gitignore": "*.o\n"})


def test_a_snapshot_holds_local_work_but_not_ignored_files_or_batchq_state(repo: Path) -> None:
    (repo / "a.txt").write_text("v2\n")
    (repo / "new.txt").write_text("n\n")
    (repo / "x.o").write_text("o\n")
    (repo / ".tmp" / "tasks" / "f" / ".batchq").mkdir(parents=True)
    (repo / ".tmp" / "tasks" / "f" / "task.json").write_text("{}")
    index, head = (repo / ".git" / "index").read_bytes(), git(repo, "rev-parse", "HEAD")
    commit = gitsnap.snapshot(repo, "refs/batchq/r1/base-1", "snap")
    assert git(repo, "ls-tree", "-r", "--name-only", commit).split() == [
        ".gitignore", "a.txt", "new.txt",
    ]  # fmt: skip
    assert git(repo, "show", f"{commit}:a.txt") == "v2\n"
    assert git(repo, "rev-parse", f"{commit}^") == head
    assert (repo / ".git" / "index").read_bytes() == index
    assert git(repo, "rev-parse", "HEAD") == head
    assert git(repo, "status", "--porcelain").splitlines() == [
        " M a.txt", "?? .tmp/", "?? new.txt",
    ]  # fmt: skip


def test_a_snapshot_of_a_repository_without_commits_has_no_parent(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    git(root, "init", "-q")
    (root / "f.txt").write_text("f\n")
    commit = gitsnap.snapshot(root, "refs/batchq/r1/base-1", "snap")
    assert git(root, "rev-list", "--parents", "-n1", commit).split() == [commit]
    assert not (root / ".git" / "index").exists()


def test_outside_a_work_tree_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not inside a git work tree") as caught:
        gitsnap.require_work_tree(tmp_path)
    assert caught.value.exit_code == 2


def _worktree(repo: Path, seq: str = "01") -> isolation.Worktree:
    gitsnap.snapshot(repo, isolation.base_ref("r1", 1), "snap")
    return isolation.open_worktree(repo, "r1", isolation.base_ref("r1", 1), seq)


def test_a_worktree_is_recorded_as_a_commit_and_removed(repo: Path) -> None:
    tree = _worktree(repo)
    assert gitsnap.linked_git_dirs(tree.path) == [(repo / ".git").resolve()]
    assert gitsnap.linked_git_dirs(repo) == []
    (tree.path / "a.txt").write_text("agent\n")
    (tree.path / "build.o").write_text("ignored deliverable\n")
    recorded = tree.record(["build.o"])
    assert recorded.changed == ["a.txt", "build.o"]
    assert recorded.diffstat.startswith("2 files changed")
    assert "+agent" in recorded.patch
    assert git(repo, "rev-parse", isolation.result_ref("r1", "01")).strip() == recorded.commit
    tree.close()
    assert not tree.path.exists() and not tree.marker.exists()
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1


def test_a_dead_owners_worktree_is_pruned_and_a_live_ones_is_kept(repo: Path) -> None:
    dead = _worktree(repo, "01")
    live = isolation.open_worktree(repo, "r1", isolation.base_ref("r1", 1), "02")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, check=True)  # fmt: skip
    owner = json.loads(dead.marker.read_text()) | {"pid": int(gone.stdout)}
    dead.marker.write_text(json.dumps(owner))
    assert isolation.prune_dead(repo) == [dead.path]
    assert not dead.path.exists() and live.path.is_dir()
    assert "02" in git(repo, "worktree", "list") and "/01" not in git(repo, "worktree", "list")
    live.close()


def _result(commit: str, changed: list[str]) -> SubtaskResult:
    return SubtaskResult(
        feature="f", run_id="r1", batch=1, seq="01", title="t", result=ResultState.COMPLETED,
        isolated_commit=commit, changed_paths=changed,
    )  # fmt: skip


def test_merge_one_applies_declared_changes_deletions_and_modes_only(repo: Path) -> None:
    (repo / "gone.txt").write_text("g\n")
    tree = _worktree(repo)
    (tree.path / "out").mkdir()
    (tree.path / "out" / "run.sh").write_text("#!/bin/sh\n")
    (tree.path / "out" / "run.sh").chmod(0o755)
    (tree.path / "out" / "link").symlink_to("run.sh")
    (tree.path / "gone.txt").unlink()
    (tree.path / "stray.txt").write_text("s\n")
    recorded = tree.record([])
    tree.close()
    merged = merge_one(
        repo, _result(recorded.commit, recorded.changed), ["out/", "gone.txt"], WriteCheck.WARN
    )
    assert merged.ok and merged.undeclared_writes == ["stray.txt"]
    assert merged.merged_paths == ["gone.txt", "out/link", "out/run.sh"]
    assert os.access(repo / "out" / "run.sh", os.X_OK)
    assert os.readlink(repo / "out" / "link") == "run.sh"
    assert not (repo / "gone.txt").exists() and not (repo / "stray.txt").exists()


def test_merge_one_fails_on_a_conflict_and_keeps_the_workspace(repo: Path) -> None:
    tree = _worktree(repo)
    (tree.path / "a.txt").write_text("agent\n")
    recorded = tree.record([])
    tree.close()
    (repo / "a.txt").write_text("user\n")
    merged = merge_one(repo, _result(recorded.commit, recorded.changed), ["a.txt"], WriteCheck.WARN)
    assert merged.result is ResultState.FAILED and merged.error_type == "MergeConflict"
    assert (repo / "a.txt").read_text() == "user\n"


def test_merge_results_merges_in_seq_order_whatever_the_arrival_order(repo: Path) -> None:
    """Two results from one snapshot both rewrite a.txt: whichever arrives first, 01
    merges and 02 conflicts (the workspace changed a.txt since its snapshot)."""
    from batchq.models import FailurePolicy, Run

    made = {}
    for seq in ("01", "02"):
        tree = _worktree(repo, seq)
        (tree.path / "a.txt").write_text(f"from {seq}\n")
        recorded = tree.record([])
        tree.close()
        made[seq] = _result(recorded.commit, recorded.changed).model_copy(update={"seq": seq})
    sub = {s: Subtask(id=f"f-{s}", seq=s, title="t", acceptance_criteria=["x"],
                      deliverables=["a.txt"]) for s in made}  # fmt: skip
    run = Run(run_id="r1", feature="f", feature_key="k", root=repo, token="t",
              policy=FailurePolicy.GRACEFUL, isolate=Isolation.WORKTREE)  # fmt: skip
    first, second = merge_results(run, sub, [made["02"], made["01"]])
    assert first.seq == "01" and first.ok and first.merged_paths == ["a.txt"]
    assert second.seq == "02" and second.error_type == "MergeConflict"
    assert (repo / "a.txt").read_text() == "from 01\n"


@pytest.mark.skipif(not bwrap_status()[0], reason="bubblewrap does not work here")
def test_in_the_sandbox_git_reads_the_worktree_but_cannot_write_the_repository(
    repo: Path, tmp_path: Path
) -> None:
    tree = _worktree(repo)
    (tree.path / "new.txt").write_text("n\n")
    sub = Subtask(id="f-01", seq="01", title="t", acceptance_criteria=["x"], deliverables=["n"])
    delegation = Delegation(
        feature="f", run_id="r1", batch=1, subtask=sub, workspace=tree.path, context="",
        log_path=tmp_path / "logs" / "01.log", timeout_s=60,
    )  # fmt: skip
    settings = Settings(shell_allow=["*"])
    status = run_confined("git status --porcelain", delegation, settings, "shell")
    assert status.ok and "?? new.txt" in status.output
    add = run_confined("git add new.txt", delegation, settings, "shell")
    assert not add.ok
    tree.close()


# --- the CLI's refusals ------------------------------------------------------------


def _cli(root: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    for key in list(os.environ):
        if key.startswith("BATCHQ_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("BATCHQ_REDIS_URL", "redis+socket:///nonexistent/batchq-test.sock")
    monkeypatch.setenv("BATCHQ_SHELL_ALLOW", "*")  # else the pre-flight refuses `true` first
    monkeypatch.chdir(root)
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    code = exit_info.value.code
    return code if isinstance(code, int) else 1


def test_run_refuses_isolation_outside_git_with_exit_2_and_flow_mode_passes_preflight(
    make_feature, subtask_data, tmp_path, monkeypatch, capsys
) -> None:
    plain = make_feature([subtask_data("01", command="true")], root=tmp_path / "plain")
    assert _cli(plain, monkeypatch, "run", "feat", "--isolate", "worktree") == 2
    assert "not inside a git work tree" in capsys.readouterr().err
    inside = tmp_path / "inside"
    inside.mkdir()
    git(inside, "init", "-q")
    make_feature([subtask_data("01", command="true")], root=inside)
    # Flow mode under isolation gets past every pre-flight check: what stops this run
    # is the missing Redis (exit 3), after validation.
    code = _cli(inside, monkeypatch, "run", "feat", "--mode", "flow", "--isolate", "worktree")
    err = capsys.readouterr().err
    assert code == 3, err
    assert "--mode flow" not in err and "isolate" not in err
    (inside / "batchq.toml").write_text('isolate = "worktree"\n')
    assert _cli(inside, monkeypatch, "validate", "feat") == 0
    assert _cli(inside, monkeypatch, "run", "feat", "--mode", "flow") == 3
    assert _cli(inside, monkeypatch, "diff", "feat", "01") == 2
    assert "no isolated result" in capsys.readouterr().err


def test_the_markdown_report_carries_an_isolated_subtasks_diffstat() -> None:
    from batchq.cli.render import render_markdown
    from batchq.core import report

    result = _result("c" * 40, ["a.txt"]).model_copy(update={"diffstat": "1 file changed"})
    built = report.build(
        feature="f", run_id="r1", batch=1, results=[result], expected=["01"],
        next_batch=None, submitted_at=None, finished_at=result.finished_at or _NOW,
    )  # fmt: skip
    assert "   - Diff: 1 file changed" in render_markdown(built).splitlines()


def test_the_bench_runs_at_a_tiny_size(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import p6_isolation

    assert p6_isolation.main(["--files", "12", "--batch", "2", "--reps", "1", "--dirty", "2"]) == 0
    out = capsys.readouterr().out
    assert "## P6 isolation: 12 files" in out and "| merge (whole batch) |" in out


def test_messages_and_results_from_before_isolation_still_decode() -> None:
    from batchq.models import Isolation, SubtaskMessage

    sub = {"id": "f-01", "seq": "01", "title": "t", "acceptance_criteria": ["x"],
           "deliverables": ["out.txt"]}  # fmt: skip
    old = {"feature": "f", "feature_key": "k", "run_id": "r", "batch": 1, "root": "/w",
           "token": "t", "agent": "shell", "subtask": sub}  # fmt: skip
    assert SubtaskMessage.model_validate(old).isolate is Isolation.NONE
    result = SubtaskResult.model_validate_json(
        '{"feature":"f","run_id":"r","batch":1,"seq":"01","title":"t","result":"completed"}'
    )
    assert result.isolated_commit is None and result.changed_paths == []
    assert result.merged_paths == [] and result.diffstat is None


def test_isolate_comes_from_batchq_toml_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchq.models import Isolation
    from batchq.settings import load_settings

    monkeypatch.delenv("BATCHQ_ISOLATE", raising=False)
    (tmp_path / "batchq.toml").write_text('isolate = "worktree"\n')
    assert load_settings(tmp_path).isolate is Isolation.WORKTREE
    monkeypatch.setenv("BATCHQ_ISOLATE", "none")
    assert load_settings(tmp_path).isolate is Isolation.NONE
    (tmp_path / "batchq.toml").write_text('isolate = "container"\n')
    monkeypatch.delenv("BATCHQ_ISOLATE")
    with pytest.raises(SpecError, match=r"batchq\.toml") as caught:
        load_settings(tmp_path)
    assert caught.value.exit_code == 2 and "'none' or 'worktree'" in str(caught.value)


# --- the worker's half, on the memory store ----------------------------------------


def _isolated_message(repo: Path, make_feature: Any, command: str) -> Any:
    from tests.conftest import subtask
    from tests.memrun import message

    data = subtask("01", command=command, deliverables=["01.txt"])
    make_feature([data], root=repo)
    msg = message(repo, data)
    # The worker takes the ref from the message: a flow wave's, not base-<batch>.
    ref = isolation.wave_ref(msg.run_id, 3)
    return msg.model_copy(update={"isolate": Isolation.WORKTREE, "snapshot_ref": ref})


def test_a_worker_runs_the_agent_in_a_worktree_and_records_what_it_changed(
    repo: Path, make_feature: Any
) -> None:
    from batchq.executor.runner import execute
    from batchq.store.memory import MemoryStore
    from tests.memrun import settings

    msg = _isolated_message(repo, make_feature, "touch 01.txt")
    gitsnap.snapshot(repo, msg.snapshot_ref, "snap")
    result = execute(msg, MemoryStore(), settings(shell_allow=["*"]))
    assert result.result is ResultState.COMPLETED, result.error
    assert result.changed_paths == ["01.txt"] and result.isolated_commit
    assert result.observed_writes == []
    assert not (repo / "01.txt").exists()  # merging back is the orchestrator's job
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert "[batchq] isolated result" in Path(result.log_path or "").read_text()


def test_a_missing_snapshot_fails_the_subtask_without_raising(
    repo: Path, make_feature: Any
) -> None:
    from batchq.executor.runner import execute
    from batchq.store.memory import MemoryStore
    from tests.memrun import settings

    msg = _isolated_message(repo, make_feature, "touch 01.txt")
    result = execute(msg, MemoryStore(), settings(shell_allow=["*"]))
    assert result.result is ResultState.FAILED and result.error_type == "IsolationFailed"
    assert "snapshot" in (result.error or "")
    assert not (repo / ".git" / "batchq-worktrees").exists() or not any(
        (repo / ".git" / "batchq-worktrees").rglob("*")
    )


def test_a_message_naming_no_snapshot_fails_the_subtask_naming_the_producer(
    repo: Path, make_feature: Any
) -> None:
    """The worker never derives the snapshot from the batch number: a message from a
    producer that sends none fails clearly, without raising."""
    from batchq.executor.runner import execute
    from batchq.store.memory import MemoryStore
    from tests.memrun import settings

    msg = _isolated_message(repo, make_feature, "touch 01.txt").model_copy(
        update={"snapshot_ref": ""}
    )
    gitsnap.snapshot(repo, isolation.base_ref(msg.run_id, 1), "snap")  # never used
    result = execute(msg, MemoryStore(), settings(shell_allow=["*"]))
    assert result.result is ResultState.FAILED and result.error_type == "IsolationFailed"
    assert "no snapshot" in (result.error or "") and "producer" in (result.error or "")
