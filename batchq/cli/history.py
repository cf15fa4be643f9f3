"""What ran before, from the files alone: ``batchq runs`` and ``batchq logs``.

A Celery or Airflow user expects to list past runs and read a task's log. Redis
forgets (an embedded run's Redis is gone when the run ends, a stack's after the state
TTL), so both read what every run leaves in the feature's ``.batchq/`` folder: the run
record written when it starts, the reports saved as each batch ends, and each agent's
full output. Neither needs a Redis or starts anything.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from batchq import layout
from batchq.cli.common import Context, JsonOpt, RootOpt, emit, emit_json, error_line
from batchq.errors import UsageError
from batchq.files.reading import open_regular
from batchq.models import BatchReport, BatchStatus, Feature, seq_key

__all__ = ["register"]


@dataclass
class RunRow:
    run_id: str
    started: str = ""
    mode: str = ""
    reports: list[BatchReport] = field(default_factory=list)

    @property
    def status(self) -> str:
        statuses = {r.status for r in self.reports}
        if BatchStatus.PARTIAL_FAILURE in statuses:
            return "failed"
        if BatchStatus.CANCELLED in statuses:
            return "cancelled"
        return "completed" if self.reports else "no report"


def run_rows(feature: Feature) -> list[RunRow]:
    """Every run the feature's folder remembers, newest first."""
    rows: dict[str, RunRow] = {}
    for path in sorted(layout.runs_dir(feature.path).glob("*.json")):
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        run_id = str(data.get("run_id") or path.stem)
        rows[run_id] = RunRow(run_id, str(data.get("created_at", "")), str(data.get("mode", "")))
    for path in sorted(layout.reports_dir(feature.path).glob("*.json")):
        try:
            report = BatchReport.model_validate_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        rows.setdefault(report.run_id, RunRow(report.run_id)).reports.append(report)
    return sorted(rows.values(), key=lambda r: r.run_id, reverse=True)


def _shown(started: str) -> str:
    """``2026-12-01 21:22:50`` from the recorded ISO time."""
    try:
        return datetime.fromisoformat(started).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return started or "-"


def _latest_log(feature: Feature, seq: str) -> Path | None:
    logs = sorted(
        (p for p in (layout.state_dir(feature.path) / "logs").glob(f"*/{seq}.log")),
        key=lambda p: p.parent.name,
    )
    return logs[-1] if logs else None


def _seq_of(feature: Feature, seq: str) -> str:
    """``logs feat 2`` reads ``02``; an unknown seq names the known ones."""
    by_seq = feature.by_seq()
    if seq in by_seq:
        return seq
    if seq.isascii() and seq.isdigit():
        found = [s for s in by_seq if int(s) == int(seq)]
        if len(found) == 1:
            return found[0]
    known = ", ".join(sorted(by_seq, key=seq_key)) or "none"
    raise UsageError(f"feature {feature.name!r} has no subtask {seq!r}; its subtasks: {known}")


def register(app: typer.Typer) -> None:
    """Add ``runs`` and ``logs`` to the CLI app."""

    @app.command()
    def runs(feature: str, root: RootOpt = None, as_json: JsonOpt = False) -> None:
        """The feature's runs, newest first: id, start, mode, status and batches."""
        ctx = Context(root)
        f = ctx.feature(feature)
        rows = run_rows(f)
        if as_json:
            emit_json(
                [
                    {
                        "run_id": r.run_id,
                        "started": r.started or None,
                        "mode": r.mode or None,
                        "status": r.status,
                        "batches": [{"batch": b.batch, "status": b.status} for b in r.reports],
                    }
                    for r in rows
                ]
            )
            return
        if not rows:
            emit([f"No runs of {f.name} yet: `batchq run {f.name}`."])
            return
        lines = [f"{'RUN':<25} {'STARTED (UTC)':<19} {'MODE':<6} {'STATUS':<10} BATCHES"]
        for r in rows:
            batches = ", ".join(f"{b.batch}:{b.status.value}" for b in r.reports) or "-"
            lines.append(
                f"{r.run_id:<25} {_shown(r.started):<19} {r.mode or '-':<6} {r.status:<10} "
                f"{batches}"
            )
        emit(lines)

    @app.command()
    def logs(
        feature: str,
        seq: str,
        root: RootOpt = None,
        run_id: Annotated[
            str | None, typer.Option("--run", help="Default: the latest run with a log.")
        ] = None,
    ) -> None:
        """A subtask's full agent log (output and verification) from one run."""
        ctx = Context(root)
        f = ctx.feature(feature)
        real = _seq_of(f, seq)
        if run_id is None:
            path = _latest_log(f, real)
            if path is None:
                raise UsageError(f"no log of subtask {real} of {f.name} yet: it has not run")
        else:
            path = layout.log_file(f.path, run_id, real)
            if not (path.exists() or path.is_symlink()):
                known = sorted(p.parent.name for p in f.state_dir.glob(f"logs/*/{real}.log"))
                raise UsageError(
                    f"no log of subtask {real} in run {run_id!r}; runs with its log: "
                    f"{', '.join(known) or 'none'}"
                )
        # The log folder is writable by the agent: read it only as a regular file (a
        # FIFO put in its place would hang this command, a link would redirect it).
        try:
            with open_regular(path) as handle:
                data = handle.read()
        except OSError as exc:
            raise UsageError(f"cannot read the log {path}: {exc.strerror or exc}") from None
        if not data:
            error_line(f"the log of {real} in run {path.parent.name} is empty: it printed nothing")
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
