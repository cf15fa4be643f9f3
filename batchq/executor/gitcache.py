"""A worker's side of ``workspace = git``: a cached clone per remote, a worktree per
delegation, the result pushed back.

The worker never sees the orchestrator's folder. For each remote it keeps one bare
repository under ``BATCHQ_WORKER_CACHE`` (``repos/<name>-<hash>.git``), so objects
are fetched once and reused by every later subtask and run. A delegation:

1. fetches only the snapshot ref its message names (``refs/batchq/<run>/base-<batch>``,
   or ``base-w<wave>`` in flow mode; skipped when a sibling on this host fetched it
   already: a snapshot ref never moves);
2. gets a worktree at it (:func:`batchq.executor.isolation.open_at`, owner markers
   and dead owners pruned exactly as on a shared workspace);
3. runs the agent there, commits the result on ``refs/batchq/<run>/<seq>``;
4. pushes that ref and its log (``refs/batchq/<run>/log-<seq>``: a commit whose tree
   holds ``<seq>.log``), which the orchestrator fetches into ``.batchq/logs/`` so
   ``batchq logs`` shows it as for any run; then the worktree goes.

Several worker processes may share one cache. What writes the repository's shared
files (fetch, worktree add/remove/prune, deleting refs) runs under one ``flock`` per
clone (released by the kernel if its holder dies); while it is held no other batchq
git process takes git's top-level locks (``packed-refs.lock``, ``shallow.lock``...),
so one found then was left by a killed process and is removed, as are the locks of
the refs the subtask at hand is about to write (no one else writes those). The result
and log commits write only objects (safe side by side) and refs of their own subtask,
so they run outside it, with the pushes and the agent.
Every network call is bounded (:mod:`batchq.files.gitremote`); a failed fetch or push
is an :class:`~batchq.errors.InfrastructureError` the runner turns into a retryable
subtask failure.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from batchq.errors import InfrastructureError
from batchq.executor import isolation
from batchq.files import gitremote, gitsnap
from batchq.files.agentlog import read_bytes_from

__all__ = ["LOG_LIMIT", "Cache", "log_ref"]

LOG_LIMIT = 4 * 1024 * 1024
"""At most this much of a log travels back (its end: where the failure is)."""

log = logging.getLogger("batchq.executor.gitcache")


def log_ref(run_id: str, seq: str) -> str:
    """Where a worker leaves a subtask's log for the orchestrator."""
    return f"refs/batchq/{run_id}/log-{seq}"


@dataclass(frozen=True)
class Cache:
    """One worker's clone of one remote."""

    home: Path
    url: str
    timeout_s: float

    @property
    def repo(self) -> Path:
        digest = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        tail = re.sub(r"[^A-Za-z0-9._-]+", "-", self.url.rstrip("/").rsplit("/", 1)[-1])
        return self.home / "repos" / f"{tail.removesuffix('.git')[:40] or 'repo'}-{digest}.git"

    def log_file(self, run_id: str, seq: str) -> Path:
        """The subtask's log on this worker, until it is pushed."""
        return self.home / "logs" / run_id / f"{seq}.log"

    @contextlib.contextmanager
    def locked(self, *own_refs: str) -> Iterator[Path]:
        """Hold the clone's lock (bounded wait: its holder's git calls are bounded);
        yields the repository, created if needed, without stale git locks (top-level
        ones and those of ``own_refs``)."""
        repo = self.repo
        repo.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(repo.with_name(repo.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
        try:
            deadline = time.monotonic() + 2 * self.timeout_s + gitsnap.GIT_TIMEOUT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise InfrastructureError(
                            f"the worker cache {repo} stayed locked by another worker "
                            "process; is one stuck?"
                        ) from None
                    time.sleep(0.05)
            try:
                _ensure(repo)
                clean_stale_locks(repo, own_refs)
                yield repo
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def checkout(self, run_id: str, snapshot: str, seq: str, prefix: str) -> isolation.Worktree:
        """A worktree for ``seq`` at the snapshot ref its message names, fetched if not
        here yet (a snapshot ref never moves: a sibling's fetch serves)."""
        if not snapshot.startswith(f"refs/batchq/{run_id}/"):
            raise InfrastructureError(
                f"the message names no snapshot of run {run_id} ({snapshot!r}); is the "
                "producer older than this worker? Run the same batchq on both"
            )
        mine = (snapshot, isolation.result_ref(run_id, seq), log_ref(run_id, seq))
        with self.locked(*mine) as repo:
            base = gitsnap.ref_commit(repo, snapshot)
            if base is None:
                # A worker needs the snapshot's tree, not the project's history: a
                # shallow fetch, whose negotiation still skips the objects it has.
                gitremote.fetch(
                    repo, self.url, [f"+{snapshot}:{snapshot}"], self.timeout_s, shallow=True
                )
                base = gitsnap.ref_commit(repo, snapshot)
            if base is None:
                raise InfrastructureError(f"{snapshot} is not on {self.url}")
            return isolation.open_at(repo, base, run_id, seq, prefix)

    def record(self, tree: isolation.Worktree, deliverables: list[str]) -> isolation.Recorded:
        """Commit the agent's changes on the subtask's own ref (no lock needed)."""
        return tree.record(deliverables)

    def publish(self, tree: isolation.Worktree, log_path: Path) -> None:
        """Push the result ref and the log, then drop them here (their objects stay for
        later fetches). Raises :class:`InfrastructureError` when the push fails."""
        result, logs = isolation.result_ref(tree.run_id, tree.seq), log_ref(tree.run_id, tree.seq)
        repo = self.repo
        refs = [result] if gitsnap.ref_commit(repo, result) else []
        if _commit_log(repo, logs, log_path, tree.seq):
            refs.append(logs)
        gitremote.push(repo, self.url, [f"+{r}:{r}" for r in refs], self.timeout_s)
        with self.locked() as repo:
            for ref in refs:
                gitsnap.git(repo, "update-ref", "-d", ref, check=False)
        # Its home is the orchestrator's .batchq/logs now. The run's folder stays: a
        # sibling may be about to write its own log there.
        log_path.unlink(missing_ok=True)
        log_path.with_name(log_path.stem + ".prompt.md").unlink(missing_ok=True)  # in the log

    def close(self, tree: isolation.Worktree) -> None:
        """Remove the worktree (never raises: a leftover is pruned by the next one)."""
        try:
            with self.locked():
                tree.close()
        except Exception as exc:
            log.warning("worktree %s not removed: %s", tree.path, exc)


def _ensure(repo: Path) -> None:
    if (repo / "HEAD").is_file():
        return
    gitsnap.git(repo.parent, "init", "--bare", "--quiet", str(repo))
    for key, value in (("gc.auto", "0"), ("core.logAllRefUpdates", "false")):
        gitsnap.git(repo, "config", key, value)


def clean_stale_locks(repo: Path, own_refs: tuple[str, ...] = ()) -> list[Path]:
    """Remove git's top-level ``*.lock`` files and those of ``own_refs`` (never a live
    worktree's own, nor another subtask's ref lock). Call only with the clone's lock
    held: then no batchq git process holds any of them, and one found is what a
    killed process left behind."""
    found = [*repo.glob("*.lock"), *(p for r in own_refs if (p := repo / f"{r}.lock").exists())]
    for path in found:
        with contextlib.suppress(OSError):
            path.unlink()
            log.info("removed %s, left by a killed git process", path)
    return found


def _commit_log(repo: Path, ref: str, log_path: Path, seq: str) -> bool:
    """Record the end of the log (at most :data:`LOG_LIMIT`) as a one-file commit on
    ``ref``; False when there is no log."""
    try:
        with read_bytes_from(log_path) as handle:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(max(0, size - LOG_LIMIT))
            data = handle.read(LOG_LIMIT)
    except OSError:
        return False
    blob = gitsnap.git(repo, "hash-object", "-w", "--stdin", input=data).stdout.decode().strip()
    listing = f"100644 blob {blob}\t{seq}.log\n".encode()
    tree = gitsnap.git(repo, "mktree", input=listing).stdout.decode().strip()
    commit = gitsnap.git(repo, "commit-tree", tree, "-m", f"batchq log of {seq}")
    gitsnap.git(repo, "update-ref", ref, commit.stdout.decode().strip())
    return True
