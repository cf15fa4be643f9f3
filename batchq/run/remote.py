"""``workspace = git`` on the orchestrator: isolation whose repository is a remote.

Workers on other hosts need no shared storage: what isolation does in one repository
(:mod:`batchq.run.merge`, :mod:`batchq.executor.isolation`) travels through a git
remote instead (``BATCHQ_GIT_REMOTE``):

* :func:`problems` lists, in the one pre-flight (exit 2), what cannot work: no remote,
  a password in its URL, one that does not answer, a workspace that is not a git work
  tree;
* :func:`push_snapshot` pushes each snapshot ref (a batch's, or a flow wave's) right
  after :mod:`batchq.run.merge` records it, before any message naming it is published;
* :func:`fetched`, called by :func:`batchq.run.merge.merge_results` before it merges
  (once per batch, or per arrival in flow mode), fetches those members' result and
  log refs and writes the logs to ``.batchq/logs/`` (``batchq logs`` reads them there);
  the merge then works exactly as in isolation mode;
* :func:`run_refs` deletes the run's refs on the remote when the run ends (normally,
  on an error, or on a Ctrl-C that cancelled it; a run left going on the workers keeps
  them), and :func:`collect` (``batchq gc``) removes what crashed runs left.

The task files never leave this host: messages carry the remote (``git_remote``), the
snapshot ref the worker fetches (``snapshot_ref``), the subtask definition and the
project's folder in the repository (``git_prefix``). Adoption of a run whose
orchestrator went away fetches its refs first (:func:`fetch_run`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from batchq import layout
from batchq.errors import BatchqError, InfrastructureError, UsageError, mask_url
from batchq.executor import gitcache, isolation
from batchq.files import gitremote, gitsnap
from batchq.files.taskfiles import feature_dir, tasks_dir
from batchq.models import ResultState, Run, SubtaskResult, Workspace
from batchq.settings import Settings, git_remote_problem

__all__ = [
    "Collected",
    "check",
    "collect",
    "fetch_run",
    "fetched",
    "problems",
    "push_snapshot",
    "run_refs",
]

log = logging.getLogger("batchq.run.remote")


def problems(
    root: Path, settings: Settings, workspace: Workspace, *, reach: bool = True
) -> list[BatchqError]:
    """Every reason ``workspace`` cannot work from ``root``, each a :class:`UsageError`
    (exit 2): no remote, a URL that is malformed or holds a password (shown masked),
    a remote that does not answer within ``git_timeout_s`` (``reach``), a workspace
    that is not a git work tree. None under ``shared``. Part of the one pre-flight
    (:mod:`batchq.run.preflight`), so ``validate`` lists what ``run`` refuses."""
    if workspace is Workspace.SHARED:
        return []
    found: list[BatchqError] = []
    url = settings.git_remote
    problem = git_remote_problem(url) if url else None
    if not url:
        found.append(
            UsageError(
                "--workspace git needs a remote every worker reaches: set BATCHQ_GIT_REMOTE "
                "(git_remote in batchq.toml) to its URL, e.g. ssh://git@host/project.git"
            )
        )
    elif problem:
        found.append(UsageError(f"BATCHQ_GIT_REMOTE={mask_url(url)}: {problem}"))
    try:
        gitsnap.require_work_tree(root)
    except UsageError:
        found.append(
            UsageError(
                f"--workspace git: {root} is not inside a git work tree (run `git init` "
                "there, or use --workspace shared)"
            )
        )
    if reach and url and not problem:
        try:
            gitremote.reachable(root, url, settings.git_timeout_s)
        except InfrastructureError as exc:
            found.append(
                UsageError(
                    f"--workspace git: the remote does not answer: {exc}; check "
                    "BATCHQ_GIT_REMOTE and git's credentials for it (ssh key, credential "
                    "helper) on this host"
                )
            )
    return found


def check(root: Path, settings: Settings, workspace: Workspace) -> str | None:
    """The remote's URL under ``git`` (None under ``shared``), for a run whose
    pre-flight passed; the first of :func:`problems` (the remote not asked again) if it
    did not run."""
    found = problems(root, settings, workspace, reach=False)
    if found:
        raise found[0]
    return settings.git_remote if workspace is Workspace.GIT else None


def prefix_of(root: Path) -> str:
    """The project root's folder inside its repository ("" at the top)."""
    top = gitsnap.require_work_tree(root)
    rel = root.resolve().relative_to(top).as_posix()
    return "" if rel == "." else rel


def push_snapshot(run: Run, ref: str) -> None:
    """Push a snapshot ref (recorded just before) to the run's remote, before any
    message naming it is published; nothing without a remote."""
    if run.git_remote is None:
        return
    top = gitsnap.require_work_tree(run.root)
    gitremote.push(top, run.git_remote, [f"+{ref}:{ref}"], run.git_timeout_s)


def fetched(run: Run, results: Iterable[SubtaskResult]) -> list[SubtaskResult]:
    """The results as amended once their refs are fetched from the run's remote: each
    log kept in ``.batchq/logs/`` (its ``log_path`` pointing there), and every
    completed one failed when the fetch fails (its result is out of reach). Unchanged
    without a remote."""
    results = list(results)
    wanted = [r for r in results if r.isolated_commit]
    if run.git_remote is None or not wanted:
        return results
    top = gitsnap.require_work_tree(run.root)
    try:
        present = gitremote.list_refs(
            top, run.git_remote, f"refs/batchq/{run.run_id}/", run.git_timeout_s
        )
        mine = [
            ref
            for r in wanted
            for ref in (isolation.result_ref(r.run_id, r.seq), gitcache.log_ref(r.run_id, r.seq))
            if ref in present
        ]
        if mine:
            gitremote.fetch(
                top, run.git_remote, [f"+{ref}:{ref}" for ref in mine], run.git_timeout_s
            )
    except InfrastructureError as exc:
        return [_unfetched(r, str(exc)) if r.ok and r.isolated_commit else r for r in results]
    feature_path = feature_dir(run.root, run.feature)
    out: list[SubtaskResult] = []
    for r in results:
        if r.isolated_commit and r.ok and isolation.result_ref(r.run_id, r.seq) not in present:
            out.append(
                _unfetched(r, f"{isolation.result_ref(r.run_id, r.seq)} is not on the remote")
            )
        elif r.isolated_commit:
            out.append(_with_log(top, feature_path, r))
        else:
            out.append(r)
    return out


def _unfetched(result: SubtaskResult, why: str) -> SubtaskResult:
    return result.model_copy(
        update={
            "result": ResultState.FAILED,
            "error": f"its result could not be fetched: {why}",
            "error_type": "GitFetchFailed",
        }
    )


def _with_log(top: Path, feature_path: Path, result: SubtaskResult) -> SubtaskResult:
    ref = gitcache.log_ref(result.run_id, result.seq)
    if gitsnap.ref_commit(top, ref) is None:
        return result
    target = layout.log_file(feature_path, result.run_id, result.seq)
    try:
        data = gitsnap.git(top, "cat-file", "blob", f"{ref}:{result.seq}.log").stdout
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    except (BatchqError, OSError) as exc:
        log.warning("log of %s not kept: %s", result.seq, exc)
        return result
    return result.model_copy(update={"log_path": str(target)})


def fetch_run(root: Path, url: str, run_id: str, timeout_s: float) -> None:
    """Fetch every ref run ``run_id`` left on the remote (results a crashed
    orchestrator never merged, for adoption); a failure is logged, and the merge that
    then finds no commit fails those results, naming it."""
    problem = git_remote_problem(url)
    if problem:  # never given to git: the pre-flight refuses it, see :func:`problems`
        log.warning("run %s: not fetched from %s: %s", run_id, mask_url(url), problem)
        return
    try:
        top = gitsnap.require_work_tree(root)
        spec = f"+refs/batchq/{run_id}/*:refs/batchq/{run_id}/*"
        gitremote.fetch(top, url, [spec], timeout_s)
    except (BatchqError, OSError) as exc:
        log.warning("run %s: its results could not be fetched from the remote: %s", run_id, exc)


def delete_run(top: Path, url: str, run_id: str, timeout_s: float) -> list[str]:
    """Delete run ``run_id``'s refs on the remote; the names deleted."""
    found = sorted(gitremote.list_refs(top, url, f"refs/batchq/{run_id}/", timeout_s))
    gitremote.delete_refs(top, url, found, timeout_s)
    return found


@contextlib.contextmanager
def run_refs(run: Run, settings: Settings, *, keep_on_interrupt: bool) -> Iterator[None]:
    """Delete the run's refs on its remote when the body ends, however it ends, but
    for a Ctrl-C that leaves the run going on the workers (``keep_on_interrupt``):
    they still fetch its snapshots (``batchq gc`` removes them later). Never raises
    over the body's own outcome: a failed deletion is logged."""
    keep = False
    try:
        yield
    except KeyboardInterrupt:
        keep = keep_on_interrupt
        raise
    finally:
        if run.git_remote is not None and not keep:
            try:
                top = gitsnap.require_work_tree(run.root)
                delete_run(top, run.git_remote, run.run_id, settings.git_timeout_s)
            except (BatchqError, OSError) as exc:
                log.warning(
                    "run %s: refs left on the remote (batchq gc removes them): %s", run.run_id, exc
                )


@dataclass
class Collected:
    """What ``batchq gc`` removed, and what it left alone."""

    local: dict[str, list[str]] = field(default_factory=dict)
    """run id -> refs deleted in the repository."""
    remote: dict[str, list[str]] = field(default_factory=dict)
    """run id -> refs deleted on the remote."""
    worktrees: list[Path] = field(default_factory=list)
    live: list[str] = field(default_factory=list)
    """Runs kept: their feature's orchestrator still runs."""
    foreign: list[str] = field(default_factory=list)
    """Runs on the remote this root does not know (another checkout's): kept."""


def known_runs(root: Path) -> dict[str, bool]:
    """Every run this root's features (archived ones too) started: run id -> whether
    its feature's orchestrator runs now (its ``flock`` is held)."""
    found: dict[str, bool] = {}
    base = tasks_dir(root)
    for token in sorted(base.rglob(f"{layout.STATE_DIR}/runs/*.token")) if base.is_dir() else []:
        feature_path = token.parent.parent.parent
        found[token.name.removesuffix(".token")] = _held(layout.orchestrator_lock(feature_path))
    return found


def _held(lock: Path) -> bool:
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def _by_run(refs: list[str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for ref in refs:
        run_id = ref.removeprefix(gitremote.REF_PREFIX).partition("/")[0]
        grouped.setdefault(run_id, []).append(ref)
    return grouped


def collect(root: Path, settings: Settings) -> Collected:
    """``batchq gc``: remove the refs (``refs/batchq/<run>/``) of every run of this root
    that has ended — locally, and on ``git_remote`` when one is set — and the worktrees
    dead workers left. A run whose feature is being run now is kept."""
    url = settings.git_remote
    problem = git_remote_problem(url) if url else None
    if url and problem:  # before anything is removed
        raise UsageError(f"BATCHQ_GIT_REMOTE={mask_url(url)}: {problem}")
    top = gitsnap.require_work_tree(root)
    runs = known_runs(root)
    out = Collected(worktrees=isolation.prune_dead(top))
    listing = gitsnap.git(top, "for-each-ref", "--format=%(refname)", gitremote.REF_PREFIX)
    local = _by_run(listing.stdout.decode("utf-8", "surrogateescape").split())
    for run_id, refs in sorted(local.items()):
        if run_id not in runs:
            out.foreign.append(run_id)
        elif runs[run_id]:
            out.live.append(run_id)
        else:
            for ref in refs:
                gitsnap.git(top, "update-ref", "-d", ref)
            out.local[run_id] = refs
    if url:
        remote = _by_run(
            sorted(gitremote.list_refs(top, url, gitremote.REF_PREFIX, settings.git_timeout_s))
        )
        for run_id, refs in sorted(remote.items()):
            if run_id not in runs:
                out.foreign.append(run_id)
            elif runs[run_id]:
                out.live.append(run_id)
            else:
                gitremote.delete_refs(top, url, refs, settings.git_timeout_s)
                out.remote[run_id] = refs
    out.live, out.foreign = sorted(set(out.live)), sorted(set(out.foreign))
    return out
