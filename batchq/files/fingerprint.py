"""Fingerprints: what a completed subtask was made from, so ``run --changed`` reruns
only what changed, and says why.

A subtask's fingerprint is recorded as *parts* (part -> hash), because a rerun must
name what changed, not only that something did:

- ``definition``: the subtask file without what a run itself writes (status,
  timestamps, completion notes, the ``batchq`` block) and without the agent's name;
- ``agent``: the agent it resolves to and that agent's command template;
- ``context:<path>`` / ``reference:<path>``: the content of each context/reference file;
- ``dependency:<seq>:<path>``: the content of each deliverable of each dependency.

``outputs`` are the subtask's own deliverables' hashes at completion. Comparing the
recorded and current parts (:func:`changes`) is pure, so every reason is unit-tested
without files. The inputs are taken when a batch is submitted (by the orchestrator,
once per batch), the outputs when its result is mirrored into the task file.

A file hashes to its sha256; a folder to the hash of its files' relative paths and
hashes; anything absent to ``missing``. Protected paths (``.env``, keys...) and paths
outside the project are never read (as for prompts): they hash to a fixed marker.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from batchq.core.paths import PathError, is_protected, normalise
from batchq.files.reading import NotRegular, open_regular
from batchq.models import BatchqBlock, Feature, Subtask, SubtaskStatus, agent_name, file_path
from batchq.settings import Settings

__all__ = [
    "MISSING",
    "Change",
    "Recorder",
    "changes",
    "digest",
    "fingerprint",
    "hash_file_set",
    "inputs",
    "outputs",
    "stale",
]

MISSING = "missing"
PROTECTED = "protected: not read"
OUTSIDE = "outside the project: not read"
NO_FINGERPRINT = "no fingerprint recorded (completed before fingerprints or by hand)"

# What a run writes into a subtask file; the agent name is its own part.
_RUN_FIELDS = frozenset(
    {"status", "agent_id", "started_at", "completed_at", "completion_summary", "batchq"}
)
_NOT_DEFINITION = _RUN_FIELDS | {"suggested_agent"}
_CHUNK = 1 << 20
HASH_CAP_BYTES = 1 << 30
"""Past this much of a file, only its size joins the hash (a bound on one read)."""

HashCache = dict[str, str]
"""Normalised path -> hash, shared by the subtasks of one check or batch: the files
do not change while it is computed, and dependencies share deliverables. It also holds
each agent's hash (under a key with a NUL, which no path has): one check or batch has
one set of settings."""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest(value: Any) -> str:
    """sha256 of a canonical JSON rendering (sorted keys, no spaces)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return _sha(text.encode("utf-8"))


def _hash_file(path: str) -> str:
    """The content's hash, read only from a regular file (never a FIFO or a device,
    which could block or never end) and at most :data:`HASH_CAP_BYTES` of it."""
    h = hashlib.sha256()
    read = 0
    with open_regular(path) as handle:
        while read < HASH_CAP_BYTES and (chunk := handle.read(_CHUNK)):
            h.update(chunk)
            read += len(chunk)
        if read >= HASH_CAP_BYTES:
            h.update(
                f"\0cut at {HASH_CAP_BYTES}, size {os.fstat(handle.fileno()).st_size}".encode()
            )
    return h.hexdigest()


def _hash_folder(folder: str, root: str, protected: Sequence[str]) -> str:
    """A folder's files, by relative path; a symlink is hashed as its target's path
    (never followed: it could lead out of the project, or to ``/dev/zero``)."""
    entries: list[tuple[str, str]] = []
    for here, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(here, name)
            if is_protected(os.path.relpath(path, root).replace(os.sep, "/"), protected):
                continue
            inner = os.path.relpath(path, folder).replace(os.sep, "/")
            if os.path.islink(path):
                entries.append((inner, "symlink: " + os.readlink(path)))
                continue
            entries.append((inner, _hash_path(path, root, protected)))
    return digest(entries)


def _hash_path(path: str, root: str, protected: Sequence[str]) -> str:
    """Open first and stat only on failure: a file, the common case, costs one open."""
    try:
        return _hash_file(path)
    except FileNotFoundError:
        return MISSING
    except IsADirectoryError:
        return _hash_folder(path, root, protected)
    except NotRegular as exc:
        if exc.strerror == "a folder":
            return _hash_folder(path, root, protected)
        return f"not read: {exc.strerror}"
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"


def _hash_one(name: str, root: str, protected: Sequence[str]) -> str:
    """Never read what a prompt would not: protected paths, by name or by where a
    symlink leads, and anything outside the project."""
    try:
        rel = normalise(name)
        if is_protected(rel, protected):
            return PROTECTED
    except PathError:
        return OUTSIDE
    path = os.path.realpath(os.path.join(root, rel))
    if not path.startswith(root + os.sep):
        return OUTSIDE
    real = path[len(root) + 1 :].replace(os.sep, "/")
    if real != rel.rstrip("/") and is_protected(real, protected):
        return PROTECTED
    return _hash_path(path, root, protected)


@lru_cache(maxsize=64)
def _real_root(root: Path) -> str:
    return os.path.realpath(root)


def hash_file_set(
    root: Path,
    paths: Iterable[str],
    protected: Sequence[str],
    cache: HashCache | None = None,
) -> dict[str, str]:
    """Path (as written) -> content hash for a set of files or folders in ``root``.

    The one place files are hashed, for inputs and outputs alike."""
    real_root = _real_root(root)
    cache = {} if cache is None else cache
    out: dict[str, str] = {}
    for name in paths:
        if name not in cache:
            cache[name] = _hash_one(name, real_root, protected)
        out[name] = cache[name]
    return out


def _definition(subtask: Subtask) -> dict[str, Any]:
    data = subtask.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    return {k: v for k, v in data.items() if k not in _NOT_DEFINITION}


def _agent(subtask: Subtask, settings: Settings) -> dict[str, Any]:
    """The agent's name and its command template: what changes what the agent does.
    Allow-lists and concurrency limits do not change a result, so they are left out."""
    name = agent_name(subtask)
    config = settings.agents.get(name)
    return {"name": name, "command": config.command if config else None}


def inputs(
    subtask: Subtask,
    feature: Feature,
    settings: Settings,
    cache: HashCache | None = None,
    by_seq: Mapping[str, Subtask] | None = None,
) -> dict[str, str]:
    """The fingerprint parts of ``subtask`` as the files are now. Callers doing many
    subtasks pass one ``cache`` and ``by_seq`` (``feature.by_seq()``) for all."""
    cache = {} if cache is None else cache
    by_seq = feature.by_seq() if by_seq is None else by_seq
    protected = settings.protected_paths
    agent = f"\0agent {agent_name(subtask)}"  # no path has a NUL: never a file's key
    if agent not in cache:  # one string for the batch: every member's block keeps it
        cache[agent] = digest(_agent(subtask, settings))
    parts = {"definition": digest(_definition(subtask)), "agent": cache[agent]}
    for kind, entries in (
        ("context", subtask.context_files),
        ("reference", subtask.reference_files),
    ):
        hashed = hash_file_set(feature.root, [file_path(e) for e in entries], protected, cache)
        parts.update({f"{kind}:{path}": value for path, value in hashed.items()})
    for dep in subtask.depends_on:
        dependency = by_seq.get(dep)
        if dependency is None:
            continue
        hashed = hash_file_set(feature.root, dependency.deliverables, protected, cache)
        parts.update({f"dependency:{dep}:{path}": value for path, value in hashed.items()})
    return parts


def fingerprint(subtask: Subtask, feature: Feature, settings: Settings) -> str:
    """One hash for everything a subtask's result depends on (see the module doc)."""
    return digest(inputs(subtask, feature, settings))


def outputs(
    subtask: Subtask,
    root: Path,
    protected: Sequence[str] = (),
    cache: HashCache | None = None,
) -> dict[str, str]:
    """Deliverable -> content hash (``missing`` when absent)."""
    return hash_file_set(root, subtask.deliverables, protected, cache)


# --- why a subtask reruns (pure) -------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One reason a completed subtask reruns; ``str()`` is what the CLI prints."""

    text: str
    dependency: str | None = None
    """The dependency whose deliverable changed, for dependency changes."""

    def __str__(self) -> str:
        return self.text


def _describe(part: str, how: str) -> Change:
    kind, _, rest = part.partition(":")
    if kind in ("context", "reference"):
        return Change(f"{kind} file {rest} {how}")
    if kind == "dependency":
        seq, _, path = rest.partition(":")
        return Change(f"dependency {seq}'s deliverable {path} {how}", dependency=seq)
    return Change(f"{part} {how}")


def changes(
    recorded: BatchqBlock | None,
    current_inputs: Mapping[str, str],
    current_outputs: Mapping[str, str],
) -> list[Change]:
    """Why a completed subtask must rerun; empty when nothing it was made from changed
    and its deliverables are as it left them."""
    if recorded is None or recorded.inputs is None or recorded.outputs is None:
        return [Change(NO_FINGERPRINT)]
    found: list[Change] = []
    before = recorded.inputs
    if recorded.fingerprint != digest(dict(current_inputs)):
        for part in [*before, *(p for p in current_inputs if p not in before)]:
            old, new = before.get(part), current_inputs.get(part)
            if old == new:
                continue
            how = "added" if old is None else "removed" if new is None else "changed"
            if new == MISSING and old is not None:
                how = "missing"
            found.append(_describe(part, how))
    for path, old in recorded.outputs.items():
        new = current_outputs.get(path, MISSING)
        if new == old:
            continue
        if new == MISSING:
            found.append(Change(f"deliverable {path} missing"))
        else:
            found.append(Change(f"deliverable {path} changed since completion"))
    return found


# --- I/O around it -------------------------------------------------------------------------


def stale(
    feature: Feature, settings: Settings, seqs: Collection[str] | None = None
) -> dict[str, list[Change]]:
    """Completed subtasks (all, or those in ``seqs``) whose fingerprint or outputs
    changed since their completion, with why; in seq order."""
    cache: HashCache = {}
    by_seq = feature.by_seq()
    found: dict[str, list[Change]] = {}
    for sub in feature.subtasks:
        if sub.status is not SubtaskStatus.COMPLETED or (seqs is not None and sub.seq not in seqs):
            continue
        current_in = inputs(sub, feature, settings, cache, by_seq)
        current_out = outputs(sub, feature.root, settings.protected_paths, cache)
        why = changes(sub.batchq, current_in, current_out)
        if why:
            found[sub.seq] = why
    return found


@dataclass
class Recorder:
    """A batch's fingerprint inputs, taken once when it is submitted, and the fields its
    completed members' ``batchq`` blocks get (outputs hashed at completion)."""

    root: Path
    protected: tuple[str, ...]
    parts: dict[str, dict[str, str]] = field(default_factory=dict)
    deliverables: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def for_batch(cls, feature: Feature, seqs: Iterable[str], settings: Settings) -> Recorder:
        rec = cls(feature.root, tuple(settings.protected_paths))
        rec.take(feature, seqs, settings)
        return rec

    def take(self, feature: Feature, seqs: Iterable[str], settings: Settings) -> None:
        """Take the inputs of members about to be enqueued (flow mode calls this as
        each becomes ready: its dependencies' deliverables are final only then)."""
        cache: HashCache = {}
        by_seq = feature.by_seq()
        for seq in seqs:
            sub = by_seq[seq]
            self.parts[seq] = inputs(sub, feature, settings, cache, by_seq)
            self.deliverables[seq] = sub.deliverables  # as submitted: the model's own

    def stamp(self, seq: str, block: BatchqBlock) -> BatchqBlock:
        """``block`` with the fingerprint of a member that just completed: its inputs as
        submitted and its deliverables as they are now."""
        parts = self.parts.get(seq)
        if parts is None:
            return block
        hashed = hash_file_set(self.root, self.deliverables[seq], self.protected)
        return block.model_copy(
            update={"fingerprint": digest(parts), "inputs": parts, "outputs": hashed}
        )
