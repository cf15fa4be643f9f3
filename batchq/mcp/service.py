"""What each MCP tool does, as plain calls: each returns a model (the tool's structured
output) and a text rendering of it (what a model reads), or raises a
:class:`~batchq.errors.BatchqError` naming the file and field at fault.

Kept apart from :mod:`.server` so the logic is tested without a protocol in between,
and so the server module holds only the MCP binding (schemas, progress, resources).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from batchq.cli.render import render_json, render_markdown, render_plan
from batchq.core import planner
from batchq.errors import BatchqError, InputError, UnsafeBatchError, UsageError
from batchq.files import taskfiles
from batchq.files.reading import NotRegular, open_regular
from batchq.local.connection import Connection
from batchq.mcp.runs import RunRegistry, RunState, TrackedRun
from batchq.models import (
    BatchReport,
    FailurePolicy,
    Feature,
    Plan,
    ResultState,
    RunMode,
    feature_key,
)
from batchq.protocol import BatchState, CancelMode
from batchq.run import preflight
from batchq.run.orchestrator import RunOptions, saved_reports
from batchq.settings import Settings

__all__ = [
    "CONTEXT_LIMIT",
    "BatchDone",
    "CancelOut",
    "CompleteOut",
    "FeatureCheck",
    "FeatureList",
    "FeatureSummary",
    "ReportOut",
    "RunStarted",
    "RunStatus",
    "Service",
    "SubtaskOutcome",
    "ValidateOut",
]

CONTEXT_LIMIT = 1024 * 1024
ICON = {
    ResultState.COMPLETED: "✓",
    ResultState.FAILED: "✗",
    ResultState.TIMED_OUT: "⏱",
    ResultState.CANCELLED: "⊘",
}


# --- structured outputs ---------------------------------------------------------------


class FeatureSummary(BaseModel):
    feature: str
    name: str
    status: str
    completed: int
    total: int
    problems: list[str] = Field(default_factory=list)


class FeatureList(BaseModel):
    root: str
    features: list[FeatureSummary]
    unreadable: dict[str, str] = Field(
        default_factory=dict, description="Features whose files could not be loaded, with why."
    )


class FeatureCheck(BaseModel):
    ok: bool
    errors: list[str]


class ValidateOut(BaseModel):
    ok: bool
    features: dict[str, FeatureCheck]


class RunStarted(BaseModel):
    run_id: str = Field(description="The handle run_status, cancel and report take.")
    feature: str
    state: RunState
    mode: RunMode
    seqs: list[str] | None
    planned: int = Field(description="Subtasks this run expects to run.")
    next_step: str


class SubtaskOutcome(BaseModel):
    seq: str
    title: str
    batch: int
    result: ResultState
    duration_s: float
    summary: str = ""
    error: str | None = None


class BatchDone(BaseModel):
    batch: int
    status: str
    seqs: list[str]
    completed: int
    failed: int
    total: int


class RunStatus(BaseModel):
    run_id: str
    feature: str
    state: RunState
    mode: RunMode
    batchq_run_id: str | None = Field(
        description="batchq's own run id (task files, `batchq report --run`), once known."
    )
    current_batch: int | None
    planned: int
    finished: int = Field(description="Subtasks with a result so far.")
    batches_done: list[BatchDone]
    results: list[SubtaskOutcome]
    error: str | None
    next_step: str


class ReportOut(BaseModel):
    feature: str
    run_id: str
    reports: list[BatchReport]


class CancelOut(BaseModel):
    feature: str
    run_id: str | None
    cancelled: list[str] = Field(description="run_id:batch of every batch flagged to stop.")


class CompleteOut(BaseModel):
    feature: str
    seq: str
    summary: str
    completed: int
    total: int


# --- the service ----------------------------------------------------------------------


class Service:
    """The tools' logic on one project root and the server's connection."""

    def __init__(self, root: Path, settings: Settings, conn: Connection) -> None:
        self.root, self.settings, self.conn = root, settings, conn
        self.runs = RunRegistry(root, conn)

    def _feature(self, name: str) -> Feature:
        return taskfiles.load_feature(self.root, name)

    # --- read-only -----------------------------------------------------------------

    def list_features(self) -> tuple[FeatureList, str]:
        features: list[FeatureSummary] = []
        unreadable: dict[str, str] = {}
        for name in taskfiles.list_features(self.root):
            try:
                f = self._feature(name)
            except BatchqError as exc:
                unreadable[name] = str(exc)
                continue
            features.append(
                FeatureSummary(
                    feature=f.name,
                    name=f.task.name,
                    status=f.task.status.value,
                    completed=f.completed_count,
                    total=len(f.subtasks),
                    problems=[str(p) for p in planner.problems(f, self.settings.protected_paths)],
                )
            )
        out = FeatureList(root=str(self.root), features=features, unreadable=unreadable)
        lines = [
            f"{s.feature}: {s.name} [{s.status}] {s.completed}/{s.total} completed"
            + (f", {len(s.problems)} problem(s)" if s.problems else "")
            for s in features
        ]
        lines += [f"{name}: unreadable: {why}" for name, why in unreadable.items()]
        return out, "\n".join(lines) or f"No active features under {self.root}/.tmp/tasks."

    def validate(self, feature: str | None) -> tuple[ValidateOut, str]:
        names = [feature] if feature else taskfiles.list_features(self.root)
        checks: dict[str, FeatureCheck] = {}
        for name in names:
            try:  # exactly what `batchq validate` and `run` check (the one pre-flight)
                errors = [str(p) for p in preflight.check(self.root, name, self.settings).problems]
            except BatchqError as exc:
                errors = [str(exc)]
            checks[name] = FeatureCheck(ok=not errors, errors=errors)
        out = ValidateOut(ok=all(c.ok for c in checks.values()), features=checks)
        lines: list[str] = []
        for name, check in checks.items():
            lines.append(f"✓ {name}: valid" if check.ok else f"✗ {name}:")
            lines += [f"  - {e}" for e in check.errors]
        return out, "\n".join(lines) or "No active features to validate."

    def plan(self, feature: str) -> tuple[Plan, str]:
        f = self._feature(feature)
        schedule = planner.plan_for(f, self.settings)
        return schedule, render_plan(schedule, f)

    # --- runs ----------------------------------------------------------------------

    def run(
        self,
        feature: str,
        seqs: list[str] | None,
        mode: RunMode,
        on_failure: FailurePolicy,
        context: str | None,
    ) -> tuple[RunStarted, str]:
        """Check everything a run would refuse, then start it in the background."""
        f = preflight.require(self.root, feature, self.settings, seqs=seqs)
        busy = [t for t in self.runs.all() if t.feature == f.name and not t.done.is_set()]
        if busy:
            raise UsageError(
                f"{f.name} already has a run in progress: {busy[0].run_id} "
                "(follow it with run_status, or cancel it)"
            )
        if seqs is not None:
            if mode is RunMode.FLOW:
                raise UsageError("seqs runs one explicit batch; mode flow does not apply to it")
            if not seqs:
                raise UsageError("seqs: give at least one subtask, or leave seqs out")
            violations = planner.check_batch(f, seqs, self.settings.protected_paths)
            if violations:
                raise UnsafeBatchError(violations)
            planned = len(seqs)
        else:
            planned = sum(len(b.seqs) for b in planner.plan_for(f, self.settings).batches)
        options = RunOptions(
            policy=on_failure,
            mode=mode,
            retry_failed=seqs is None,
            context=self._context(context),
        )
        tracked = self.runs.start(f.name, seqs, options, planned)
        out = RunStarted(
            run_id=tracked.run_id,
            feature=f.name,
            state=RunState.RUNNING,
            mode=mode,
            seqs=seqs,
            planned=planned,
            next_step=f"call run_status with run_id={tracked.run_id} and wait_s=30 until "
            "state is not running",
        )
        what = f"batch {', '.join(seqs)}" if seqs else f"{planned} subtask(s), {mode.value} mode"
        return out, f"Started run {tracked.run_id} of {f.name}: {what}.\nNext: {out.next_step}"

    def _context(self, path: str | None) -> str:
        """The session context file: inside the project, a regular UTF-8 file of at
        most 1 MiB (over HTTP a client must not read the server's other files)."""
        if not path:
            return ""
        target = (self.root / path).resolve()
        if not target.is_relative_to(self.root):
            raise UsageError(f"context: {path} is outside the project root {self.root}")
        try:
            with open_regular(target) as handle:
                data = handle.read(CONTEXT_LIMIT + 1)
        except NotRegular as exc:
            raise UsageError(f"context: {path}: {exc}") from exc
        except OSError as exc:
            raise UsageError(f"context: cannot read {path}: {exc.strerror}") from exc
        if len(data) > CONTEXT_LIMIT:
            raise InputError(f"context: {path} is over 1 MiB")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"context: {path} is not UTF-8 text") from exc

    def tracked(self, run_id: str) -> TrackedRun:
        tracked = self.runs.get(run_id)
        if tracked is None:
            known = ", ".join(t.run_id for t in self.runs.all()) or "none yet"
            raise UsageError(
                f"run_id: no run {run_id!r} was started by this server (known: {known})"
            )
        return tracked

    def status(self, run_id: str) -> tuple[RunStatus, str]:
        tracked = self.tracked(run_id)
        with tracked.lock:
            reports = list(tracked.reports)
            results = sorted(tracked.results.values(), key=lambda r: (r.batch, int(r.seq)))
            out = RunStatus(
                run_id=tracked.run_id,
                feature=tracked.feature,
                state=tracked.state,
                mode=tracked.mode,
                batchq_run_id=tracked.batchq_run_id,
                current_batch=tracked.current_batch,
                planned=tracked.planned,
                finished=len(results),
                batches_done=[_batch_done(r) for r in reports],
                results=[
                    SubtaskOutcome(
                        seq=r.seq,
                        title=r.title,
                        batch=r.batch,
                        result=r.result,
                        duration_s=round(r.duration_s, 3),
                        summary=r.summary,
                        error=r.error,
                    )
                    for r in results
                ],
                error=tracked.error,
                next_step=_next_step(tracked, reports),
            )
        return out, _status_text(out)

    def report(
        self, feature: str, run_id: str | None, fmt: Literal["markdown", "json"]
    ) -> tuple[ReportOut, str]:
        f = self._feature(feature)
        wanted = run_id
        if run_id is not None and run_id.startswith("mcp-"):
            tracked = self.tracked(run_id)
            wanted = tracked.batchq_run_id
            if wanted is None:
                raise UsageError(f"run {run_id} has no report yet: its first batch is running")
        reports = self._reports(f, wanted)
        out = ReportOut(feature=f.name, run_id=reports[0].run_id, reports=reports)
        if fmt == "json":
            text = json.dumps([json.loads(render_json(r)) for r in reports], indent=2)
        else:
            text = "\n\n".join(render_markdown(r) for r in reports)
        return out, text

    def _reports(self, f: Feature, run_id: str | None) -> list[BatchReport]:
        """From Redis while it holds them, else the copies saved beside the tasks."""
        refs = self.conn.store.report_refs(feature_key(f.name, f.root))
        if refs:
            latest = run_id or refs[0][0]
            found = [self.conn.store.report(r, n) for r, n in refs if r == latest]
            reports = sorted((x for x in found if x is not None), key=lambda x: x.batch)
            if reports:
                return reports
        saved = saved_reports(f)
        wanted = run_id or (saved[-1].run_id if saved else None)
        chosen = [r for r in saved if r.run_id == wanted]
        if not chosen:
            raise UsageError(f"run_id: no reports of run {run_id} for {f.name}")
        return chosen

    def cancel(self, feature: str | None, run_id: str | None) -> tuple[CancelOut, str]:
        """Stop one run of this server (``run_id``), or every running batch of a
        feature (``feature``: also runs started elsewhere, like ``batchq cancel``)."""
        if run_id is not None:
            tracked = self.tracked(run_id)
            flagged = self.runs.cancel(tracked)
            bid = tracked.batchq_run_id or "pending"
            out = CancelOut(
                feature=tracked.feature,
                run_id=run_id,
                cancelled=[f"{bid}:{n}" for n in flagged],
            )
            state = "stopping" if tracked.cancel_requested else tracked.state.value
            return out, f"Run {run_id}: {state}; flagged {', '.join(out.cancelled) or 'no batch'}."
        if feature is None:
            raise UsageError("cancel needs run_id or feature")
        f = self._feature(feature)
        cancelled: list[str] = []
        for tracked in self.runs.all():
            if tracked.feature == f.name:
                self.runs.cancel(tracked)
        for rid in self.conn.store.recent_runs(feature_key(f.name, f.root), 5):
            for n, state in self.conn.store.batch_states(rid).items():
                if state == BatchState.RUNNING:
                    self.conn.store.cancel(rid, n, CancelMode.TERMINATE)
                    cancelled.append(f"{rid}:{n}")
        out = CancelOut(feature=f.name, run_id=None, cancelled=cancelled)
        lines = [f"Cancelled batch {c}" for c in cancelled] or [f"No running batch of {f.name}."]
        return out, "\n".join(lines)

    def complete(self, feature: str, seq: str, summary: str) -> tuple[CompleteOut, str]:
        text = summary.strip()
        if not text:
            raise UsageError("summary: give a one-line summary of what was done")
        updated = taskfiles.complete_subtask(self.root, feature, seq, text)
        real = next((s.seq for s in updated.subtasks if s.seq == seq), None)
        if real is None and seq.isascii() and seq.isdigit():
            real = next((s.seq for s in updated.subtasks if s.number == int(seq)), seq)
        out = CompleteOut(
            feature=feature,
            seq=real or seq,
            summary=text,
            completed=updated.completed_count,
            total=len(updated.subtasks),
        )
        return out, (
            f"✓ Marked {feature} {out.seq} completed: {text} "
            f"({out.completed}/{out.total} completed)"
        )


def _batch_done(report: BatchReport) -> BatchDone:
    return BatchDone(
        batch=report.batch,
        status=report.status.value,
        seqs=[r.seq for r in report.results],
        completed=report.completed,
        failed=report.failed,
        total=report.total,
    )


def _next_step(tracked: TrackedRun, reports: list[BatchReport]) -> str:
    last = reports[-1].next.recommendation if reports else ""
    if tracked.state is RunState.RUNNING:
        return f"call run_status with run_id={tracked.run_id} and wait_s=30 again"
    if tracked.state is RunState.COMPLETED:
        return last or f"done: call report with feature={tracked.feature}"
    if tracked.state is RunState.CANCELLED:
        return f"cancelled: call run with feature={tracked.feature} to resume"
    if tracked.error is not None:
        return f"fix the error, then call run again: {tracked.error}"
    return last or f"call report with feature={tracked.feature} and run_id={tracked.run_id}"


def _status_text(status: RunStatus) -> str:
    where = f", batch {status.current_batch}" if status.current_batch is not None else ""
    lines = [
        f"Run {status.run_id} of {status.feature}: {status.state.value}{where} "
        f"({status.finished}/{status.planned} subtasks finished)"
    ]
    for r in status.results:
        line = f"  {ICON[r.result]} {r.seq} {r.title} [{r.result.value}] {r.duration_s:.1f}s"
        if r.error:
            line += f" — {r.error.splitlines()[0][:160]}"
        lines.append(line)
    if status.error:
        lines.append(f"error: {status.error}")
    lines.append(f"Next: {status.next_step}")
    return "\n".join(lines)
