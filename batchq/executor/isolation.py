"""One git worktree per isolated delegation, on the worker: create, commit, remove.

The worker makes a detached worktree at the snapshot its message names
(:attr:`~batchq.models.SubtaskMessage.snapshot_ref`, recorded by the orchestrator
before publishing: ``refs/batchq/<run>/base-<batch>`` per batch in batch mode,
``refs/batchq/<run>/base-w<wave>`` per published wave in flow mode) under
``<git common dir>/batchq-worktrees/<run>/<seq>``: inside the repository's own
folder, so the user's ``git status`` never sees it and ``.git``'s sandbox protection
does not reach into it. The agent runs there. Afterwards everything it changed is
committed on ``refs/batchq/<run>/<seq>`` (parent: the snapshot) and the worktree is
removed.

A worker can die mid-delegation (SIGKILL, OOM), so every worktree has an owner
marker beside it, ``<seq>.owner``: host, pid and the pid's start time (a reused pid
is told apart, :mod:`batchq.procs`). Before creating one, a worker — and the
orchestrator before each snapshot — removes every worktree whose owner on this host
is gone (:func:`prune_dead`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from batchq import procs
from batchq.errors import InfrastructureError
from batchq.files import gitsnap
from batchq.files.agentlog import append_text

__all__ = [
    "WORKTREES_DIR",
    "Recorded",
    "Worktree",
    "append_patch",
    "base_ref",
    "open_at",
    "open_worktree",
    "prune_dead",
    "result_ref",
    "wave_ref",
    "worktrees_home",
]

WORKTREES_DIR = "batchq-worktrees"
_OWNER_SUFFIX = ".owner"

log = logging.getLogger("batchq.executor.isolation")


def base_ref(run_id: str, batch: int) -> str:
    """The snapshot a batch's isolated members start from."""
    return f"refs/batchq/{run_id}/base-{batch}"


def wave_ref(run_id: str, wave: int) -> str:
    """The snapshot a flow-mode wave starts from: the ``wave``-th call of the run that
    published ready subtasks (1, 2, ...; the ``w`` keeps it apart from batch numbers)."""
    return f"refs/batchq/{run_id}/base-w{wave}"


def result_ref(run_id: str, seq: str) -> str:
    """What one isolated subtask changed, as a commit on top of its snapshot."""
    return f"refs/batchq/{run_id}/{seq}"


def worktrees_home(top: Path) -> Path:
    return gitsnap.common_dir(top) / WORKTREES_DIR


@dataclass(frozen=True)
class Recorded:
    """The result commit of one worktree and what it changed."""

    commit: str
    changed: list[str]
    diffstat: str
    patch: str

    def fields(self) -> dict[str, object]:
        """The :class:`~batchq.models.SubtaskResult` fields it fills."""
        return {
            "isolated_commit": self.commit,
            "changed_paths": self.changed,
            "diffstat": self.diffstat or "no changes",
        }


@dataclass
class Worktree:
    """A live worktree for one delegation; :meth:`close` removes it."""

    top: Path
    path: Path
    base: str
    run_id: str
    seq: str
    prefix: str = ""
    """The project root's place in the repository ("" when it is the top)."""
    closed: bool = field(default=False)

    @property
    def workspace(self) -> Path:
        """The project root inside the worktree: the agent's workspace."""
        return self.path / self.prefix if self.prefix else self.path

    @property
    def marker(self) -> Path:
        return _marker_for(self.path)

    def record(self, deliverables: list[str]) -> Recorded:
        """Commit everything the agent changed (deliverables even when ignored by
        ``.gitignore``) on the subtask's result ref."""
        ref = result_ref(self.run_id, self.seq)
        message = f"batchq {self.run_id} subtask {self.seq}"
        commit = gitsnap.commit_worktree(
            self.path, self.workspace, self.base, ref, message, deliverables
        )
        return Recorded(
            commit=commit,
            changed=gitsnap.changed_paths(self.workspace, self.base, commit),
            diffstat=gitsnap.shortstat(self.workspace, self.base, commit),
            patch=gitsnap.patch(self.workspace, self.base, commit),
        )

    def close(self) -> None:
        """Remove the worktree, then its marker; never raises (a leftover is pruned by
        the next :func:`prune_dead`)."""
        if self.closed:
            return
        self.closed = True
        try:
            with _admin(self.top):
                gitsnap.worktree_remove(self.top, self.path)
        except Exception as exc:
            log.warning("worktree %s not removed: %s", self.path, exc)
            return
        self.marker.unlink(missing_ok=True)
        _rmdir_if_empty(self.path.parent)


def _marker_for(path: Path) -> Path:
    return path.with_name(path.name + _OWNER_SUFFIX)


def _rmdir_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def _owner() -> dict[str, object]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": procs.process_start_ticks(pid)}


def _owner_alive(marker: Path) -> bool:
    """Whether the process that made this worktree still runs. A marker from another
    host, or one that cannot be read yet, counts as alive: never remove what may be in
    use."""
    try:
        owner = json.loads(marker.read_text(encoding="utf-8"))
        pid, start, host = int(owner["pid"]), owner.get("start"), str(owner["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return True
    if host != socket.gethostname():
        return True
    return procs.pid_alive(pid) and procs.process_start_ticks(pid) == start


@contextlib.contextmanager
def _admin(top: Path) -> Iterator[None]:
    """Hold the repository's worktree lock: ``git worktree add`` reads every other
    worktree's administrative folder, and fails (``failed to read .../commondir``) on
    one another process is creating or removing at that moment. Its holders run only
    bounded git calls; the kernel releases it if one dies."""
    lock = gitsnap.common_dir(top) / f"{WORKTREES_DIR}.flock"  # not *.lock: git's own
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def prune_dead(top: Path) -> list[Path]:
    """Remove the worktrees (and markers) whose owner on this host is gone, then let
    git forget worktrees whose folder vanished; return the folders removed."""
    with _admin(top):
        return _prune_dead(top)


def _prune_dead(top: Path) -> list[Path]:
    home = worktrees_home(top)
    removed: list[Path] = []
    if home.is_dir():
        for marker in sorted(home.glob(f"*/*{_OWNER_SUFFIX}")):
            if _owner_alive(marker):
                continue
            path = marker.with_name(marker.name.removesuffix(_OWNER_SUFFIX))
            gitsnap.worktree_remove(top, path)
            marker.unlink(missing_ok=True)
            _rmdir_if_empty(path.parent)
            removed.append(path)
            log.info("removed worktree %s left by a dead worker", path)
    gitsnap.worktree_prune(top)
    return removed


def open_worktree(root: Path, run_id: str, snapshot: str, seq: str) -> Worktree:
    """A fresh worktree for subtask ``seq`` at the snapshot ref ``snapshot`` (the one
    its message names: which batch or wave it belongs to is the orchestrator's say)."""
    top = gitsnap.require_work_tree(root)
    if not snapshot.startswith(f"refs/batchq/{run_id}/"):
        raise InfrastructureError(
            f"isolation: the message names no snapshot of run {run_id} ({snapshot!r}); "
            "is the producer older than this worker? Run the same batchq on both"
        )
    base = gitsnap.ref_commit(top, snapshot)
    if base is None:
        raise InfrastructureError(
            f"isolation: the snapshot {snapshot} is missing in {top} (the orchestrator "
            "records it before publishing; was the repository replaced?)"
        )
    prefix = root.resolve().relative_to(top).as_posix()
    return open_at(top, base, run_id, seq, "" if prefix == "." else prefix)


def open_at(top: Path, base: str, run_id: str, seq: str, prefix: str) -> Worktree:
    """A fresh worktree of the repository at ``top`` (a work tree, or a worker's bare
    clone) at commit ``base``, after pruning the worktrees dead owners left."""
    path = worktrees_home(top) / run_id / seq
    tree = Worktree(top=top, path=path, base=base, run_id=run_id, seq=seq, prefix=prefix)
    with _admin(top):
        _prune_dead(top)
        if path.exists() or _marker_for(path).exists():
            raise InfrastructureError(
                f"isolation: worktree {path} is still in use by a live process"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        _marker_for(path).write_text(json.dumps(_owner()) + "\n", encoding="utf-8")
        try:
            gitsnap.worktree_add(top, path, base)
        except BaseException:
            tree.closed = True
            gitsnap.worktree_remove(top, path)
            _marker_for(path).unlink(missing_ok=True)
            raise
    return tree


def append_patch(log_path: Path, recorded: Recorded) -> None:
    """Keep the subtask's patch in its log, after a header line."""
    with append_text(log_path) as handle:
        handle.write(
            f"\n[batchq] isolated result {recorded.commit} "
            f"({recorded.diffstat or 'no changes'}):\n{recorded.patch}"
        )
