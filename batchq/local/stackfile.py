"""The recorded stack of ``batchq up`` / ``batchq down``: ``<root>/.tmp/batchq/stack.json``.

``batchq up`` starts an embedded stack (:mod:`batchq.local.embedded`), detaches it and writes
this record; later commands read it to find the stack's Redis
(:func:`live_stack_url`), and ``batchq down`` stops the recorded process groups
(:func:`stop_recorded_stack`). Each process is recorded with its start time in clock
ticks, so a pid reused by an unrelated process after a reboot is never signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from batchq import layout, procs
from batchq.errors import SpecError

__all__ = [
    "STACK_FILE",
    "ProcessRecord",
    "StackRecord",
    "iter_stack_pids",
    "live_stack_url",
    "read_stack_file",
    "stack_record",
    "stop_recorded_stack",
    "write_stack_file",
]

STACK_FILE = layout.STACK_FILE


class ProcessRecord(BaseModel):
    """One process of a recorded stack; ``start_ticks`` guards against pid reuse."""

    model_config = ConfigDict(frozen=True)

    role: str
    pid: int
    pgid: int
    start_ticks: int | None = None
    log: str | None = None

    def alive(self) -> bool:
        if not procs.pid_alive(self.pid):
            return False
        return self.start_ticks is None or procs.process_start_ticks(self.pid) == self.start_ticks


class StackRecord(BaseModel):
    """The content of ``<root>/.tmp/batchq/stack.json``."""

    model_config = ConfigDict(frozen=True)

    schema_version: int = 1
    url: str
    redis_py_url: str
    dir: str
    created_at: datetime
    owner_pid: int
    processes: list[ProcessRecord]
    flower_url: str | None = None

    def redis_alive(self) -> bool:
        return any(p.alive() for p in self.processes if p.role == "redis")

    def alive(self) -> bool:
        return any(p.alive() for p in self.processes)


def _record(role: str, child: procs.Child) -> ProcessRecord:
    return ProcessRecord(
        role=role,
        pid=child.pid,
        pgid=child.pgid,
        start_ticks=child.start_ticks,
        log=str(child.log_path),
    )


def stack_record(
    url: str,
    redis_py_url: str,
    dir: Path,
    processes: list[tuple[str, procs.Child]],
    flower_url: str | None,
) -> StackRecord:
    """The record of a running stack's processes, owned by this process."""
    return StackRecord(
        url=url,
        redis_py_url=redis_py_url,
        dir=str(dir),
        created_at=datetime.now(UTC),
        owner_pid=os.getpid(),
        processes=[_record(role, child) for role, child in processes],
        flower_url=flower_url,
    )


def write_stack_file(root: Path, record: StackRecord) -> Path:
    """Record a running stack atomically; returns the file's path."""
    path = root / STACK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(record.model_dump_json(indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_stack_file(root: Path) -> StackRecord | None:
    """The recorded stack, or None if there is none; a malformed file is a SpecError."""
    path = root / STACK_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return StackRecord.model_validate(json.loads(text))
    except (ValueError, ValidationError) as exc:
        raise SpecError(path, None, f"not a batchq stack file ({exc.__class__.__name__})") from exc


def live_stack_url(root: Path) -> str | None:
    """The URL of the recorded stack if its Redis still runs (for later commands)."""
    with contextlib.suppress(SpecError):
        record = read_stack_file(root)
        if record is not None and record.redis_alive():
            return record.url
    return None


def _stop_group(proc: ProcessRecord, grace_s: float, *, leader_only: bool) -> None:
    if procs.pid_alive(proc.pid) and not proc.alive():
        return  # the pid (and so maybe the group id) now belongs to someone else
    if not procs.group_members(proc.pgid):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if leader_only and proc.alive():
            os.kill(proc.pid, signal.SIGTERM)
        else:
            os.killpg(proc.pgid, signal.SIGTERM)
    if not procs.wait_group_gone(proc.pgid, grace_s):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pgid, signal.SIGKILL)
        procs.wait_group_gone(proc.pgid, 5.0)


def stop_recorded_stack(root: Path, grace_s: float = 10.0) -> StackRecord | None:
    """``batchq down``: stop the recorded processes by group and remove the record.

    Workers get a warm-shutdown TERM first, Redis last. A stale record (its processes
    are gone, or their pids now belong to other processes) or a malformed one is just
    removed; the stack's directory is removed too. Returns the record, if readable.
    """
    path = root / STACK_FILE
    try:
        record = read_stack_file(root)
    except SpecError:
        path.unlink(missing_ok=True)
        return None
    if record is None:
        return None
    for proc in record.processes:
        if proc.role != "redis":
            _stop_group(proc, grace_s, leader_only=True)
    for proc in record.processes:
        if proc.role == "redis":
            _stop_group(proc, grace_s, leader_only=False)
    procs.reap_detached()  # when `down` runs in the process that ran `up` (tests)
    stack_dir = Path(record.dir)
    if stack_dir.name.startswith("batchq-redis-"):  # only a directory we created
        shutil.rmtree(stack_dir, ignore_errors=True)
    path.unlink(missing_ok=True)
    return record


def iter_stack_pids(record: StackRecord) -> Iterator[int]:
    """Live pids of every recorded group, for diagnostics and tests."""
    for proc in record.processes:
        yield from procs.group_members(proc.pgid)
