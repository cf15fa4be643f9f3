"""Fingerprint resume end to end: ``run --changed`` on a real redis-server and a real
prefork worker reruns exactly what changed, says why, and stops at identical outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchq.files.taskfiles import complete_subtask, load_feature
from batchq.models import RunMode
from batchq.run.orchestrator import Orchestrator, RunOptions, RunResult
from batchq.settings import load_settings
from batchq.store.state import StateStore
from batchq.transport.app import create_app
from tests.servers import module_worker

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_ENV = {"BATCHQ_SHELL_ALLOW": "*", "BATCHQ_HEARTBEAT_S": "1"}

MakeFeature = Callable[..., Path]
SubtaskData = Callable[..., dict[str, Any]]


@pytest.fixture(scope="module")
def stack(redis_target: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One prefork worker with 4 slots for the whole module."""
    with module_worker(redis_target.url, tmp_path_factory, WORKER_ENV) as url:
        yield url


Run = Callable[..., RunResult]


@pytest.fixture
def run(stack: str) -> Iterator[Run]:
    """``run(root, changed=True)``: one orchestrated run of ``feat``; the reruns it
    announced are checked against the result."""
    stores: list[StateStore] = []

    def go(root: Path, *, changed: bool = False, mode: RunMode = RunMode.BATCH) -> RunResult:
        settings = load_settings(root, redis_url=stack, shell_allow=["*"], stall_s=30.0)
        store = StateStore.from_url(stack, prefix=settings.key_prefix)
        stores.append(store)
        announced: dict[str, list[str]] = {}
        orch = Orchestrator(root, "feat", settings, create_app(settings), store)
        result = orch.run(RunOptions(changed=changed, on_rerun=announced.update, mode=mode))
        assert announced == result.reruns
        return result

    yield go
    for store in stores:
        store.close()


def ran(result: RunResult) -> list[list[str]]:
    return [[r.seq for r in report.results] for report in result.reports]


@pytest.fixture
def project(make_feature: MakeFeature, subtask_data: SubtaskData) -> Path:
    """01 copies its context file (its output follows it); 02 writes a constant (its
    output ignores its context file); 03 and 04 copy 01's and 02's deliverables."""

    def sub(seq: str, command: str, **kw: Any) -> dict[str, Any]:
        return subtask_data(seq, command=f"mkdir -p out && {command}", **kw)

    first = sub("01", "cp docs/a.md out/01.txt")
    first["context_files"] = ["docs/a.md"]
    second = sub("02", "echo constant > out/02.txt")
    second["reference_files"] = [{"path": "docs/b.md", "reason": "style"}]
    root = make_feature(
        [
            first,
            second,
            sub("03", "cat out/01.txt > out/03.txt", depends_on=["01"]),
            sub("04", "cat out/02.txt > out/04.txt", depends_on=["02"]),
        ]
    )
    (root / "docs").mkdir()
    (root / "docs" / "a.md").write_text("a v1\n")
    (root / "docs" / "b.md").write_text("b v1\n")
    return root


def subtask_file(root: Path, seq: str) -> Path:
    return root / ".tmp" / "tasks" / "feat" / f"subtask_{seq}.json"


def test_a_completed_run_records_fingerprints_and_changed_right_after_reruns_nothing(
    project: Path, run: Run
) -> None:
    first = run(project)
    assert first.ok and ran(first) == [["01", "02"], ["03", "04"]]
    block = json.loads(subtask_file(project, "03").read_text())["batchq"]
    assert set(block["inputs"]) == {"definition", "agent", "dependency:01:out/01.txt"}
    assert set(block["outputs"]) == {"out/03.txt"}
    assert len(block["fingerprint"]) == 64
    again = run(project, changed=True)
    assert again.ok and again.reports == [] and again.reruns == {}
    assert {s.status.value for s in load_feature(project, "feat").subtasks} == {"completed"}


def test_a_changed_context_file_reruns_its_subtask_and_dependents_only_if_outputs_changed(
    project: Path, run: Run
) -> None:
    assert run(project).ok
    (project / "docs" / "a.md").write_text("a v2\n")  # 01's output will change
    (project / "docs" / "b.md").write_text("b v2\n")  # 02's output will not
    result = run(project, changed=True)
    assert result.ok, result.reports
    assert result.reruns == {
        "01": ["context file docs/a.md changed"],
        "02": ["reference file docs/b.md changed"],
        "03": ["dependency 01's deliverable out/01.txt changed"],
    }
    assert ran(result) == [["01", "02"], ["03"]]  # 04: 02's output was identical
    assert (project / "out" / "03.txt").read_text() == "a v2\n"
    assert run(project, changed=True).reruns == {}


def test_without_changed_completed_subtasks_never_rerun(project: Path, run: Run) -> None:
    assert run(project).ok
    (project / "docs" / "a.md").write_text("a v2\n")
    result = run(project)
    assert result.reports == [] and result.reruns == {}
    assert (project / "out" / "01.txt").read_text() == "a v1\n"


def test_a_deleted_deliverable_reruns_its_subtask(project: Path, run: Run) -> None:
    assert run(project).ok
    (project / "out" / "04.txt").unlink()
    result = run(project, changed=True)
    assert result.reruns == {"04": ["deliverable out/04.txt missing"]}
    assert ran(result) == [["04"]]
    assert (project / "out" / "04.txt").read_text() == "constant\n"


def test_edited_acceptance_criteria_rerun_the_subtask(project: Path, run: Run) -> None:
    assert run(project).ok
    path = subtask_file(project, "02")
    data = json.loads(path.read_text())
    data["acceptance_criteria"] = ["out/02.txt says constant"]
    path.write_text(json.dumps(data, indent=2) + "\n")
    result = run(project, changed=True)
    assert result.reruns == {"02": ["definition changed"]}
    assert ran(result) == [["02"]]


def _cli(root: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHQ_")}
    env.update(BATCHQ_REDIS_URL=url, BATCHQ_SHELL_ALLOW="*")
    return subprocess.run(
        [sys.executable, "-m", "batchq", *args, "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=root,
    )


def test_the_cli_lists_and_reruns_subtasks_completed_by_hand(project: Path, stack: str) -> None:
    (project / "out").mkdir()
    (project / "out" / "02.txt").write_text("by hand\n")
    complete_subtask(project, "feat", "02", "done by hand")
    first = _cli(project, stack, "run", "feat")
    assert first.returncode == 0, first.stderr
    listed = _cli(project, stack, "changed", "feat", "--json")
    assert listed.returncode == 0, listed.stderr
    reason = "no fingerprint recorded (completed before fingerprints or by hand)"
    assert json.loads(listed.stdout) == {"feature": "feat", "reruns": {"02": [reason]}}
    text = _cli(project, stack, "changed", "feat")
    assert text.returncode == 0 and text.stdout.splitlines()[0] == f"↻ 02 reruns: {reason}"
    rerun = _cli(project, stack, "run", "feat", "--changed")
    assert rerun.returncode == 0, rerun.stderr
    assert f"↻ 02 reruns: {reason}" in rerun.stdout
    assert "↻ 04 reruns: dependency 02's deliverable out/02.txt changed" in rerun.stdout
    assert (project / "out" / "04.txt").read_text() == "constant\n"
    after = _cli(project, stack, "changed", "feat")
    assert after.returncode == 0
    assert after.stdout.strip() == "Nothing changed: every completed subtask of feat is up to date."


def test_flow_mode_records_fingerprints_and_rechecks_dependents_when_the_flow_drains(
    project: Path, run: Run
) -> None:
    """Inputs are taken as each subtask is enqueued (its dependencies' deliverables
    are final then), so a flow run's fingerprints match a fresh check; dependents whose
    dependency reran are rechecked after the flow and rerun in a further pass."""
    assert run(project, mode=RunMode.FLOW).ok
    assert run(project, changed=True, mode=RunMode.FLOW).reruns == {}
    (project / "docs" / "a.md").write_text("a v2\n")  # 01's output will change
    (project / "docs" / "b.md").write_text("b v2\n")  # 02's output will not
    result = run(project, changed=True, mode=RunMode.FLOW)
    assert result.ok, result.reports
    assert result.reruns == {
        "01": ["context file docs/a.md changed"],
        "02": ["reference file docs/b.md changed"],
        "03": ["dependency 01's deliverable out/01.txt changed"],
    }
    assert sorted(seq for seqs in ran(result) for seq in seqs) == ["01", "02", "03"]
    assert [r.batch for r in result.reports] == list(range(1, len(result.reports) + 1))
    assert (project / "out" / "03.txt").read_text() == "a v2\n"
    assert run(project, changed=True, mode=RunMode.FLOW).reruns == {}
