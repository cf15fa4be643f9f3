"""Format-preserving JSON documents and atomic file replacement.

Task files are shared with other tools and often with humans, so a rewrite must look
like an edit, not a reformat: a value batchq did not change is copied from the original
text byte for byte (unknown fields, inline arrays, ``1e3`` or ``\\u00e9`` spellings all
survive), changed values are written in the file's own indentation and newline style,
and a document whose data did not change is not written at all.

Nothing here knows about task files; :mod:`batchq.files.taskfiles` turns the ``ValueError``
raised here into a :class:`~batchq.errors.SpecError` naming the file and field.
"""

from __future__ import annotations

import errno
import functools
import itertools
import json
import os
import re
import stat
import threading
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic_core import from_json

from batchq.files import retire

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

__all__ = [
    "MAX_BYTES",
    "Content",
    "JsonDocument",
    "JsonFormat",
    "JsonReadError",
    "read_document",
    "same_json",
    "write_atomic",
]

MAX_BYTES = 1024 * 1024
"""Task files past 1 MiB are refused (SPEC 1): they are specs, not data stores."""

_BOM = "\ufeff"
_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
_SCAN: Any = _DECODER.scan_once  # type: ignore[attr-defined]
"""The C scanner behind ``raw_decode``, for text already decoded once (it cannot fail)."""


class JsonReadError(ValueError):
    """The file cannot be read as one JSON object; ``reason`` is one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class JsonFormat:
    """How a file was laid out, so a rewrite uses the same conventions.

    ``indent`` is the unit of one nesting level (``None``: everything on one line);
    ``head`` and ``tail`` are the exact bytes around the top-level value (a BOM,
    the trailing newline or its absence).
    """

    indent: str | None = "  "
    newline: str = "\n"
    key_sep: str = ": "
    item_sep: str = ", "
    head: str = ""
    tail: str = "\n"


@dataclass
class _Node:
    """Where a value sits in the original text, with its children's positions."""

    start: int
    end: int
    children: dict[str, _Node] | list[_Node] | None = None


class JsonDocument:
    """One parsed JSON object file: its data, its text and its layout.

    ``data`` is the parsed original; mutate a copy and pass it to :meth:`render`. A
    :meth:`compact` document keeps only the text and decodes ``data`` again on each
    access: the parse cache holds one per task file, and at 5,000 files the decoded
    dicts were some 15 MiB that a run rarely looks at twice. An :meth:`unread` one
    keeps not even the text, and reads the file again when it is first asked for.
    """

    __slots__ = ("_data", "_text", "format", "fspath")

    def __init__(
        self, path: Path | str, data: dict[str, Any] | None, text: str | None, format: JsonFormat
    ) -> None:
        self.fspath: str = os.fspath(path)
        """The path as a string: the parse cache keeps a document per task file, and a
        ``Path`` (its parts list, its cached strings) was some 0.6 KiB of each."""
        self._data, self._text, self.format = data, text, format

    @property
    def path(self) -> Path:
        return Path(self.fspath)

    @property
    def name(self) -> str:
        """The file's name (``path.name`` without making the path)."""
        return os.path.basename(self.fspath)

    @property
    def text(self) -> str:
        """The file's text. An :meth:`unread` document reads the file now, with every
        check :func:`read_document` makes (``JsonReadError``, ``OSError``): by then it
        may hold another version, and what is on disk is what a rewrite must start from."""
        if self._text is None:
            fresh = read_document(self.path)
            self._text, self.format = fresh.text, fresh.format
        return self._text

    @property
    def data(self) -> dict[str, Any]:
        if self._data is not None:
            return self._data
        # Text this module read strictly (or rendered from data read so) decodes the
        # same way without the checks; pydantic-core's decoder gives repeated strings
        # (an agent's name, a callable, a key) one object across files, which the
        # models made from them keep: at 5,000 files some 1 MiB of copies otherwise.
        body = self.text[len(self.format.head) :]
        try:
            decoded: dict[str, Any] = from_json(body, cache_strings="all")
        except ValueError:  # a text only Python's decoder takes (a lone surrogate escape)
            decoded = _DECODER.decode(body)
        return decoded

    def compact(self) -> JsonDocument:
        """The same document without its decoded data (see the class docstring)."""
        if self._data is None:
            return self
        return JsonDocument(self.fspath, None, self.text, self.format)

    def unread(self) -> JsonDocument:
        """The same document without its data or text (see :attr:`text`)."""
        return JsonDocument(self.fspath, None, None, self.format)

    def render(self, new: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> str | None:
        """The file text for ``new``, or ``None`` when it equals the original data
        (``old``: that data, as decoded for the change, so values ``new`` shares with
        it compare by identity).

        Raises ``ValueError`` if ``new`` holds something JSON cannot represent. The
        positions of the original values are found again on each call and not kept: a
        document is rendered about once (the next version replaces it), and a run that
        rewrites thousands of files at once would otherwise hold a tree for each.
        """
        original = self.data if old is None else old
        if same_json(new, original):
            return None
        tree = _node_at(self.text, len(self.format.head))
        body = _render(new, original, tree, 0, self.format, self.text)
        return self.format.head + body + self.format.tail

    def __repr__(self) -> str:
        return f"JsonDocument({self.fspath!r})"


def read_document(path: Path, max_bytes: int = MAX_BYTES) -> JsonDocument:
    """Read ``path`` as a JSON object, refusing oversized, non-UTF-8 or malformed files.

    Raises :class:`JsonReadError` with a one-line reason, ``OSError`` if unreadable.
    """
    raw = _read_bounded(path, max_bytes)
    if len(raw) > max_bytes:
        size = max(path.stat().st_size, len(raw))
        raise JsonReadError(f"file is {size} bytes; the limit is {max_bytes} bytes (1 MiB)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.start + 1].hex()
        raise JsonReadError(
            f"not valid UTF-8: byte 0x{bad} at offset {exc.start}; save the file as UTF-8"
        ) from exc
    bom = _BOM if text.startswith(_BOM) else ""
    body = text[len(bom) :]
    try:
        data = _STRICT.decode(body)
    except _ConstantError as exc:
        raise JsonReadError(f"malformed JSON: {exc} (JSON has no NaN or Infinity)") from exc
    except _DuplicateKey as exc:
        raise JsonReadError(
            f"duplicate key {exc.key!r}: JSON readers disagree on which copy counts "
            "(most keep the last); keep one"
        ) from exc
    except json.JSONDecodeError as exc:
        line, col = exc.lineno, exc.colno
        if bom and line == 1:
            col += 1
        raise JsonReadError(f"malformed JSON at line {line} column {col}: {exc.msg}") from exc
    except RecursionError as exc:
        raise JsonReadError("JSON is nested too deeply") from exc
    if not isinstance(data, dict):
        raise JsonReadError(f"expected a JSON object at the top level, got {_kind(data)}")
    if _SURROGATE_ESCAPE.search(body):
        _refuse_lone_surrogates(data)
    start = _skip(body, 0)
    tail_len = len(body) - len(body.rstrip(" \t\n\r"))
    head = bom + body[:start]
    tail = body[len(body) - tail_len :] if tail_len else ""
    return JsonDocument(path, data, text, _shared(_detect(text, len(head), head, tail)))


_FORMATS: dict[JsonFormat, JsonFormat] = {}
_FORMATS_LIMIT = 256


def _shared(fmt: JsonFormat) -> JsonFormat:
    """One instance per layout: a feature's files are laid out alike, and the parse
    cache keeps a document (and so a format, ~140 bytes) for each of thousands."""
    if len(_FORMATS) >= _FORMATS_LIMIT:  # a process that read every layout there is
        return _FORMATS.get(fmt, fmt)
    return _FORMATS.setdefault(fmt, fmt)


def _read_bounded(path: Path, max_bytes: int) -> bytes:
    """At most ``max_bytes + 1`` bytes of ``path``: as many as its size says, plus one
    to see a file that grew meanwhile (``read(max_bytes + 1)`` allocated a 1 MiB buffer
    for every 400-byte task file: a fifth of a 5,000-file load). Opened without
    blocking, and refused unless a regular file: a FIFO named ``task.json`` would
    hang the reader until some writer came."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(info.st_mode):
            raise JsonReadError("not a regular file (a FIFO, device or socket)")
        want = min(info.st_size, max_bytes) + 1
        first = os.read(fd, want)
        if len(first) < want:  # a regular file reads short only at its end
            return first
        chunks, got = [first], len(first)
        while got <= max_bytes:  # it grew since fstat: read on, up to the limit
            chunk = os.read(fd, max_bytes + 1 - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class _ConstantError(ValueError):
    pass


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
"""A ``\\uD800``-``\\uDFFF`` escape: the only way a decoded UTF-8 file can hold a
surrogate. Most are halves of a valid pair (an emoji); only then is the data walked."""


def _refuse_lone_surrogates(data: Any) -> None:
    """Raise :class:`JsonReadError` naming the first key or string that holds a lone
    surrogate: ``json`` accepts ``"\\ud800"``, but such a string cannot be encoded as
    UTF-8, so printing it, hashing it or writing the file back would raise later."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                name = f"{where}.{key}" if where else str(key)
                _check_text(key, name)
                stack.append((name, item))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(value))
        elif isinstance(value, str):
            _check_text(value, where)


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        shown = where.encode("utf-8", "backslashreplace").decode("ascii")
        raise JsonReadError(
            f"{shown}: a lone surrogate (\\u{code:04x}) is not text; "
            "write the character itself or a complete surrogate pair"
        ) from None


def _refuse_constant(name: str) -> Any:
    raise _ConstantError(f"{name} is not valid JSON")


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object with one key twice is refused: a second ``"command"`` would silently
    replace the first one a reviewer read."""
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise _DuplicateKey(key)
        data[key] = value
    return data


_STRICT = json.JSONDecoder(parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
"""One decoder for every read (``json.loads`` with hooks builds one per call)."""


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def _detect(text: str, start: int, head: str, tail: str) -> JsonFormat:
    """Infer indentation, separators and newline style from the top-level object."""
    newline = "\r\n" if "\r\n" in text else "\n"
    i = _skip(text, start + 1)
    if text[i] != '"':
        return JsonFormat(newline=newline, head=head, tail=tail)
    lead = text[start + 1 : i]
    _, key_end = _DECODER.raw_decode(text, i)
    value_start = _skip(text, text.index(":", key_end) + 1)
    key_sep = text[key_end:value_start]
    if "\n" in key_sep:
        key_sep = ": "
    if "\n" in lead:
        indent = lead.rsplit("\n", 1)[1]
        return JsonFormat(indent, newline, key_sep, ", ", head, tail)
    value_end = _node_at(text, value_start).end
    item_sep = ", "
    after = _skip(text, value_end)
    if text[after] == ",":
        gap = text[after : _skip(text, after + 1)]
        if "\n" not in gap:
            item_sep = gap
    return JsonFormat(None, newline, key_sep, item_sep, head, tail)


def _skip(text: str, i: int) -> int:
    match = _WS.match(text, i)
    return match.end() if match else i


def _node_at(text: str, i: int) -> _Node:
    """The value at ``i`` (already-validated JSON), its children not yet located:
    the C decoder finds its end, and :func:`_children` maps one level on demand, so a
    rewrite that changes two top-level keys never walks the rest of the file."""
    _, end = _DECODER.raw_decode(text, i)
    return _Node(i, end)


def _children(node: _Node, text: str) -> dict[str, _Node] | list[_Node] | None:
    """Where ``node``'s members or items sit (None for a scalar), located once. The
    scanner and the whitespace skip are called directly: a task file's top level is
    mapped at every rewrite, a few dozen steps each."""
    if node.children is not None or text[node.start] not in "{[":
        return node.children
    scan, ws = _SCAN, _WS.match
    j = ws(text, node.start + 1).end()  # type: ignore[union-attr]  # matches empty
    if text[node.start] == "{":
        members: dict[str, _Node] = {}
        node.children = members
        while text[j] != "}":
            key, j = scan(text, j)
            j = ws(text, ws(text, j).end() + 1).end()  # type: ignore[union-attr]
            _, end = scan(text, j)
            members[key] = _Node(j, end)
            j = ws(text, end).end()  # type: ignore[union-attr]
            if text[j] == ",":
                j = ws(text, j + 1).end()  # type: ignore[union-attr]
        return members
    items: list[_Node] = []
    node.children = items
    while text[j] != "]":
        _, end = scan(text, j)
        items.append(_Node(j, end))
        j = ws(text, end).end()  # type: ignore[union-attr]
        if text[j] == ",":
            j = ws(text, j + 1).end()  # type: ignore[union-attr]
    return items


_SCALARS = frozenset({str, int, float, bool, type(None)})


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON: unlike ``==``, ``1``, ``1.0`` and ``true`` differ, and key order counts."""
    if a is b:  # a rewrite shares every untouched value with the parsed original
        return True
    kind = type(a)
    if kind in _SCALARS:  # most values: no abstract-class checks
        return kind is type(b) and bool(a == b)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return list(a.keys()) == list(b.keys()) and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return kind is type(b) and bool(a == b)


def _render(new: Any, old: Any, node: _Node | None, depth: int, fmt: JsonFormat, text: str) -> str:
    """``new`` as JSON text, reusing the original text of every unchanged value."""
    if node is not None and (new is old or same_json(new, old)):
        return text[node.start : node.end]
    if type(new) in _SCALARS:
        return _leaf(new)
    if isinstance(new, Mapping):
        found = _children(node, text) if node is not None else None
        members = found if isinstance(found, dict) else {}
        old_obj = old if isinstance(old, dict) else {}
        parts = []
        for key, value in new.items():
            if not isinstance(key, str):
                raise ValueError(f"object key {key!r} is not a string")
            child = members.get(key)
            before = old_obj.get(key)
            if child is not None and value is before:  # untouched: its text as it was
                rendered = text[child.start : child.end]
            else:
                rendered = _render(value, before, child, depth + 1, fmt, text)
            parts.append(_key_text(key) + fmt.key_sep + rendered)
        return _wrap("{", "}", parts, depth, fmt)
    if isinstance(new, list | tuple):
        listed = _children(node, text) if node is not None else None
        items = listed if isinstance(listed, list) else []
        old_arr = old if isinstance(old, list) else []
        parts = []
        for index, value in enumerate(new):
            child = items[index] if index < len(items) else None
            before = old_arr[index] if index < len(old_arr) else None
            parts.append(_render(value, before, child, depth + 1, fmt, text))
        return _wrap("[", "]", parts, depth, fmt)
    return _leaf(new)


@functools.lru_cache(maxsize=4096)
def _key_text(key: str) -> str:
    """Object keys repeat in every file of a feature: encode each once."""
    return _leaf(key)


def _leaf(value: Any) -> str:
    """What ``json.dumps(value, ensure_ascii=False, allow_nan=False)`` writes, without
    building an encoder per value (a rewrite encodes a few dozen leaves per file)."""
    if isinstance(value, str):
        return _encode_str(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if value != value or value in (_INF, -_INF):
            raise ValueError(f"Out of range float values are not JSON compliant: {value!r}")
        return float.__repr__(value)
    raise ValueError(f"{type(value).__name__} is not a JSON value")


_INF = float("inf")
_encode_str = json.encoder.encode_basestring  # the C encoder, as ensure_ascii=False uses


def _wrap(open_: str, close: str, parts: list[str], depth: int, fmt: JsonFormat) -> str:
    if not parts:
        return open_ + close
    if fmt.indent is None:
        return open_ + fmt.item_sep.join(parts) + close
    inner = fmt.newline + fmt.indent * (depth + 1)
    return open_ + inner + ("," + inner).join(parts) + fmt.newline + fmt.indent * depth + close


Content = str | bytes | Iterable[bytes]
"""What a file is written from: text (written as UTF-8), bytes, or bytes in parts,
which are written as they come, so a big file need not be in memory whole."""
StrPath = str | Path
"""Where a file is written: :func:`write_many` takes either (see there)."""


def write_atomic(path: Path, text: Content, *, durable: bool = True) -> None:
    """Replace ``path`` with ``text`` (see :data:`Content`) so readers see the old or the
    new file, never half.

    A temp file in the same folder is written, fsynced and renamed over the target;
    on any error the original is untouched and the temp file removed. The target's
    permission bits are kept. ``durable=False`` skips the fsync, for batchq's own
    files (tokens, saved reports) whose loss in a power cut costs nothing.
    """
    write_many([(path, text)], durable=durable)


_STAGING: ThreadPoolExecutor | None = None
_STAGING_LOCK = threading.Lock()


def _staging_pool() -> ThreadPoolExecutor:
    """One pool for the process: starting threads per call cost more than the fsyncs
    they overlap for the few files of a small batch."""
    global _STAGING
    with _STAGING_LOCK:
        if _STAGING is None:
            # lazy: a read (status's quick path) never starts the pool
            from concurrent.futures import ThreadPoolExecutor

            _STAGING = ThreadPoolExecutor(max_workers=16, thread_name_prefix="batchq-fsync")
        return _STAGING


def _forget_staging_pool() -> None:
    """A forked child has the pool object but not its threads."""
    global _STAGING, _STAGING_LOCK
    _STAGING, _STAGING_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_staging_pool)


def write_many(items: Iterable[tuple[StrPath, Content]], *, durable: bool = True) -> None:
    """:func:`write_atomic` for several files at once.

    Every temp file is written and made durable first, and only then are they renamed
    into place, each atomically. A failure while staging replaces nothing.

    ``items`` may be a generator, and many files are staged as it yields them: a
    mirror rewrite of 20,000 subtask files need not hold every file's text at once
    (some 30 MiB). What the generator raises is a failure while staging: nothing is
    replaced, and the temp files written so far are removed.

    Durability is batched by size. A few files are fsynced in parallel (fsync releases
    the GIL and ext4 commits concurrent syncs together: five files 1.1 ms instead of
    1.8 ms one after the other). Many files — a mirror rewrite of thousands of subtask
    files — are written unsynced and flushed with one ``syncfs`` per filesystem before
    any rename: one journal commit instead of one per file (5,000 files: 0.6 s instead
    of 1.6 s here), with the same guarantee, since nothing is renamed until its data is
    on disk (where there is no working ``syncfs``, each is fsynced before any rename).

    The folder itself is not fsynced: after a power cut a rename may be lost, which
    leaves the previous, complete file — never a torn one, which the data flush
    before the rename prevents.

    Paths may be ``str``: a rewrite of thousands of files holds each one until the
    renames, and a ``Path`` (its parts, its interned name) costs several times a string.
    """
    staged: list[tuple[StrPath, str]] = []
    try:
        pending = iter(items)
        head = list(itertools.islice(pending, SYNCFS_FROM))
        if durable and len(head) >= SYNCFS_FROM:
            for path, text in itertools.chain(head, pending):
                staged.append(_stage(path, text, durable=False))
            if not _flush_filesystems(path for path, _tmp in staged):
                for _path, tmp in staged:
                    _fsync_path(tmp)
        elif len(head) == 1 or not durable:
            for path, text in itertools.chain(head, pending):
                staged.append(_stage(path, text, durable))
        else:
            futures = [_staging_pool().submit(_stage, path, text) for path, text in head]
            failure: BaseException | None = None
            for future in futures:
                try:
                    staged.append(future.result())
                except BaseException as exc:
                    failure = failure or exc
            if failure is not None:
                raise failure
    except BaseException:
        for _path, tmp in staged:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
    for index, (path, tmp) in enumerate(staged):
        old = retire.hold(path)  # the file replaced is freed beside us, not in the rename
        try:
            os.replace(tmp, path)
        except BaseException:
            for _path, rest in staged[index:]:
                with suppress(FileNotFoundError):
                    os.unlink(rest)
            raise
        finally:
            retire.release([old])


SYNCFS_FROM = 32
"""From this many files, :func:`write_many` flushes with ``syncfs`` instead of an fsync
per file. Below it the parallel fsyncs cost no more, and they do not wait for other
programs' unwritten data on the same filesystem, as ``syncfs`` does."""


@functools.cache
def _syncfs() -> Any:
    """libc's ``syncfs`` (Linux), or None where there is none."""
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (AttributeError, OSError):
        return None


def _flush_filesystems(paths: Iterable[StrPath]) -> bool:
    """``syncfs`` once for each filesystem holding one of ``paths``' folders (a temp
    file staged beside its target is on its folder's filesystem); False when this
    system has no ``syncfs`` or it fails, so the caller fsyncs file by file."""
    syncfs = _syncfs()
    if syncfs is None:
        return False
    devices: set[int] = set()
    for folder in {os.path.dirname(path) for path in paths}:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            device = os.fstat(fd).st_dev
            if device not in devices:
                devices.add(device)
                if syncfs(fd) != 0:
                    return False
        finally:
            os.close(fd)
    return True


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _stage(path: StrPath, text: Content, durable: bool = True) -> tuple[StrPath, str]:
    """Write (and fsync, if ``durable``) a temp file beside ``path``, with ``path``'s
    permission bits.

    Plain descriptor calls: at thousands of files per rewrite, ``mkstemp``'s random
    names and a buffered file object cost more than the write. The name is unique per
    process (pid and a counter) and created with ``O_EXCL``, which also refuses to
    follow a symlink planted under that name. It is a ``str``: a rewrite of thousands
    of files holds every name until the renames, and a ``Path`` costs three times as
    much.
    """
    parts: Iterable[bytes]
    if isinstance(text, str):
        parts = (text.encode("utf-8"),)
    elif isinstance(text, bytes):
        parts = (text,)
    else:
        parts = text
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = 0o644
    folder, name = os.path.split(path)
    while True:
        tmp = os.path.join(folder, f".{name}.{os.getpid()}.{next(_TMP_COUNTER)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            break
        except FileExistsError:
            continue  # a crashed run's leftover with this pid's name: take the next
    try:
        try:
            for part in parts:
                view = memoryview(part)
                while view:
                    view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path, tmp


_TMP_COUNTER = itertools.count()
