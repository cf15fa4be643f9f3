"""Structured worker logs: subtask fields on every line about a subtask, text or JSON."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from batchq.executor.logs import (
    JsonFormatter,
    SubtaskFilter,
    SubtaskLogContext,
    TextFormatter,
    configure_handlers,
    current,
    subtask_context,
)

MESSAGE = {
    "feature": "auth-system",
    "feature_key": "auth-system:abc",
    "run_id": "20260101T000000-abcd",
    "batch": 2,
    "root": "/tmp/x",
    "token": "t",
    "agent": "shell",
    "subtask": {"seq": "03", "title": "Install dependencies"},
}
CTX = SubtaskLogContext("auth-system", 2, "03", "20260101T000000-abcd")


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, logging.StreamHandler[io.StringIO]]]:
    """A private logger -> handler pair, like the root logger's handler in a worker."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    parent = logging.getLogger("batchq-test-logs")
    parent.handlers = [handler]
    parent.setLevel(logging.INFO)
    parent.propagate = False
    yield parent, handler
    parent.handlers = []


def lines(handler: logging.StreamHandler[io.StringIO]) -> list[str]:
    return handler.stream.getvalue().splitlines()


def test_the_context_is_read_from_a_run_subtask_message() -> None:
    assert SubtaskLogContext.from_message(MESSAGE) == CTX


@pytest.mark.parametrize("body", [None, [], {"feature": "f"}, {**MESSAGE, "batch": "2"}])
def test_anything_else_gives_no_context(body: Any) -> None:
    assert SubtaskLogContext.from_message(body) is None


def test_the_context_is_read_from_the_producers_argument_summary() -> None:
    found = SubtaskLogContext.from_argsrepr("feature=auth-system batch=2 seq=03 title='Install'")
    assert found == SubtaskLogContext("auth-system", 2, "03")
    assert SubtaskLogContext.from_argsrepr("[1, 2]") is None


def test_the_summary_fields_may_come_in_any_order_and_the_title_cannot_fake_them() -> None:
    summary = "seq=07 title='fix seq=99 feature=evil' feature=auth batch=3"
    assert SubtaskLogContext.from_argsrepr(summary) == SubtaskLogContext("auth", 3, "07")


def test_a_child_loggers_line_inside_a_subtask_carries_feature_batch_and_seq(capture) -> None:
    parent, handler = capture
    configure_handlers(parent, "text")
    child = parent.getChild("runner")  # propagated records pass the handler, not the logger
    with subtask_context(CTX):
        child.info("subtask %s started", "03")
    child.info("worker ready")
    assert lines(handler) == [
        "INFO subtask 03 started [feature=auth-system batch=2 seq=03]",
        "INFO worker ready",
    ]
    assert current() is None


def test_a_traceback_stays_below_the_tagged_line(capture) -> None:
    parent, handler = capture
    configure_handlers(parent, "text")
    with subtask_context(CTX):
        try:
            raise ValueError("boom")
        except ValueError:
            parent.exception("agent crashed")
    out = lines(handler)
    assert out[0] == "ERROR agent crashed [feature=auth-system batch=2 seq=03]"
    assert out[-1] == "ValueError: boom"


def test_json_format_writes_one_object_per_line_with_the_subtask_fields(capture) -> None:
    parent, handler = capture
    configure_handlers(parent, "json")
    with subtask_context(CTX):
        parent.getChild("runner").warning("slow: %d s", 12)
    parent.info("no subtask here")
    first, second = (json.loads(line) for line in lines(handler))
    assert first["message"] == "slow: 12 s"
    assert first["level"] == "WARNING"
    assert first["logger"] == "batchq-test-logs.runner"
    assert (first["feature"], first["batch"], first["seq"], first["run_id"]) == (
        "auth-system",
        2,
        "03",
        "20260101T000000-abcd",
    )
    assert first["ts"].endswith("+00:00")
    assert second["message"] == "no subtask here"
    assert "seq" not in second


def test_json_format_keeps_the_exception(capture) -> None:
    parent, handler = capture
    configure_handlers(parent, "json")
    try:
        raise RuntimeError("lost")
    except RuntimeError:
        parent.exception("failed")
    (record,) = (json.loads(line) for line in lines(handler))
    assert "RuntimeError: lost" in record["exc_info"]


def test_celerys_received_line_gets_the_fields_from_the_argument_summary(capture) -> None:
    parent, handler = capture
    configure_handlers(parent, "json")
    data = {
        "id": "abc-123",
        "name": "batchq.run_subtask",
        "args": "feature=auth-system batch=2 seq=03 title='Install dependencies'",
        "kwargs": "{}",
        "eta": None,
    }
    parent.info("Task %(name)s[%(id)s] received", data, extra={"data": data})
    (record,) = (json.loads(line) for line in lines(handler))
    assert record["message"] == "Task batchq.run_subtask[abc-123] received"
    assert (record["feature"], record["batch"], record["seq"]) == ("auth-system", 2, "03")
    assert record["task_id"] == "abc-123"


def test_other_tasks_received_lines_get_no_subtask_fields() -> None:
    record = logging.LogRecord(
        "celery", logging.INFO, __file__, 1, "Task %(name)s received", None, None
    )
    record.args = {"name": "batchq.aggregate_batch", "args": "feature=a batch=1 seq=01"}
    SubtaskFilter().filter(record)
    assert record.seq is None  # type: ignore[attr-defined]


def test_configuring_twice_does_not_wrap_the_format_twice(capture) -> None:
    parent, handler = capture
    configure_handlers(parent, "text")
    configure_handlers(parent, "text")
    assert len(handler.filters) == 1
    assert isinstance(handler.formatter, TextFormatter)
    assert not isinstance(handler.formatter.inner, TextFormatter)


def test_the_prerun_and_postrun_signals_set_and_clear_the_context() -> None:
    from celery import signals

    from batchq.executor import logs

    logs.install("text")

    class Task:
        name = "batchq.run_subtask"

    signals.task_prerun.send(sender=Task, task_id="x", task=Task(), args=(MESSAGE,), kwargs={})
    try:
        assert current() == CTX
    finally:
        signals.task_postrun.send(sender=Task, task_id="x", task=Task(), args=(MESSAGE,))
    assert current() is None


def test_the_json_formatter_alone_needs_no_filter() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    assert json.loads(JsonFormatter().format(record))["message"] == "hello"
