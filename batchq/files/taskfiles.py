"""Load, validate and rewrite the task files orchestrators already keep (SPEC 1).

A feature is ``<root>/.tmp/tasks/<feature>/`` with ``task.json`` and one
``subtask_NN.json`` per subtask. Loading is tolerant of what other tools write and
strict about what batchq cannot understand: every refusal is a
:class:`~batchq.errors.SpecError` naming the file, the field and what was expected.

Every rewrite is a read-modify-write under :func:`~batchq.files.locking.feature_lock`: the
files are re-read under the lock, the mutation is applied to the raw JSON (so unknown
fields survive), the result is validated before anything is written, and each file is
replaced atomically in its own layout (:mod:`batchq.files.jsonfile`). Timestamps batchq
writes use JavaScript's ``toISOString()`` form, ``2026-01-01T12:00:00.000Z``, because
that is what the established tools write. Nothing here prints.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import stat
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from batchq.errors import InfrastructureError, SpecError, UsageError
from batchq.files.jsonfile import JsonDocument, JsonFormat, JsonReadError, read_document, write_many
from batchq.files.locations import (
    ARCHIVE_DIR,
    TASK_FILE,
    existing_feature_dir,
    feature_dir,
    find_root,
    list_features,
    tasks_dir,
)
from batchq.files.locking import feature_lock
from batchq.models import (
    SEQ_MAX_DIGITS,
    SUMMARY_LIMIT,
    BatchqBlock,
    Feature,
    Subtask,
    SubtaskStatus,
    TaskFile,
    TaskStatus,
)

__all__ = [
    "ARCHIVE_DIR",
    "TASK_FILE",
    "Mutation",
    "archive_feature",
    "complete_subtask",
    "declared_by_features",
    "existing_feature_dir",
    "feature_dir",
    "feature_lock",
    "find_root",
    "list_features",
    "load_feature",
    "load_raw",
    "mark_blocked",
    "mark_completed",
    "mark_in_progress",
    "mark_pending",
    "spec_problems",
    "tasks_dir",
    "truncate_summary",
    "update_subtasks",
    "utc_timestamp",
]

SUBTASK_RE = re.compile(rf"^subtask_([0-9]{{2,{SEQ_MAX_DIGITS}}})\.json$")
"""ASCII digits, as the ``seq`` inside must be (:data:`batchq.models.SEQ_PATTERN`)."""

Mutation = Callable[[dict[str, Any]], None]
"""Changes one subtask's raw JSON dict in place; applied under the feature lock.

It may only set or delete top-level keys (``data["batchq"] = {...}``), never change a
nested value in place: it gets a shallow copy of the parsed file, whose nested values
are shared with the parse cache (a deep copy cost more than the render)."""

_ModelT = TypeVar("_ModelT", bound=BaseModel)
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}
"""Write errors that say the file system cannot take it, whatever the file."""


# --- loading ---------------------------------------------------------------------


@dataclass
class _Loaded:
    """A feature's files, validated, with the raw documents behind them, for
    read-modify-write. The :class:`Feature` is built on demand (:meth:`feature`): a
    rewrite replaces models in ``subtasks`` as it goes, and a feature built up front
    would hold every replaced one until the last file is written."""

    name: str
    root: Path
    path: Path
    task_file: TaskFile
    task: JsonDocument
    subtasks: list[tuple[Subtask, JsonDocument]]
    warnings: list[str]

    def feature(
        self, subtasks: list[Subtask] | None = None, task: TaskFile | None = None
    ) -> Feature:
        """The feature of these files (``subtasks`` and ``task``: as rewritten)."""
        return Feature(
            name=self.name,
            root=self.root,
            path=self.path,
            task=self.task_file if task is None else task,
            subtasks=[sub for sub, _ in self.subtasks] if subtasks is None else subtasks,
            warnings=self.warnings,
        )


def load_raw(path: Path) -> tuple[dict[str, Any], JsonFormat]:
    """One task file's raw JSON object (key order kept) and layout, unvalidated."""
    doc = _read(path)
    return doc.data, doc.format


def load_feature(root: Path, name: str) -> Feature:
    """Read and validate ``task.json`` and every ``subtask_*.json`` of a feature.

    Subtasks come sorted by number. Duplicate seqs load (the planner reports them);
    anything batchq cannot parse raises :class:`SpecError`.
    """
    return _load(root, name).feature()


def _load(root: Path, name: str, *, quick: bool = False) -> _Loaded:
    """The feature and its documents. ``quick`` trusts a cached parse whose file still
    has the inode it had (every rewrite by batchq or ``batchq complete`` is an
    ``os.replace``, a new inode, which the directory listing shows without a ``stat``);
    it misses an edit made in place, so only the mirror's interim rewrites use it and
    re-check the files they change (see :func:`update_subtasks`)."""
    path = existing_feature_dir(root, name)
    task_doc = _read(path / TASK_FILE)
    task = _validate(TaskFile, task_doc)
    warnings: list[str] = []
    if task.id != name:
        warnings.append(f"{TASK_FILE}: id {task.id!r} differs from the folder name {name!r}")
    found: list[tuple[tuple[int, int, str], Subtask, JsonDocument]] = []
    folder = _PARSED.folder(path)
    for file_name, inode in _subtask_entries(path):  # sorted below, by number
        cached = folder.get(file_name) if quick and inode else None
        if cached is not None and _inode_of(cached[0]) == inode:
            parsed: tuple[Subtask, JsonDocument] | None = cached[1], cached[2]
        else:
            parsed = _subtask_file(path, file_name, folder)
        if parsed is None:
            continue
        sub, doc = parsed
        found.append(((sub.number, len(file_name), file_name), sub, doc))
        if sub.completion_summary is not None and len(sub.completion_summary) > SUMMARY_LIMIT:
            warnings.append(
                f"{file_name}: completion_summary is {len(sub.completion_summary)} characters; "
                f"new summaries are limited to {SUMMARY_LIMIT}"
            )
    found.sort(key=lambda item: item[0])
    subtasks = [(sub, doc) for _, sub, doc in found]
    return _Loaded(name, root, path, task, task_doc, subtasks, warnings)


_FileKey = bytes
"""A file version's inode, size, mtime and ctime, packed (see :func:`_file_key`)."""
_KEY = struct.Struct("<Qqqq")
_Folder = dict[str, tuple[_FileKey, Subtask, JsonDocument]]


class _ParseCache:
    """The last parse of each subtask file, for the few feature folders used last: a
    long-lived process (a bench, a server) that runs many features keeps only theirs,
    not every file it ever read (a big heap makes every full garbage collection slow)."""

    FOLDERS = 4

    def __init__(self) -> None:
        self.folders: OrderedDict[Path, _Folder] = OrderedDict()
        self.lock = threading.Lock()  # orchestrators of several features may share a process

    def folder(self, path: Path) -> _Folder:
        """The cache of one feature folder, by file name: a load of thousands of files
        asks for it once, not once per file."""
        with self.lock:
            folder = self.folders.get(path)
            if folder is None:
                folder = self.folders[path] = {}
                while len(self.folders) > self.FOLDERS:
                    self.folders.popitem(last=False)
            else:
                self.folders.move_to_end(path)
            return folder

    def clear(self) -> None:
        with self.lock:
            self.folders.clear()


_PARSED = _ParseCache()


def _file_key(st: os.stat_result) -> _FileKey:
    """What tells one version of a file from the next: every rewrite is an ``os.replace``,
    so a new inode, even when size and times happen to match. Packed in 32 bytes: the
    parse cache keeps one per task file, and a tuple of four big ints is 200 (at 20,000
    files, 2.6 MiB more under a batch's report)."""
    return _KEY.pack(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _inode_of(key: _FileKey) -> int:
    inode: int = _KEY.unpack(key)[0]
    return inode


def _subtask_names(path: Path) -> list[str]:
    """The ``subtask_*.json`` names in a feature folder (what ``glob`` would list,
    without its per-entry pattern matching and path objects)."""
    return [file_name for file_name, _ in _subtask_entries(path)]


def _subtask_entries(path: Path) -> list[tuple[str, int]]:
    """Each ``subtask_*.json`` name with the inode the listing gives for free (0 for
    a symbolic link, whose own inode says nothing of its target's)."""
    try:
        with os.scandir(path) as entries:
            return [
                (entry.name, 0 if entry.is_symlink() else entry.inode())
                for entry in entries
                if entry.name.startswith("subtask_") and entry.name.endswith(".json")
            ]
    except OSError as exc:
        raise SpecError(path, None, f"cannot read: {exc.strerror or exc}") from exc


def _subtask_file(path: Path, name: str, folder: _Folder) -> tuple[Subtask, JsonDocument] | None:
    """Parse and validate subtask file ``name`` of folder ``path``, reusing the last
    parse while the file is the same one (inode, size and mtime): a run mirrors
    statuses many times, and every rewrite is an ``os.replace`` that gives the file a
    new inode. None for a folder or other non-file that happens to match the name
    pattern. A file that did not change costs a ``stat`` and no path object (a
    5,000-file feature is loaded at every mirror flush)."""
    try:
        st = os.stat(os.path.join(path, name))
    except OSError as exc:
        raise SpecError(path / name, None, f"cannot read: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        return None
    key = _file_key(st)
    cached = folder.get(name)
    if cached is not None and cached[0] == key:
        return cached[1], cached[2]
    file = path / name
    doc = _read(file)
    sub = _check_subtask(doc.fspath, _validate(Subtask, doc))
    folder[name] = (key, sub, _kept(sub, doc))
    return sub, doc


def _kept(sub: Subtask, doc: JsonDocument) -> JsonDocument:
    """What the parse cache keeps of a file's document beside its model: the text, to
    render the file's next version from, except for a completed subtask's. A completed
    file is rarely written again in a run (a ``--changed`` reset, a report that
    disagrees), and its text is the biggest (its ``batchq`` block): at 5,000 files
    some 6 MiB. Rewritten after all, it is read again (:attr:`JsonDocument.text`)."""
    return doc.unread() if sub.status is SubtaskStatus.COMPLETED else doc.compact()


def _data(doc: JsonDocument) -> dict[str, Any]:
    """``doc.data``, read again from disk if the cache did not keep its text (then a
    file that no longer reads is refused as any read refuses it)."""
    try:
        return doc.data
    except JsonReadError as exc:
        raise SpecError(doc.path, None, exc.reason) from exc
    except OSError as exc:
        raise SpecError(doc.path, None, f"cannot read: {exc.strerror or exc}") from exc


def _read(path: Path) -> JsonDocument:
    try:
        return read_document(path)
    except JsonReadError as exc:
        raise SpecError(path, None, exc.reason) from exc
    except OSError as exc:
        raise SpecError(path, None, f"cannot read: {exc.strerror or exc}") from exc


def _check_subtask(path: Path | str, sub: Subtask) -> Subtask:
    """``sub`` if its seq matches its file's name. ``path`` may be a ``str`` (a rewrite
    of thousands of files makes no ``Path`` for any of them; see ``write_many``)."""
    match = SUBTASK_RE.match(os.path.basename(path))
    if match is None:
        raise SpecError(
            Path(path),
            None,
            f"file name should be subtask_NN.json (NN: 2 to {SEQ_MAX_DIGITS} ASCII digits)",
        )
    if int(match.group(1)) != sub.number:
        raise SpecError(
            Path(path),
            "seq",
            f"expected {match.group(1)!r} to match the file name, got {sub.seq!r}",
        )
    return sub


def _validate(
    model: type[_ModelT], doc: JsonDocument, data: Mapping[str, Any] | None = None
) -> _ModelT:
    try:
        return model.model_validate(doc.data if data is None else data)
    except ValidationError as exc:
        raise _spec_error(doc.path, exc) from exc


_UNION_TAGS = frozenset({"str", "int", "float", "bool", "none", "list", "dict", "FileRef"})


def _is_tag(part: str | int) -> bool:
    """Pydantic names union branches in error locations (``str``, ``FileRef``). Only
    those names: a user's key (``execution.env.MODE``) is a field, not a branch."""
    return isinstance(part, str) and (part in _UNION_TAGS or "[" in part)


def _spec_error(path: Path, exc: ValidationError) -> SpecError:
    """The first validation problem as one line: dotted field and what was expected
    (``validate`` lists them all: :func:`spec_problems`)."""
    first, *rest = _spec_errors(path, exc)
    if not rest:
        return first
    more = len(rest)
    expected = f"{first.expected} (and {more} more problem{'s' if more > 1 else ''})"
    return SpecError(path, first.field, expected)


def _spec_errors(path: Path, exc: ValidationError) -> list[SpecError]:
    """Every validation problem of one file, one per field."""
    groups: dict[tuple[str | int, ...], list[Any]] = {}
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        cut = next((i for i, part in enumerate(loc) if _is_tag(part)), len(loc))
        groups.setdefault(loc[:cut], []).append(err)
    found = []
    for loc, errs in groups.items():
        field, expected = _describe(loc, errs)
        found.append(SpecError(path, field or None, expected.replace("\n", " ")))
    return found


class _DeclaredCache:
    """Each subtask file's declared deliverables, by file version: a run asks what
    every other feature of its root declares, and a root may hold many features that
    no longer change (bounded: a long-lived process forgets all past the limit)."""

    LIMIT = 100_000

    def __init__(self) -> None:
        self.files: dict[str, tuple[_FileKey, tuple[str, ...]]] = {}
        self.lock = threading.Lock()

    def lookup(
        self, versions: list[tuple[str, _FileKey]]
    ) -> list[tuple[str, _FileKey, tuple[str, ...] | None]]:
        """Each file with its cached paths, or None where this version was not read."""
        with self.lock:
            found = [(file, key, self.files.get(file)) for file, key in versions]
        return [(f, k, c[1] if c is not None and c[0] == k else None) for f, k, c in found]

    def put(self, file: str, key: _FileKey, paths: tuple[str, ...]) -> None:
        with self.lock:
            if len(self.files) >= self.LIMIT:
                self.files.clear()
            self.files[file] = (key, paths)


_DECLARED = _DeclaredCache()


def declared_by_features(root: Path, besides: str) -> dict[str, list[str]]:
    """What every active feature of ``root`` but ``besides`` declares as deliverables,
    sorted, by feature name, read without validating anything (a file that is not JSON, or holds
    no list of paths, declares nothing): what another feature of the root claims as
    its own is never an undeclared write of this run, whatever else its files get
    wrong.

    Every run asks it, and a root may hold many features that no longer change, so
    each file is parsed once per version (inode, size, times) and the rest costs a
    directory listing per feature and a ``stat`` per file, with no path objects: in a
    root of 40 features this was 2.2 ms of a 4-subtask run's 34."""
    out: dict[str, list[str]] = {}
    try:
        folders = sorted(
            (e for e in os.scandir(tasks_dir(root)) if _feature_folder(e)), key=lambda e: e.name
        )
    except OSError:
        return out
    for folder in folders:
        if folder.name == besides:
            continue
        declared = _declared_in(folder.path)
        if declared is not None:
            out[folder.name] = declared
    return out


def _feature_folder(entry: os.DirEntry[str]) -> bool:
    """What :func:`list_features` lists (its ``task.json`` is checked by the caller)."""
    name = entry.name
    return name != ARCHIVE_DIR and not name.startswith(".") and entry.is_dir()


def _declared_in(folder: str) -> list[str] | None:
    """One feature folder's declared deliverables; None when it holds no ``task.json``
    (not a feature)."""
    versions: list[tuple[str, _FileKey]] = []
    feature = False
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return None
    for entry in entries:
        name = entry.name
        if name == TASK_FILE:
            feature = entry.is_file()
            continue
        if not (name.startswith("subtask_") and name.endswith(".json")):
            continue
        try:
            st = entry.stat()
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            versions.append((entry.path, _file_key(st)))
    if not feature:
        return None
    found: set[str] = set()
    for file, key, paths in _DECLARED.lookup(versions):
        if paths is None:
            try:
                data = read_document(Path(file)).data
            except (JsonReadError, OSError):
                data = {}
            listed = data.get("deliverables")
            paths = tuple(
                p
                for p in (listed if isinstance(listed, list) else ())
                if isinstance(p, str) and p and "\x00" not in p
            )
            _DECLARED.put(file, key, paths)
        found.update(paths)
    return sorted(found)


def spec_problems(root: Path, name: str) -> list[SpecError]:
    """Every format problem of every file of a feature (loading stops at the first):
    what ``validate`` lists. Empty when :func:`load_feature` would succeed. What parses
    is kept in the parse cache, so the load that follows (``run``'s pre-flight) reads
    and validates no file a second time."""
    path = existing_feature_dir(root, name)
    found: list[SpecError] = []
    folder = _PARSED.folder(path)
    files = [path / n for n in sorted(_subtask_names(path), key=lambda n: (len(n), n))]
    for file in [path / TASK_FILE, *files]:
        try:
            st = os.stat(file)
        except OSError:
            st = None
        if file.name != TASK_FILE:
            if st is None or not stat.S_ISREG(st.st_mode):
                continue
            cached = folder.get(file.name)
            if cached is not None and cached[0] == _file_key(st):
                continue  # this version parsed and validated already
        try:
            doc = _read(file)
        except SpecError as exc:
            found.append(exc)
            continue
        model: type[BaseModel] = TaskFile if file.name == TASK_FILE else Subtask
        try:
            parsed = model.model_validate(doc.data)
        except ValidationError as exc:
            found.extend(_spec_errors(file, exc))
            continue
        if isinstance(parsed, Subtask):
            try:
                _check_subtask(file, parsed)
            except SpecError as exc:
                found.append(exc)
                continue
            if st is not None:
                # The stat came first: a file replaced meanwhile has a new key, and
                # the next load reads it again.
                folder[file.name] = (_file_key(st), parsed, _kept(parsed, doc))
    return found


def _describe(loc: tuple[str | int, ...], errs: list[Any]) -> tuple[str, str]:
    branches = [e for e in errs if len(e["loc"]) > len(loc)]
    if not branches:
        return _dotted(loc), _expected(errs[0])
    value = next((e["input"] for e in branches if len(e["loc"]) == len(loc) + 1), None)
    if isinstance(value, dict):
        for err in branches:
            if str(err["loc"][len(loc)])[:1].isupper():
                return _dotted(loc + tuple(err["loc"][len(loc) + 1 :])), _expected(err)
    tags = {str(e["loc"][len(loc)]) for e in branches}
    if "FileRef" in tags:
        wanted = 'a path string or an object {"path": ..., "lines": "10-50", "reason": ...}'
    else:
        wanted = " or ".join(sorted(tags))
    return _dotted(loc), f"expected {wanted}; got {_show(value)}"


def _dotted(loc: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _expected(err: Any) -> str:
    if err["type"] == "missing":
        return "required field is missing"
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{message}; got {_show(err['input'])}"


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


# --- rewriting -------------------------------------------------------------------


def utc_timestamp(moment: datetime | None = None) -> str:
    """``2026-01-01T12:00:00.000Z``: JavaScript's ``toISOString()``, as the other tools write."""
    moment = (moment or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def truncate_summary(summary: str) -> str:
    """A summary batchq writes: at most 200 characters, an ellipsis marking a cut."""
    if len(summary) <= SUMMARY_LIMIT:
        return summary
    return summary[: SUMMARY_LIMIT - 1] + "…"


def update_subtasks(
    root: Path, name: str, changes: Mapping[str, Mutation], *, quick: bool = False
) -> Feature:
    """Apply mutations to subtask files by seq, then refresh ``task.json``; return the feature.

    Under the feature lock the files are re-read, so concurrent writers never lose each
    other's changes. All results are validated before the first write: an invalid
    result (a status outside the four, say) raises :class:`SpecError` and writes
    nothing. ``task.json`` gets correct ``subtask_count``/``completed_count``, and
    ``status: completed`` with ``completed_at`` once every subtask is completed.

    ``quick`` (the mirror's interim rewrites of a big feature): the files not
    changed here are taken from the parse cache while their inode is the same (see
    :func:`_load`); the files changed are checked with a ``stat`` as always, so no
    change is ever written over an edit it did not read. An edit made in place to
    another file shows at the next full load.
    """
    path = existing_feature_dir(root, name)
    with feature_lock(path):
        loaded = _load(root, name, quick=quick)
        if quick:
            checked = _recheck(loaded, changes)
            loaded = checked if checked is not None else _load(root, name)
        # path -> its mutations, in the order given. Each file is decoded, changed,
        # validated and rendered in turn, and only its text is kept: a batch's last
        # rewrite of 5,000 files held every file's decoded data twice until the end.
        pending: dict[str, list[Mutation]] = {}
        index: dict[str, list[JsonDocument]] = {}
        for sub, doc in loaded.subtasks:
            index.setdefault(sub.seq, []).append(doc)
        for seq, mutate in changes.items():
            pending.setdefault(_resolve(loaded, seq, index).fspath, []).append(mutate)
        del index
        # A model replaced goes as soon as its successor is made, with its cache entry
        # (the successor's is put in once written): for a caller that holds no older
        # feature (the mirror), the old and new models of every file rewritten are
        # never in memory together. If anything below fails, the files missing from
        # the cache are read from disk again by the next load.
        folder = _PARSED.folder(path)
        entries = loaded.subtasks
        subtasks: list[Subtask] = []
        written: list[_Written] = []
        task: TaskFile | None = None

        def texts() -> Iterator[tuple[str, str]]:
            """Each changed file's new text, made as it is staged (see ``write_many``):
            a completed file's text is not kept once written, and a rewrite of 20,000
            files held every text at once (some 30 MiB) before its first write."""
            for i, (sub, doc) in enumerate(entries):
                mutations = pending.get(doc.fspath)  # every file, every flush: no Path
                if mutations is not None:
                    base = _data(doc)
                    new = dict(base)
                    for mutate in mutations:
                        mutate(new)
                    sub = _check_subtask(doc.fspath, _validate(Subtask, doc, new))
                    text = _render(doc, new, base)
                    if text is not None:
                        written.append(_Written.of(doc.fspath, sub, doc.format, text))
                        folder.pop(doc.name, None)
                        yield doc.fspath, text
                    entries[i] = (sub, doc)
                subtasks.append(sub)
            task_new = _refresh_task(loaded.task.data, [sub.status for sub in subtasks])
            nonlocal task
            task = _validate(TaskFile, loaded.task, task_new)
            text = _render(loaded.task, task_new)
            if text is not None:
                yield loaded.task.fspath, text

        try:
            write_many(texts())
        except OSError as exc:
            where = Path(exc.filename) if exc.filename else path
            if exc.errno in _NO_ROOM:  # the disk, not the file: infrastructure (exit 3)
                raise InfrastructureError(f"{where}: cannot write: {exc.strerror or exc}") from exc
            raise SpecError(where, None, f"cannot write: {exc.strerror or exc}") from exc
        for done in written:
            done.remember(folder)
        # What was just validated and written, without parsing it back.
        return loaded.feature(subtasks, task)


@dataclass(frozen=True, slots=True)
class _Written:
    """A subtask file a rewrite wrote, to put in the parse cache once it is in place:
    the document the cache keeps (:func:`_kept`: no text for a completed file) and the
    size written, which tells batchq's file from one rewritten by someone else meanwhile."""

    sub: Subtask
    doc: JsonDocument
    size: int

    @classmethod
    def of(cls, file: str, sub: Subtask, fmt: JsonFormat, text: str) -> _Written:
        return cls(sub, _kept(sub, JsonDocument(file, None, text, fmt)), len(text.encode("utf-8")))

    def remember(self, folder: _Folder) -> None:
        """Cache what was just written under the lock, in its ``folder``'s cache, so the
        next load does not read and validate it back (every rewrite is a new inode,
        which the cache would miss)."""
        try:
            st = os.stat(self.doc.fspath)
        except OSError:
            return
        if st.st_size != self.size:
            return  # rewritten by someone else meanwhile: let the next load read it
        folder[self.doc.name] = (_file_key(st), self.sub, self.doc)


def _recheck(loaded: _Loaded, changes: Mapping[str, Mutation]) -> _Loaded | None:
    """``loaded`` with the files ``changes`` will rewrite checked against the disk
    (size, times and inode), and read again where they changed in place; None when a
    change does not name its file's seq exactly (``2`` for ``02``): load it all then."""
    seqs = set(changes)
    if not seqs <= {sub.seq for sub, _ in loaded.subtasks}:
        return None
    folder = _PARSED.folder(loaded.path)
    fresh: list[tuple[Subtask, JsonDocument]] = []
    for sub, doc in loaded.subtasks:
        if sub.seq in seqs:
            parsed = _subtask_file(loaded.path, doc.name, folder)
            if parsed is not None:
                sub, doc = parsed
        fresh.append((sub, doc))
    return dataclasses.replace(loaded, subtasks=fresh)


def _resolve(loaded: _Loaded, seq: str, index: Mapping[str, list[JsonDocument]]) -> JsonDocument:
    """The file of ``seq``; ``2`` finds ``02`` when that is unambiguous. ``index``
    maps seqs to files, so a rewrite of thousands of subtasks stays linear."""
    exact = list(index.get(seq, ()))
    if not exact and seq.isascii() and seq.isdigit():
        exact = [doc for sub, doc in loaded.subtasks if sub.number == int(seq)]
    name = loaded.name
    if not exact:
        known = ", ".join(sub.seq for sub, _ in loaded.subtasks) or "none"
        raise UsageError(f"feature {name!r} has no subtask {seq!r}; its subtasks: {known}")
    if len(exact) > 1:
        files = ", ".join(doc.name for doc in exact)
        raise UsageError(f"subtask {seq!r} of {name!r} is ambiguous: it is in {files}")
    return exact[0]


def _render(
    doc: JsonDocument, new: dict[str, Any], base: dict[str, Any] | None = None
) -> str | None:
    """The file's new text; None when its data did not change."""
    try:
        return doc.render(new, base)
    except ValueError as exc:
        raise SpecError(doc.path, None, f"cannot be written as JSON: {exc}") from exc


def _refresh_task(data: dict[str, Any], statuses: list[SubtaskStatus]) -> dict[str, Any]:
    new = dict(data)
    done = sum(1 for status in statuses if status is SubtaskStatus.COMPLETED)
    new["subtask_count"] = len(statuses)
    new["completed_count"] = done
    if statuses and done == len(statuses):
        if new.get("status") != TaskStatus.COMPLETED or not new.get("completed_at"):
            new["status"] = TaskStatus.COMPLETED.value
            new["completed_at"] = utc_timestamp()
    elif new.get("status") == TaskStatus.COMPLETED:
        new["status"] = TaskStatus.ACTIVE.value
        if "completed_at" in new:
            new["completed_at"] = None
    return new


def mark_in_progress(agent_id: str, started_at: str, run_id: str | None = None) -> Mutation:
    """A running subtask: ``in_progress`` with the worker as ``agent_id``. A completion
    the agent already recorded itself in run ``run_id`` (the progress event is written
    late, coalesced) is not undone: the final result decides what stands."""

    def mutate(data: dict[str, Any]) -> None:
        if _claim(data, run_id) is None:
            data["status"] = SubtaskStatus.IN_PROGRESS.value
        data["agent_id"] = agent_id
        data["started_at"] = started_at

    return mutate


Claims = dict[str, str]
"""seq -> the summary an agent recorded itself (``batchq complete`` during its run)."""


def _claim(data: dict[str, Any], run_id: str | None) -> str | None:
    """The summary of a completion the agent recorded itself during run ``run_id``: the
    file says ``completed`` but not through this run's ``batchq`` block (our own writes
    carry it), so the agent ran ``batchq complete``. None when there is no such claim."""
    if run_id is None or data.get("status") != SubtaskStatus.COMPLETED.value:
        return None
    block = data.get("batchq")
    if isinstance(block, dict) and block.get("run_id") == run_id:
        return None
    return str(data.get("completion_summary") or "")


def mark_completed(
    summary: str,
    completed_at: str,
    batchq_block: BatchqBlock | None = None,
    claims: Claims | None = None,
) -> Mutation:
    """A finished subtask; the summary is truncated to 200 characters. When the agent
    completed itself during this run (``claims`` given, and the block's run), its own
    summary and time are kept and noted in ``claims``: they are its words, not ours."""
    run_id = batchq_block.run_id if batchq_block is not None and claims is not None else None

    def mutate(data: dict[str, Any]) -> None:
        claimed = _claim(data, run_id)
        data["status"] = SubtaskStatus.COMPLETED.value
        if claimed and claims is not None:
            claims[str(data.get("seq"))] = claimed
        if not claimed or not data.get("completed_at"):
            data["completed_at"] = completed_at
        if not claimed:
            data["completion_summary"] = truncate_summary(summary)
        if batchq_block is not None:
            data["batchq"] = batchq_block.model_dump(mode="json")

    return mutate


def mark_blocked(
    block: BatchqBlock, claims: Claims | None = None, *, forget_completion: bool = False
) -> Mutation:
    """A failed or timed-out subtask: ``blocked``, with the ``batchq`` block saying why.
    A completion the agent claimed during this run (``claims`` given) is noted there and
    its ``completed_at``/``completion_summary`` are cleared to ``null``: a blocked file
    keeps no stale completion. ``forget_completion`` clears them whatever wrote them (a
    member the report failed after the mirror had written it completed)."""
    run_id = block.run_id if claims is not None else None

    def mutate(data: dict[str, Any]) -> None:
        claimed = _claim(data, run_id)
        if claimed is not None and claims is not None:
            claims[str(data.get("seq"))] = claimed
        if claimed is not None or forget_completion:
            for key in ("completed_at", "completion_summary"):
                if key in data:
                    data[key] = None
        data["status"] = SubtaskStatus.BLOCKED.value
        data["batchq"] = block.model_dump(mode="json")

    return mutate


def mark_pending(block: BatchqBlock | None = None, claims: Claims | None = None) -> Mutation:
    """Back to ``pending`` (cancelled, or reset for a retry).

    A stale ``agent_id``/``started_at`` is cleared to ``null`` where present; the
    ``batchq`` block is replaced when one is given and kept otherwise. With ``claims``
    (a run's result), a completion the agent claimed is noted and cleared as in
    :func:`mark_blocked`.
    """
    run_id = block.run_id if block is not None and claims is not None else None

    def mutate(data: dict[str, Any]) -> None:
        claimed = _claim(data, run_id)
        if claimed is not None and claims is not None:
            claims[str(data.get("seq"))] = claimed
            for key in ("completed_at", "completion_summary"):
                if key in data:
                    data[key] = None
        data["status"] = SubtaskStatus.PENDING.value
        for key in ("agent_id", "started_at"):
            if key in data:
                data[key] = None
        if block is not None:
            data["batchq"] = block.model_dump(mode="json")

    return mutate


def complete_subtask(root: Path, name: str, seq: str, summary: str) -> Feature:
    """The core of ``batchq complete``: mark one subtask completed with a summary.

    A summary over 200 characters is refused (nothing is written) rather than cut,
    because the user can still shorten it.
    """
    if len(summary) > SUMMARY_LIMIT:
        raise UsageError(f"summary is {len(summary)} characters; the limit is {SUMMARY_LIMIT}")
    return update_subtasks(root, name, {seq: mark_completed(summary, utc_timestamp())})


def archive_feature(root: Path, name: str) -> Path:
    """Move a feature to ``.tmp/tasks/completed/<name>/``; returns the new folder.

    Refused when the target exists, so an earlier archive is never overwritten. Done
    under the feature lock so no rewrite is half-way through when the folder moves;
    a writer that was waiting then finds the feature gone (UsageError), not a ghost.
    """
    path = existing_feature_dir(root, name)
    target = tasks_dir(root) / ARCHIVE_DIR / name
    with feature_lock(path):
        if not (path / TASK_FILE).is_file():
            raise UsageError(f"feature {name!r} was archived or removed meanwhile")
        if target.exists():
            raise UsageError(f"cannot archive {name!r}: {target} already exists")
        target.parent.mkdir(exist_ok=True)
        os.rename(path, target)
    return target
