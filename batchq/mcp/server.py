"""The MCP server: batchq's tools and resources on the official SDK's ``MCPServer``.

Every tool has an input schema (from its annotated parameters), an output schema (the
:mod:`.service` model it returns as structured content) and a text rendering (what a
model reads, in batchq's established formats). A :class:`~batchq.errors.BatchqError`
becomes a tool error (``isError``) whose text names the file and field at fault and
the exit code the CLI would use; the server itself never stops on bad input.

Blocking work (files, Redis) runs on worker threads (``anyio.to_thread``) so the event
loop keeps answering, and ``run_status`` with ``wait_s`` sends progress notifications
while it waits.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import anyio
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp_types import CallToolResult, Resource, TextContent
from pydantic import BaseModel, Field

from batchq import layout
from batchq.errors import BatchqError
from batchq.files import taskfiles
from batchq.files.reading import open_regular
from batchq.mcp.runs import RunState
from batchq.mcp.service import (
    CancelOut,
    CompleteOut,
    FeatureList,
    ReportOut,
    RunStarted,
    RunStatus,
    Service,
    ValidateOut,
)
from batchq.models import FailurePolicy, Plan, RunMode

__all__ = ["MAX_WAIT_S", "build_server"]

MAX_WAIT_S = 30.0
POLL_S = 0.25
RESOURCE_LIMIT = 8 * 1024 * 1024
TASK_NAME = re.compile(r"^(task|subtask_\d+)\.json$")
REPORT_NAME = re.compile(r"^[\w.-]+\.json$")

T = TypeVar("T", bound=BaseModel)

INSTRUCTIONS = """\
batchq runs a feature's subtasks (in .tmp/tasks/<feature>/) in parallel batches on \
Celery workers and reports each batch. Typical flow: list_features, validate, plan, \
then run (returns a run_id at once), then run_status with wait_s=30 until state is not \
'running', then report. Use complete to mark a subtask done by hand and cancel to stop \
a run. Task files and saved reports are readable as resources."""

FeatureArg = Annotated[str, Field(description="Feature folder name under .tmp/tasks/.")]
RunIdArg = Annotated[str, Field(description="The run_id the run tool returned.")]


def _result(model: BaseModel, text: str) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=text)],
        structured_content=model.model_dump(mode="json"),
    )


async def _call(fn: Callable[..., tuple[T, str]], *args: Any) -> CallToolResult:
    """Run a service call off the event loop; a BatchqError becomes a tool error."""
    try:
        model, text = await anyio.to_thread.run_sync(fn, *args)
    except BatchqError as exc:
        raise ToolError(f"{exc} (exit code {exc.exit_code})") from exc
    return _result(model, text)


class BatchqMCPServer(MCPServer[Any]):
    """``MCPServer`` whose resource list is read from disk on every request: task
    files and saved reports appear and go while the server runs."""

    def __init__(self, service: Service, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.service = service

    async def serve_streams(self, read: Any, write: Any) -> None:
        """``run_stdio_async`` without its ``stdio_server()``: :mod:`batchq.mcp.stdio`
        brings streams that a signal can stop."""
        low = self._lowlevel_server
        await low.run(read, write, low.create_initialization_options())

    async def list_resources(self) -> list[Resource]:
        static = await super().list_resources()
        return static + await anyio.to_thread.run_sync(self._file_resources)

    def _file_resources(self) -> list[Resource]:
        root = self.service.root
        found: list[Resource] = []
        for name in taskfiles.list_features(root):
            folder = taskfiles.feature_dir(root, name)
            for path in sorted(folder.glob("*.json")):
                if TASK_NAME.match(path.name):
                    found.append(
                        Resource(
                            uri=f"batchq://tasks/{name}/{path.name}",
                            name=f"{name}/{path.name}",
                            description=f"Task file of feature {name}",
                            mime_type="application/json",
                        )
                    )
            reports = layout.reports_dir(folder)
            if reports.is_dir():
                for path in sorted(reports.glob("*.json")):
                    found.append(
                        Resource(
                            uri=f"batchq://reports/{name}/{path.name}",
                            name=f"{name} report {path.stem}",
                            description=f"Saved batch report of feature {name}",
                            mime_type="application/json",
                        )
                    )
        return found


def _read_file(root: Path, feature: str, name: str, kind: Literal["tasks", "reports"]) -> str:
    """A task file or a saved report, read as the resource list names it: a known
    file name in a known folder, a regular file, bounded (never a FIFO or a link)."""
    pattern = TASK_NAME if kind == "tasks" else REPORT_NAME
    if not pattern.match(name):
        raise ResourceError(f"batchq://{kind}/{feature}/{name}: not a {kind[:-1]} file name")
    try:
        folder = taskfiles.feature_dir(root, feature)
    except BatchqError as exc:
        raise ResourceError(str(exc)) from exc
    path = (folder if kind == "tasks" else layout.reports_dir(folder)) / name
    try:
        with open_regular(path) as handle:
            data = handle.read(RESOURCE_LIMIT + 1)
    except OSError as exc:
        raise ResourceError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(data) > RESOURCE_LIMIT:
        raise ResourceError(f"{path}: over {RESOURCE_LIMIT} bytes")
    return data.decode("utf-8", errors="replace")


def build_server(service: Service) -> BatchqMCPServer:
    """The server with every tool and resource bound to ``service``."""
    server = BatchqMCPServer(
        service,
        name="batchq",
        title="batchq",
        instructions=INSTRUCTIONS,
        warn_on_duplicate_resources=False,
    )

    @server.tool(
        name="list_features",
        description="Active features of the project: name, status, progress, problems.",
    )
    async def list_features() -> Annotated[CallToolResult, FeatureList]:
        return await _call(service.list_features)

    @server.tool(
        name="validate",
        description="Check task files and dependency graphs (one feature, or all).",
    )
    async def validate(
        feature: Annotated[str | None, Field(description="One feature; all when left out.")] = None,
    ) -> Annotated[CallToolResult, ValidateOut]:
        return await _call(service.validate, feature)

    @server.tool(
        name="plan",
        description="The whole schedule of a feature: batches, why each subtask sits "
        "where it does, what is blocked (as `batchq plan --json`).",
    )
    async def plan(feature: FeatureArg) -> Annotated[CallToolResult, Plan]:
        return await _call(service.plan, feature)

    @server.tool(
        name="run",
        description="Start running a feature (every remaining batch, or one explicit "
        "batch `seqs` after the parallel-safety check). Returns run_id at once; follow "
        "it with run_status.",
    )
    async def run(
        feature: FeatureArg,
        seqs: Annotated[
            list[str] | None,
            Field(description="One explicit batch (checked like `batchq batch`)."),
        ] = None,
        mode: Annotated[
            RunMode, Field(description="batch: batch after batch; flow: each subtask asap.")
        ] = RunMode.BATCH,
        on_failure: Annotated[
            FailurePolicy, Field(description="graceful, terminate or continue.")
        ] = FailurePolicy.GRACEFUL,
        context: Annotated[
            str | None,
            Field(description="Session context file for every agent, relative to the root."),
        ] = None,
    ) -> Annotated[CallToolResult, RunStarted]:
        return await _call(service.run, feature, seqs, mode, on_failure, context)

    @server.tool(
        name="run_status",
        description="State of a run (running, completed, failed, cancelled), batches "
        "done, per-subtask results so far and the next step. With wait_s (at most 30) "
        "it waits for the run to end, sending progress notifications meanwhile.",
    )
    async def run_status(
        run_id: RunIdArg,
        ctx: Context,
        wait_s: Annotated[
            float, Field(ge=0, le=MAX_WAIT_S, description="Wait up to this long (0-30 s).")
        ] = 0.0,
    ) -> Annotated[CallToolResult, RunStatus]:
        try:
            service.tracked(run_id)
        except BatchqError as exc:
            raise ToolError(f"{exc} (exit code {exc.exit_code})") from exc
        deadline = anyio.current_time() + wait_s
        sent: tuple[int, RunState] | None = None
        while True:
            status, text = service.status(run_id)
            if sent != (status.finished, status.state):
                sent = (status.finished, status.state)
                message = text.splitlines()[0]
                await ctx.report_progress(status.finished, status.planned or None, message)
            left = deadline - anyio.current_time()
            if status.state is not RunState.RUNNING or left <= 0:
                return _result(status, text)
            await anyio.sleep(min(POLL_S, left))

    @server.tool(
        name="report",
        description="The batch reports of a feature's latest run (or of run_id), as "
        "markdown (the established report format) or json.",
    )
    async def report(
        feature: FeatureArg,
        run_id: Annotated[
            str | None, Field(description="A run_id of this server or a batchq run id.")
        ] = None,
        format: Annotated[
            Literal["markdown", "json"], Field(description="Text rendering.")
        ] = "markdown",
    ) -> Annotated[CallToolResult, ReportOut]:
        return await _call(service.report, feature, run_id, format)

    @server.tool(
        name="cancel",
        description="Stop a run (run_id) or every running batch of a feature; running "
        "agents are killed and the subtasks go back to pending.",
    )
    async def cancel(
        run_id: Annotated[str | None, Field(description="A run_id of this server.")] = None,
        feature: Annotated[str | None, Field(description="Or a feature.")] = None,
    ) -> Annotated[CallToolResult, CancelOut]:
        return await _call(service.cancel, feature, run_id)

    @server.tool(
        name="complete",
        description="Mark a subtask completed with a one-line summary (200 characters max).",
    )
    async def complete(
        feature: FeatureArg,
        seq: Annotated[str, Field(description="The subtask's seq, like 02.")],
        summary: Annotated[str, Field(description="What was done.")],
    ) -> Annotated[CallToolResult, CompleteOut]:
        return await _call(service.complete, feature, seq, summary)

    @server.resource(
        "batchq://tasks/{feature}/{name}",
        name="task file",
        description="task.json or subtask_NN.json of a feature",
        mime_type="application/json",
    )
    async def task_file(feature: str, name: str) -> str:
        return await anyio.to_thread.run_sync(_read_file, service.root, feature, name, "tasks")

    @server.resource(
        "batchq://reports/{feature}/{name}",
        name="saved report",
        description="A batch report saved under .tmp/tasks/<feature>/.batchq/reports/",
        mime_type="application/json",
    )
    async def saved_report(feature: str, name: str) -> str:
        return await anyio.to_thread.run_sync(_read_file, service.root, feature, name, "reports")

    return server
