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
from batchq.protocol import RUN_TASK
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
    shown = "seq=01 title='Say hello' feature=ev batch=1"
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


def test_a_failed_subtask_still_succeeds_as_a_task_so_its_chord_completes(
    make_feature: Any,
    subtask_data: Any,
    orchestrator: MakeOrchestrator,
    task_events: TaskEvents,
) -> None:
    """A member that raised would fail its chord (TRAPS); a failed subtask is a
    returned result, which Flower shows as a succeeded task carrying ``failed``."""
    touch = "mkdir -p out && touch out/02.txt"
    root = make_feature(
        [subtask_data("01", command="exit 3"), subtask_data("02", command=touch)], name="evfail"
    )
    result = orchestrator(root, "evfail").run(RunOptions(policy=FailurePolicy.CONTINUE))
    assert not result.ok

    def both_done(events: TaskEvents) -> bool:
        return len(events.events("task-succeeded", "evfail")) >= 3

    assert task_events.wait_for(both_done)  # the two members and the chord callback
    assert task_events.events("task-failed", "evfail") == []
    by_seq = {
        task.args.split()[0]: task.result
        for task in task_events.state.tasks.values()
        if task.name == RUN_TASK and "feature=evfail " in (task.args or "")
    }
    assert "'result': 'failed'" in by_seq["seq=01"]
    assert "'result': 'completed'" in by_seq["seq=02"]
