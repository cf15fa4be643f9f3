"""Flow mode's loop under isolation, on the in-memory store and a real, small git
repository: a wave snapshot per publishing call, named in each message, and each
result merged back as it arrives, before its dependents are published.

Publishing is replaced by fake workers that do the worker's git half for real (a
worktree at the message's snapshot ref, the "agent" writes there, the result commit)
and record the result as a worker would. No Redis, no Celery worker."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from batchq.core import planner
from batchq.executor import isolation
from batchq.files.taskfiles import load_feature
from batchq.models import (
    BatchReport,
    FailurePolicy,
    Isolation,
    ResultState,
    SubtaskMessage,
    SubtaskResult,
)
from batchq.protocol import EventKind
from batchq.run import flowloop, producer
from batchq.store.memory import ManualClock, MemoryStore
from batchq.store.state import Event
from tests.conftest import MakeFeature, subtask
from tests.memrun import result_of, settings
from tests.minirepo import git, init_repo

Agent = Callable[[Path], None]
"""What a fake agent does in its worktree's workspace."""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return init_repo(tmp_path / "r")


class IsolatedWorkers:
    """The fake ``publish_each``: runs each message's agent in a worktree at the
    snapshot ref the message names and records the isolated result (in reverse
    publish order when ``reverse``, so results arrive out of seq order)."""

    def __init__(
        self, store: MemoryStore, root: Path, agents: Mapping[str, Agent], reverse: bool = False
    ) -> None:
        self.store, self.root, self.agents, self.reverse = store, root, agents, reverse
        self.snapshots: dict[str, str] = {}

    def __call__(self, app: Celery, signatures: list[Any]) -> None:
        messages = [SubtaskMessage.model_validate(sig.args[0]) for sig in signatures]
        for msg in reversed(messages) if self.reverse else messages:
            self.snapshots[msg.seq] = msg.snapshot_ref
            tree = isolation.open_worktree(self.root, msg.run_id, msg.snapshot_ref, msg.seq)
            try:
                self.agents[msg.seq](tree.workspace)
                recorded = tree.record(list(msg.subtask.deliverables))
            finally:
                tree.close()
            begun = self.store.begin(
                msg.run_id, msg.batch, msg.seq, "fake", "task", claim_ttl_s=30.0, max_starts=3
            )
            assert begun == "run", begun
            result = result_of(msg).model_copy(update=recorded.fields())
            assert self.store.record_result(result, msg.feature_key, "fake")


def writes(path: str, text: str) -> Agent:
    def agent(workspace: Path) -> None:
        (workspace / path).parent.mkdir(parents=True, exist_ok=True)
        (workspace / path).write_text(text)

    return agent


def run_isolated(
    monkeypatch: pytest.MonkeyPatch, workers: IsolatedWorkers, root: Path
) -> tuple[list[BatchReport], list[Event], str]:
    store = workers.store
    monkeypatch.setattr(flowloop, "publish_each", workers)
    feature = load_feature(root, "feat")
    run = dataclasses.replace(
        producer.new_run(store, feature, FailurePolicy.GRACEFUL), isolate=Isolation.WORKTREE
    )
    reports: list[BatchReport] = []
    events: list[Event] = []
    flowloop.run_flow(
        Celery("test-flow-iso", set_as_current=False),
        store,
        run,
        feature,
        planner.plan(feature),
        settings(stall_s=5.0),
        events.extend,
        reports.append,
    )
    return reports, events, run.run_id


def finished(events: list[Event]) -> dict[str, SubtaskResult]:
    return {
        e.seq: SubtaskResult.model_validate(e.data) for e in events if e.kind == EventKind.FINISHED
    }


def test_each_wave_has_its_snapshot_and_a_dependent_starts_from_the_merge(
    monkeypatch: pytest.MonkeyPatch, repo: Path, make_feature: MakeFeature
) -> None:
    make_feature(
        [subtask("01"), subtask("02", depends_on=["01"]), subtask("03")], root=repo
    )  # fmt: skip
    seen: dict[str, str] = {}

    def reads_01(workspace: Path) -> None:
        seen["02"] = (workspace / "out" / "01.txt").read_text()
        writes("out/02.txt", "two\n")(workspace)

    agents = {
        "01": writes("out/01.txt", "one\n"),
        "02": reads_01,
        "03": writes("out/03.txt", "3\n"),
    }
    workers = IsolatedWorkers(MemoryStore(clock=ManualClock()), repo, agents)
    reports, events, run_id = run_isolated(monkeypatch, workers, repo)

    assert workers.snapshots == {
        "01": isolation.wave_ref(run_id, 1),
        "03": isolation.wave_ref(run_id, 1),
        "02": isolation.wave_ref(run_id, 2),
    }
    assert seen == {"02": "one\n"}  # wave 2's snapshot was recorded after 01's merge
    assert [(repo / "out" / f"{s}.txt").read_text() for s in ("01", "02", "03")] == [
        "one\n", "two\n", "3\n",
    ]  # fmt: skip
    assert all(r.ok for r in reports)
    merged = {r.seq: r.merged_paths for built in reports for r in built.results}
    assert merged == {"01": ["out/01.txt"], "02": ["out/02.txt"], "03": ["out/03.txt"]}
    assert finished(events)["02"].merged_paths == ["out/02.txt"]  # the mirror hears it
    recorded = workers.store.result(run_id, "01")
    assert recorded is not None and recorded.merged_paths == ["out/01.txt"]
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1


def test_a_conflict_fails_the_subtask_for_the_schedule_and_skips_its_dependents(
    monkeypatch: pytest.MonkeyPatch, repo: Path, make_feature: MakeFeature
) -> None:
    """03 rewrites a.txt, which the user edits while it runs: a conflict, so 03 fails
    and its dependent 04 is skipped; 01 -> 02 goes on. 01's and 03's results arrive
    in one step (03's first)."""
    make_feature(
        [
            subtask("01"),
            subtask("02", depends_on=["01"]),
            subtask("03", deliverables=["a.txt"]),
            subtask("04", depends_on=["03"]),
        ],
        root=repo,
    )

    def conflicting(workspace: Path) -> None:
        writes("a.txt", "from 03\n")(workspace)
        (repo / "a.txt").write_text("user edit\n")  # meanwhile, in the workspace

    agents = {
        "01": writes("out/01.txt", "one\n"),
        "02": writes("out/02.txt", "two\n"),
        "03": conflicting,
        "04": writes("out/04.txt", "four\n"),
    }
    workers = IsolatedWorkers(MemoryStore(clock=ManualClock()), repo, agents, reverse=True)
    reports, events, run_id = run_isolated(monkeypatch, workers, repo)

    results = {r.seq: r for built in reports for r in built.results}
    assert results["03"].result is ResultState.FAILED
    assert results["03"].error_type == "MergeConflict" and "a.txt" in (results["03"].error or "")
    assert results["03"].merged_paths == []
    assert (repo / "a.txt").read_text() == "user edit\n"  # the workspace keeps its version
    assert results["01"].ok and results["02"].ok
    assert (repo / "out" / "02.txt").read_text() == "two\n"
    skipped = {s.seq: s.reason for built in reports for s in built.skipped}
    assert list(skipped) == ["04"] and "03" in skipped["04"]
    assert "04" not in workers.snapshots and not (repo / "out" / "04.txt").exists()
    # Store, progress events and report agree on the merge's verdict.
    recorded = workers.store.result(run_id, "03")
    assert recorded is not None and recorded.result is ResultState.FAILED
    assert finished(events)["03"].result is ResultState.FAILED
