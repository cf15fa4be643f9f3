"""Settling a run whose orchestrator went away, on the in-memory store; and telling a
dead orchestrator on this host from a live one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from batchq.files.taskfiles import load_feature, mark_in_progress, update_subtasks
from batchq.models import FailurePolicy, ResultState, SubtaskResult
from batchq.protocol import BatchState
from batchq.run import adopt, holder, producer
from batchq.store.memory import ManualClock, MemoryStore
from tests.conftest import MakeFeature, subtask
from tests.memrun import settings


def result(run_id: str, seq: str, state: ResultState) -> SubtaskResult:
    return SubtaskResult(
        feature="feat", run_id=run_id, batch=1, seq=seq, title=f"Subtask {seq}", result=state
    )


def statuses(root: Path) -> dict[str, str]:
    return {s.seq: s.status.value for s in load_feature(root, "feat").subtasks}


def test_recorded_results_are_written_and_the_rest_returns_to_pending(
    make_feature: MakeFeature,
) -> None:
    root = make_feature([subtask(s, command="true") for s in ("01", "02", "03")])
    store = MemoryStore(clock=ManualClock())
    run = producer.new_run(store, load_feature(root, "feat"), FailurePolicy.GRACEFUL)
    store.start_batch(run.run_id, 1, ["01", "02", "03"], "graceful")
    started = mark_in_progress("w1", "2026-01-01T00:00:00.000Z", run.run_id)
    update_subtasks(root, "feat", {"01": started, "02": started})
    assert store.record_result(
        result(run.run_id, "01", ResultState.COMPLETED), run.feature_key, "w1"
    )
    feature = load_feature(root, "feat")
    assert adopt.unsettled(store, run.run_id, feature)

    done = adopt.settle(
        root, "feat", store, settings(), run.run_id, reason="gone", cancel="graceful", wait_s=0
    )
    assert statuses(root) == {"01": "completed", "02": "pending", "03": "pending"}
    two = load_feature(root, "feat").by_seq()["02"]
    assert (two.agent_id, two.started_at) == (None, None)
    assert done.adopted == {"01": ResultState.COMPLETED} and done.returned == ["02"]
    (report,) = done.reports
    assert report.completed == 1 and report.skipped_count == 2 and report.forced
    assert store.batch_state(run.run_id, 1) == BatchState.FORCED
    saved = root / ".tmp/tasks/feat/.batchq/reports" / f"{run.run_id}-001.json"
    assert saved.is_file()
    assert not adopt.unsettled(store, run.run_id, load_feature(root, "feat"))
    assert store.run_info(run.run_id)["settled"] == "1"  # nothing of it was running


def test_a_run_with_a_member_still_running_is_not_marked_settled(
    make_feature: MakeFeature,
) -> None:
    root = make_feature([subtask(s, command="true") for s in ("01", "02")])
    store = MemoryStore(clock=ManualClock())
    run = producer.new_run(store, load_feature(root, "feat"), FailurePolicy.GRACEFUL)
    store.start_batch(run.run_id, 1, ["01", "02"], "graceful")
    assert store.begin(run.run_id, 1, "02", "w2", "t", claim_ttl_s=60, max_starts=3) == "run"
    adopt.settle(root, "feat", store, settings(), run.run_id, reason="x", cancel=None, wait_s=0)
    assert "settled" not in store.run_info(run.run_id)  # 02 may still record: adopt it then


def test_a_settled_run_is_never_read_back_into_a_feature_made_afresh(
    make_feature: MakeFeature,
) -> None:
    """A run its orchestrator finished is over: a feature folder deleted and written
    again with the same name starts pending, whatever that run recorded."""
    root = make_feature([subtask(s, command="true") for s in ("01", "02")])
    store = MemoryStore(clock=ManualClock())
    run = producer.new_run(store, load_feature(root, "feat"), FailurePolicy.GRACEFUL)
    store.start_batch(run.run_id, 1, ["01", "02"], "graceful")
    for seq in ("01", "02"):
        store.record_result(result(run.run_id, seq, ResultState.COMPLETED), run.feature_key, "w1")
    fresh = load_feature(root, "feat")  # still pending: the files lag the records
    assert adopt.unsettled(store, run.run_id, fresh)
    store.settle_run(run.run_id)
    assert not adopt.unsettled(store, run.run_id, fresh)


def test_an_older_run_never_overwrites_what_a_later_run_wrote(make_feature: MakeFeature) -> None:
    root = make_feature([subtask("01", command="true")])
    store = MemoryStore(clock=ManualClock())
    run = producer.new_run(store, load_feature(root, "feat"), FailurePolicy.GRACEFUL)
    store.start_batch(run.run_id, 1, ["01"], "graceful")
    assert store.record_result(result(run.run_id, "01", ResultState.FAILED), run.feature_key, "w")
    later = run.run_id.replace("2", "9", 1)  # a run id that sorts after: started later
    later_block = {"result": "completed", "run_id": later, "attempts": 1}

    def by_later(data: dict[str, object]) -> None:
        data["status"] = "completed"
        data["batchq"] = later_block

    update_subtasks(root, "feat", {"01": by_later})
    assert adopt.unsettled(store, run.run_id, load_feature(root, "feat"))  # batch in flight
    done = adopt.settle(
        root, "feat", store, settings(), run.run_id, reason="x", cancel=None, wait_s=0
    )
    assert statuses(root) == {"01": "completed"} and done.adopted == {}
    assert load_feature(root, "feat").by_seq()["01"].batchq.run_id == later  # type: ignore[union-attr]


def test_a_dead_holder_on_this_host_is_told_from_a_live_one() -> None:
    me = holder.current()
    assert holder.parse(str(me)) == me and me.alive and not holder.gone_here(str(me))
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert holder.gone_here(f"{me.host}:{int(gone.stdout)}:1")
    reused = holder.Holder(me.host, me.pid, (me.ticks or 0) + 1)  # same pid, later start
    assert holder.gone_here(str(reused))
    assert not holder.gone_here(f"another-host:{int(gone.stdout)}:1")  # can only lapse
    assert holder.parse("vm:123") == holder.Holder("vm", 123, None)
    assert holder.parse("another orchestrator") is None
