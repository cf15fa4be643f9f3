"""The MCP tools' logic (:class:`batchq.mcp.service.Service`) on a real embedded stack:
what ``run`` refuses before anything starts, and a run cancelled while its agent runs
ending ``cancelled`` with its subtask back to pending."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from batchq.errors import UnsafeBatchError, UsageError
from batchq.files.taskfiles import load_feature
from batchq.local.connection import connect
from batchq.mcp.runs import RunState
from batchq.mcp.service import Service
from batchq.models import FailurePolicy, RunMode, SubtaskStatus
from batchq.settings import load_settings
from tests.conftest import MakeFeature, subtask

pytestmark = pytest.mark.integration


@pytest.fixture
def service(make_feature: MakeFeature) -> Iterator[Service]:
    root = make_feature(
        [
            subtask("01", command="sleep 60", deliverables=["out/01.txt"]),
            subtask("02", command="sleep 60", deliverables=["out/01.txt"]),
            subtask("03", command="sleep 60", depends_on=["01"], deliverables=["out/03.txt"]),
        ]
    )
    (root / "batchq.toml").write_text('[agents.shell]\nallow = ["sleep *"]\n')
    (root / "outside.md").write_text("context")
    settings = load_settings(root)
    with connect(settings, root, embedded_ok=True) as conn:
        svc = Service(root, conn.settings, conn)
        try:
            yield svc
        finally:
            svc.runs.shutdown(timeout_s=10)


def test_run_refuses_bad_input_before_anything_starts(service: Service, tmp_path: Path) -> None:
    with pytest.raises(UnsafeBatchError) as unsafe:
        service.run("feat", ["01", "02"], RunMode.BATCH, FailurePolicy.GRACEFUL, None)
    assert "out/01.txt" in str(unsafe.value)
    with pytest.raises(UsageError, match="flow"):
        service.run("feat", ["01"], RunMode.FLOW, FailurePolicy.GRACEFUL, None)
    with pytest.raises(UsageError, match="outside the project root"):
        service.run("feat", None, RunMode.BATCH, FailurePolicy.GRACEFUL, "../elsewhere.md")
    with pytest.raises(UsageError, match=r"context: cannot read missing\.md"):
        service.run("feat", None, RunMode.BATCH, FailurePolicy.GRACEFUL, "missing.md")
    with pytest.raises(UsageError, match="no run 'mcp-nope'"):
        service.status("mcp-nope")
    assert service.runs.all() == []


def test_a_cancelled_run_ends_cancelled_and_its_subtask_goes_back_to_pending(
    service: Service,
) -> None:
    started, text = service.run("feat", ["01"], RunMode.BATCH, FailurePolicy.GRACEFUL, None)
    assert started.run_id in text
    tracked = service.tracked(started.run_id)
    with pytest.raises(UsageError, match="already has a run in progress"):
        service.run("feat", None, RunMode.BATCH, FailurePolicy.GRACEFUL, None)

    for _ in range(600):  # until the agent is running (a bound on polls, not on time)
        if load_feature(service.root, "feat").by_seq()["01"].status is SubtaskStatus.IN_PROGRESS:
            break
        tracked.done.wait(0.1)
    cancelled, _ = service.cancel(None, started.run_id)
    assert cancelled.cancelled, "no running batch was flagged"
    assert tracked.done.wait(120)

    status, status_text = service.status(started.run_id)
    assert status.state is RunState.CANCELLED
    assert [(r.seq, r.result.value) for r in status.results] == [("01", "cancelled")]
    assert "cancelled" in status_text
    assert "resume" in status.next_step
    assert load_feature(service.root, "feat").by_seq()["01"].status is SubtaskStatus.PENDING
