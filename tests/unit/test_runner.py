"""The worker's side of one subtask (:func:`batchq.executor.runner.execute`) on the
in-memory store: claim, cancel flag, run token, one recorded outcome, retries, the
start cap and the failed-fast event. Real agents run (a shell ``true``, python
callables from ``tests/fixtures_pkg``); no Redis, no Celery worker."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from batchq import layout
from batchq.executor import runner
from batchq.executor.runner import RetryLater, execute
from batchq.files.taskfiles import feature_dir
from batchq.models import FailurePolicy, ResultState, SubtaskMessage
from batchq.protocol import CancelMode, EventKind
from batchq.store.memory import ManualClock, MemoryStore
from tests.conftest import MakeFeature, subtask
from tests.memrun import message, record, result_of, settings

CALLABLES = "tests.fixtures_pkg.callables"


@pytest.fixture
def root(make_feature: MakeFeature) -> Path:
    made = make_feature([subtask("01", command="true")])
    (made / "out").mkdir()  # the callables write their deliverable into it
    return made


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(clock=ManualClock())


def kinds(store: MemoryStore, msg: SubtaskMessage) -> list[str]:
    return [e.kind for e in store.events(msg.run_id)]


def test_a_shell_true_with_its_deliverable_completes_and_is_recorded_once(
    root: Path, store: MemoryStore
) -> None:
    (root / "out" / "01.txt").write_text("made earlier")
    msg = message(root, subtask("01", command="true"))
    result = execute(msg, store, settings(), task_id="t-1")
    assert result.result is ResultState.COMPLETED
    assert [d.verified for d in result.deliverables] == [True]
    assert store.result(msg.run_id, "01") == result
    assert kinds(store, msg) == [EventKind.STARTED, EventKind.FINISHED]
    info = store.subtask_info(msg.run_id, "01")
    assert (info["starts"], info["finishes"], info["task_id"]) == ("1", "1", "t-1")
    assert store.live_claims(msg.run_id, ["01"]) == []  # the claim went with the record
    assert store.cancel_mode(msg.run_id, 1) is None


def test_a_missing_deliverable_fails_the_subtask(root: Path, store: MemoryStore) -> None:
    msg = message(root, subtask("01", command="true"))
    result = execute(msg, store, settings())
    assert result.result is ResultState.FAILED
    assert result.error_type == "DeliverableMissing"
    assert store.result(msg.run_id, "01") == result


def test_a_python_callable_writes_its_deliverable(root: Path, store: MemoryStore) -> None:
    msg = message(root, subtask("01", callable_=f"{CALLABLES}:write_deliverable"))
    result = execute(msg, store, settings())
    assert result.result is ResultState.COMPLETED, result.error
    assert result.summary.startswith("wrote out/01.txt")
    assert (root / "out" / "01.txt").exists()
    # A python subtask's duration joins its callable's record (chunking reads it).
    learned = store.create_run("next", {}, "", [f"{CALLABLES}:write_deliverable"])
    assert list(learned.callables) == [f"{CALLABLES}:write_deliverable"]


def test_a_failure_sets_the_cancel_flag_and_emits_failed_fast(
    root: Path, store: MemoryStore
) -> None:
    msg = message(root, subtask("01", callable_=f"{CALLABLES}:raises"))
    result = execute(msg, store, settings())
    assert result.result is ResultState.FAILED
    assert result.error is not None and "boom" in result.error
    assert store.cancel_mode(msg.run_id, 1) == CancelMode.GRACEFUL
    assert kinds(store, msg) == [EventKind.STARTED, EventKind.FINISHED, EventKind.FAILED_FAST]
    assert store.events(msg.run_id)[-1].data["error"] == result.error


def test_policy_continue_fails_without_cancelling_siblings(root: Path, store: MemoryStore) -> None:
    msg = message(
        root, subtask("01", callable_=f"{CALLABLES}:raises"), policy=FailurePolicy.CONTINUE
    )
    assert execute(msg, store, settings()).result is ResultState.FAILED
    assert store.cancel_mode(msg.run_id, 1) is None
    assert kinds(store, msg)[-1] == EventKind.FAILED_FAST


def test_a_cancel_flag_up_before_start_cancels_without_running(
    root: Path, store: MemoryStore
) -> None:
    msg = message(root, subtask("01", callable_=f"{CALLABLES}:write_deliverable"))
    store.cancel(msg.run_id, 1, CancelMode.GRACEFUL)
    result = execute(msg, store, settings())
    assert result.result is ResultState.CANCELLED
    assert not (root / "out" / "01.txt").exists()
    assert kinds(store, msg) == [EventKind.FINISHED]  # never started, no failed_fast
    assert store.subtask_info(msg.run_id, "01").get("starts") is None


def test_a_wrong_run_token_fails_as_workspace_missing(root: Path, store: MemoryStore) -> None:
    msg = message(root, subtask("01", command="true"))
    other = message(root, subtask("01", command="true"), run_id=msg.run_id, write_token=False)
    result = execute(other, store, settings())  # same run, another token: not our files
    assert result.result is ResultState.FAILED
    assert result.error_type == "WorkspaceMissing"
    assert store.result(msg.run_id, "01") == result


def test_a_missing_token_file_fails_as_workspace_missing(root: Path, store: MemoryStore) -> None:
    msg = message(root, subtask("01", command="true"), write_token=False)
    assert execute(msg, store, settings()).error_type == "WorkspaceMissing"


def test_a_disallowed_command_fails_on_the_worker(root: Path, store: MemoryStore) -> None:
    msg = message(root, subtask("01", command="true"))
    result = execute(msg, store, settings(shell_allow=["echo"]))
    assert result.result is ResultState.FAILED
    assert store.result(msg.run_id, "01") == result


def test_a_recorded_subtask_is_never_rerun(root: Path, store: MemoryStore) -> None:
    msg = message(root, subtask("01", callable_=f"{CALLABLES}:write_deliverable"))
    first = record(store, msg, ResultState.COMPLETED)
    again = execute(msg, store, settings())
    assert again == first
    assert not (root / "out" / "01.txt").exists()
    assert kinds(store, msg).count(EventKind.FINISHED) == 1


def test_a_busy_subtask_waits_for_the_other_copy_s_result(root: Path, store: MemoryStore) -> None:
    msg = message(root, subtask("01", callable_=f"{CALLABLES}:write_deliverable"))
    assert store.begin(msg.run_id, 1, "01", "other", "t", claim_ttl_s=30, max_starts=3) == "run"
    other = msg.model_copy()

    def finish_elsewhere() -> None:
        runner._finish(store, result_of(msg, worker="other"), other, "other")

    timer = threading.Timer(0.2, finish_elsewhere)
    timer.start()
    try:
        got = execute(msg, store, settings())
    finally:
        timer.join()
    assert got.worker == "other" and got.result is ResultState.COMPLETED
    assert not (root / "out" / "01.txt").exists()  # this copy never ran the agent
    assert store.subtask_info(msg.run_id, "01")["starts"] == "1"


def test_a_temporary_failure_is_retried_then_recorded(root: Path, store: MemoryStore) -> None:
    data = subtask("01", callable_=f"{CALLABLES}:exits_temporarily", retries=1)
    msg = message(root, data)
    with pytest.raises(RetryLater) as later:
        execute(msg, store, settings())
    assert later.value.countdown == 0.0  # the backoff settings are 0 here
    assert store.result(msg.run_id, "01") is None
    info = store.subtask_info(msg.run_id, "01")
    assert (info["starts"], info["finishes"]) == ("1", "1")
    assert store.live_claims(msg.run_id, ["01"]) == []  # the retry may claim again
    final = execute(msg, store, settings(), retries_done=1)
    assert final.result is ResultState.FAILED and final.attempts == 2
    assert store.result(msg.run_id, "01") == final
    started = [e for e in store.events(msg.run_id) if e.kind == EventKind.STARTED]
    assert [e.data["attempt"] for e in started] == [1, 2]


def test_a_retry_that_succeeds_records_its_attempts(root: Path, store: MemoryStore) -> None:
    msg = message(root, subtask("01", callable_=f"{CALLABLES}:fails_once", retries=2))
    with pytest.raises(RetryLater):
        execute(msg, store, settings())
    final = execute(msg, store, settings(), retries_done=1)
    assert final.result is ResultState.COMPLETED and final.attempts == 2


def test_no_retries_left_records_the_temporary_failure(root: Path, store: MemoryStore) -> None:
    msg = message(root, subtask("01", callable_=f"{CALLABLES}:exits_temporarily"))
    result = execute(msg, store, settings())
    assert result.result is ResultState.FAILED
    assert store.result(msg.run_id, "01") == result


def test_a_subtask_whose_worker_keeps_dying_is_capped(root: Path) -> None:
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    msg = message(root, subtask("01", callable_=f"{CALLABLES}:write_deliverable"))
    for lost in ("lost-1", "lost-2"):  # each start's worker dies: its claim lapses
        assert store.begin(msg.run_id, 1, "01", lost, "t", claim_ttl_s=5, max_starts=2) == "run"
        clock.advance(6)
    result = execute(msg, store, settings(max_starts=2))
    assert result.result is ResultState.FAILED and result.error_type == "WorkerLost"
    assert "2 times" in (result.error or "")
    assert not (root / "out" / "01.txt").exists()
    assert store.result(msg.run_id, "01") == result


def chained(
    root: Path, seqs: list[str], callable_: str = "write_deliverable"
) -> list[SubtaskMessage]:
    """One chunk's member messages, of one run."""
    first = message(root, subtask(seqs[0], callable_=f"{CALLABLES}:{callable_}"))
    rest = [
        message(
            root,
            subtask(seq, callable_=f"{CALLABLES}:write_deliverable"),
            run_id=first.run_id,
            token=first.token,
        )
        for seq in seqs[1:]
    ]
    return [first, *rest]


def test_a_chunk_claims_its_next_member_with_the_record_of_the_one_before(
    root: Path, store: MemoryStore
) -> None:
    one, two = chained(root, ["01", "02"])
    chain = runner.Chain()
    chain.then(two, "t-02", 1)
    assert execute(one, store, settings(), task_id="t-01", chain=chain).ok
    # 02 is claimed already, its start counted once, before it runs.
    assert kinds(store, one) == [EventKind.STARTED, EventKind.FINISHED, EventKind.STARTED]
    assert store.live_claims(one.run_id, ["01", "02"]) == ["02"]
    chain.then(None)
    assert execute(two, store, settings(), task_id="t-02", chain=chain).ok
    assert kinds(store, one)[3:] == [EventKind.FINISHED]  # no second start
    info = store.subtask_info(one.run_id, "02")
    assert (info["starts"], info["finishes"], info["task_id"]) == ("1", "1", "t-02")
    assert store.live_claims(one.run_id, ["01", "02"]) == []


def test_a_failed_member_sets_the_cancel_flag_before_the_next_member_is_claimed(
    root: Path, store: MemoryStore
) -> None:
    one, two = chained(root, ["01", "02"], callable_="raises")
    chain = runner.Chain()
    chain.then(two, "t-02", 1)
    assert execute(one, store, settings(), task_id="t-01", chain=chain).result is ResultState.FAILED
    chain.then(None)
    assert execute(two, store, settings(), task_id="t-02", chain=chain).result is (
        ResultState.CANCELLED
    )
    assert not (root / "out" / "02.txt").exists()
    assert store.subtask_info(one.run_id, "02").get("starts") is None


def test_a_next_member_whose_claim_reply_was_lost_runs_once_on_its_token(
    root: Path, store: MemoryStore
) -> None:
    _, two = chained(root, ["01", "02"])
    chain = runner.Chain()
    chain.then(two, "t-02", 1)
    claim = chain.claim_for_next(runner.worker_id(), settings())
    assert claim is not None
    # The start reached the store, its answer did not (the connection dropped).
    assert (
        store.begin(
            two.run_id,
            1,
            "02",
            claim.worker,
            "t-02",
            claim_ttl_s=60,
            max_starts=3,
            token=claim.token,
        )
        == "run"
    )
    chain.claimed(claim, None)
    assert execute(two, store, settings(), task_id="t-02", chain=chain).ok
    assert store.subtask_info(two.run_id, "02")["starts"] == "1"
    assert kinds(store, two) == [EventKind.STARTED, EventKind.FINISHED]


def test_a_run_s_token_and_log_paths_are_the_layout_s(tmp_path: Path) -> None:
    """Worked out once per run and process, they stay what batchq.layout says."""
    folder = feature_dir(tmp_path, "feat")
    assert runner.token_path(tmp_path, "feat", "r1") == layout.token_file(folder, "r1")
    for seq in ("01", "02"):
        assert runner.log_path_for(tmp_path, "feat", "r1", seq) == layout.log_file(
            folder, "r1", seq
        )
