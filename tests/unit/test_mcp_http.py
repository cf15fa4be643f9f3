"""The HTTP rules of ``batchq mcp --http``: where it may listen, and the bearer token."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from batchq.errors import UsageError
from batchq.mcp.http import BearerAuth, check_bind, is_loopback, listen


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_addresses_need_no_token(host: str) -> None:
    assert is_loopback(host)
    check_bind(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com"])
def test_any_other_address_needs_a_token(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(UsageError, match="BATCHQ_MCP_TOKEN") as caught:
        check_bind(host, None)
    assert caught.value.exit_code == 2
    check_bind(host, "a-token")


def test_listen_binds_the_port_it_reports() -> None:
    sock = listen("127.0.0.1", 0)
    try:
        host, port = sock.getsockname()[:2]
        assert host == "127.0.0.1" and port > 0
        with pytest.raises(UsageError, match="cannot listen"):
            listen("127.0.0.1", port)
    finally:
        sock.close()


def _call(app: BearerAuth, headers: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/mcp", "headers": headers}
    anyio.run(app, scope, receive, send)
    return sent


async def _ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"served"})


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([], 401),
        ([(b"authorization", b"Bearer wrong")], 401),
        ([(b"authorization", b"Bearer s3cret-but-longer")], 401),
        ([(b"authorization", b"Basic s3cret")], 401),
        ([(b"Authorization", b"Bearer s3cret")], 200),
    ],
)
def test_every_request_needs_the_bearer_token(
    headers: list[tuple[bytes, bytes]], status: int
) -> None:
    sent = _call(BearerAuth(_ok, "s3cret"), headers)
    assert sent[0]["status"] == status
    if status == 401:
        assert (b"www-authenticate", b'Bearer realm="batchq"') in sent[0]["headers"]
        assert b"unauthorized" in sent[1]["body"]
    else:
        assert sent[1]["body"] == b"served"


def test_lifespan_passes_through_without_a_token() -> None:
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    async def nothing() -> dict[str, Any]:
        return {}

    async def drop(message: dict[str, Any]) -> None:
        return None

    anyio.run(BearerAuth(app, "t"), {"type": "lifespan"}, nothing, drop)
    assert seen == ["lifespan"]
