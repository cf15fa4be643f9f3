"""The server's lifetime: its stack, its transport, and a teardown that leaves no
process behind.

The stack comes from :func:`batchq.local.connection.connect`, held for the server's
whole life: with ``BATCHQ_REDIS_URL`` the server only enqueues (workers run
elsewhere); else it uses a ``batchq up`` stack if one runs; else it starts an
embedded one (redis-server and local workers) and stops it when the server ends.

An MCP client ends a stdio server by closing its stdin, then SIGTERM after a grace of
about two seconds, then SIGKILL (the SDK's policy). A SIGKILLed server cannot stop its
children, so the teardown must fit in that grace: runs still going are cancelled, and
the embedded stack's processes get a short grace before they are killed. SIGTERM or
SIGINT while serving stdio ends the serving at once (:mod:`batchq.mcp.stdio`) and the
same teardown runs; outside it, SIGTERM reaps them (:func:`batchq.procs.install_sigterm_reaper`).
"""

from __future__ import annotations

import socket
from pathlib import Path

import anyio

from batchq import procs
from batchq.local.connection import connect
from batchq.mcp import http
from batchq.mcp.server import BatchqMCPServer, build_server
from batchq.mcp.service import Service
from batchq.mcp.stdio import serve_stdio
from batchq.settings import Settings

__all__ = ["serve"]

SHUTDOWN_GRACE_S = 1.0


def serve(
    root: Path,
    settings: Settings,
    *,
    use_http: bool = False,
    host: str = "127.0.0.1",
    port: int = 8765,
    workers: int | None = None,
) -> None:
    """Serve MCP until the client goes (stdio) or the process is interrupted (HTTP)."""
    token = settings.mcp_token.get_secret_value() if settings.mcp_token else None
    sock = None
    if use_http:
        http.check_bind(host, token)
        sock = http.listen(host, port)  # before the stack: a taken port costs nothing
    procs.install_sigterm_reaper()
    signum: int | None = None
    try:
        with connect(settings, root, embedded_ok=True, workers=workers) as conn:
            service = Service(root, conn.settings, conn)
            server = build_server(service)
            try:
                if sock is not None:
                    anyio.run(_serve_http, server, sock, host, token)
                else:
                    signum = anyio.run(serve_stdio, server)
            finally:
                service.runs.shutdown(timeout_s=SHUTDOWN_GRACE_S)
                if conn.embedded:
                    procs.reap_all(grace_s=SHUTDOWN_GRACE_S)
    finally:
        if sock is not None:
            sock.close()
    if signum is not None:  # stopped by a signal: say so in the exit status
        raise SystemExit(128 + signum)


async def _serve_http(
    server: BatchqMCPServer, sock: socket.socket, host: str, token: str | None
) -> None:
    import uvicorn  # only over HTTP

    app = server.streamable_http_app(host=host)
    asgi = http.BearerAuth(app, token) if token else app
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    http.announce(f"http://{shown}:{bound_port}/mcp", authenticated=token is not None)
    config = uvicorn.Config(asgi, log_level="warning", lifespan="on")
    await uvicorn.Server(config).serve(sockets=[sock])
