"""Adopting an interrupted isolated run merges what its orchestrator never merged, on
the in-memory store and a real, small git repository.

The worker's half is done for real (a worktree at the batch's snapshot ref, the
"agent" writes there, the result commit on ``refs/batchq/<run>/<seq>``, the result
recorded); then the orchestrator "dies" before its merge, and :func:`adopt.settle`
runs as the next ``batchq run`` would call it."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from batchq.core import report
from batchq.executor import isolation
from batchq.executor.gitcache import Cache
from batchq.files.taskfiles import load_feature, mark_completed, update_subtasks
from batchq.models import (
    BatchqBlock,
    BatchReport,
    FailurePolicy,
    Isolation,
    ResultState,
    Run,
    SubtaskResult,
)
from batchq.run import adopt, latemerge, merge, producer
from batchq.store.memory import ManualClock, MemoryStore
from tests.conftest import MakeFeature, subtask
from tests.memrun import settings
from tests.minirepo import git, init_repo


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return init_repo(tmp_path / "r")


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(clock=ManualClock())


def start(store: MemoryStore, root: Path, seqs: list[str]) -> Run:
    """A run of batch 1 (``seqs``) registered and snapshotted as the orchestrator
    leaves it right before publishing."""
    feature = load_feature(root, "feat")
    run = dataclasses.replace(
        producer.new_run(store, feature, FailurePolicy.GRACEFUL), isolate=Isolation.WORKTREE
    )
    merge.snapshot_batch(run, 1)
    store.start_batch(run.run_id, 1, seqs, "graceful", write_check="warn")
    return run


def work(store: MemoryStore, run: Run, seq: str, path: str, text: str) -> SubtaskResult:
    """A worker's isolated run of ``seq``: the agent writes ``path`` in its worktree,
    the result commit is made and the completed result recorded."""
    tree = isolation.open_worktree(run.root, run.run_id, isolation.base_ref(run.run_id, 1), seq)
    try:
        (tree.workspace / path).parent.mkdir(parents=True, exist_ok=True)
        (tree.workspace / path).write_text(text)
        sub = load_feature(run.root, "feat").by_seq()[seq]
        recorded = tree.record(list(sub.deliverables))
    finally:
        tree.close()
    assert store.begin(run.run_id, 1, seq, "w", "t", claim_ttl_s=30.0, max_starts=3) == "run"
    now = datetime.now(UTC)
    result = SubtaskResult(
        feature="feat",
        run_id=run.run_id,
        batch=1,
        seq=seq,
        title=f"Subtask {seq}",
        result=ResultState.COMPLETED,
        started_at=now,
        finished_at=now,
        **recorded.fields(),  # type: ignore[arg-type]
    )
    assert store.record_result(result, run.feature_key, "w")
    return result


def chord_report(store: MemoryStore, run: Run, seqs: list[str]) -> BatchReport:
    """The report the batch's chord callback stores on a worker, before any merge."""
    built = report.build(
        feature="feat",
        run_id=run.run_id,
        batch=1,
        results=list(store.results(run.run_id, seqs).values()),
        expected=seqs,
        next_batch=None,
        submitted_at=None,
        finished_at=datetime.now(UTC),
    )
    assert store.store_report(built, run.feature_key)
    return built


def settle(store: MemoryStore, run: Run) -> adopt.Settled:
    return adopt.settle(
        run.root, "feat", store, settings(), run.run_id, reason="gone", cancel="graceful", wait_s=0
    )


def saved_report(run: Run) -> BatchReport:
    path = run.root / ".tmp/tasks/feat/.batchq/reports" / f"{run.run_id}-001.json"
    return BatchReport.model_validate_json(path.read_text())


def file_of(root: Path, seq: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(
        (root / ".tmp/tasks/feat" / f"subtask_{seq}.json").read_text()
    )
    return data


def written_completed(run: Run, seq: str) -> None:
    """What the orchestrator's mirror wrote from the progress stream before it died."""
    block = BatchqBlock(result=ResultState.COMPLETED, run_id=run.run_id)
    update_subtasks(
        run.root, "feat", {seq: mark_completed("done", "2026-01-01T00:00:00.000Z", block, {})}
    )


def test_a_recorded_unmerged_result_is_merged_by_adoption_and_report_store_files_agree(
    repo: Path, make_feature: MakeFeature, store: MemoryStore
) -> None:
    make_feature([subtask("01"), subtask("02")], root=repo)
    run = start(store, repo, ["01", "02"])
    work(store, run, "01", "out/01.txt", "one\n")
    work(store, run, "02", "out/02.txt", "two\n")
    chord_report(store, run, ["01", "02"])
    written_completed(run, "01")  # the mirror got this far; the merge never ran
    assert not (repo / "out").exists()
    assert adopt.unsettled(store, run.run_id, load_feature(repo, "feat"))

    done = settle(store, run)

    assert (repo / "out/01.txt").read_text() == "one\n"
    assert (repo / "out/02.txt").read_text() == "two\n"
    feature = load_feature(repo, "feat")
    assert {s.seq: s.status.value for s in feature.subtasks} == {
        "01": "completed", "02": "completed",
    }  # fmt: skip
    # The fingerprint's outputs are of the merged deliverable, not of an absent file.
    outputs = feature.by_seq()["02"].batchq.outputs  # type: ignore[union-attr]
    assert outputs and "out/02.txt" in json.dumps(outputs)
    assert done.merged == ["01", "02"] and done.merged_note() == ", merged back 01, 02"
    (built,) = done.reports
    assert built.ok and built.completed == 2
    for where in (built, store.report(run.run_id, 1), saved_report(run)):
        assert where is not None
        merged = {r.seq: (r.merged, r.merged_paths) for r in where.results}
        assert merged == {"01": (True, ["out/01.txt"]), "02": (True, ["out/02.txt"])}
    recorded = store.result(run.run_id, "02")
    assert recorded is not None and recorded.merged and recorded.merged_paths == ["out/02.txt"]
    assert not adopt.unsettled(store, run.run_id, feature)


def test_a_workspace_that_changed_the_deliverable_fails_the_subtask_and_keeps_its_version(
    repo: Path, make_feature: MakeFeature, store: MemoryStore
) -> None:
    """01 rewrote a.txt in its worktree; the user rewrote it in the workspace
    meanwhile. No report was stored (a flow run, say): adoption builds one."""
    make_feature([subtask("01", deliverables=["a.txt"]), subtask("02")], root=repo)
    run = start(store, repo, ["01", "02"])
    work(store, run, "01", "a.txt", "from 01\n")
    work(store, run, "02", "out/02.txt", "two\n")
    (repo / "a.txt").write_text("user edit\n")
    written_completed(run, "01")

    done = settle(store, run)

    assert (repo / "a.txt").read_text() == "user edit\n"
    assert (repo / "out/02.txt").read_text() == "two\n"  # the other one still merges
    one = file_of(repo, "01")
    assert one["status"] == "blocked"
    assert (one["completed_at"], one["completion_summary"]) == (None, None)
    block = one["batchq"]
    assert isinstance(block, dict) and block["result"] == "failed"
    assert "merge conflict" in block["error"] and "a.txt" in block["error"]
    assert file_of(repo, "02")["status"] == "completed"
    assert done.adopted == {"01": ResultState.FAILED, "02": ResultState.COMPLETED}
    assert done.merged == ["02"]
    (built,) = done.reports
    assert not built.ok and built.failed == 1 and built.next.fix == ["01"]
    failed = {r.seq: r for r in saved_report(run).results}["01"]
    assert failed.error_type == "MergeConflict" and not failed.merged and not failed.merged_paths
    recorded = store.result(run.run_id, "01")
    assert recorded is not None and recorded.result is ResultState.FAILED
    assert not adopt.unsettled(store, run.run_id, load_feature(repo, "feat"))


def test_a_workspace_that_already_matches_is_no_conflict(
    repo: Path, make_feature: MakeFeature, store: MemoryStore
) -> None:
    """The orchestrator died halfway through its merge: the file is in the workspace,
    the result not yet marked merged."""
    make_feature([subtask("01")], root=repo)
    run = start(store, repo, ["01"])
    work(store, run, "01", "out/01.txt", "one\n")
    (repo / "out").mkdir()
    (repo / "out/01.txt").write_text("one\n")

    done = settle(store, run)

    assert done.adopted == {"01": ResultState.COMPLETED}
    assert file_of(repo, "01")["status"] == "completed"
    recorded = store.result(run.run_id, "01")
    assert recorded is not None and recorded.merged and recorded.merged_paths == []


def test_a_merged_result_is_not_merged_again(
    repo: Path, make_feature: MakeFeature, store: MemoryStore
) -> None:
    """The orchestrator merged 01 and died before writing the files; the user edited
    the deliverable since. Adoption writes the files and leaves the workspace alone."""
    make_feature([subtask("01")], root=repo)
    run = start(store, repo, ["01"])
    recorded = work(store, run, "01", "out/01.txt", "one\n")
    (amended,) = merge.merge_results(run, load_feature(repo, "feat").by_seq(), [recorded])
    assert amended.merged and amended.merged_paths == ["out/01.txt"]
    store.amend_results([amended])
    (repo / "out/01.txt").write_text("edited since\n")
    assert adopt.unsettled(store, run.run_id, load_feature(repo, "feat"))  # the file lags

    done = settle(store, run)

    assert (repo / "out/01.txt").read_text() == "edited since\n"
    assert done.adopted == {"01": ResultState.COMPLETED} and done.merged == []
    assert file_of(repo, "01")["status"] == "completed"
    again = store.result(run.run_id, "01")
    assert again == amended
    assert not adopt.unsettled(store, run.run_id, load_feature(repo, "feat"))


def test_unsettled_says_so_for_a_completed_file_whose_result_is_unmerged(
    repo: Path, make_feature: MakeFeature, store: MemoryStore
) -> None:
    make_feature([subtask("01")], root=repo)
    run = start(store, repo, ["01"])
    work(store, run, "01", "out/01.txt", "one\n")
    chord_report(store, run, ["01"])
    written_completed(run, "01")
    # Every file says what was recorded; only the workspace lacks the deliverable.
    assert adopt.unsettled(store, run.run_id, load_feature(repo, "feat"))
    settle(store, run)
    assert not adopt.unsettled(store, run.run_id, load_feature(repo, "feat"))
    assert (repo / "out/01.txt").read_text() == "one\n"


def test_a_report_the_chord_callback_stores_after_the_merge_is_rebuilt_from_it(
    repo: Path, make_feature: MakeFeature, store: MemoryStore
) -> None:
    """The callback built its report from the records before adoption amended them,
    and stored it after: settling must not keep (or save) that stale report."""
    make_feature([subtask("01"), subtask("02")], root=repo)
    run = start(store, repo, ["01", "02"])
    recorded = {s: work(store, run, s, f"out/{s}.txt", f"{s}\n") for s in ("01", "02")}
    feature = load_feature(repo, "feat")
    amended = latemerge.merge_late(store, repo, feature.by_seq(), run.run_id, recorded)
    assert sorted(amended) == ["01", "02"] and all(r.merged for r in amended.values())
    stale = report.build(
        feature="feat",
        run_id=run.run_id,
        batch=1,
        results=list(recorded.values()),
        expected=["01", "02"],
        next_batch=None,
        submitted_at=None,
        finished_at=datetime.now(UTC),
    )
    assert store.store_report(stale, run.feature_key)

    fixed = latemerge.reconcile(store, stale, amended)

    assert [(r.merged, r.merged_paths) for r in fixed.results] == [
        (True, ["out/01.txt"]), (True, ["out/02.txt"]),
    ]  # fmt: skip
    assert store.report(run.run_id, 1) == fixed
    assert latemerge.reconcile(store, fixed, amended) is fixed  # agrees: left alone


def test_adoption_fetches_what_workers_pushed_to_the_remote_before_it_merges(
    repo: Path, make_feature: MakeFeature, store: MemoryStore, tmp_path: Path
) -> None:
    remote_repo = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(remote_repo))
    url = remote_repo.as_uri()
    make_feature([subtask("01", command="true", deliverables=["out/01.txt"])], root=repo)
    feature = load_feature(repo, "feat")
    run = dataclasses.replace(
        producer.new_run(store, feature, FailurePolicy.GRACEFUL),
        isolate=Isolation.WORKTREE,
        git_remote=url,
    )
    base = merge.snapshot_batch(run, 1)  # pushed to the remote (issue 20)
    store.start_batch(run.run_id, 1, ["01"], "graceful", write_check="warn")
    cache = Cache(tmp_path / "cache", url, 30.0)  # a worker on another host
    tree = cache.checkout(run.run_id, base, "01", "")
    try:
        (tree.workspace / "out").mkdir()
        (tree.workspace / "out" / "01.txt").write_text("from afar\n")
        recorded = cache.record(tree, ["out/01.txt"])
        log = tmp_path / "01.log"
        log.write_text("ran\n")
        cache.publish(tree, log)
    finally:
        cache.close(tree)
    assert (
        subprocess.run(
            ["git", "-C", str(repo), "cat-file", "-e", recorded.commit], check=False
        ).returncode
        != 0
    )  # the result commit is only on the remote
    assert store.begin(run.run_id, 1, "01", "w", "t", claim_ttl_s=30.0, max_starts=3) == "run"
    now = datetime.now(UTC)
    result = SubtaskResult(
        feature="feat", run_id=run.run_id, batch=1, seq="01", title="Subtask 01",
        result=ResultState.COMPLETED, started_at=now, finished_at=now,
        **recorded.fields(),  # type: ignore[arg-type]
    )  # fmt: skip
    assert store.record_result(result, run.feature_key, "w")

    adopt.settle(
        repo, "feat", store, settings(git_remote=url), run.run_id,
        reason="gone", cancel="graceful", wait_s=0,
    )  # fmt: skip

    assert (repo / "out" / "01.txt").read_text() == "from afar\n"
    merged = store.result(run.run_id, "01")
    assert merged is not None and merged.merged and merged.merged_paths == ["out/01.txt"]
