"""The ``batchq`` commands: compute, then render, then set the exit code.

Every :class:`~batchq.errors.BatchqError` is caught once, in :func:`main`, and
mapped to its exit code (0 ok, 1 a subtask or batch failed, 2 invalid input or
usage, 3 infrastructure unreachable). No command prints a traceback for bad input.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Annotated, Any

import click
import typer

from batchq.cli import execution, gc, history, mcpserve, views
from batchq.cli.common import (
    Context,
    JsonOpt,
    RootOpt,
    app,
    emit,
    emit_json,
    error_line,
    keep_root,
    out,
)
from batchq.core import planner
from batchq.errors import BatchqError, SpecError, UsageError
from batchq.files import taskfiles
from batchq.models import Feature

__all__ = ["app", "main", "preload"]


def _loaded(
    ctx: Context, name: str | None
) -> tuple[list[tuple[Feature, list[Any]]], list[SpecError]]:
    """Load features for a read-only view; a malformed one is reported, not fatal to
    the others, and still makes the command exit 2."""
    good: list[tuple[Feature, list[Any]]] = []
    bad: list[SpecError] = []
    for n in ctx.names(name):
        try:
            feature = ctx.feature(n)
        except SpecError as exc:
            if name:
                raise
            bad.append(exc)
            continue
        good.append((feature, ctx.problems(feature)))
    return good, bad


def _finish_view(bad: list[SpecError]) -> None:
    for exc in bad:
        error_line(str(exc))
    if bad:
        raise typer.Exit(2)


def _feature_json(feature: Feature, problems: Sequence[Any]) -> dict[str, Any]:
    return {
        "feature": feature.name,
        "name": feature.task.name,
        "status": feature.task.status.value,
        "completed": feature.completed_count,
        "total": len(feature.subtasks),
        "progress": views.progress_percent(feature.completed_count, len(feature.subtasks)),
        "subtasks": [
            s.model_dump(mode="json", by_alias=True, exclude_none=True) for s in feature.subtasks
        ],
        "problems": [str(p) for p in problems],
        "warnings": feature.warnings,
    }


def _version(value: bool) -> None:
    if value:
        try:
            found = metadata.version("batchq")
        except metadata.PackageNotFoundError:  # run from a source tree, not installed
            found = "unknown (not installed)"
        emit([f"batchq {found}"])
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Run batches of subtask delegations in parallel on Celery workers."""


# --- task-file commands --------------------------------------------------------------


@app.command()
def status(
    feature: Annotated[str | None, typer.Argument()] = None,
    root: RootOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Progress of one feature or of every active one."""
    ctx = Context(root)
    loaded, bad = _loaded(ctx, feature)
    if as_json:
        emit_json([_feature_json(f, p) for f, p in loaded])
    else:
        # lazy: only with a configured Redis
        from batchq.cli.live import live_lines

        for i, (f, p) in enumerate(loaded):
            if i:
                emit([""])
            emit(views.format_status(f, p))
            emit(live_lines(f, ctx.settings))
        if not loaded and not bad:
            emit([views.NO_FEATURES])
    _finish_view(bad)


@app.command("next")
def next_(
    feature: Annotated[str | None, typer.Argument()] = None,
    root: RootOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Subtasks whose dependencies are satisfied."""
    ctx = Context(root)
    loaded, bad = _loaded(ctx, feature)
    if as_json:
        emit_json({f.name: [s.seq for s in planner.ready(f)] for f, _ in loaded})
    else:
        emit(views.format_next(loaded))
    _finish_view(bad)


@app.command()
def parallel(
    feature: Annotated[str | None, typer.Argument()] = None,
    root: RootOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ready subtasks that may run together, then the projected batches."""
    ctx = Context(root)
    loaded, bad = _loaded(ctx, feature)
    rows = []
    for f, p in loaded:
        plan = None if p else planner.plan_for(f, ctx.settings)
        rows.append((f, p, plan))
    if as_json:
        emit_json(
            {
                f.name: {
                    "ready": [s.seq for s in planner.ready(f) if s.parallel],
                    "batches": [b.seqs for b in plan.batches] if plan else [],
                    "problems": [str(x) for x in p],
                }
                for f, p, plan in rows
            }
        )
    else:
        emit(views.format_parallel(rows))
    _finish_view(bad)


@app.command()
def deps(feature: str, seq: str, root: RootOpt = None, as_json: JsonOpt = False) -> None:
    """The dependency tree of one subtask (cycles are marked, never followed)."""
    ctx = Context(root)
    f = ctx.feature(feature)
    problems = ctx.problems(f)
    if as_json:
        tree = planner.dependency_tree(f, seq)
        emit_json(
            {
                "feature": f.name,
                "seq": tree.seq,
                "title": tree.title,
                "status": tree.status,
                # Flat, in print order: a nested tree thousands deep cannot be dumped.
                "dependencies": [
                    {
                        "seq": row.node.seq,
                        "parent": row.parent,
                        "depth": row.depth,
                        "title": row.node.title,
                        "status": row.node.status,
                        "missing": row.node.missing,
                        "cycle": row.node.cycle,
                        "repeated": row.node.repeated,
                    }
                    for row in views.dep_rows(tree)
                ],
                "problems": [str(p) for p in problems],
            }
        )
    else:
        emit(views.format_deps(f, seq, problems))


@app.command()
def blocked(
    feature: Annotated[str | None, typer.Argument()] = None,
    root: RootOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Subtasks waiting on dependencies, and subtasks blocked by a failure."""
    ctx = Context(root)
    loaded, bad = _loaded(ctx, feature)
    if as_json:
        emit_json(
            {
                f.name: {
                    "waiting": {s.seq: d for s, d in planner.blocked_view(f)},
                    "blocked": [s.seq for s in f.subtasks if s.status.value == "blocked"],
                }
                for f, _ in loaded
            }
        )
    else:
        emit(views.format_blocked(loaded))
    _finish_view(bad)


@app.command()
def complete(
    feature: str,
    seq: str,
    summary: Annotated[list[str], typer.Argument()],
    root: RootOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Mark a subtask completed with a summary (words are joined; 200 characters max)."""
    ctx = Context(root)
    text = " ".join(summary).strip()
    if not text:
        raise UsageError("complete needs a summary: batchq complete <feature> <seq> <summary...>")
    updated = taskfiles.complete_subtask(ctx.root, feature, seq, text)
    real_seq = _written_seq(updated, seq)
    if as_json:
        emit_json(
            {
                "feature": feature,
                "seq": real_seq,
                "summary": text,
                "completed": updated.completed_count,
                "total": len(updated.subtasks),
            }
        )
    else:
        emit(views.format_complete(updated, real_seq, text))


def _written_seq(feature: Feature, seq: str) -> str:
    """The seq as the file writes it: ``complete feat 2`` completes ``02``."""
    if any(sub.seq == seq for sub in feature.subtasks):
        return seq
    if seq.isascii() and seq.isdigit():
        return next((sub.seq for sub in feature.subtasks if sub.number == int(seq)), seq)
    return seq


@app.command()
def validate(
    feature: Annotated[str | None, typer.Argument()] = None,
    root: RootOpt = None,
    as_json: JsonOpt = False,
    workspace: execution.WorkspaceOpt = None,
) -> None:
    """Every check `run` makes before it enqueues (files, graph, agents, allow-lists,
    environment, time budgets, the git remote under --workspace git), every problem of
    every file; exit 2 on any."""
    # lazy: the pre-flight knows the broker's limits, which pulls in celery
    from batchq.run.preflight import check

    ctx = Context(root)
    results: list[tuple[str, list[str]]] = []
    for name in ctx.names(feature):
        found = check(ctx.root, name, ctx.settings, workspace=workspace).problems
        results.append((name, [line for p in found for line in _problem_lines(p)]))
    if as_json:
        emit_json({name: {"ok": not errors, "errors": errors} for name, errors in results})
    else:
        emit(views.format_validate(results))
    if any(errors for _, errors in results):
        raise typer.Exit(2)


def _problem_lines(problem: BatchqError) -> list[str]:
    """A graph error holds several problems: one line each, as ``validate`` prints."""
    listed = getattr(problem, "problems", None)
    if isinstance(listed, list) and all(isinstance(p, str) for p in listed):
        return list(listed)
    return [str(problem)]


@app.command()
def archive(feature: str, root: RootOpt = None, as_json: JsonOpt = False) -> None:
    """Move a feature to .tmp/tasks/completed/ (refused while a file is malformed)."""
    ctx = Context(root)
    ctx.feature(feature)
    target = taskfiles.archive_feature(ctx.root, feature)
    if as_json:
        emit_json({"feature": feature, "archived_to": str(target)})
    else:
        emit([f"✓ Archived {feature} to {target.relative_to(ctx.root)}"])


@app.command()
def plan(
    feature: str,
    root: RootOpt = None,
    as_json: JsonOpt = False,
    mermaid: Annotated[bool, typer.Option("--mermaid", help="Mermaid graph.")] = False,
) -> None:
    """Preview the whole schedule: batches, and why each subtask sits where it does."""
    # lazy: rich's table machinery is only needed here
    from batchq.cli.render import render_plan

    ctx = Context(root)
    f = ctx.feature(feature)
    schedule = planner.plan_for(f, ctx.settings)
    if as_json:
        emit_json(schedule.model_dump(mode="json"))
    elif mermaid:
        emit([planner.mermaid(schedule, f)])
    else:
        emit([render_plan(schedule, f)])


@app.command()
def changed(feature: str, root: RootOpt = None, as_json: JsonOpt = False) -> None:
    """Completed subtasks whose fingerprint or deliverables changed since completion:
    what `run --changed` would rerun, and why. Reads files only."""
    # lazy: hashing code is only needed here
    from batchq.files.fingerprint import stale

    ctx = Context(root)
    f = ctx.feature(feature)
    reruns = {seq: [str(c) for c in why] for seq, why in stale(f, ctx.settings).items()}
    if as_json:
        emit_json({"feature": f.name, "reruns": reruns})
    else:
        emit(views.format_changed(f, reruns))


execution.register(app)
mcpserve.register(app)
history.register(app)
gc.register(app)


def _given_root(argv: Sequence[str] | None) -> str | None:
    """The ``--root`` on the command line, for advice that works as printed."""
    args = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(args):
        if arg == "--root" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--root="):
            return arg.removeprefix("--root=")
    return None


def _command_name(info: typer.models.CommandInfo) -> str | None:
    """The name a command is invoked by, as Typer derives it."""
    if info.name:
        return info.name
    return typer.main.get_command_name(info.callback.__name__) if info.callback else None


def _for_call(args: Sequence[str]) -> typer.Typer:
    """The app with only the command this call names, when it names one.

    Typer turns every registered command's signature into a click command on every
    call (some 20–40 ms over two dozen commands) although click then runs one. A call
    whose first word is a command needs just that one, under the same group (its
    ``--version`` and the group's settings); anything else (``--help``, no word, a
    misspelt command, which click answers with suggestions) gets the whole app.
    """
    first = args[0] if args else None
    wanted = [info for info in app.registered_commands if _command_name(info) == first]
    if len(wanted) != 1 or app.registered_groups:
        return app
    trimmed = copy.copy(app)
    trimmed.registered_commands = wanted
    return trimmed


def preload(args: Sequence[str]) -> None:
    """Import now what the command ``args`` names imports on first use (see
    :func:`batchq.cli.execution.preload`); nothing for the other commands."""
    if args[:1] and args[0] in execution.RUNS:
        execution.preload()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run the app and map every error to its exit code in one place."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = _for_call(args)(args=args, standalone_mode=False)
    except SystemExit as exc:
        # typer (after wrapping the streams in its PacifyFlushWrapper) and Rich (after
        # going quiet) turn a closed stdout pipe into exit 1: the reader went away
        # (`batchq report f | head -2`), which is not a failure of ours.
        if exc.code == 1 and (type(sys.stdout).__name__ == "PacifyFlushWrapper" or out.quiet):
            raise SystemExit(0) from None
        raise
    except BatchqError as exc:
        error_line(keep_root(str(exc), _given_root(argv)))
        raise SystemExit(exc.exit_code) from None
    except (click.exceptions.Abort, typer.Abort):
        error_line("aborted")
        raise SystemExit(130) from None
    except (click.ClickException, typer.TyperException) as exc:
        # typer >= 0.20 raises its own vendored click's usage errors (a bad --option
        # value, an unknown option); they are TyperExceptions with a show().
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            error_line(str(exc))
        raise SystemExit(2) from None
    except (click.exceptions.Exit, typer.Exit) as exc:
        raise SystemExit(exc.exit_code) from None
    except BrokenPipeError:
        # The reader went away (`batchq report f | head -2`): not a failure of ours.
        # Point stdout at /dev/null so the interpreter's final flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None
    except OSError as exc:
        # A full disk or a read-only folder under a command: infrastructure, exit 3.
        error_line(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}")
        raise SystemExit(3) from None
    raise SystemExit(code if isinstance(code, int) else 0)
