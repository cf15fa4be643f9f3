"""The commands that execute or observe runs: run, batch, report, watch, cancel,
worker, flower, up, down.

Celery, kombu and redis are imported inside the commands that need them, never at
module level: every ``batchq`` process registers these commands, and the task-file
commands (``status``, ``complete``...) must start without paying for them.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import signal
import sys
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from batchq.cli.common import Context, JsonOpt, RootOpt, emit, emit_json, err, keep_root, out
from batchq.cli.render import markdown_lines, render_json, render_markdown, render_table
from batchq.cli.views import format_reruns
from batchq.core.textsafe import inline
from batchq.errors import (
    BatchqError,
    ExecutionFailed,
    InputError,
    LockedError,
    RunCancelled,
    UsageError,
)
from batchq.models import (
    BatchReport,
    BatchStatus,
    FailurePolicy,
    Feature,
    Isolation,
    ResultState,
    RunMode,
    Workspace,
    WriteCheck,
    feature_key,
)
from batchq.protocol import CONTROL_QUEUE, BatchState, CancelMode, EventKind, agent_queue
from batchq.settings import Settings, load_settings

if TYPE_CHECKING:
    from rich.progress import Progress

    from batchq.run.orchestrator import RunResult
    from batchq.run.producer import Submission
    from batchq.store.state import Event

__all__ = ["register"]


class PoolName(StrEnum):
    prefork = "prefork"
    threads = "threads"
    solo = "solo"


OnFailure = Annotated[
    FailurePolicy,
    typer.Option("--on-failure", help="graceful (default), terminate or continue."),
]
ModeOpt = Annotated[
    RunMode,
    typer.Option(
        "--mode",
        help="batch (default): batch after batch; flow: each subtask as soon as its own "
        "dependencies are completed.",
    ),
]
UndeclaredOpt = Annotated[
    WriteCheck | None,
    typer.Option(
        "--undeclared-writes",
        help="Writes outside the declared deliverables: warn (default), fail or off "
        "(default from BATCHQ_UNDECLARED_WRITES).",
    ),
]
IsolateOpt = Annotated[
    Isolation | None,
    typer.Option(
        "--isolate",
        help="worktree: each subtask in its own git worktree at a snapshot of the "
        "workspace (one per batch; per wave of ready subtasks with --mode flow), its "
        "declared deliverables merged back; none (default from BATCHQ_ISOLATE).",
    ),
]
WorkspaceOpt = Annotated[
    Workspace | None,
    typer.Option(
        "--workspace",
        help="git: workers on other hosts fetch each batch's snapshot from BATCHQ_GIT_REMOTE "
        "and push their results back (implies --isolate worktree); shared (default from "
        "BATCHQ_WORKSPACE): workers see this folder.",
    ),
]
ContextOpt = Annotated[
    Path | None, typer.Option("--context", help="Shared session context file for every agent.")
]
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", help="Embedded mode: local worker processes.")
]

ICON = {
    ResultState.COMPLETED: "✓",
    ResultState.FAILED: "✗",
    ResultState.TIMED_OUT: "⏱",
    ResultState.CANCELLED: "⊘",
}


def _read_context(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"--context: cannot read {path}: {exc.strerror}") from exc
    if len(data) > 1024 * 1024:
        raise InputError(f"--context: {path} is {len(data)} bytes; the limit is 1 MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"--context: {path} is not UTF-8 text") from exc


class _Live:
    """Renders progress events: a bar per batch and a line per finished subtask, or
    newline-delimited JSON events with ``--json``.

    ``run`` opens each batch's bar when it submits the batch; ``watch`` (``follow``)
    joins a run from its event stream alone, so it opens a bar, of unknown length, at
    a batch's first event. In flow mode batches overlap, so one bar follows the whole
    run and each batch's report is printed above it as the batch closes.
    """

    def __init__(
        self,
        as_json: bool,
        *,
        follow: bool = False,
        flow: bool = False,
        root: Path | None = None,
    ) -> None:
        self.as_json = as_json
        self.root = root
        """The ``--root`` the user gave, kept in the reports' advice."""
        self.follow = follow
        self.flow = flow
        self.progress: Progress | None = None
        """The open batch's bar, on a terminal only."""
        self.opened = False
        """Whether a batch (or the flow) is open, with or without a bar."""
        self.task: Any = None
        self.batch: int | None = None
        self.reported: set[int] = set()

    def submitted(self, sub: Submission) -> None:
        if self.as_json:
            self._json(
                {
                    "event": "batch_submitted",
                    "run_id": sub.run.run_id,
                    "batch": sub.batch.number,
                    "seqs": sub.expected,
                }
            )
            return
        self._open(sub.batch.number, sub.expected)

    def _open(self, batch: int | str, seqs: list[str] | None) -> None:
        self.close()
        label = batch if isinstance(batch, str) else f"Batch {batch}"
        self.batch = batch if isinstance(batch, int) else None
        self.opened = True
        header = f"▶ {label}" + (f": {', '.join(seqs)}" if seqs else "")
        if not out.is_terminal:
            # Rich would draw no bar here (its live display stays silent off a terminal)
            # and print the header as it is: written at once, without importing Rich.
            emit([header])
            return
        out.print(header, markup=False)
        # lazy: rich.progress costs every other command's start-up a tenth of its imports
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("  {task.fields[batch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=out.console,
            transient=True,
        )
        self.progress.start()
        total = len(seqs) if seqs else None
        self.task = self.progress.add_task("batch", total=total, batch=label)

    def events(self, events: list[Event]) -> None:
        if self.flow and not self.opened and not self.as_json and events:
            self._open("Flow", None)
        lines: list[str] = []
        for event in events:
            if self.as_json:
                self._json(
                    {
                        "event": event.kind,
                        "batch": event.batch,
                        "seq": event.seq,
                        **({k: v for k, v in event.data.items() if k != "output_tail"}),
                    }
                )
                continue
            if (
                self.follow
                and not self.flow
                and event.kind in (EventKind.STARTED, EventKind.FINISHED)
                and event.batch != self.batch
                and event.batch not in self.reported
            ):
                self._say(lines)
                lines = []
                self._open(event.batch, None)
            if event.kind == EventKind.FINISHED:
                data = event.data
                state = ResultState(data.get("result", "failed"))
                line = (
                    f"  {ICON[state]} {event.seq} {inline(str(data.get('title', '')))} "
                    f"[{state.value}] {float(data.get('duration_s', 0.0)):.1f}s"
                )
                if data.get("error"):
                    line += f" — {inline(str(data['error']))[:160]}"
                lines.append(line)
                if self.progress is not None:
                    self.progress.advance(self.task)
            elif event.kind == EventKind.FAILED_FAST and self.opened:
                then = (
                    "what depends on it is skipped"
                    if self.flow
                    else "the batch will not be followed by the next one"
                )
                lines.append(f"  ! {event.seq} failed: {then}")
        self._say(lines)

    def _say(self, lines: Iterable[str]) -> None:
        """Progress lines, verbatim: on a terminal through the live display (which
        redraws its bar below them); elsewhere (a pipe, a file, CI) as
        :func:`~batchq.cli.common.emit` writes them, since Rich would only re-wrap and
        re-scan each of a big batch's thousands of lines for nothing."""
        console = self.progress.console if self.progress is not None else out
        if console.is_terminal:
            for line in lines:
                console.print(line, markup=False)
        else:
            emit(lines)

    def reruns(self, reasons: dict[str, list[str]]) -> None:
        """Completed subtasks a ``--changed`` run resets, with why, before they run."""
        if self.as_json:
            for seq, why in reasons.items():
                self._json({"event": "rerun", "seq": seq, "reasons": why})
            return
        for line in format_reruns(reasons):
            (self.progress.console if self.progress else out).print(line, markup=False)

    def report(self, report: BatchReport) -> None:
        self.reported.add(report.batch)
        if not self.flow:
            self.close()
        if self.as_json:
            self._json({"event": "batch_report", "report": report.model_dump(mode="json")})
        else:
            lines = markdown_lines(report)
            self._say(itertools.chain((keep_root(line, self.root) for line in lines), [""]))

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        self.opened = False
        self.batch = None

    @staticmethod
    def _json(data: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(data, default=str) + "\n")
        sys.stdout.flush()


RUNS = frozenset({"run", "batch"})
"""The commands that run batches: :func:`preload` imports what they need."""


def preload() -> None:
    """Import the run machinery ``run`` and ``batch`` import on first use, ahead of
    time: :mod:`batchq.entry` does it while the garbage collector is paused (Celery,
    kombu, redis and the orchestrator are most of a run's imports)."""
    # lazy: celery, redis and the run machinery stay out of the other commands' start-up
    from batchq.local import connection  # noqa: F401
    from batchq.run import merge, orchestrator, preflight, remote  # noqa: F401


def _execute(
    ctx: Context,
    feature: str,
    seqs: list[str] | None,
    policy: FailurePolicy,
    retry_failed: bool,
    context: Path | None,
    workers: int | None,
    as_json: bool,
    changed: bool = False,
    mode: RunMode = RunMode.BATCH,
    write_check: WriteCheck | None = None,
    isolate: Isolation | None = None,
    workspace: Workspace | None = None,
) -> RunResult:
    """Validate first (nothing starts on bad input), then run on the right Redis."""
    # lazy: celery, redis and the run machinery stay out of start-up
    from batchq.local.connection import connect
    from batchq.run import merge, remote
    from batchq.run.orchestrator import Orchestrator, RunOptions
    from batchq.run.preflight import require

    # The run's one pre-flight, before any Redis or worker starts (``prechecked``).
    # Its feature is not kept: the run loads its own, and a 5,000-subtask one held
    # here for the whole run is about 10 MiB of models the files no longer match.
    name = require(ctx.root, feature, ctx.settings, seqs=seqs, workspace=workspace).name
    if remote.check(ctx.root, ctx.settings, workspace or ctx.settings.workspace) is not None:
        isolate = Isolation.WORKTREE  # workspace = git is isolation over a remote
    merge.check(ctx.root, isolate or ctx.settings.isolate)
    text = _read_context(context)
    live = _Live(as_json, flow=mode is RunMode.FLOW, root=ctx.given_root)
    options = RunOptions(
        policy=policy,
        mode=mode,
        retry_failed=retry_failed,
        context=text,
        on_events=live.events,
        on_report=live.report,
        on_submit=live.submitted,
        changed=changed,
        on_rerun=live.reruns,
        write_check=write_check,
        isolate=isolate,
        workspace=workspace,
        prechecked=True,
        on_note=lambda line: err.print(line, markup=False),
    )
    with connect(ctx.settings, ctx.root, embedded_ok=True, workers=workers) as conn:
        options.cancel_on_interrupt = conn.embedded
        orch = Orchestrator(ctx.root, feature, conn.settings, conn.app, conn.store)
        try:
            return orch.run(options) if seqs is None else orch.run_batch(seqs, options)
        except KeyboardInterrupt:
            live.close()
            _interrupted(conn.embedded, name, ctx.root)
            raise
        finally:
            live.close()


def _interrupted(embedded: bool, name: str, root: Path) -> None:
    where = f" --root {shlex.quote(str(root))}"
    if embedded:
        err.print(
            "interrupted: cancelled the run and stopped the embedded stack; what finished is "
            "recorded, the rest is pending again. See what finished with "
            f"`batchq report {name}{where}`.",
            markup=False,
        )
    else:
        err.print(
            "interrupted: the run goes on on the workers. Follow it (and record its results) "
            f"with `batchq watch {name}{where}`, stop it with `batchq cancel {name}{where}`; "
            f"the next `batchq run {name}` adopts what it completed.",
            markup=False,
        )


def _ended(conn: Any, fkey: str, run_id: str, quiet_s: float) -> bool:
    """``watch`` stops when no live orchestrator holds the feature and the run has no
    batch in flight (or its members went quiet past ``stall_s`` with no live claim)."""
    # lazy: the run machinery stays out of start-up
    from batchq.run import holder

    current = conn.store.lock_holder(fkey)
    if current is not None and not holder.gone_here(current):
        return False
    running = [n for n, st in conn.store.batch_states(run_id).items() if st == BatchState.RUNNING]
    if not running:
        return quiet_s >= 1.0
    members = [seq for n in running for seq in conn.store.batch_members(run_id, n)]
    missing = [s for s in members if s not in conn.store.results(run_id, members)]
    if not missing:
        return quiet_s >= 1.0
    return quiet_s >= conn.settings.stall_s and not conn.store.live_claims(run_id, missing)


def _settle_orphan(
    ctx: Context, name: str, conn: Any, run_id: str, as_json: bool, *, cancelled: bool = False
) -> list[str]:
    """Record in the files what run ``run_id`` recorded in Redis when its orchestrator is
    gone (the next ``run`` would too); a live orchestrator does it itself. Returns the
    seqs written."""
    # lazy: the run machinery stays out of start-up
    from batchq.run import adopt
    from batchq.run.orchestrator import INTERRUPT_WAIT_S, Orchestrator

    orch = Orchestrator(ctx.root, name, conn.settings, conn.app, conn.store)
    try:
        with orch.exclusive():
            feature = ctx.feature(name)
            if not adopt.unsettled(conn.store, run_id, feature):
                return []
            done = adopt.settle(
                ctx.root,
                name,
                conn.store,
                conn.settings,
                run_id,
                reason=(
                    "cancelled (`batchq cancel`) before it finished"
                    if cancelled
                    else "its run ended without its orchestrator; it runs again"
                ),
                cancel=CancelMode.TERMINATE if cancelled else None,
                wait_s=INTERRUPT_WAIT_S if cancelled else 0.0,
            )
    except LockedError:  # an orchestrator runs the feature: it records its own results
        return []
    written = sorted([*done.adopted, *done.returned], key=lambda s: (len(s), s))
    if written and not as_json:
        err.print(
            f"recorded run {run_id} in the files of {name}: "
            f"{sum(r is ResultState.COMPLETED for r in done.adopted.values())} completed, "
            f"{len(done.returned)} back to pending{done.merged_note()}",
            markup=False,
        )
    return written


def _exit_with_run(run_id: str, reports: list[BatchReport]) -> None:
    statuses = {r.status for r in reports}
    if BatchStatus.PARTIAL_FAILURE in statuses:
        raise ExecutionFailed(f"run {run_id} failed (see the reports above)")
    if BatchStatus.CANCELLED in statuses:
        raise RunCancelled(f"run {run_id} was cancelled (see the reports above)")


def _cancel_embedded(f: Feature, as_json: bool) -> None:
    """No Redis another process could reach: an embedded run is interrupted as Ctrl-C
    would (it records what finished and returns the rest to pending), through the pid
    its orchestrator wrote in the feature's lock file."""
    # lazy: the run machinery stays out of start-up
    from batchq import layout
    from batchq.run import holder

    found = holder.recorded(layout.orchestrator_lock(f.path))
    if found is not None and found.pid != os.getpid():
        os.kill(found.pid, signal.SIGINT)
    if as_json:
        emit_json({"interrupted": found.pid if found else None})
    elif found is not None:
        emit(
            [
                f"Interrupted the embedded run of {f.name} (pid {found.pid}); it records what "
                "finished and returns the rest to pending."
            ]
        )
    else:
        emit([f"No running batch of {f.name}."])


def _conclude(result: RunResult, as_json: bool) -> None:
    statuses = {r.status for r in result.reports}
    failed = BatchStatus.PARTIAL_FAILURE in statuses
    cancelled = not failed and BatchStatus.CANCELLED in statuses
    if as_json:
        status = "failed" if failed else "cancelled" if cancelled else "completed"
        finished = {"event": "run_finished", "run_id": result.run_id, "ok": result.ok}
        sys.stdout.write(json.dumps(finished | {"status": status}) + "\n")
    if not result.reports:
        if not as_json:
            emit([f"Nothing to run: {result.feature.name} has no pending subtasks."])
        return
    if failed:
        raise ExecutionFailed(f"run {result.run_id} stopped: a batch failed (see the report above)")
    if cancelled:
        raise RunCancelled(f"run {result.run_id} was cancelled (see the report above)")


def _latest_reports(ctx: Context, feature: str, run_id: str | None) -> list[BatchReport]:
    """The reports of ``run_id`` (default: the latest run), from Redis or the saved
    copies; an unknown run is a usage error naming the runs that have reports."""
    # lazy: celery, redis and the run machinery stay out of start-up
    from batchq.local.connection import connect
    from batchq.run.orchestrator import saved_reports

    f = ctx.feature(feature)
    fkey = feature_key(f.name, f.root)
    known: list[str] = []
    try:
        with connect(ctx.settings, ctx.root, embedded_ok=False) as conn:
            refs = conn.store.report_refs(fkey)
            known = list(dict.fromkeys(r for r, _ in refs))
            if refs:
                wanted = run_id or refs[0][0]
                found = [conn.store.report(r, n) for r, n in refs if r == wanted]
                reports = sorted((x for x in found if x is not None), key=lambda x: x.batch)
                if reports:
                    return reports
    except Exception:  # no Redis now: the saved copies outlive an embedded run
        pass
    try:
        saved = saved_reports(f)
    except UsageError:
        saved = []
    known += [r for r in dict.fromkeys(x.run_id for x in reversed(saved)) if r not in known]
    if not known:
        raise UsageError(f"no reports for {feature} yet: run `batchq run {feature}`")
    wanted = run_id or (saved[-1].run_id if saved else known[0])
    reports = [r for r in saved if r.run_id == wanted]
    if not reports:
        shown = ", ".join(known[:10]) + (
            f" (and {len(known) - 10} more)" if len(known) > 10 else ""
        )
        raise UsageError(f"no reports of run {wanted!r} for {feature}; runs with reports: {shown}")
    return reports


def register(app: typer.Typer) -> None:
    """Add the execution commands to the CLI app."""

    @app.command()
    def run(
        feature: str,
        root: RootOpt = None,
        on_failure: OnFailure = FailurePolicy.GRACEFUL,
        no_retry_failed: Annotated[bool, typer.Option("--no-retry-failed")] = False,
        context: ContextOpt = None,
        workers: WorkersOpt = None,
        mode: ModeOpt = RunMode.BATCH,
        as_json: JsonOpt = False,
        changed: Annotated[
            bool,
            typer.Option(
                "--changed",
                help="Also rerun completed subtasks whose inputs or deliverables changed "
                "(see `batchq changed`).",
            ),
        ] = False,
        undeclared_writes: UndeclaredOpt = None,
        isolate: IsolateOpt = None,
        workspace: WorkspaceOpt = None,
        only: Annotated[
            list[str] | None,
            typer.Option(
                "--only",
                help="Run just this subtask (repeat for more), as one batch like `batchq "
                "batch`: one a batchq run left blocked (failed, timed out) is retried.",
            ),
        ] = None,
    ) -> None:
        """Run the feature batch after batch until done or a batch fails (--mode flow:
        each subtask as soon as its dependencies are completed)."""
        ctx = Context(root)
        if only and (changed or mode is RunMode.FLOW):
            raise UsageError("--only runs one explicit batch: no --changed or --mode flow")
        result = _execute(
            ctx,
            feature,
            only or None,
            on_failure,
            not no_retry_failed,
            context,
            workers,
            as_json,
            changed,
            mode,
            undeclared_writes,
            isolate,
            workspace,
        )
        _conclude(result, as_json)

    @app.command()
    def batch(
        feature: str,
        seqs: Annotated[list[str], typer.Argument()],
        root: RootOpt = None,
        on_failure: OnFailure = FailurePolicy.GRACEFUL,
        context: ContextOpt = None,
        workers: WorkersOpt = None,
        as_json: JsonOpt = False,
        undeclared_writes: UndeclaredOpt = None,
        isolate: IsolateOpt = None,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Run one explicit batch after checking it is safe to run in parallel."""
        ctx = Context(root)
        result = _execute(
            ctx,
            feature,
            seqs,
            on_failure,
            False,
            context,
            workers,
            as_json,
            write_check=undeclared_writes,
            isolate=isolate,
            workspace=workspace,
        )
        _conclude(result, as_json)

    @app.command()
    def report(
        feature: str,
        root: RootOpt = None,
        run_id: Annotated[str | None, typer.Option("--run")] = None,
        table: Annotated[bool, typer.Option("--table")] = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Show the batch reports of the latest (or a given) run."""
        ctx = Context(root)
        reports = _latest_reports(ctx, feature, run_id)
        if as_json:
            emit_json([json.loads(render_json(r)) for r in reports])
            return
        for r in reports:
            if table:
                out.print(render_table(r))
            else:
                out.print(keep_root(render_markdown(r), root), markup=False)
                out.print("", markup=False)

    @app.command()
    def diff(
        feature: str,
        seq: str,
        root: RootOpt = None,
        run_id: Annotated[str | None, typer.Option("--run")] = None,
    ) -> None:
        """Print an isolated subtask's patch (the latest run that isolated it, or --run)."""
        # lazy: the run machinery stays out of start-up
        from batchq.run.merge import subtask_patch

        ctx = Context(root)
        sys.stdout.write(subtask_patch(ctx.feature(feature), seq, run_id))

    @app.command()
    def watch(feature: str, root: RootOpt = None, as_json: JsonOpt = False) -> None:
        """Follow the feature's latest run until it ends, record its results in the files
        if its orchestrator went away, and exit with the run's code (1 failed, 4
        cancelled)."""
        # lazy: celery, redis and the run machinery stay out of start-up
        from batchq.local.connection import connect

        ctx = Context(root)
        f = ctx.feature(feature)
        fkey = feature_key(f.name, f.root)
        with connect(ctx.settings, ctx.root, embedded_ok=False) as conn:
            runs = conn.store.recent_runs(fkey, 1)
            if not runs:
                raise UsageError(f"no run of {feature} is recorded in Redis")
            run_id = runs[0]
            flow = conn.store.run_info(run_id).get("mode") == RunMode.FLOW.value
            live = _Live(as_json, follow=True, flow=flow, root=ctx.given_root)
            if as_json:
                live._json({"event": "watching", "run_id": run_id, "feature": f.name})
            else:
                out.print(f"Following run {run_id} of {f.name}", markup=False)
            last, quiet = "0-0", 0.0
            try:
                while True:
                    events = conn.store.events(run_id, last, block_ms=1000)
                    if events:
                        last, quiet = events[-1].id, 0.0
                        live.events(events)
                        for e in events:
                            if e.kind in (EventKind.BATCH_REPORTED, EventKind.BATCH_FORCED):
                                r = conn.store.report(run_id, e.batch)
                                if r is not None:
                                    live.report(r)
                    else:
                        quiet += 1.0
                    if _ended(conn, fkey, run_id, quiet):
                        break
            finally:
                live.close()
            _settle_orphan(ctx, f.name, conn, run_id, as_json)
            reports = [conn.store.report(run_id, n) for n in conn.store.batch_states(run_id)]
        _exit_with_run(run_id, [r for r in reports if r is not None])

    @app.command()
    def cancel(feature: str, root: RootOpt = None, as_json: JsonOpt = False) -> None:
        """Stop the feature's running batch (terminate: running agents are killed); an
        orphaned run (its orchestrator gone) is settled in the files and released."""
        # lazy: celery, redis and the run machinery stay out of start-up
        from batchq.local import embedded
        from batchq.local.connection import connect

        ctx = Context(root)
        f = ctx.feature(feature)
        if ctx.settings.redis_url is None and embedded.live_stack_url(ctx.root) is None:
            _cancel_embedded(f, as_json)
            return
        cancelled: list[str] = []
        settled: list[str] = []
        with connect(ctx.settings, ctx.root, embedded_ok=False) as conn:
            recent = conn.store.recent_runs(feature_key(f.name, f.root), 5)
            for run_id in recent:
                for n, state in conn.store.batch_states(run_id).items():
                    if state == BatchState.RUNNING:
                        conn.store.cancel(run_id, n, CancelMode.TERMINATE)
                        cancelled.append(f"{run_id}:{n}")
            if recent:
                settled = _settle_orphan(ctx, f.name, conn, recent[0], as_json, cancelled=True)
        if as_json:
            emit_json({"cancelled": cancelled, "settled": settled})
        else:
            lines = [f"Cancelled batch {c}" for c in cancelled] or [
                f"No running batch of {feature}."
            ]
            emit(lines)

    @app.command()
    def worker(
        agents: Annotated[
            str | None, typer.Option("--agents", help="Comma list; default all.")
        ] = None,
        concurrency: Annotated[int | None, typer.Option("--concurrency", "-c")] = None,
        pool: Annotated[PoolName, typer.Option("--pool", "-P")] = PoolName.prefork,
        loglevel: Annotated[str, typer.Option("--loglevel", "-l")] = "INFO",
        name: Annotated[str | None, typer.Option("--name", "-n")] = None,
        root: RootOpt = None,
    ) -> None:
        """Start a Celery worker for batchq (always consumes batchq.control)."""
        # lazy: celery, redis and the run machinery stay out of start-up
        from batchq.local.embedded import worker_argv

        settings = Context(root).settings if root else _settings_here()
        if settings.redis_url is None:
            raise UsageError("batchq worker needs BATCHQ_REDIS_URL (or run `batchq up`)")
        if agents:
            queues = [
                CONTROL_QUEUE,
                *(agent_queue(a.strip()) for a in agents.split(",") if a.strip()),
            ]
        else:
            queues = all_queues(settings)
        argv = worker_argv(
            0,
            queues,
            concurrency or settings.worker_concurrency or os.cpu_count() or 2,
            pool.value,
            loglevel=loglevel,
        )
        if name:
            argv[argv.index("-n") + 1] = name
        os.execvp(argv[0], argv)

    @app.command()
    def flower(
        address: Annotated[str | None, typer.Option("--address")] = None,
        port: Annotated[int | None, typer.Option("--port", help="0: any free port.")] = None,
        root: RootOpt = None,
    ) -> None:
        """Start Flower on the batchq app (basic auth required beyond loopback)."""
        # lazy: celery, redis and the run machinery stay out of start-up
        from batchq.local.flower import flower_command

        settings = Context(root).settings if root else _settings_here()
        url = settings.redis_url or _stack_url(root)
        argv, env = flower_command(settings, address, port, redis_url=url)
        os.execvpe(argv[0], argv, env)

    @app.command()
    def up(
        workers: Annotated[int, typer.Option("--workers")] = 1,
        flower_: Annotated[
            bool, typer.Option("--flower", help="Also start Flower (BATCHQ_FLOWER_* settings).")
        ] = False,
        root: RootOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Start a persistent local stack (Redis + workers, optionally Flower) that later
        commands use."""
        # lazy: celery, redis and the run machinery stay out of start-up
        from batchq.local import embedded
        from batchq.local.flower import check_bind, flower_env, local_url, wait_healthy

        ctx = Context(root)
        if embedded.live_stack_url(ctx.root):
            raise UsageError("a local stack is already running: `batchq down` first")
        settings = ctx.settings
        env = {k: v for k, v in os.environ.items() if k.startswith("BATCHQ_")}
        if flower_:
            check_bind(settings, settings.flower_address)  # before anything starts
            # Flower gets the stack's worker environment; add what Flower reads.
            env.update({k: v for k, v in flower_env(settings).items() if k.startswith("FLOWER_")})
        stack = embedded.EmbeddedStack(
            workers=workers,
            concurrency=settings.worker_concurrency or os.cpu_count() or 2,
            queues=all_queues(settings),
            env=env,
            cwd=ctx.root,
            aof=True,
            redis_binary=embedded.redis_server_binary(override=settings.redis_server),
            flower_port=settings.flower_port if flower_ else None,
            flower_address=settings.flower_address,
            settings=settings,
        )
        stack.start()
        try:
            if stack.flower is not None:
                wait_healthy(stack.flower, local_url(settings.flower_address, settings.flower_port))
        except BaseException:
            stack.stop()
            raise
        stack.detach()
        path = embedded.write_stack_file(ctx.root, stack)
        if as_json:
            emit_json({"url": stack.url, "stack_file": str(path), "flower_url": stack.flower_url})
            return
        lines = [f"✓ batchq stack up: {stack.url}", f"  recorded in {path}"]
        if stack.flower_url:
            auth = f"user {settings.flower_user}" if settings.flower_user else "no auth"
            lines.append(f"  Flower: {stack.flower_url} ({auth}; /metrics for Prometheus)")
        lines.append("  stop it with `batchq down`")
        emit(lines)

    @app.command()
    def down(root: RootOpt = None, as_json: JsonOpt = False) -> None:
        """Stop the local stack started by `batchq up`."""
        # lazy: celery, redis and the run machinery stay out of start-up
        from batchq.local import embedded

        ctx = Context(root)
        record = embedded.stop_recorded_stack(ctx.root)
        if as_json:
            emit_json({"stopped": record is not None})
        else:
            emit(["✓ batchq stack stopped" if record else "No local stack is running."])


def all_queues(settings: Settings) -> list[str]:
    """:func:`batchq.local.connection.all_queues`, imported on first use (it pulls in celery)."""
    # lazy: celery, redis and the run machinery stay out of start-up
    from batchq.local.connection import all_queues as queues

    return queues(settings)


def _settings_here() -> Any:

    return load_settings(Path.cwd())


def _stack_url(root: Path | None) -> str | None:
    """The Redis of a stack `batchq up` started here, if one runs (for `flower`)."""
    # lazy: celery, redis and the run machinery stay out of start-up
    from batchq.local import embedded

    try:
        return embedded.live_stack_url(Context(root).root)
    except BatchqError:  # not inside a project: no recorded stack to find
        return None
