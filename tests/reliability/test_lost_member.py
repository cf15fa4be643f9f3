"""A chord member whose message is lost: the stall deadline forces a report naming it;
its result arriving afterwards is recorded as a discrepancy and starts nothing.

The message is deleted from the queue before any worker runs, so this needs a
redis-server of its own (skipped against an external ``BATCHQ_TEST_REDIS_URL``).
"""

from __future__ import annotations

import json
import re

import pytest

from batchq.files.taskfiles import load_feature
from batchq.models import ResultState
from batchq.run.orchestrator import RunOptions
from batchq.run.producer import Submission
from batchq.store.state import wait_until
from tests.reliability.faults import FAST_TIMEOUT_S, client_for, json_files_valid, marked

pytestmark = pytest.mark.reliability

QUEUE = "batchq.shell"


def test_a_lost_member_is_named_by_the_forced_report_and_its_late_result_is_a_discrepancy(
    private_redis, start_worker, orchestrator, make_feature, subtask_data
):
    server = private_redis()
    root = make_feature(
        [
            *(
                subtask_data(s, command=marked(s, 0.2), timeout_s=FAST_TIMEOUT_S)
                for s in ("01", "02", "03")
            ),
            subtask_data(
                "04", command=marked("04", 0.1), depends_on=["01", "02", "03"], timeout_s=3
            ),
        ]
    )
    client = client_for(server.redis_py_url)
    removed: list[str] = []

    def lose_member_then_start_worker(sub: Submission) -> None:
        if sub.batch.number != 1:
            return
        for raw in client.lrange(QUEUE, 0, -1):
            if re.search(r"\bseq=02\b", json.loads(raw)["headers"]["argsrepr"]):
                assert client.lrem(QUEUE, 1, raw) == 1
                removed.append(raw)
        # The stall clock starts when this returns: the other members get to run.
        start_worker(server.url)

    try:
        orch = orchestrator(root, server.url, stall_s=5.0)
        result = orch.run(RunOptions(on_submit=lose_member_then_start_worker))
        assert len(removed) == 1
        (report,) = result.reports  # batch 2 never starts after a forced report
        assert report.forced and not report.ok
        assert report.missing == ["02"]
        assert any("never reported: 02" in d for d in report.discrepancies)
        assert {r.seq: r.result for r in report.results} == {
            "01": ResultState.COMPLETED,
            "03": ResultState.COMPLETED,
        }
        files = load_feature(root, "feat").by_seq()
        assert files["02"].status.value == "blocked"
        assert "no result before the batch deadline" in (files["02"].batchq.error or "")
        assert files["04"].status.value == "pending"

        # The lost message turns up after all: its result is late, the batch stays
        # forced, and the next batch is never started by it.
        client.lpush(QUEUE, removed[0])
        late_key = f"batchq:late:{result.run_id}:1"
        assert wait_until(lambda: client.llen(late_key) == 1, 90, 0.2), "no late entry"
        kinds = [f["kind"] for _id, f in client.xrange(f"batchq:events:{result.run_id}")]
        assert "late" in kinds
        late = orch.store.late_reports(result.run_id, 1)
        assert len(late) == 1 and {r.seq for r in late[0].results} == {"01", "02", "03"}
        assert orch.store.report(result.run_id, 1).forced  # the forced report stands
        assert orch.store.batch_state(result.run_id, 1) == "forced"
        assert orch.store.batch_state(result.run_id, 2) is None
        assert not (root / "out" / "04.txt").exists()
        assert load_feature(root, "feat").by_seq()["04"].status.value == "pending"
        json_files_valid(root)
    finally:
        client.close()
