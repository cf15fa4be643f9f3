"""Streamable HTTP for the MCP server: where it may listen, and the bearer token.

The MCP server can start runs, which start agents that write the project: reachable
beyond this machine without credentials, it would be a remote-execution service. So
it binds loopback unless ``BATCHQ_MCP_TOKEN`` is set, refuses (exit 2, before anything
starts) any other address without one, and with a token set every request, loopback
included, needs ``Authorization: Bearer <token>``; a missing or wrong one gets 401.
On loopback the SDK's DNS-rebinding protection (Host and Origin checks) stays on.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket
import sys
from typing import Any

from batchq.errors import UsageError

__all__ = ["BearerAuth", "announce", "check_bind", "is_loopback", "listen"]

ASGIApp = Any


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-loopback address without a token (the CLI maps it to exit 2)."""
    if not is_loopback(host) and not token:
        raise UsageError(
            f"--host {host}: the MCP server listens beyond loopback only with a bearer "
            "token; set BATCHQ_MCP_TOKEN (clients send `Authorization: Bearer <token>`) "
            "or bind 127.0.0.1"
        )


def listen(host: str, port: int) -> socket.socket:
    """A listening socket bound by us (port 0: any free port), so the address we
    print is the one we hold: no "find a free port, then start" race."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise UsageError(f"--host {host} --port {port}: cannot listen: {exc.strerror}") from exc
    return sock


class BearerAuth:
    """ASGI middleware: every HTTP request must carry ``Authorization: Bearer <token>``,
    compared in constant time; lifespan and other scopes pass through."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            given = b""
            for key, value in scope.get("headers", []):
                if key.lower() == b"authorization":
                    given = value
                    break
            if not hmac.compare_digest(given, self.expected):
                await _unauthorized(send, "missing bearer token" if not given else "wrong token")
                return
        await self.app(scope, receive, send)


async def _unauthorized(send: Any, why: str) -> None:
    body = json.dumps({"error": "unauthorized", "detail": why}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b'Bearer realm="batchq"'),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def announce(url: str, authenticated: bool) -> None:
    """One line on stderr with the address actually bound (tests and users read it)."""
    auth = "bearer token required" if authenticated else "loopback, no token"
    sys.stderr.write(f"batchq mcp: serving MCP on {url} ({auth})\n")
    sys.stderr.flush()
