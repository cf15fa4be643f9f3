"""``batchq mcp``: serve batchq's tools to AI orchestrators over the Model Context
Protocol (stdio by default, streamable HTTP with ``--http``). The server itself lives
in :mod:`batchq.mcp`; this module only parses options and hands over."""

from __future__ import annotations

from typing import Annotated

import typer

from batchq.cli.common import Context, RootOpt
from batchq.cli.execution import WorkersOpt

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``mcp`` command to the CLI app."""

    @app.command("mcp")
    def mcp_(
        root: RootOpt = None,
        http: Annotated[
            bool, typer.Option("--http", help="Streamable HTTP instead of stdio.")
        ] = False,
        host: Annotated[
            str,
            typer.Option(
                "--host", help="--http: address to bind; beyond loopback needs BATCHQ_MCP_TOKEN."
            ),
        ] = "127.0.0.1",
        port: Annotated[
            int, typer.Option("--port", help="--http: port; 0 picks a free one.")
        ] = 8765,
        workers: WorkersOpt = None,
    ) -> None:
        """Serve batchq over MCP (tools list_features, validate, plan, run, run_status,
        report, cancel, complete; task files and reports as resources)."""
        # lazy: the MCP SDK, celery and redis stay out of every other command's start-up
        from batchq.mcp.app import serve

        ctx = Context(root)
        serve(ctx.root, ctx.settings, use_http=http, host=host, port=port, workers=workers)
