"""The task events Flower consumes, in-process: the producer's ``task-sent`` (sent as
one ``task-multi`` message in the publish batch), the worker's ``task-received``,
``task-started`` and ``task-succeeded`` (flushed on the ``BatchedEvents`` timer), read
by an ``app.events.Receiver`` and folded into Celery's event ``State`` as Flower does.

Kind: in-process threads worker (``conftest.py``): events leave the worker's consumer
(its event dispatcher and hub timer), which the threads pool shares with prefork;
Flower's own HTTP views stay covered by ``tests/integration/test_flower.py`` and
``test_browser.py``.
"""

from __future__ import annotations

from typing import Any

from batchq.models import FailurePolicy
from batchq.protocol import AGGREGATE_TASK, RUN_TASK
from batchq.run.orchestrator import RunOptions
from tests.inprocess.conftest import MakeOrchestrator, TaskEvents


def test_a_subtask_is_sent_received_started_and_succeeded_as_flower_sees_it(
    make_feature: Any,
    subtask_data: Any,
    orchestrator: MakeOrchestrator,
    task_events: TaskEvents,
    lane_worker: Any,
) -> None:
    hello = "mkdir -p out && echo hello > out/01.txt"
    root = make_feature([subtask_data("01", title="Say hello", command=hello)], name="ev")
    result = orchestrator(root, "ev").run()
    assert result.ok, result.reports

    def succeeded(events: TaskEvents) -> bool:
        return bool(events.events("task-succeeded", "ev"))

    assert task_events.wait_for(succeeded)
    (sent,) = task_events.events("task-sent", "ev", name=RUN_TASK)
    task_id = sent["uuid"]
    assert task_events.of(task_id) == [
        "task-sent",
        "task-received",
        "task-started",
        "task-succeeded",
    ]
    shown = f"feature=ev batch=1 seq=01 run={result.run_id} title='Say hello'"
    assert sent["args"] == shown and sent["kwargs"] == "{}"
    assert sent["queue"] == "batchq.shell"
    (received,) = task_events.events("task-received", uuid=task_id)
    assert received["hostname"] == lane_worker.hostname
    assert received["args"] == shown
    (done,) = task_events.events("task-succeeded", uuid=task_id)
    assert "'result': 'completed'" in done["result"] and done["runtime"] >= 0

    # What Flower's tasks page is built from: the folded state of that task.
    task = task_events.state.tasks[task_id]
    assert (task.state, task.name, task.args) == ("SUCCESS", RUN_TASK, shown)
    assert task.worker is not None and task.worker.hostname == lane_worker.hostname
    assert task.sent is not None and task.received is not None and task.succeeded is not None
    assert task.sent <= task.received <= task.succeeded


def test_a_failed_subtask_is_a_failure_in_flower_and_its_chord_still_completes(
    make_feature: Any,
    subtask_data: Any,
    orchestrator: MakeOrchestrator,
    task_events: TaskEvents,
) -> None:
    """A member that raised would fail its chord (TRAPS), so a failed subtask is a
    returned result; its worker still reports it to Flower with ``task-failed`` (its
    error included) instead of ``task-succeeded``, and the chord callback runs."""
    touch = "mkdir -p out && touch out/02.txt"
    root = make_feature(
        [subtask_data("01", command="exit 3"), subtask_data("02", command=touch)], name="evfail"
    )
    result = orchestrator(root, "evfail").run(RunOptions(policy=FailurePolicy.CONTINUE))
    assert not result.ok

    def both_done(events: TaskEvents) -> bool:
        received = events.events("task-received", "evfail")
        succeeded = {e["uuid"] for e in events.events("task-succeeded", "evfail")}
        retried = {e["uuid"] for e in events.events("task-retried", "evfail")}
        members = {e["uuid"] for e in received if e.get("name") == RUN_TASK}
        callbacks = {e["uuid"] for e in received if e.get("name") == AGGREGATE_TASK}
        # The chord callback ran: it found the report, or, the orchestrator still
        # holding the feature, left the report to it (retried; see test_chords.py).
        return (
            bool(members & succeeded)
            and bool(callbacks & (succeeded | retried))
            and bool(events.events("task-failed", "evfail"))
        )

    assert task_events.wait_for(both_done)  # 02 and the chord callback; 01 failed
    (failed,) = task_events.events("task-failed", "evfail")
    assert "exit code 3" in failed["exception"]
    by_seq = {
        next(w for w in (task.args or "").split() if w.startswith("seq=")): task
        for task in task_events.state.tasks.values()
        if task.name == RUN_TASK and "feature=evfail " in (task.args or "")
    }
    assert by_seq["seq=01"].state == "FAILURE"
    assert by_seq["seq=02"].state == "SUCCESS"
    assert "'result': 'completed'" in by_seq["seq=02"].result
