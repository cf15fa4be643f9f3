"""An agent that records its own completion through the task CLI, where no sandbox
stops it (``BATCHQ_SANDBOX=off``): its own summary is kept, and a completion that
verification contradicts is a discrepancy with no stale completion fields left.

Its own module because the worker must run without the sandbox (which keeps
``.tmp/tasks/`` read-only; see test_execution.py for that side): one prefork worker
subprocess on the session's real redis-server, for this module only.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchq.cli.render import render_markdown
from batchq.models import ResultState
from batchq.protocol import DEFAULT_QUEUES
from batchq.run.orchestrator import Orchestrator
from batchq.settings import load_settings
from batchq.store.state import StateStore
from batchq.transport.app import create_app
from tests.servers import module_worker

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_ENV = {"BATCHQ_SHELL_ALLOW": "*", "BATCHQ_SANDBOX": "off"}


@pytest.fixture(scope="module")
def stack(redis_target: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with module_worker(redis_target.url, tmp_path_factory, WORKER_ENV, DEFAULT_QUEUES) as url:
        yield url


@pytest.fixture
def orchestrator(stack: str) -> Iterator[Callable[..., Orchestrator]]:
    stores: list[StateStore] = []

    def make(root: Path, name: str = "feat") -> Orchestrator:
        settings = load_settings(
            root, redis_url=stack, shell_allow=["*"], stall_s=30.0, sandbox="off"
        )
        store = StateStore.from_settings(settings)
        stores.append(store)
        return Orchestrator(root, name, settings, create_app(settings), store)

    yield make
    for store in stores:
        store.close()


def raw(root: Path, seq: str, name: str = "feat") -> dict[str, Any]:
    path = root / ".tmp" / "tasks" / name / f"subtask_{seq}.json"
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def write(seq: str) -> str:
    return f"mkdir -p out && echo {seq} > out/{seq}.txt"


def _self_completing(seq: str, words: str, then: str) -> str:
    """A command that, like a coding agent, records its own completion through the task
    CLI during its run, then carries on with ``then``."""
    cli = f"{sys.executable} -m batchq complete feat {seq} {words} --root ."
    return f"PYTHONPATH={REPO_ROOT} {cli} && {then}"


def test_a_summary_the_agent_recorded_itself_is_kept(make_feature, subtask_data, orchestrator):
    root = make_feature(
        [subtask_data("01", command=_self_completing("01", "my own words", write("01")))]
    )
    result = orchestrator(root).run()
    assert result.ok, result.reports
    (report,) = result.reports
    assert report.results[0].summary == "my own words"
    assert report.discrepancies == []
    data = raw(root, "01")
    assert data["status"] == "completed"
    assert data["completion_summary"] == "my own words"
    assert data["batchq"]["result"] == "completed"


def test_a_self_reported_completion_that_verification_contradicts_is_a_discrepancy(
    make_feature, subtask_data, orchestrator
):
    # The agent says it is done, but never writes its deliverable.
    root = make_feature(
        [subtask_data("01", command=_self_completing("01", "all done", "echo finished"))]
    )
    result = orchestrator(root).run()
    assert not result.ok
    (report,) = result.reports
    assert report.results[0].result is ResultState.FAILED
    (note,) = report.discrepancies
    assert note.startswith("01: the agent marked itself completed ('all done'), but the subtask")
    assert "deliverable missing: out/01.txt" in note
    data = raw(root, "01")
    assert data["status"] == "blocked" and data["batchq"]["result"] == "failed"
    assert data.get("completed_at") is None and data.get("completion_summary") is None
    assert "### Discrepancies:" in render_markdown(report)
