"""A feature read with the standard library alone, when its files are plainly sound.

``batchq status`` is read far more often than anything is run, and importing
pydantic and building the task-file models costs several times an interpreter's
start-up. This reader accepts a feature only when every file is, beyond doubt, what
:mod:`batchq.files.taskfiles` would load without a refusal, a warning or a change of
value (exact JSON types, no coercion), and when the planner would find no problem in it
(no duplicate or unknown seq, no cycle, no protected or invalid path under the default
patterns). Anything else, however harmless, returns None, and the caller goes the full
way, which alone words refusals and problems. It never raises for a file's content.
"""

from __future__ import annotations

import graphlib
import math
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchq import layout
from batchq.core.paths import PathError, is_protected
from batchq.errors import UsageError
from batchq.files.jsonfile import JsonReadError, read_document
from batchq.files.locations import TASK_FILE, feature_dir

__all__ = ["PlainFeature", "PlainSubtask", "plain_feature"]

_SEQ = re.compile(r"^[0-9]{2,6}$")
""":data:`batchq.models.SEQ_PATTERN`, spelled here to keep pydantic out."""
_FILE = re.compile(r"^subtask_([0-9]{2,6})\.json$")
_CALLABLE = re.compile(r"[\w.]+:[\w.]+")
_STATUSES = frozenset({"pending", "in_progress", "completed", "blocked"})
_TASK_STATUSES = frozenset({"active", "completed", "blocked", "archived"})
_RESULTS = frozenset({"completed", "failed", "timed_out", "cancelled"})
_SUMMARY_LIMIT = 200
_MAX_TIMEOUT_S = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class PlainSubtask:
    seq: str
    title: str
    status: str
    result: str | None
    error: str | None


@dataclass(frozen=True, slots=True)
class PlainFeature:
    name: str
    task_name: str
    task_status: str
    subtasks: list[PlainSubtask]


def plain_feature(root: Path, name: str) -> PlainFeature | None:
    """Feature ``name`` under ``root`` if it is plainly sound (see the module), else None."""
    try:
        path = feature_dir(root, name)
        task = _document(path / TASK_FILE)
        if task is None or not _plain_task(task) or task["id"] != name:
            return None
        found: list[tuple[tuple[int, int, str], dict[str, Any]]] = []
        for file in path.glob("subtask_*.json"):
            st = os.stat(file)
            if not stat.S_ISREG(st.st_mode):
                continue
            match = _FILE.match(file.name)
            data = _document(file) if match else None
            if match is None or data is None or not _plain_subtask(data):
                return None
            if int(match.group(1)) != int(data["seq"]):
                return None
            found.append(((int(data["seq"]), len(file.name), file.name), data))
    except (OSError, ValueError, UsageError):
        return None
    found.sort(key=lambda pair: pair[0])
    subtasks = [data for _, data in found]
    if not _sound(task, subtasks):
        return None
    return PlainFeature(
        name=name,
        task_name=task["name"],
        task_status=task.get("status", "active"),
        subtasks=[_row(data) for data in subtasks],
    )


def _document(path: Path) -> dict[str, Any] | None:
    try:
        return read_document(path).data
    except (JsonReadError, OSError):
        return None


def _row(data: dict[str, Any]) -> PlainSubtask:
    block = data.get("batchq")
    return PlainSubtask(
        seq=data["seq"],
        title=data["title"],
        status=data.get("status", "pending"),
        result=None if block is None else block["result"],
        error=None if block is None else block.get("error"),
    )


# --- what the models would accept as it is --------------------------------------


def _is(value: Any, kind: type) -> bool:
    return type(value) is kind


def _text(value: Any) -> bool:
    """A string without a NUL byte (every string field of a task file holds one)."""
    return _is(value, str) and "\x00" not in value


def _optional_text(data: dict[str, Any], key: str) -> bool:
    return key not in data or data[key] is None or _text(data[key])


def _texts(data: dict[str, Any], key: str, required: bool = False) -> bool:
    """A list of NUL-free strings (file entries as objects go the full way)."""
    if key not in data:
        return not required
    value = data[key]
    return _is(value, list) and (bool(value) or not required) and all(_text(item) for item in value)


def _number(value: Any) -> bool:
    return (_is(value, int) or _is(value, float)) and math.isfinite(value)


def _text_map(value: Any) -> bool:
    return _is(value, dict) and all(_text(k) and _text(v) for k, v in value.items())


def _plain_task(data: dict[str, Any]) -> bool:
    return (
        _text(data.get("id"))
        and _text(data.get("name"))
        and data.get("status", "active") in _TASK_STATUSES
        and _optional_text(data, "objective")
        and _texts(data, "context_files")
        and _texts(data, "reference_files")
        and _texts(data, "exit_criteria")
        and all(
            data.get(k) is None or _is(data[k], int) for k in ("subtask_count", "completed_count")
        )
        and _optional_text(data, "created_at")
        and _optional_text(data, "completed_at")
    )


def _plain_subtask(data: dict[str, Any]) -> bool:
    summary = data.get("completion_summary")
    return (
        _text(data.get("id"))
        and _text(data.get("seq"))
        and _SEQ.match(data["seq"]) is not None
        and _text(data.get("title"))
        and data["title"] != ""
        and data.get("status", "pending") in _STATUSES
        and _texts(data, "depends_on")
        and all(_SEQ.match(dep) for dep in data.get("depends_on", ()))
        and _is(data.get("parallel", False), bool)
        and _optional_text(data, "suggested_agent")
        and _texts(data, "context_files")
        and _texts(data, "reference_files")
        and _texts(data, "acceptance_criteria", required=True)
        and _texts(data, "deliverables", required=True)
        and all(
            _optional_text(data, k)
            for k in ("agent_id", "started_at", "completed_at", "completion_summary")
        )
        and (summary is None or len(summary) <= _SUMMARY_LIMIT)
        and (data.get("execution") is None or _plain_execution(data["execution"]))
        and (data.get("batchq") is None or _plain_block(data["batchq"]))
    )


def _plain_execution(value: Any) -> bool:
    if not _is(value, dict) or "callable_" in value:
        return False
    timeout = value.get("timeout_s", 1.0)
    retries = value.get("retries", 0)
    estimate = value.get("estimate_s")
    env = value.get("env", {})
    callable_ = value.get("callable")
    return (
        _optional_text(value, "command")
        and _optional_text(value, "verify")
        and (callable_ is None or (_text(callable_) and _CALLABLE.fullmatch(callable_) is not None))
        and _number(timeout)
        and 0 < timeout <= _MAX_TIMEOUT_S
        and _is(retries, int)
        and 0 <= retries <= 20
        and (estimate is None or (_number(estimate) and estimate >= 0))
        and _text_map(env)
        and all(name and "=" not in name for name in env)
    )


def _plain_block(value: Any) -> bool:
    return (
        _is(value, dict)
        and value.get("result") in _RESULTS
        and _is(value.get("attempts", 0), int)
        and all(_optional_text(value, k) for k in ("error", "run_id", "log", "fingerprint"))
        and all(value.get(k) is None or _text_map(value[k]) for k in ("inputs", "outputs"))
    )


# --- what the planner would find -----------------------------------------------


def _sound(task: dict[str, Any], subtasks: list[dict[str, Any]]) -> bool:
    """No seq used twice, no dependency on itself or on an unknown seq, no cycle, and
    no path the default patterns protect or refuse."""
    graph = {sub["seq"]: list(sub.get("depends_on", ())) for sub in subtasks}
    if len(graph) != len(subtasks):
        return False
    if any(dep == seq or dep not in graph for seq, deps in graph.items() for dep in deps):
        return False
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError:
        return False
    paths = [*task.get("context_files", ()), *task.get("reference_files", ())]
    for sub in subtasks:
        paths += [
            *sub["deliverables"],
            *sub.get("context_files", ()),
            *sub.get("reference_files", ()),
        ]
    return _unprotected(paths)


def _unprotected(paths: Iterable[str]) -> bool:
    patterns = layout.DEFAULT_PROTECTED
    try:
        return all(is_protected(path, patterns) is None for path in paths)
    except PathError:
        return False
