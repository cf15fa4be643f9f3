"""Runs started through MCP: each in a background thread of the server process, kept
in a registry the status tools read.

An MCP tool call must return promptly (clients time requests out, and a model waits on
the answer), while a feature run lasts minutes: so ``run`` starts the orchestrator on a
thread and returns a handle at once, and ``run_status`` reads what the thread has
recorded. The handle is the server's own id (``mcp-…``), known before the orchestrator
has created batchq's run id, which it learns from the first submission or result.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from batchq.errors import BatchqError
from batchq.local.connection import Connection
from batchq.models import BatchReport, FailurePolicy, RunMode, SubtaskResult, feature_key
from batchq.protocol import BatchState, CancelMode, EventKind
from batchq.run.orchestrator import Orchestrator, RunOptions, RunResult
from batchq.run.producer import Submission
from batchq.store.state import Event

__all__ = ["RunRegistry", "RunState", "TrackedRun"]


class RunState(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass
class TrackedRun:
    """What one background run has recorded so far; read under :attr:`lock`."""

    run_id: str
    feature: str
    mode: RunMode
    policy: FailurePolicy
    seqs: list[str] | None
    planned: int
    """Subtasks this run expects to run: the progress total of ``run_status``."""
    state: RunState = RunState.RUNNING
    batchq_run_id: str | None = None
    current_batch: int | None = None
    reports: list[BatchReport] = field(default_factory=list)
    results: dict[str, SubtaskResult] = field(default_factory=dict)
    error: str | None = None
    cancel_requested: bool = False
    cancel_applied: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    done: threading.Event = field(default_factory=threading.Event, repr=False)


class RunRegistry:
    """Starts runs on the server's connection and keeps every one it started."""

    def __init__(self, root: Path, conn: Connection) -> None:
        self.root, self.conn = root, conn
        self._runs: dict[str, TrackedRun] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def get(self, run_id: str) -> TrackedRun | None:
        with self._lock:
            return self._runs.get(run_id)

    def all(self) -> list[TrackedRun]:
        with self._lock:
            return list(self._runs.values())

    def start(
        self,
        feature: str,
        seqs: list[str] | None,
        options: RunOptions,
        planned: int,
    ) -> TrackedRun:
        """Start the run on a daemon thread and return its record at once."""
        tracked = TrackedRun(
            run_id=f"mcp-{secrets.token_hex(6)}",
            feature=feature,
            mode=options.mode,
            policy=options.policy,
            seqs=seqs,
            planned=planned,
        )
        options.on_submit = self._on_submit(tracked)
        options.on_events = self._on_events(tracked)
        options.on_report = self._on_report(tracked)
        thread = threading.Thread(
            target=self._work,
            args=(tracked, options),
            name=f"batchq-mcp-{tracked.run_id}",
            daemon=True,
        )
        with self._lock:
            self._runs[tracked.run_id] = tracked
            self._threads.append(thread)
        thread.start()
        return tracked

    def _work(self, tracked: TrackedRun, options: RunOptions) -> None:
        """The orchestrator, run to its end; never raises (a thread's exception would
        only reach stderr, and the client would see a run that never ends)."""
        orch = Orchestrator(
            self.root, tracked.feature, self.conn.settings, self.conn.app, self.conn.store
        )
        try:
            result: RunResult = (
                orch.run(options) if tracked.seqs is None else orch.run_batch(tracked.seqs, options)
            )
        except BatchqError as exc:
            self._finish(tracked, RunState.FAILED, str(exc))
        except Exception as exc:  # a bug or an outage: reported, never lost
            self._finish(tracked, RunState.FAILED, f"{type(exc).__name__}: {exc}")
        else:
            with tracked.lock:
                tracked.batchq_run_id = result.run_id
                cancelled = tracked.cancel_requested
            if result.ok:
                state = RunState.COMPLETED
            else:
                state = RunState.CANCELLED if cancelled else RunState.FAILED
            self._finish(tracked, state, None)

    @staticmethod
    def _finish(tracked: TrackedRun, state: RunState, error: str | None) -> None:
        with tracked.lock:
            tracked.state = state
            tracked.error = error
            tracked.current_batch = None
        tracked.done.set()

    # --- callbacks from the orchestrator's thread -----------------------------------

    def _on_submit(self, tracked: TrackedRun) -> Callable[[Submission], None]:
        def submitted(sub: Submission) -> None:
            with tracked.lock:
                tracked.batchq_run_id = sub.run.run_id
                tracked.current_batch = sub.batch.number
            self._apply_cancel(tracked)

        return submitted

    def _on_events(self, tracked: TrackedRun) -> Callable[[list[Event]], None]:
        def events(batch: list[Event]) -> None:
            for event in batch:
                if event.kind != EventKind.FINISHED or not event.data:
                    continue
                try:
                    result = SubtaskResult.model_validate(event.data)
                except ValueError:
                    continue
                with tracked.lock:
                    tracked.results[result.seq] = result
                    tracked.batchq_run_id = tracked.batchq_run_id or result.run_id
            self._apply_cancel(tracked)

        return events

    def _on_report(self, tracked: TrackedRun) -> Callable[[BatchReport], None]:
        def reported(report: BatchReport) -> None:
            with tracked.lock:
                tracked.reports.append(report)
                tracked.batchq_run_id = report.run_id
                for result in report.results:
                    tracked.results[result.seq] = result

        return reported

    # --- cancellation ---------------------------------------------------------------

    def cancel(self, tracked: TrackedRun) -> list[int]:
        """Ask the run to stop (running agents are killed); returns the batches
        flagged now. A run whose batchq id is not known yet is flagged as soon as it
        is (on its first submission or result)."""
        with tracked.lock:
            if tracked.state is not RunState.RUNNING:
                return []
            tracked.cancel_requested = True
            tracked.cancel_applied = False
        return self._apply_cancel(tracked)

    def _apply_cancel(self, tracked: TrackedRun) -> list[int]:
        with tracked.lock:
            if not tracked.cancel_requested or tracked.cancel_applied:
                return []
            run_id = tracked.batchq_run_id
            if run_id is None:
                fkey = feature_key(tracked.feature, self.root)
                recent = self.conn.store.recent_runs(fkey, 1)
                run_id = recent[0] if recent else None
            if run_id is None:
                return []
            flagged = []
            for n, state in self.conn.store.batch_states(run_id).items():
                if state == BatchState.RUNNING:
                    self.conn.store.cancel(run_id, n, CancelMode.TERMINATE)
                    flagged.append(n)
            tracked.cancel_applied = bool(flagged) or tracked.batchq_run_id is not None
            return flagged

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Cancel what still runs and give the threads ``timeout_s`` to settle, so the
        task files record the cancellation before the stack goes away."""
        for tracked in self.all():
            if tracked.state is RunState.RUNNING:
                try:
                    self.cancel(tracked)
                except Exception:  # Redis already gone: nothing more to flag
                    continue
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=max(0.1, timeout_s / max(1, len(threads))))
