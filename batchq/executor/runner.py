"""What a worker does with one subtask message, as a plain function.

The Celery task in :mod:`batchq.transport.tasks` only decodes and maps retries; everything
here is testable without a broker. The rules it enforces (SPEC 3): a recorded
completion is never rerun, a running copy is never doubled (the claim), a subtask
that keeps killing its worker is capped, the cancel flag is honoured before start
and — under ``terminate`` — while the agent runs, and a failure never raises.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import secrets
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from batchq import layout
from batchq.agents.base import Agent, AgentOutcome, Delegation
from batchq.agents.registry import agent_for
from batchq.errors import BatchqError
from batchq.executor import gitcache, isolation, writewindow
from batchq.executor.verify import VerifyHold, verify_delegation
from batchq.files.taskfiles import feature_dir
from batchq.models import (
    DeliverableCheck,
    FailurePolicy,
    Isolation,
    ResultState,
    SubtaskMessage,
    SubtaskResult,
    WriteCheck,
)
from batchq.protocol import CancelMode, EventKind
from batchq.settings import Settings
from batchq.store.contract import Store
from batchq.store.state import CONNECTION_ERRORS, Claim, StartDecision

__all__ = [
    "Chain",
    "RetryLater",
    "backoff_s",
    "delegation_for",
    "execute",
    "log_path_for",
    "token_path",
    "worker_id",
]

SUMMARY_LIMIT = 200
BUSY_POLL_S = 0.5

log = logging.getLogger("batchq.executor.runner")


class RetryLater(Exception):
    """Raised to the task layer: run this attempt again after ``countdown`` seconds."""

    def __init__(self, countdown: float, reason: str) -> None:
        super().__init__(reason)
        self.countdown = countdown


def worker_id() -> str:
    """Who holds a claim: host and pid, so a human can find the process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def token_path(root: Path, feature: str, run_id: str) -> Path:
    return _run_paths(str(root), feature, run_id)[0]


def log_path_for(root: Path, feature: str, run_id: str, seq: str) -> Path:
    return _run_paths(str(root), feature, run_id)[1] / f"{seq}.log"


_RUN_PATHS: dict[tuple[str, str, str], tuple[Path, Path]] = {}


def _run_paths(root: str, feature: str, run_id: str) -> tuple[Path, Path]:
    """A run's token file and log folder (:mod:`batchq.layout`), worked out once per
    run and process: pure path arithmetic, but a dozen ``pathlib`` joins per subtask."""
    key = (root, feature, run_id)
    found = _RUN_PATHS.get(key)
    if found is None:
        if len(_RUN_PATHS) >= 64:
            _RUN_PATHS.clear()
        folder = feature_dir(Path(root), feature)
        found = _RUN_PATHS[key] = (
            layout.token_file(folder, run_id),
            layout.log_file(folder, run_id, "-").parent,
        )
    return found


def backoff_s(attempt: int, base_s: float, cap_s: float) -> float:
    """Exponential backoff with full jitter, capped (pure)."""
    ceiling = min(cap_s, base_s * (2 ** max(0, attempt - 1)))
    return random.uniform(ceiling / 2, ceiling) if ceiling > 0 else 0.0


@dataclass
class _Attempt:
    message: SubtaskMessage
    worker: str
    started_at: datetime
    attempts: int
    observed: list[str] = field(default_factory=list)
    isolated: dict[str, object] = field(default_factory=dict)
    """The result fields of an isolated run (:meth:`isolation.Recorded.fields`)."""


class Chain:
    """The members of one chunk, run one after the other: the claim of the next member
    rides on the round trip that records the one before it (:meth:`Store.record_then_begin`),
    so a member costs one Redis round trip of its own instead of two. Its order and
    atomicity are the plain calls' (the record, then the next member's start), so
    every claim rule holds; only a result that sets the batch's cancel flag (a failure)
    is recorded alone, for the next member's start to see the flag."""

    def __init__(self) -> None:
        self._next: tuple[SubtaskMessage, str, int] | None = None
        self._claimed: dict[str, tuple[Claim, StartDecision | None]] = {}

    def then(self, msg: SubtaskMessage | None, task_id: str = "", attempt: int = 1) -> None:
        """The member that runs after the current one (None: the current one is last)."""
        self._next = (msg, task_id, attempt) if msg is not None else None

    def claim_for_next(self, worker: str, settings: Settings) -> Claim | None:
        if self._next is None or self._next[1] in self._claimed:
            return None
        msg, task_id, attempt = self._next
        return Claim(
            msg.run_id,
            msg.batch,
            msg.seq,
            worker,
            task_id,
            settings.claim_ttl_s,
            settings.max_starts,
            attempt,
            secrets.token_hex(8),
        )

    def claimed(self, claim: Claim, decision: StartDecision | None) -> None:
        """``claim`` was sent; its answer (None: lost with the connection)."""
        self._claimed[claim.task_id] = (claim, decision)

    def take(self, task_id: str) -> tuple[Claim, StartDecision | None] | None:
        return self._claimed.pop(task_id, None)


_CHAINED = frozenset({ResultState.COMPLETED, ResultState.CANCELLED})
"""The results after which the next member of a chunk is claimed in the same round
trip: neither sets the batch's cancel flag."""


class _Watch:
    """One running subtask as the heartbeat sees it."""

    def __init__(self, store: Store, msg: SubtaskMessage, worker: str) -> None:
        self.store, self.msg, self.worker = store, msg, worker
        self.terminate = False
        self.renewed = time.monotonic()
        self.slot: tuple[str, int] | None = None  # (agent, limit) while holding a slot

    @property
    def holder(self) -> str:
        return f"{self.worker}:{self.msg.run_id}:{self.msg.seq}"


class _Heartbeat(threading.Thread):
    """One thread per worker process that renews the claims of the subtasks running in
    it and notices a ``terminate`` cancel flag. Long-lived, because starting a thread
    per subtask costs a scheduling round on a busy host — more than a no-op subtask."""

    _instance: _Heartbeat | None = None
    _guard = threading.Lock()

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="batchq-heartbeat", daemon=True)
        self.settings = settings
        self.pid = os.getpid()
        self.watches: set[_Watch] = set()
        self.lock = threading.Lock()

    @classmethod
    def get(cls, settings: Settings) -> _Heartbeat:
        with cls._guard:
            current = cls._instance
            if current is None or current.pid != os.getpid():  # none yet, or forked
                current = cls(settings)
                current.start()
                cls._instance = current
            return current

    def watch(self, store: Store, msg: SubtaskMessage, worker: str) -> _Watch:
        watch = _Watch(store, msg, worker)
        with self.lock:
            self.watches.add(watch)
        return watch

    def unwatch(self, watch: _Watch) -> None:
        with self.lock:
            self.watches.discard(watch)

    def run(self) -> None:
        while True:
            time.sleep(0.5)
            with self.lock:
                watches = list(self.watches)
            for watch in watches:
                self._beat(watch)

    def _beat(self, watch: _Watch) -> None:
        msg = watch.msg
        try:
            if watch.store.cancel_mode(msg.run_id, msg.batch) == CancelMode.TERMINATE:
                watch.terminate = True
            if time.monotonic() - watch.renewed >= self.settings.heartbeat_s:
                ttl = self.settings.claim_ttl_s
                watch.store.renew_claim(msg.run_id, msg.seq, watch.worker, ttl)
                if watch.slot is not None:
                    watch.store.take_slot(watch.slot[0], watch.holder, watch.slot[1], ttl)
                watch.renewed = time.monotonic()
        except Exception:  # a Redis blip: keep the agent running, retry next tick
            return


def _result(
    attempt: _Attempt,
    state: ResultState,
    *,
    error: str | None = None,
    error_type: str | None = None,
    summary: str = "",
    output: str = "",
    deliverables: list[DeliverableCheck] | None = None,
    log_path: Path | None = None,
    settings: Settings,
) -> SubtaskResult:
    msg = attempt.message
    finished = datetime.now(UTC)
    result = SubtaskResult(
        feature=msg.feature,
        run_id=msg.run_id,
        batch=msg.batch,
        seq=msg.seq,
        title=msg.subtask.title,
        result=state,
        summary=summary[:SUMMARY_LIMIT],
        deliverables=deliverables or [],
        attempts=attempt.attempts,
        worker=attempt.worker,
        started_at=attempt.started_at,
        finished_at=finished,
        duration_s=round((finished - attempt.started_at).total_seconds(), 3),
        error_type=error_type,
        error=error,
        output_tail=output[-settings.output_tail_chars :] if settings.output_tail_chars else "",
        log_path=str(log_path) if log_path else None,
        observed_writes=attempt.observed,
    )
    return result.model_copy(update=attempt.isolated) if attempt.isolated else result


def _finish(
    store: Store,
    result: SubtaskResult,
    msg: SubtaskMessage,
    worker: str,
    chain: Chain | None = None,
    settings: Settings | None = None,
) -> SubtaskResult:
    """Record the result once; on a failure, apply the batch's failure policy at once.
    In a chunk (``chain``), the next member's claim goes in the same round trip."""
    execution = msg.subtask.execution
    ran = result.result is not ResultState.CANCELLED  # a cancelled one mostly never started
    spec = execution.callable_ if msg.agent == "python" and execution and ran else None
    written: bool | None = None
    if chain is not None and settings is not None and result.result in _CHAINED:
        then = chain.claim_for_next(worker, settings)
        if then is not None:
            try:
                written, decision = store.record_then_begin(
                    result, msg.feature_key, worker, spec, then
                )
                chain.claimed(then, decision)
            except CONNECTION_ERRORS:  # both unknown: record alone, the next asks again
                chain.claimed(then, None)
    if written is None:
        written = _through_blip(lambda: store.record_result(result, msg.feature_key, worker, spec))
    if not written:
        recorded = store.result(msg.run_id, msg.seq)
        return recorded or result
    log.info(
        "subtask %s %s after %.1fs%s",
        msg.seq,
        result.result.value,
        result.duration_s,
        f": {result.error.splitlines()[0][:200]}" if result.error else "",
    )
    if not result.ok and result.result is not ResultState.CANCELLED:
        if msg.policy is not FailurePolicy.CONTINUE:
            store.cancel(msg.run_id, msg.batch, msg.policy.value)
        store.emit(msg.run_id, EventKind.FAILED_FAST, msg.batch, msg.seq, error=result.error or "")
    return result


RECORD_PATIENCE_S = 60.0
"""How long a finished subtask keeps trying to record its result through a Redis
outage. Raising instead would fail the task, and with it the batch's chord."""


def _through_blip(write: Callable[[], bool], patience_s: float = RECORD_PATIENCE_S) -> bool:
    """Retry an idempotent Redis write (record once: a repeat returns False) while Redis
    restarts or fails over."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return write()
        except CONNECTION_ERRORS:
            if time.monotonic() >= deadline:
                raise
            time.sleep(BUSY_POLL_S)


_CONTEXTS: dict[str, str] = {}
_TOKENS_SEEN: set[tuple[Path, str]] = set()


def delegation_for(msg: SubtaskMessage, root: Path, context: str, log_path: Path) -> Delegation:
    """The agent's view of a message. A message from an older producer has no brief:
    the feature's folder name and the layout's file name stand in."""
    return Delegation(
        feature=msg.feature,
        run_id=msg.run_id,
        batch=msg.batch,
        subtask=msg.subtask,
        workspace=root,
        context=context,
        log_path=log_path,
        timeout_s=msg.subtask.timeout_s,
        feature_name=msg.feature_name or msg.feature,
        objective=msg.objective,
        subtask_file=msg.subtask_file or layout.subtask_relpath(msg.feature, msg.seq),
        siblings=tuple(msg.siblings),
        siblings_total=max(msg.siblings_total, len(msg.siblings)),
    )


def _workspace_ok(token_file: Path, token: str) -> bool:
    """Whether this host sees the run's workspace: the token file the producer wrote.
    A match is remembered for the process (a run's token never changes)."""
    if (token_file, token) in _TOKENS_SEEN:
        return True
    try:
        found = token_file.read_text().strip()
    except OSError:
        return False
    if found != token:
        return False
    if len(_TOKENS_SEEN) >= 256:
        _TOKENS_SEEN.clear()
    _TOKENS_SEEN.add((token_file, token))
    return True


def _context(store: Store, run_id: str) -> str:
    """The run's shared context, fetched once per worker process: it never changes."""
    if run_id not in _CONTEXTS:
        if len(_CONTEXTS) >= 64:
            _CONTEXTS.clear()
        _CONTEXTS[run_id] = store.context(run_id)
    return _CONTEXTS[run_id]


def _claim(
    store: Store,
    msg: SubtaskMessage,
    worker: str,
    task_id: str,
    settings: Settings,
    attempt: int,
    chain: Chain | None = None,
) -> SubtaskResult | None:
    """Wait for the right to run. Returns a final result instead when there is one.
    A chunk's member may have been claimed already, with the member before it."""
    ahead = chain.take(task_id) if chain is not None else None
    while True:
        if ahead is not None and ahead[1] is not None:
            decision = ahead[1]
        else:
            token = ahead[0].token if ahead is not None else ""  # lost reply: ask again
            decision = store.begin(
                msg.run_id,
                msg.batch,
                msg.seq,
                worker,
                task_id,
                claim_ttl_s=settings.claim_ttl_s,
                max_starts=settings.max_starts,
                attempt=attempt,
                token=token,
            )
        ahead = None
        if decision == "run":
            return None
        if decision == "done":
            recorded = store.result(msg.run_id, msg.seq)
            if recorded is not None:
                return recorded
        if decision == "cancelled":
            early = _Attempt(msg, worker, datetime.now(UTC), attempt - 1)
            reason = "cancelled before start: a sibling failed or the batch was cancelled"
            result = _result(early, ResultState.CANCELLED, error=reason, settings=settings)
            return _finish(store, result, msg, worker, chain, settings)
        if decision == "capped":
            return _capped(store, msg, worker, settings)
        time.sleep(BUSY_POLL_S)  # "busy": another copy runs; its result will be ours


def _capped(store: Store, msg: SubtaskMessage, worker: str, settings: Settings) -> SubtaskResult:
    info = store.subtask_info(msg.run_id, msg.seq)
    starts = int(info.get("starts", "0"))
    attempt = _Attempt(msg, worker, datetime.now(UTC), starts)
    result = _result(
        attempt,
        ResultState.FAILED,
        error=(
            f"the worker was lost {starts} times while running this subtask "
            f"(cap: BATCHQ_MAX_STARTS={settings.max_starts}); it is not started again"
        ),
        error_type="WorkerLost",
        settings=settings,
    )
    return _finish(store, result, msg, worker)


def _take_slot(store: Store, watch: _Watch, agent: str, limit: int, settings: Settings) -> bool:
    """Wait for one of the agent's ``max_concurrency`` slots, across every worker.

    The claim stays renewed meanwhile (the heartbeat watches this subtask). Returns
    False when the batch is cancelled first: the subtask never started."""
    while not store.take_slot(agent, watch.holder, limit, settings.claim_ttl_s):
        if watch.terminate or store.cancel_mode(watch.msg.run_id, watch.msg.batch):
            return False
        time.sleep(BUSY_POLL_S)
    watch.slot = (agent, limit)
    return True


def _run_agent(agent: Agent, delegation: Delegation, heartbeat: _Watch) -> AgentOutcome:
    try:
        return agent.run(delegation, lambda: heartbeat.terminate)
    except BatchqError as exc:
        return AgentOutcome(ok=False, error=str(exc), error_type=type(exc).__name__)
    except Exception as exc:
        if type(exc).__name__ == "SoftTimeLimitExceeded":
            return AgentOutcome(ok=False, timed_out=True, error="soft time limit exceeded")
        return AgentOutcome(
            ok=False,
            error=f"{type(exc).__name__}: {exc}",
            error_type=type(exc).__name__,
            output=traceback.format_exc()[-4000:],
        )


def _watched_run(
    agent: Agent, delegation: Delegation, heartbeat: _Watch, attempt: _Attempt
) -> AgentOutcome:
    """Run the agent between two workspace snapshots (unless the run turned the write
    check off) and keep what changed outside the subtask's own deliverables. Verification
    comes after the second snapshot: a verify command's own output files are not the
    agent's writes."""
    if attempt.message.write_check is WriteCheck.OFF:
        return _run_agent(agent, delegation, heartbeat)
    try:
        window = writewindow.open_window(delegation.workspace, delegation.subtask.deliverables)
    except Exception as exc:  # the check must never cost the subtask its result
        log.warning("subtask %s: writes not checked: %s", attempt.message.seq, exc)
        return _run_agent(agent, delegation, heartbeat)
    outcome = _run_agent(agent, delegation, heartbeat)
    try:
        attempt.observed = window()
    except Exception as exc:
        log.warning("subtask %s: writes not checked: %s", attempt.message.seq, exc)
    return outcome


def _isolated_run(
    agent: Agent,
    delegation: Delegation,
    heartbeat: _Watch,
    attempt: _Attempt,
    cache: gitcache.Cache | None,
    hold: VerifyHold,
) -> tuple[isolation.Worktree | None, AgentOutcome, Delegation]:
    """Run the agent in a worktree of its own at the snapshot its message names (in the
    shared repository, or in this worker's clone of the run's remote when ``cache`` is
    given), then commit what it changed (before verification: a verify command's own
    outputs are not the agent's) and keep the patch in the log. Returns the worktree —
    the caller removes it after verifying inside it — and the delegation as the agent
    saw it."""
    msg = attempt.message
    try:
        if cache is None:
            tree = isolation.open_worktree(
                delegation.workspace, msg.run_id, msg.snapshot_ref, msg.seq
            )
        else:
            tree = cache.checkout(msg.run_id, msg.snapshot_ref, msg.seq, msg.git_prefix)
    except (BatchqError, OSError) as exc:
        kind = "IsolationFailed" if cache is None else "GitFetchFailed"
        failed = AgentOutcome(
            ok=False, error=str(exc), error_type=kind, temporary=cache is not None
        )
        return None, failed, delegation
    inside = dataclasses.replace(delegation, workspace=tree.workspace)
    outcome = _run_agent(agent, hold.attach(inside), heartbeat)
    try:
        deliverables = list(msg.subtask.deliverables)
        recorded = tree.record(deliverables) if cache is None else cache.record(tree, deliverables)
        isolation.append_patch(delegation.log_path, recorded)
        attempt.isolated = recorded.fields()
    except (BatchqError, OSError) as exc:
        if outcome.ok:
            outcome = AgentOutcome(
                ok=False,
                error=f"isolation: the result could not be committed: {exc}",
                error_type="IsolationFailed",
                output=outcome.output,
            )
    return tree, outcome, inside


def _published(
    cache: gitcache.Cache, tree: isolation.Worktree, log_path: Path, outcome: AgentOutcome
) -> AgentOutcome:
    """Push the result and the log to the run's remote; a failed push fails a
    completed subtask as temporary (its retries apply), and is noted on a failed one."""
    try:
        cache.publish(tree, log_path)
    except (BatchqError, OSError) as exc:
        log.warning("subtask %s: push failed: %s", tree.seq, exc)
        if outcome.ok:
            return AgentOutcome(
                ok=False,
                error=f"the result could not be pushed: {exc}",
                error_type="GitPushFailed",
                output=outcome.output,
                temporary=True,
            )
        outcome.error = f"{outcome.error or 'failed'}; its log could not be pushed: {exc}"
    return outcome


def _cache(msg: SubtaskMessage, settings: Settings) -> gitcache.Cache | None:
    """This worker's clone of the run's remote (``workspace = git``), else None."""
    if msg.git_remote is None:
        return None
    return gitcache.Cache(settings.worker_cache, msg.git_remote, settings.git_timeout_s)


def _log_path(msg: SubtaskMessage, settings: Settings) -> Path:
    """Where the subtask's log is written on this worker: the run's folder, or, when
    the worker works from a remote, its cache (the log is pushed with the result)."""
    cache = _cache(msg, settings)
    if cache is not None:
        return cache.log_file(msg.run_id, msg.seq)
    return _run_paths(msg.root, msg.feature, msg.run_id)[1] / f"{msg.seq}.log"


def execute(
    msg: SubtaskMessage,
    store: Store,
    settings: Settings,
    *,
    task_id: str = "",
    retries_done: int = 0,
    chain: Chain | None = None,
) -> SubtaskResult:
    """Run one subtask to a recorded result, or raise :class:`RetryLater`. A chunk
    passes its :class:`Chain`, set to the member that runs next.

    Nothing else leaves: an exception out of a Celery task fails the batch's chord
    (TRAPS), and the batch would wait for the stall deadline to report "worker lost".
    So any unexpected error (a bug, an input validation missed) becomes this subtask's
    failed result, recorded once with its events like any other. Only Redis outages
    pass, for the task layer to requeue the message."""
    passing: tuple[type[Exception], ...] = (RetryLater, *CONNECTION_ERRORS)
    try:
        return _execute(
            msg, store, settings, task_id=task_id, retries_done=retries_done, chain=chain
        )
    except passing:
        raise
    except Exception as exc:
        return _unexpected(msg, store, settings, retries_done, exc)


def _unexpected(
    msg: SubtaskMessage, store: Store, settings: Settings, retries_done: int, exc: Exception
) -> SubtaskResult:
    """The failed (or, for Celery's soft limit, timed-out) result of an error that
    escaped the subtask's execution."""
    worker = worker_id()
    timed_out = type(exc).__name__ == "SoftTimeLimitExceeded"
    log.exception("subtask %s: unexpected error on the worker", msg.seq)
    attempt = _Attempt(msg, worker, datetime.now(UTC), retries_done + 1)
    result = _result(
        attempt,
        ResultState.TIMED_OUT if timed_out else ResultState.FAILED,
        error=(
            f"timed out after {msg.subtask.timeout_s:g}s (soft time limit)"
            if timed_out
            else f"unexpected error on the worker: {type(exc).__name__}: {exc}"[:1000]
        ),
        error_type="Timeout" if timed_out else type(exc).__name__,
        output=traceback.format_exc()[-4000:],
        log_path=_log_path(msg, settings),
        settings=settings,
    )
    try:
        return _finish(store, result, msg, worker)
    except CONNECTION_ERRORS:
        raise
    except Exception:  # recording failed too: the chord still gets its member's value
        log.exception("subtask %s: the failed result could not be recorded", msg.seq)
        return result


def _execute(
    msg: SubtaskMessage,
    store: Store,
    settings: Settings,
    *,
    task_id: str,
    retries_done: int,
    chain: Chain | None,
) -> SubtaskResult:
    worker = worker_id()
    root = Path(msg.root)
    final = _claim(store, msg, worker, task_id, settings, retries_done + 1, chain)
    if final is not None:
        return final
    attempt = _Attempt(msg, worker, datetime.now(UTC), retries_done + 1)
    cache = _cache(msg, settings)  # workspace = git (issue 20): root is not on this host
    log_path = _log_path(msg, settings)

    def fail(
        state: ResultState,
        error: str,
        error_type: str,
        *,
        output: str = "",
        deliverables: list[DeliverableCheck] | None = None,
        log: Path | None = None,
    ) -> SubtaskResult:
        result = _result(
            attempt,
            state,
            error=error,
            error_type=error_type,
            output=output,
            deliverables=deliverables,
            log_path=log,
            settings=settings,
        )
        return _finish(store, result, msg, worker, chain, settings)

    token_file = _run_paths(msg.root, msg.feature, msg.run_id)[0]
    if cache is None and not _workspace_ok(token_file, msg.token):
        return fail(
            ResultState.FAILED,
            f"workspace not found on this worker: {token_file} is missing or belongs to "
            "another run (workers need the feature's files at the same path)",
            "WorkspaceMissing",
        )
    try:
        agent = agent_for(msg.subtask, settings)
    except BatchqError as exc:
        return fail(ResultState.FAILED, str(exc), type(exc).__name__)

    if chain is None:  # a chunk's members are tiny: their line at the end says enough
        log.info(
            "subtask %s started: %s (agent %s, attempt %d)",
            msg.seq,
            msg.subtask.title,
            agent.name,
            attempt.attempts,
        )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    delegation = delegation_for(msg, root, _context(store, msg.run_id), log_path)
    beats = _Heartbeat.get(settings)
    heartbeat = beats.watch(store, msg, worker)
    tree: isolation.Worktree | None = None
    hold = VerifyHold(settings)  # verify's sandbox, set up while the agent runs
    try:
        limit = agent.max_concurrency
        if limit is not None and not _take_slot(store, heartbeat, agent.name, limit, settings):
            outcome = AgentOutcome(
                ok=False, cancelled=True, error="cancelled while waiting for a free agent slot"
            )
        elif msg.isolate is Isolation.WORKTREE or cache is not None:  # issues 19, 20
            tree, outcome, delegation = _isolated_run(
                agent, delegation, heartbeat, attempt, cache, hold
            )
        else:
            outcome = _watched_run(agent, hold.attach(delegation), heartbeat, attempt)
        held = hold.take()
        checks: list[DeliverableCheck] = []
        if outcome.ok:
            stop = lambda: heartbeat.terminate  # noqa: E731
            verification = verify_delegation(delegation, settings, stop, held)
            checks = verification.deliverables
            if verification.failure is not None:
                outcome.ok = False
                outcome.error = verification.failure
                missing = any(not c.verified for c in checks)
                outcome.error_type = "DeliverableMissing" if missing else "VerifyFailed"
                if verification.verify is not None:
                    outcome.output += verification.verify.output
        if cache is not None and tree is not None:
            outcome = _published(cache, tree, log_path, outcome)
    finally:
        hold.discard()  # the agent failed, or raised: verify never runs
        if tree is not None and cache is not None:
            cache.close(tree)
        elif tree is not None:
            tree.close()
        beats.unwatch(heartbeat)
        if heartbeat.slot is not None:
            store.release_slot(heartbeat.slot[0], heartbeat.holder)

    if outcome.ok:
        return _finish(
            store,
            _result(
                attempt,
                ResultState.COMPLETED,
                summary=outcome.summary,
                output=outcome.output,
                deliverables=checks,
                log_path=log_path,
                settings=settings,
            ),
            msg,
            worker,
            chain,
            settings,
        )
    if outcome.cancelled or heartbeat.terminate:
        return fail(
            ResultState.CANCELLED,
            outcome.error or "terminated: a sibling failed",
            "Cancelled",
            output=outcome.output,
            log=log_path,
        )
    retries = msg.subtask.execution.retries if msg.subtask.execution else 0
    if (outcome.temporary or outcome.timed_out) and attempt.attempts <= retries:
        store.end_attempt(msg.run_id, msg.seq)
        store.release_claim(msg.run_id, msg.seq, worker)
        raise RetryLater(
            backoff_s(attempt.attempts, settings.retry_backoff_s, settings.retry_backoff_max_s),
            outcome.error or "temporary failure",
        )
    state = ResultState.TIMED_OUT if outcome.timed_out else ResultState.FAILED
    error = outcome.error or (
        f"timed out after {msg.subtask.timeout_s:g}s"
        if outcome.timed_out
        else f"agent exited with {outcome.exit_code}"
    )
    return fail(
        state,
        error,
        outcome.error_type or ("Timeout" if outcome.timed_out else "AgentFailed"),
        output=outcome.output,
        deliverables=checks,
        log=log_path,
    )
