"""What Flower is told when a member finishes: the event chosen from its return value."""

from __future__ import annotations

from batchq.transport.events import finished_event, outcome

FIELDS = {"uuid": "u1", "result": "x", "runtime": 1.5, "timestamp": 10.0}


def test_a_completed_member_stays_task_succeeded() -> None:
    value = outcome("01", "completed", None)
    assert value == {"seq": "01", "result": "completed"}
    assert finished_event(repr(value), dict(FIELDS)) == ("task-succeeded", FIELDS)


def test_a_failed_member_is_task_failed_with_its_error() -> None:
    value = outcome("02", "failed", "exit status 3:\n  boom")
    kind, fields = finished_event(repr(value), dict(FIELDS))
    assert kind == "task-failed"
    assert fields["exception"] == "failed: exit status 3: boom"
    assert fields["traceback"] == "" and "result" not in fields
    assert fields["uuid"] == "u1" and fields["runtime"] == 1.5


def test_a_timed_out_member_is_task_failed_too() -> None:
    kind, fields = finished_event(outcome("03", "timed_out", None), dict(FIELDS))
    assert (kind, fields["exception"]) == ("task-failed", "timed_out: timed_out")


def test_a_cancelled_member_is_revoked_not_succeeded() -> None:
    kind, fields = finished_event(repr(outcome("04", "cancelled", "cancel flag")), dict(FIELDS))
    assert kind == "task-revoked"
    assert fields["uuid"] == "u1" and fields["terminated"] is False


def test_the_carried_error_is_bounded() -> None:
    assert len(outcome("05", "failed", "x" * 5000)["error"]) == 200


def test_an_unreadable_value_leaves_the_event_as_celery_sent_it() -> None:
    assert finished_event("<object at 0x1>", dict(FIELDS)) == ("task-succeeded", FIELDS)
    assert finished_event("[1, 2]", dict(FIELDS)) == ("task-succeeded", FIELDS)
