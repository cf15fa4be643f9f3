"""The stdio transport, stoppable: MCP over stdin/stdout that ends at once on SIGTERM
or SIGINT, whatever the client does with its end of the pipe.

The SDK's ``stdio_server()`` reads stdin on a worker thread; a blocked ``read`` cannot
be cancelled, so a server told to stop (SIGTERM) while the client still holds stdin
open would wait for a line that never comes, with its embedded stack still running.
Here stdin is read without a thread (``anyio.wait_readable`` on a non-blocking
descriptor), and SIGTERM/SIGINT cancel the serving task: the server returns, and
:func:`batchq.mcp.app.serve` tears the stack down as on a normal end.
"""

from __future__ import annotations

import os
import signal
from typing import Any, cast

import anyio
from mcp.server.stdio import stdio_server

from batchq.mcp.server import BatchqMCPServer

__all__ = ["FdLines", "serve_stdio"]

CHUNK = 65536


class FdLines:
    """Text lines from a file descriptor, read without a thread (so cancellable)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self.buffer = b""
        self.eof = False

    def __aiter__(self) -> FdLines:
        return self

    async def __anext__(self) -> str:
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line, self.buffer = self.buffer[: end + 1], self.buffer[end + 1 :]
                return line.decode("utf-8", errors="replace")
            if self.eof:
                if self.buffer:
                    line, self.buffer = self.buffer, b""
                    return line.decode("utf-8", errors="replace")
                raise StopAsyncIteration
            await anyio.wait_readable(self.fd)
            try:
                chunk = os.read(self.fd, CHUNK)
            except BlockingIOError:
                continue
            if chunk:
                self.buffer += chunk
            else:
                self.eof = True


async def serve_stdio(server: BatchqMCPServer) -> int | None:
    """Serve until stdin ends (None) or a signal arrives (its number)."""
    private = os.dup(0)
    # fd 0 becomes /dev/null while we serve: nothing we start may read the protocol.
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    stopped: list[int] = []
    try:
        async with anyio.create_task_group() as group:

            async def on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        stopped.append(signum)
                        group.cancel_scope.cancel()
                        return

            group.start_soon(on_signal)
            lines = FdLines(private)
            async with stdio_server(stdin=cast(Any, lines)) as (read, write):
                await server.serve_streams(read, write)
            group.cancel_scope.cancel()
    finally:
        os.close(private)
    return stopped[0] if stopped else None
