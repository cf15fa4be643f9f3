"""Write-set enforcement end to end: real redis-server, a real prefork worker, shell
agents that write where they did not declare."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchq.files.taskfiles import load_feature
from batchq.models import BatchStatus, ResultState, UndeclaredWrite, WriteCheck
from batchq.run.orchestrator import Orchestrator, RunOptions
from batchq.settings import Settings, load_settings
from batchq.store.state import StateStore
from batchq.transport.app import create_app
from tests.servers import module_worker

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_ENV = {"BATCHQ_SHELL_ALLOW": "*", "BATCHQ_HEARTBEAT_S": "1"}


@pytest.fixture(scope="module")
def stack(redis_target: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One prefork worker with 4 slots for the whole module."""
    with module_worker(redis_target.url, tmp_path_factory, WORKER_ENV) as url:
        yield url


@pytest.fixture
def orchestrator(stack: str) -> Iterator[Callable[..., tuple[Orchestrator, StateStore]]]:
    stores: list[StateStore] = []

    def make(root: Path, **overrides: Any) -> tuple[Orchestrator, StateStore]:
        values: dict[str, Any] = {"redis_url": stack, "shell_allow": ["*"], "stall_s": 30.0}
        values.update(overrides)
        settings: Settings = load_settings(root, **values)
        store = StateStore.from_url(stack, prefix=settings.key_prefix)
        stores.append(store)
        return Orchestrator(root, "feat", settings, create_app(settings), store), store

    yield make
    for store in stores:
        store.close()


def statuses(root: Path) -> dict[str, str]:
    return {s.seq: s.status.value for s in load_feature(root, "feat").subtasks}


def write(seq: str, extra: str = "") -> str:
    return f"mkdir -p out && {extra}echo done-{seq} > out/{seq}.txt"


def wait_for(path: str) -> str:
    """Poll for a marker another subtask writes: the overlap is made by the files,
    not by how long anything takes."""
    return f"until [ -f {path} ]; do sleep 0.05; done; "


def overlapping(subtask_data: Callable[..., dict[str, Any]]) -> list[dict[str, Any]]:
    """01 and 02 surely run at once: each waits for a marker the other writes, and 01
    writes the undeclared ``stray.txt`` while 02 is still waiting for 01's last one.
    02 writes its marker only once 01's is there, so 01 is running (its write window
    open) when it appears, whichever of the two a worker started first."""
    first = (
        "mkdir -p sync && touch sync/01.ready && "
        + wait_for("sync/02.ready")
        + "echo oops > stray.txt && touch sync/01.done && "
        + write("01")
    )
    second = (
        "mkdir -p sync && "
        + wait_for("sync/01.ready")
        + "touch sync/02.ready && "
        + wait_for("sync/01.done")
        + write("02")
    )
    return [
        subtask_data(
            "01",
            command=first,
            deliverables=["out/01.txt", "sync/01.ready", "sync/01.done"],
            timeout_s=60,
        ),
        subtask_data(
            "02", command=second, deliverables=["out/02.txt", "sync/02.ready"], timeout_s=60
        ),
    ]


def test_a_subtask_alone_writing_an_undeclared_file_is_blamed_in_result_and_report(
    make_feature, subtask_data, orchestrator
):
    root = make_feature(
        [
            subtask_data("01", command="echo x > stray.txt && " + write("01")),
            subtask_data("02", command=write("02"), depends_on=["01"]),
        ]
    )
    orch, store = orchestrator(root)
    result = orch.run()
    assert result.ok  # warn: reported, not failed
    first = result.reports[0]
    (only,) = first.results
    assert only.observed_writes == ["stray.txt"]
    assert only.undeclared_writes == ["stray.txt"]
    assert first.undeclared_writes == []
    recorded = store.result(result.run_id, "01")
    assert recorded is not None and recorded.observed_writes == ["stray.txt"]
    assert result.reports[1].results[0].observed_writes == []
    saved = json.loads(
        sorted((root / ".tmp/tasks/feat/.batchq/reports").glob("*-001.json"))[0].read_text()
    )
    assert saved["results"][0]["undeclared_writes"] == ["stray.txt"]


def test_concurrent_subtasks_share_an_unattributable_write_but_never_a_declared_one(
    make_feature, subtask_data, orchestrator
):
    root = make_feature(overlapping(subtask_data))
    orch, _ = orchestrator(root)
    result = orch.run()
    assert result.ok
    (built,) = result.reports
    by_seq = {r.seq: r for r in built.results}
    assert "stray.txt" in by_seq["01"].observed_writes
    assert "stray.txt" in by_seq["02"].observed_writes
    assert "sync/02.ready" in by_seq["01"].observed_writes  # seen, but 02 declared it
    assert built.undeclared_writes == [
        UndeclaredWrite(path="stray.txt", candidates=["01", "02"], reason="01 and 02 overlapped")
    ]
    assert by_seq["01"].undeclared_writes == [] and by_seq["02"].undeclared_writes == []


def test_fail_mode_fails_the_blamed_subtask_in_report_store_and_files(
    make_feature, subtask_data, orchestrator
):
    root = make_feature(
        [
            subtask_data("01", command="echo x > stray.txt && " + write("01")),
            subtask_data("02", command=write("02"), depends_on=["01"]),
        ]
    )
    orch, store = orchestrator(root, undeclared_writes="fail")
    result = orch.run()
    assert not result.ok
    (built,) = result.reports  # the next batch never starts
    assert built.status is BatchStatus.PARTIAL_FAILURE
    (only,) = built.results
    assert only.result is ResultState.FAILED
    assert only.error == "undeclared write: stray.txt (declared: out/01.txt)"
    assert built.discrepancies == []  # store and files were amended to agree
    recorded = store.result(result.run_id, "01")
    assert recorded is not None and recorded.result is ResultState.FAILED
    assert statuses(root) == {"01": "blocked", "02": "pending"}


def test_fail_mode_fails_the_batch_on_an_unattributable_write_but_no_member(
    make_feature, subtask_data, orchestrator
):
    later = subtask_data("03", command=write("03"), depends_on=["01", "02"])
    root = make_feature([*overlapping(subtask_data), later])
    orch, _ = orchestrator(root)
    result = orch.run(RunOptions(write_check=WriteCheck.FAIL))
    assert not result.ok
    (built,) = result.reports
    assert built.status is BatchStatus.PARTIAL_FAILURE
    assert (built.completed, built.failed) == (2, 0)
    assert built.undeclared_writes == [
        UndeclaredWrite(path="stray.txt", candidates=["01", "02"], reason="01 and 02 overlapped")
    ]
    assert "stray.txt (candidates: 01, 02; 01 and 02 overlapped)" in built.next.recommendation
    assert statuses(root) == {"01": "completed", "02": "completed", "03": "pending"}


def test_off_records_nothing(make_feature, subtask_data, orchestrator):
    root = make_feature([subtask_data("01", command="echo x > stray.txt && " + write("01"))])
    orch, store = orchestrator(root, undeclared_writes="fail")
    result = orch.run(RunOptions(write_check=WriteCheck.OFF))
    assert result.ok
    (only,) = result.reports[0].results
    assert only.observed_writes == [] and only.undeclared_writes == []
    recorded = store.result(result.run_id, "01")
    assert recorded is not None and recorded.observed_writes == []
    assert (root / "stray.txt").is_file()


def test_in_a_git_work_tree_ignored_files_are_not_undeclared_writes(
    make_feature, subtask_data, orchestrator, tmp_path
):
    import subprocess

    root = tmp_path / "project"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    (root / ".gitignore").write_text("build/\n")
    command = "mkdir -p build && echo o > build/cache.o && echo x > stray.txt && " + write("01")
    make_feature([subtask_data("01", command=command)], root=root)
    orch, _ = orchestrator(root)
    (only,) = orch.run().reports[0].results
    assert only.observed_writes == ["stray.txt"]
    assert only.undeclared_writes == ["stray.txt"]


def test_another_features_deliverables_in_the_same_root_are_never_this_runs_writes(
    make_feature, subtask_data, orchestrator
):
    """Features sharing a root run side by side: while feat's 01 runs, the other
    feature's agent writes its own deliverable (played here by 01's command). Under
    ``fail`` that is not feat's undeclared write; a path nobody declares still is."""
    root = make_feature(
        [subtask_data("01", command="mkdir -p docs && echo x > docs/api.md && " + write("01"))]
    )
    other = subtask_data("01", deliverables=["docs/api.md"])
    other["id"] = "other-01"
    make_feature([other], name="other", root=root)
    orch, _ = orchestrator(root, undeclared_writes="fail")
    result = orch.run()
    assert result.ok, result.reports
    (built,) = result.reports
    assert built.undeclared_writes == [] and built.results[0].undeclared_writes == []
    assert statuses(root) == {"01": "completed"}
    # The other feature's files are untouched by feat's run.
    assert load_feature(root, "other").subtasks[0].status.value == "pending"
