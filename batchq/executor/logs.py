"""Structured worker logs: every line about a subtask says which one.

A worker's log lines about a subtask carry its feature, batch and seq (and run id):

- inside ``batchq.run_subtask`` (the pool child running it), from a context variable
  set by Celery's ``task_prerun`` signal and cleared by ``task_postrun``;
- on Celery's ``Task batchq.run_subtask[...] received`` line (the worker's main
  process, before the task runs), from the argument summary the producer wrote:
  ``feature=X batch=N seq=NN title='...'``.

:class:`SubtaskFilter` puts them on every record as ``feature``, ``batch``, ``seq``
and ``run_id`` attributes (``None`` when a line is about no subtask). It sits on the
handlers, not on a logger, because a logger's filters never see records propagated
from its children (``batchq.executor.runner``, ``celery.app.trace``...).

``BATCHQ_LOG_FORMAT=text`` (the default) keeps Celery's format and appends
``[feature=X batch=N seq=NN]``; ``json`` writes one JSON object per line
(:class:`JsonFormatter`). :func:`install` wires it all through Celery's
``after_setup_logger``/``after_setup_task_logger`` signals; ``batchq/worker.py``
calls it, so every worker batchq starts has it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from batchq.protocol import RUN_TASK

__all__ = [
    "JsonFormatter",
    "SubtaskFilter",
    "SubtaskLogContext",
    "TextFormatter",
    "configure_handlers",
    "current",
    "install",
    "subtask_context",
]

FIELDS = ("feature", "batch", "seq", "run_id")
# Each key is matched on its own, so the order of the summary's fields may change;
# the title (a Python string literal) is cut out first, so it cannot fake a field.
_TITLE_RE = re.compile(r"""title=(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")
_ARGSREPR_FIELDS = {
    name: re.compile(rf"(?:^|\s){name}=(?P<value>{pattern})(?=\s|$)")
    for name, pattern in (("feature", r"\S+"), ("batch", r"\d+"), ("seq", r"\d+"))
}


@dataclass(frozen=True)
class SubtaskLogContext:
    """What identifies a subtask in a log line."""

    feature: str
    batch: int
    seq: str
    run_id: str | None = None

    @classmethod
    def from_message(cls, message: Any) -> SubtaskLogContext | None:
        """From a ``run_subtask`` message body (``SubtaskMessage`` as JSON), if it is one."""
        if not isinstance(message, Mapping):
            return None
        subtask = message.get("subtask")
        seq = subtask.get("seq") if isinstance(subtask, Mapping) else None
        feature, batch = message.get("feature"), message.get("batch")
        if not (isinstance(feature, str) and isinstance(seq, str) and isinstance(batch, int)):
            return None
        run_id = message.get("run_id")
        return cls(feature, batch, seq, run_id if isinstance(run_id, str) else None)

    @classmethod
    def from_argsrepr(cls, argsrepr: Any) -> SubtaskLogContext | None:
        """From the producer's argument summary ``feature=X batch=N seq=NN title=...``."""
        if not isinstance(argsrepr, str):
            return None
        fields = _TITLE_RE.sub(" ", argsrepr)
        found = {name: regex.search(fields) for name, regex in _ARGSREPR_FIELDS.items()}
        if not all(found.values()):
            return None
        values = {name: match["value"] for name, match in found.items() if match}
        return cls(values["feature"], int(values["batch"]), values["seq"])


_current: ContextVar[SubtaskLogContext | None] = ContextVar("batchq_subtask_log", default=None)


def current() -> SubtaskLogContext | None:
    """The subtask the current task is running, if any."""
    return _current.get()


@contextmanager
def subtask_context(ctx: SubtaskLogContext | None) -> Iterator[None]:
    """Log as ``ctx`` inside the block (tests, or code running outside a task)."""
    token = _current.set(ctx)
    try:
        yield
    finally:
        _current.reset(token)


def _from_record(record: logging.LogRecord) -> SubtaskLogContext | None:
    """Celery's ``received`` line carries the task's name and argument summary."""
    data = record.args
    if isinstance(data, Mapping) and data.get("name") == RUN_TASK:
        return SubtaskLogContext.from_argsrepr(data.get("args"))
    return None


class SubtaskFilter(logging.Filter):
    """Adds ``feature``, ``batch``, ``seq``, ``run_id`` to every record; never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "seq", None) is not None:
            return True  # set already (by a caller's extra=, or another handler)
        ctx = current() or _from_record(record)
        values: Mapping[str, Any] = asdict(ctx) if ctx else {}
        for name in FIELDS:
            setattr(record, name, values.get(name))
        return True


def _context_of(record: logging.LogRecord) -> dict[str, Any]:
    return {
        name: getattr(record, name) for name in FIELDS if getattr(record, name, None) is not None
    }


class TextFormatter(logging.Formatter):
    """Another formatter's line plus ``[feature=X batch=N seq=NN]`` when about a subtask."""

    def __init__(self, inner: logging.Formatter | None = None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter("[%(asctime)s: %(levelname)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = self.inner.format(record)
        ctx = _context_of(record)
        if "seq" not in ctx:
            return line
        suffix = " ".join(f"{k}={ctx[k]}" for k in ("feature", "batch", "seq") if k in ctx)
        head, sep, rest = line.partition("\n")  # keep a traceback below the tagged line
        return f"{head} [{suffix}]{sep}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``process``, ``message``,
    the subtask's ``feature``/``batch``/``seq``/``run_id`` when known, ``exc_info``."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "pid": record.process,
            "message": record.getMessage(),
        }
        data.update(_context_of(record))
        task_id = _task_id(record)
        if task_id:
            data["task_id"] = task_id
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exc_info"] = record.exc_text
        return json.dumps(data, ensure_ascii=False, default=str)


def _task_id(record: logging.LogRecord) -> str | None:
    task_id = getattr(record, "task_id", None)
    if isinstance(task_id, str) and task_id != "???":
        return task_id
    data = record.args
    if isinstance(data, Mapping) and isinstance(data.get("id"), str):
        return str(data["id"])
    return None


LogFormat = Literal["text", "json"]


def configure_handlers(logger: logging.Logger, log_format: LogFormat) -> None:
    """Give each of ``logger``'s handlers the subtask filter and the chosen format.

    Idempotent: a handler already configured is left alone.
    """
    for handler in logger.handlers:
        if any(isinstance(f, SubtaskFilter) for f in handler.filters):
            continue
        handler.addFilter(SubtaskFilter())
        if log_format == "json":
            handler.setFormatter(JsonFormatter())
        else:
            handler.setFormatter(TextFormatter(handler.formatter))


_installed = False


def install(log_format: LogFormat = "text") -> None:
    """Connect the Celery signals once per process (workers import ``batchq.worker``)."""
    global _installed
    if _installed:
        return
    from celery import signals

    def on_logger(logger: logging.Logger, **_: Any) -> None:
        configure_handlers(logger, log_format)

    def on_prerun(task: Any = None, args: Any = None, **_: Any) -> None:
        if getattr(task, "name", None) == RUN_TASK and args:
            _current.set(SubtaskLogContext.from_message(args[0]))

    def on_postrun(**_: Any) -> None:
        _current.set(None)

    signals.after_setup_logger.connect(on_logger, weak=False)
    signals.after_setup_task_logger.connect(on_logger, weak=False)
    signals.task_prerun.connect(on_prerun, weak=False)
    signals.task_postrun.connect(on_postrun, weak=False)
    _installed = True
