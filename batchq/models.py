"""The domain vocabulary: task files, plans, subtask results and batch reports.

Task-file models are tolerant readers of what other tools write (SPEC 1); the raw
JSON is kept by :mod:`batchq.files.taskfiles` so rewrites preserve unknown fields. Wire
models (:class:`SubtaskResult`, :class:`BatchReport`) are frozen and versioned so a
message or stored report written by an older batchq still decodes.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    ValidationError,
    field_validator,
    model_serializer,
)

from batchq import layout

__all__ = [
    "SEQ_MAX_DIGITS",
    "SEQ_PATTERN",
    "BatchMember",
    "BatchReport",
    "BatchStatus",
    "BatchqBlock",
    "DeliverableCheck",
    "Execution",
    "FailurePolicy",
    "Feature",
    "FileRef",
    "Isolation",
    "NextStep",
    "Plan",
    "PlannedBatch",
    "ResultState",
    "Run",
    "RunMode",
    "SandboxMode",
    "SkippedSubtask",
    "Subtask",
    "SubtaskMessage",
    "SubtaskResult",
    "SubtaskStatus",
    "TaskFile",
    "TaskStatus",
    "UndeclaredWrite",
    "Violation",
    "Workspace",
    "WriteCheck",
    "agent_name",
    "feature_key",
    "json_bytes",
    "seq_key",
]

SEQ_MAX_DIGITS = 6
SEQ_PATTERN = rf"^[0-9]{{2,{SEQ_MAX_DIGITS}}}$"
"""ASCII digits only (``\\d`` would take Arabic-Indic or fullwidth digits, which
``int()`` reads as numbers), and at most six: a seq names a file, and a number of
thousands of digits is refused by ``int()`` itself."""
_SEQ_RE = re.compile(SEQ_PATTERN)
SUMMARY_LIMIT = 200
DEFAULT_TIMEOUT_S = 3600.0
MAX_TIMEOUT_S = 7 * 24 * 3600.0
"""A week: a longer ``timeout_s`` (``1e300``) is a typo, and Redis forgets a run after
a week anyway (the state TTL)."""


def empty_list() -> list[Any]:
    """A new empty list, for ``default_factory``: pydantic reads a factory's signature
    when it builds the class, and a builtin's (``list``, ``dict``) is parsed from its
    text signature, ~0.3 ms each and ~10 ms for the first; a function's is instant."""
    return []


def empty_dict() -> dict[Any, Any]:
    """A new empty dict, for ``default_factory`` (see :func:`empty_list`)."""
    return {}


class _SharedEmptyList(list[Any]):
    """The one empty list the many-instance models share for a list field left empty
    (see :data:`SHARED_EMPTY`): a new ``[]`` each is 56 bytes, and a batch of 20,000
    held some 140,000 of them (three in each subtask file's model, four in each
    result). It refuses every change in place, so no instance can see another's: give
    the model a new list instead. A copy of it is a plain list of the copier's own."""

    __slots__ = ()

    def __copy__(self) -> list[Any]:
        return []

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return []

    def __reduce__(self) -> tuple[type[list[Any]], tuple[()]]:
        return list, ()


class _SharedEmptyDict(dict[Any, Any]):
    """The one empty dict shared as :class:`_SharedEmptyList` is (``Execution.env``)."""

    __slots__ = ()

    def __copy__(self) -> dict[Any, Any]:
        return {}

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[Any, Any]:
        return {}

    def __reduce__(self) -> tuple[type[dict[Any, Any]], tuple[()]]:
        return dict, ()


def _refuse(self: object, *args: object, **kwargs: object) -> None:
    raise TypeError(
        "this empty list (or dict) is shared by many models and cannot be changed in "
        "place: set the field to a new one"
    )


for _method in (
    "append", "extend", "insert", "remove", "pop", "clear", "sort", "reverse",
    "__setitem__", "__delitem__", "__iadd__", "__imul__",
):  # fmt: skip
    setattr(_SharedEmptyList, _method, _refuse)
for _method in (
    "pop", "popitem", "clear", "update", "setdefault", "__setitem__", "__delitem__", "__ior__",
):  # fmt: skip
    setattr(_SharedEmptyDict, _method, _refuse)
_EMPTY_LIST: list[Any] = _SharedEmptyList()
_EMPTY_DICT: dict[Any, Any] = _SharedEmptyDict()


def shared_empty_list() -> list[Any]:
    """``default_factory`` for a list field of a model made by the thousand."""
    return _EMPTY_LIST


def shared_empty_dict() -> dict[Any, Any]:
    """``default_factory`` for a dict field of a model made by the thousand."""
    return _EMPTY_DICT


def _share_empty(value: Any) -> Any:
    """An input's empty list or dict as the shared one (validators of the fields of
    :data:`SHARED_EMPTY`)."""
    if not value and isinstance(value, list):
        return _EMPTY_LIST
    if not value and isinstance(value, dict):
        return _EMPTY_DICT
    return value


SHARED_EMPTY = AfterValidator(_share_empty)
"""A list or dict field whose empty value is the shared, unchangeable one: for the
models a big batch holds thousands of (subtask files, results)."""


def seq_key(seq: str) -> tuple[int, int, str]:
    """The one sort key for seqs: numeric order ("09" < "10" < "100"), then as
    written; a seq that is not ASCII digits sorts last, by text."""
    if seq.isascii() and seq.isdigit():
        return (0, int(seq), seq)
    return (1, 0, seq)


def feature_key(name: str, root: Path) -> str:
    """A feature's identity across runs: its name plus a short hash of its root."""
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:10]
    return f"{name}@{digest}"


class SubtaskStatus(StrEnum):
    """The only four statuses the established tools accept in a subtask file."""

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    BLOCKED = "blocked"


class TaskStatus(StrEnum):
    ACTIVE = "active"
    COMPLETED = "completed"
    BLOCKED = "blocked"
    ARCHIVED = "archived"


class ResultState(StrEnum):
    """What one execution of a subtask ended as (kept in the ``batchq`` block)."""

    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


class FailurePolicy(StrEnum):
    GRACEFUL = "graceful"
    TERMINATE = "terminate"
    CONTINUE = "continue"


class RunMode(StrEnum):
    """``batch``: each planned batch waits for the previous one (the default).
    ``flow``: a subtask starts as soon as its own dependencies are completed."""

    BATCH = "batch"
    FLOW = "flow"


class WriteCheck(StrEnum):
    """What a run does about workspace writes outside the declared deliverables."""

    WARN = "warn"
    FAIL = "fail"
    OFF = "off"


class Isolation(StrEnum):
    """``BATCHQ_ISOLATE``: where a delegation's agent works.

    ``none`` runs every agent in the shared workspace (writes are watched by time
    windows); ``worktree`` gives each one a git worktree at a snapshot of the workspace
    and merges its declared deliverables back (:mod:`batchq.run.merge`)."""

    NONE = "none"
    WORKTREE = "worktree"


class Workspace(StrEnum):
    """``BATCHQ_WORKSPACE``: how a worker reaches the project.

    ``shared`` means at the orchestrator's own path (one host, or shared storage);
    ``git`` means through a git remote: the snapshot is pushed there, workers fetch
    it into a clone of their own and push their results back (implies
    ``isolate = worktree``; :mod:`batchq.run.remote`)."""

    SHARED = "shared"
    GIT = "git"


class SandboxMode(StrEnum):
    """``BATCHQ_SANDBOX``: how hard a worker insists on the bubblewrap sandbox.

    ``auto`` uses it where bwrap works and warns once where it does not (a laptop
    without bubblewrap keeps working); ``required`` refuses to run agents without it
    (production); ``off`` never uses it (debugging, or an outer sandbox already)."""

    AUTO = "auto"
    REQUIRED = "required"
    OFF = "off"


class BatchStatus(StrEnum):
    """``completed``: every member completed. ``partial_failure``: a member failed,
    timed out or never reported (or, under ``fail``, a write no member can be blamed
    for). ``cancelled``: nothing failed, but members were cancelled or skipped."""

    COMPLETED = "completed"
    PARTIAL_FAILURE = "partial_failure"
    CANCELLED = "cancelled"


class _SharedFields(set[str]):
    """A ``model_fields_set`` that many instances share (see :class:`_Shared`); a copy
    of it is a plain set of the instance's own."""

    __slots__ = ()

    def __copy__(self) -> set[str]:
        return set(self)

    def __reduce__(self) -> tuple[type[set[str]], tuple[list[str]]]:
        return set, (list(self),)


_SHARED_FIELDS: dict[frozenset[str], _SharedFields] = {}
_SHARED_FIELDS_LIMIT = 4096


class _Shared(BaseModel):
    """Models whose instances share one ``model_fields_set`` per set of names given.

    Pydantic gives every instance a set of its own of the field names its input named,
    and a set of 25 names is 2.2 KiB: more than half of a :class:`SubtaskResult`, a
    quarter of a :class:`Subtask`, at 5,000 of each in a batch some 16 MiB of copies of
    the same few sets. The set is replaced by the shared copy after validation; an
    assignment (which adds the name to it) first gives the instance a set of its own,
    and a copy (``model_copy``, ``copy``) gets a plain one, so no instance ever sees
    another's change."""

    def model_post_init(self, context: Any, /) -> None:
        fields = self.__pydantic_fields_set__
        key = frozenset(fields)
        shared = _SHARED_FIELDS.get(key)
        if shared is None:
            if len(_SHARED_FIELDS) >= _SHARED_FIELDS_LIMIT:
                return  # a process that saw thousands of combinations: keep its own
            shared = _SHARED_FIELDS.setdefault(key, _SharedFields(fields))
        object.__setattr__(self, "__pydantic_fields_set__", shared)

    def __setattr__(self, name: str, value: Any) -> None:
        if type(self.__pydantic_fields_set__) is _SharedFields:
            object.__setattr__(self, "__pydantic_fields_set__", set(self.__pydantic_fields_set__))
        super().__setattr__(name, value)


class _Tolerant(_Shared):
    """Task-file models ignore unknown keys: the raw JSON keeps them for rewrites."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


def _no_nul(value: str, what: str) -> str:
    """Refuse a NUL byte: no path, argv or environment entry can carry one, so it
    would only fail later, on a worker (where an exception would break the chord)."""
    if "\x00" in value:
        raise ValueError(f"{what} contains a NUL byte")
    return value


class FileRef(_Tolerant):
    """A context or reference file, optionally narrowed to a line range."""

    path: str
    lines: str | None = None
    reason: str | None = None

    @field_validator("path")
    @classmethod
    def _path_has_no_nul(cls, value: str) -> str:
        return _no_nul(value, "the path")


FileEntry = str | FileRef


def file_path(entry: FileEntry) -> str:
    """The path of a context/reference entry, whichever form it was written in."""
    return entry if isinstance(entry, str) else entry.path


class Execution(_Tolerant):
    """batchq's optional input block: how to run and verify a subtask."""

    command: str | None = None
    callable_: str | None = Field(default=None, alias="callable")
    verify: str | None = None
    timeout_s: float = Field(default=DEFAULT_TIMEOUT_S, gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False)
    retries: int = Field(default=0, ge=0, le=20)
    estimate_s: float | None = Field(default=None, ge=0)
    env: Annotated[dict[str, str], SHARED_EMPTY] = Field(default_factory=shared_empty_dict)

    @field_validator("command", "verify")
    @classmethod
    def _command_has_no_nul(cls, value: str | None) -> str | None:
        return None if value is None else _no_nul(value, "the command")

    @field_validator("env")
    @classmethod
    def _env_entries(cls, value: dict[str, str]) -> dict[str, str]:
        for name, item in value.items():
            if not name:
                raise ValueError("an empty variable name")
            _no_nul(name, f"the variable name {name!r}")
            if "=" in name:
                raise ValueError(f"the variable name {name!r} contains '='")
            _no_nul(item, f"the value of {name}")
        return value

    @field_validator("callable_")
    @classmethod
    def _callable_shape(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[\w.]+:[\w.]+", value):
            raise ValueError("expected 'package.module:function'")
        return value


class BatchqBlock(_Tolerant):
    """batchq's own facts about the last execution of a subtask."""

    result: ResultState
    error: str | None = None
    attempts: int = 0
    run_id: str | None = None
    log: str | None = None
    fingerprint: str | None = None
    """sha256 of ``inputs`` (see :mod:`batchq.files.fingerprint`), recorded at completion."""
    inputs: dict[str, str] | None = None
    """Fingerprint parts as submitted: part -> hash, so a rerun can say what changed."""
    outputs: dict[str, str] | None = None
    """Deliverable -> content hash as it was at completion."""

    @model_serializer(mode="wrap")
    def _omit_absent_fingerprint(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Files written before fingerprints, and failed results, keep the block's
        established shape: the fingerprint keys appear only when there is one."""
        data = handler(self)
        if isinstance(data, dict):
            for key in _FINGERPRINT_KEYS:
                if data.get(key) is None:
                    data.pop(key, None)
        return data


_FINGERPRINT_KEYS = ("fingerprint", "inputs", "outputs")


def _check_seq(value: str) -> str:
    if not _SEQ_RE.match(value):
        raise ValueError(f'a seq is 2 to {SEQ_MAX_DIGITS} ASCII digits (0-9), like "01"')
    return sys.intern(value)


Seq = Annotated[str, AfterValidator(_check_seq)]
"""A subtask's number as written. One string object per seq (interned): a run keys
many maps by it (files, results, events, fingerprints), each decoded separately, and
at 20,000 subtasks the copies were some 3 MiB."""
InternedSeq = Annotated[str, AfterValidator(sys.intern)]
"""A seq on the wire, unchecked (a result carries what it was sent), one object per seq."""


class Subtask(_Tolerant):
    """One ``subtask_NN.json``."""

    id: str
    seq: Seq
    title: str = Field(min_length=1)
    status: SubtaskStatus = SubtaskStatus.PENDING
    depends_on: Annotated[list[Seq], SHARED_EMPTY] = Field(default_factory=shared_empty_list)
    parallel: StrictBool = False
    """A JSON boolean, as the established task CLI insists: ``"yes"``, ``1`` or ``"on"``
    are refused, not guessed."""
    suggested_agent: str | None = None
    context_files: Annotated[list[FileEntry], SHARED_EMPTY] = Field(
        default_factory=shared_empty_list
    )
    reference_files: Annotated[list[FileEntry], SHARED_EMPTY] = Field(
        default_factory=shared_empty_list
    )
    acceptance_criteria: list[str] = Field(min_length=1)
    deliverables: list[str] = Field(min_length=1)
    agent_id: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    completion_summary: str | None = None
    execution: Execution | None = None
    batchq: BatchqBlock | None = None

    @field_validator("deliverables", "context_files", "reference_files")
    @classmethod
    def _paths_have_no_nul(cls, value: list[Any]) -> list[Any]:
        return _entries_without_nul(value)

    @property
    def number(self) -> int:
        return int(self.seq)

    @property
    def timeout_s(self) -> float:
        return self.execution.timeout_s if self.execution else DEFAULT_TIMEOUT_S


class TaskFile(_Tolerant):
    """One ``task.json``: the feature's header."""

    id: str
    name: str
    status: TaskStatus = TaskStatus.ACTIVE
    objective: str | None = None
    context_files: list[FileEntry] = Field(default_factory=empty_list)
    reference_files: list[FileEntry] = Field(default_factory=empty_list)
    exit_criteria: list[str] = Field(default_factory=empty_list)
    subtask_count: int | None = None
    completed_count: int | None = None
    created_at: str | None = None
    completed_at: str | None = None

    @field_validator("context_files", "reference_files")
    @classmethod
    def _paths_have_no_nul(cls, value: list[FileEntry]) -> list[FileEntry]:
        return _entries_without_nul(value)


def _entries_without_nul(entries: list[Any]) -> list[Any]:
    for index, entry in enumerate(entries):
        if isinstance(entry, str):
            _no_nul(entry, f"entry {index}")
    return entries


class Feature(BaseModel):
    """A loaded, format-valid feature folder. Semantic problems are found by the planner."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    root: Path
    path: Path
    task: TaskFile
    subtasks: list[Subtask]
    warnings: list[str] = Field(default_factory=empty_list)

    def by_seq(self) -> dict[str, Subtask]:
        """Subtasks keyed by seq (the first one wins when seqs are duplicated)."""
        out: dict[str, Subtask] = {}
        for sub in self.subtasks:
            out.setdefault(sub.seq, sub)
        return out

    @property
    def completed_count(self) -> int:
        return sum(1 for s in self.subtasks if s.status is SubtaskStatus.COMPLETED)

    @property
    def state_dir(self) -> Path:
        """batchq's own per-feature files: reports, logs, run tokens."""
        return layout.state_dir(self.path)


# --- planning ---------------------------------------------------------------


class PlannedBatch(BaseModel):
    """One batch of the schedule, with why each member sits in it."""

    number: int
    level: int
    seqs: list[str]
    parallel: bool
    after: int | None = None
    reasons: dict[str, str] = Field(default_factory=empty_dict)
    depends_on: list[str] = Field(default_factory=empty_list)
    """The members' dependencies outside the batch, for the report's "Batch N depends
    on" line."""


class Plan(BaseModel):
    feature: str
    batches: list[PlannedBatch] = Field(default_factory=empty_list)
    blocked: dict[str, str] = Field(default_factory=empty_dict)
    completed: list[str] = Field(default_factory=empty_list)
    warnings: list[str] = Field(default_factory=empty_list)
    """Advice that does not stop the plan (a batch of coding agents past the size
    guidance); renderers print it, ``--json`` carries it."""


class Violation(BaseModel):
    """One reason an explicit batch is not safe (SPEC 2)."""

    kind: str
    seqs: list[str]
    message: str


# --- execution results (wire models) ------------------------------------------


class _Wire(_Shared):
    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: int = 1


class DeliverableCheck(_Wire):
    path: str
    verified: bool
    problem: str | None = None
    """Why it did not verify when it exists: it resolves to a protected path."""


class SubtaskResult(_Wire):
    """What a worker returns for one subtask; never an exception (SPEC 3)."""

    feature: str
    run_id: str
    batch: int
    seq: InternedSeq
    title: str
    result: ResultState
    summary: str = ""
    deliverables: list[DeliverableCheck] = Field(default_factory=empty_list)
    attempts: int = 1
    worker: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float = 0.0
    error_type: str | None = None
    error: str | None = None
    output_tail: str = ""
    log_path: str | None = None
    observed_writes: Annotated[list[str], SHARED_EMPTY] = Field(default_factory=shared_empty_list)
    """Set by the worker: paths that changed in the workspace while the agent ran and
    are not this subtask's own deliverables. A sibling running meanwhile shows here too."""
    undeclared_writes: Annotated[list[str], SHARED_EMPTY] = Field(default_factory=shared_empty_list)
    """Set by the batch report: the observed writes blamed on this subtask alone."""
    # --- isolation (``isolate = "worktree"``); absent in older results -----------
    isolated_commit: str | None = None
    """The commit of everything the agent changed in its worktree, on
    ``refs/batchq/<run>/<seq>``; its parent is its snapshot (batch or flow wave)."""
    changed_paths: Annotated[list[str], SHARED_EMPTY] = Field(default_factory=shared_empty_list)
    """Every path that commit changes, declared or not (exact: no time windows)."""
    diffstat: str | None = None
    """``git diff --shortstat`` of that commit, e.g. ``2 files changed, 3 insertions(+)``."""
    merged_paths: Annotated[list[str], SHARED_EMPTY] = Field(default_factory=shared_empty_list)
    """Set by the orchestrator: the deliverable paths merged back into the workspace."""
    merged: bool = False
    """Set by the orchestrator when the merge back was done (``merged_paths`` may be
    empty: nothing to merge). A completed isolated result without it was never merged:
    adoption merges it (:mod:`batchq.run.latemerge`)."""

    @property
    def ok(self) -> bool:
        return self.result is ResultState.COMPLETED


class NextStep(_Wire):
    """What the orchestrator should do after this batch."""

    batch: int | None = None
    seqs: list[str] = Field(default_factory=empty_list)
    dependencies_satisfied: bool = False
    recommendation: str = ""
    depends_on: list[str] = Field(default_factory=empty_list)
    """What batch ``batch`` depends on (the report's "Batch N depends on" line)."""
    fix: list[str] = Field(default_factory=empty_list)
    """The subtasks that failed and must be fixed first: the failures themselves, never
    the dependents skipped because of them."""


class SkippedSubtask(_Wire):
    """A member flow mode never enqueued (a dependency failed, or the run stopped)."""

    seq: str
    reason: str
    cause: str | None = None
    """The failed subtask this one was skipped because of (None: the run stopped)."""
    title: str = ""


class UndeclaredWrite(_Wire):
    """An undeclared write no single subtask can be blamed for: ``candidates`` are the
    members whose windows saw it change while another member was running."""

    path: str
    candidates: list[str]
    reason: str = ""
    """Why no single candidate is blamed: whose windows overlapped whose."""


class BatchReport(_Wire):
    """The aggregated result of one batch, built by :func:`batchq.core.report.build`."""

    feature: str
    run_id: str
    batch: int
    status: BatchStatus
    results: list[SubtaskResult]
    total: int
    completed: int
    failed: int
    """Members that failed, timed out or never reported; never cancelled or skipped ones."""
    success_rate: float
    cancelled: int = 0
    skipped_count: int = 0
    """``total == completed + failed + cancelled + skipped_count``."""
    next: NextStep = Field(default_factory=NextStep)
    submitted_at: datetime | None = None
    finished_at: datetime | None = None
    wall_s: float = 0.0
    work_s: float = 0.0
    speedup: float = 0.0
    forced: bool = False
    missing: list[str] = Field(default_factory=empty_list)
    skipped: list[SkippedSubtask] = Field(default_factory=empty_list)
    discrepancies: list[str] = Field(default_factory=empty_list)
    undeclared_writes: list[UndeclaredWrite] = Field(default_factory=empty_list)
    write_check: WriteCheck = WriteCheck.WARN

    @property
    def ok(self) -> bool:
        return self.status is BatchStatus.COMPLETED

    @classmethod
    def from_json(cls, raw: str) -> BatchReport:
        """``model_validate_json(raw)``, result by result where it can (see
        :meth:`from_json_parts`); any other text is validated whole, so a report that
        does not validate is refused with the same errors."""
        return cls.from_json_parts([raw]) or cls.model_validate_json(raw)

    @classmethod
    def from_json_parts(cls, parts: Iterable[str]) -> BatchReport | None:
        """The report whose compact JSON (as :meth:`json_parts` or ``model_dump_json``
        writes it) comes in ``parts``, validated one result at a time; None when the
        text is not of that shape or does not validate (validate it whole then, for
        the errors). Validated whole, pydantic parses every member's JSON before it
        builds a model, and its allocator keeps that memory: a 5,000-member report read
        from Redis cost some 19 MiB, in parts 10. Only one part and one member's text
        are held besides the results."""
        key = '"results":['
        chunks = iter(parts)
        text = ""
        while (found := text.find(key)) < 0:
            chunk = next(chunks, None)
            if chunk is None:
                return None
            text += chunk
        head = text[: found + len(key)]
        text, index = text[len(head) :], 0
        results: list[SubtaskResult] = []
        try:
            while True:
                if not results and text.startswith("]", index):
                    return None  # no members: nothing to split
                try:
                    _, end = _SCAN(text, index)
                    after = text[end]
                except (StopIteration, ValueError, IndexError):
                    chunk = next(chunks, None)  # cut short at the end of a part: read on
                    if chunk is None:
                        return None
                    text, index = text[index:] + chunk, 0
                    continue
                results.append(SubtaskResult.model_validate_json(text[index:end]))
                index = end + 1
                if after == "]":
                    break
                if after != ",":
                    return None
            header = cls.model_validate_json(head + "]" + text[index:] + "".join(chunks))
        except ValidationError:
            return None
        return header.model_copy(update={"results": results})

    def json_parts(self, indent: int | None = None) -> Iterator[bytes]:
        """``model_dump_json(indent=indent)`` as UTF-8, one result at a time: joined,
        the same bytes. Serialized whole, a report of thousands of members was held
        twice at once (pydantic's buffer and the bytes copied out of it, some 9 MiB at
        5,000 indented), beside the results themselves; written part by part, only one
        member's text is."""
        if not self.results:
            yield json_bytes(self, indent)
            return
        head = json_bytes(self.model_copy(update={"results": []}), indent)
        if indent is None:
            key, pad, close = b'"results":[]', b"", b"]"
        else:
            key = b"\n" + b" " * indent + b'"results": []'
            pad, close = b"\n" + b" " * (2 * indent), b"\n" + b" " * indent + b"]"
        # JSON text holds a newline or an unescaped quote only between values, so the
        # key (after the fields before it, fixed names) is found only where it is.
        before, found, after = head.partition(key)
        if not found:
            raise AssertionError(f"no {key!r} in a serialized report")
        yield before + key[:-1]
        for index, result in enumerate(self.results):
            text = json_bytes(result, indent)
            if indent is not None:
                text = text.replace(b"\n", pad)
            yield (b"," if index else b"") + pad + text
        yield close + after


_SCAN: Any = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
"""The C scanner behind ``raw_decode``: where one JSON value ends (see ``from_json``)."""


def json_bytes(model: BaseModel, indent: int | None = None) -> bytes:
    """``model.model_dump_json(indent=indent)`` encoded, without the decode to ``str``
    and the encode back: what is written to a file or to Redis is bytes anyway."""
    return model.__pydantic_serializer__.to_json(model, indent=indent)


def is_seq(value: Any) -> bool:
    return isinstance(value, str) and bool(_SEQ_RE.match(value))


class BatchMember(_Wire):
    """Another member of a subtask's batch, as its coding agent is told about it: what
    runs beside it in the same workspace, and so what it must not touch."""

    seq: str
    title: str
    deliverables: list[str] = Field(default_factory=empty_list)


class SubtaskMessage(_Wire):
    """The body of one ``batchq.run_subtask`` message: all a worker needs, as JSON.

    The subtask definition travels whole so the worker re-checks the agent policy on
    what it will actually run; the session context travels as a Redis key.
    """

    feature: str
    feature_key: str
    run_id: str
    batch: int
    root: str
    token: str
    policy: FailurePolicy = FailurePolicy.GRACEFUL
    agent: str
    subtask: Subtask
    write_check: WriteCheck = WriteCheck.WARN
    # What a coding agent's prompt says about the delegation (issue #23); defaults keep
    # messages from an older producer decodable.
    feature_name: str = ""
    """``task.json`` ``name`` (the folder name is ``feature``)."""
    objective: str | None = None
    """``task.json`` ``objective``."""
    subtask_file: str = ""
    """The subtask's file, relative to ``root``; computed from the layout when empty."""
    siblings: list[BatchMember] = Field(default_factory=empty_list)
    """The batch's other members (for agents that render a prompt; at most
    ``SIBLINGS_CAP``), in seq order."""
    siblings_total: int = 0
    """How many other members the batch has, listed or not."""
    isolate: Isolation = Isolation.NONE
    """``worktree``: run in a worktree at ``snapshot_ref``."""
    snapshot_ref: str = ""
    """Isolation: the hidden ref of the workspace snapshot this subtask starts from
    (``refs/batchq/<run>/base-<batch>`` in batch mode, ``.../base-w<wave>`` in flow
    mode); the worker never derives it. Empty when not isolated."""
    git_remote: str | None = None
    """``workspace = git``: the remote holding the snapshot, where the worker pushes its
    result (never with a password: :func:`batchq.settings.git_remote_problem`). Set, the
    worker never touches ``root``: it works in a clone of its own."""
    git_prefix: str = ""
    """``workspace = git``: the project root's folder inside the repository ("" = top)."""

    @property
    def seq(self) -> str:
        return self.subtask.seq


@dataclass(frozen=True)
class Run:
    """One ``batchq run``/``batch`` invocation: its id, token and shared context key."""

    run_id: str
    feature: str
    feature_key: str
    root: Path
    token: str
    policy: FailurePolicy
    learned: Mapping[str, float] = field(default_factory=dict)
    """Durations the feature's subtasks took in earlier runs, for longest-first order."""
    write_check: WriteCheck = WriteCheck.WARN
    callable_s: Mapping[str, float] = field(default_factory=dict)
    """The longest recent duration of each python callable the feature uses (any
    feature's runs count), to tell tiny subtasks (:mod:`batchq.core.chunks`)."""
    foreign: Mapping[str, list[str]] = field(default_factory=dict)
    """The deliverables the root's other features declare, keyed ``feature <name>``:
    their writes are theirs, never this run's undeclared writes."""
    isolate: Isolation = Isolation.NONE
    git_remote: str | None = None
    """Set when ``workspace = git``: the remote the batches travel through."""
    git_prefix: str = ""
    """The project root's folder inside its repository, when ``git_remote`` is set."""
    git_timeout_s: float = 120.0
    """The bound on each call to ``git_remote`` (``Settings.git_timeout_s``)."""


def agent_name(subtask: Subtask) -> str:
    """The agent a subtask asks for: ``suggested_agent``, else inferred from its
    ``execution`` block (a command means ``shell``, a callable means ``python``)."""
    if subtask.suggested_agent:
        return subtask.suggested_agent
    if subtask.execution and subtask.execution.callable_:
        return "python"
    if subtask.execution and subtask.execution.command:
        return "shell"
    return ""
