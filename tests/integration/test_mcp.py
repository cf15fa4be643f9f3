"""``batchq mcp`` driven by the official MCP client, as an AI orchestrator drives it.

Over stdio, ``ClientSession`` spawns ``batchq mcp`` as a subprocess (no Redis
configured: the server starts its own embedded stack) and runs the seed's auth-system
feature end to end: plan, run, run_status until done, report, resources. After the
client closes, no process the server started is left. Over HTTP, a non-loopback bind
without a token is refused at start, and a missing or wrong token gets 401 while the
right one is served.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from batchq import procs
from batchq.core import planner
from batchq.files.taskfiles import load_feature
from batchq.settings import load_settings

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "examples" / "auth-system"
TOOLS = {
    "list_features",
    "validate",
    "plan",
    "run",
    "run_status",
    "report",
    "cancel",
    "complete",
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh copy of the seed's auth-system example."""
    root = tmp_path / "auth-system"
    shutil.copytree(EXAMPLE, root)
    return root


def _server_env(**extra: str) -> dict[str, str]:
    """This checkout first on the path; no developer BATCHQ_* setting leaks in."""
    return {"PYTHONPATH": str(REPO_ROOT), **extra}


def _descendants(pid: int) -> dict[int, int | None]:
    """Every process below ``pid`` (in any session), with its start time."""
    found: dict[int, int | None] = {}
    todo = [pid]
    while todo:
        for child in procs.child_pids(todo.pop()):
            if child not in found:
                found[child] = procs.process_start_ticks(child)
                todo.append(child)
    return found


def _server_pid(root: Path) -> int:
    """The ``batchq mcp --root ROOT`` process the client spawned."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mcp" in argv and str(root).encode() in argv:
            return int(entry.name)
    raise AssertionError(f"no batchq mcp process for {root}")


def _still_alive(seen: dict[int, int | None]) -> list[int]:
    return [
        pid
        for pid, ticks in seen.items()
        if procs.pid_alive(pid) and procs.process_start_ticks(pid) == ticks
    ]


async def _tool(session: ClientSession, name: str, args: dict[str, Any], **kw: Any) -> Any:
    result = await session.call_tool(name, args, **kw)
    text = "".join(getattr(block, "text", "") for block in result.content)
    assert not result.is_error, text
    assert text.strip(), f"{name} returned no text rendering"
    return result.structured_content, text


def test_an_mcp_client_runs_the_auth_system_feature_over_stdio(
    project: Path, tmp_path: Path
) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "batchq", "mcp", "--root", str(project)],
        env=_server_env(),
        cwd=str(project),
    )
    expected_plan = planner.plan(
        load_feature(project, "auth-system"), load_settings(project).protected_paths
    ).model_dump(mode="json")
    progress: list[tuple[float, float | None, str | None]] = []
    seen: dict[int, int | None] = {}
    out: dict[str, Any] = {}

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async def scenario() -> None:
        with (tmp_path / "server.err").open("w") as errlog:
            async with (
                stdio_client(params, errlog=errlog) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                tools = (await session.list_tools()).tools
                assert {t.name for t in tools} == TOOLS
                for tool in tools:
                    assert tool.input_schema["type"] == "object", tool.name
                    assert tool.output_schema is not None, tool.name

                features, _ = await _tool(session, "list_features", {})
                assert [f["feature"] for f in features["features"]] == ["auth-system"]
                checked, _ = await _tool(session, "validate", {"feature": "auth-system"})
                assert checked["ok"] is True

                plan, plan_text = await _tool(session, "plan", {"feature": "auth-system"})
                assert plan == expected_plan
                assert "Batch 1 (Ready now)" in plan_text

                bad = await session.call_tool("plan", {"feature": "no-such-feature"})
                assert bad.is_error
                assert "no-such-feature" in bad.content[0].text  # type: ignore[union-attr]

                started, _ = await _tool(session, "run", {"feature": "auth-system"})
                run_id = started["run_id"]
                assert started["state"] == "running"
                seen.update(_descendants(_server_pid(project)))

                status: dict[str, Any] = started
                for _ in range(40):  # a bound on calls, not on time
                    status, _ = await _tool(
                        session,
                        "run_status",
                        {"run_id": run_id, "wait_s": 30},
                        progress_callback=on_progress,
                    )
                    if status["state"] != "running":
                        break
                out["status"] = status

                out["report"] = await _tool(
                    session, "report", {"feature": "auth-system", "run_id": run_id}
                )
                out["report_json"] = await _tool(
                    session, "report", {"feature": "auth-system", "format": "json"}
                )
                listed = (await session.list_resources()).resources
                uris = {str(r.uri) for r in listed}
                out["uris"] = uris
                read = await session.read_resource("batchq://tasks/auth-system/subtask_04.json")
                out["subtask_04"] = json.loads(read.contents[0].text)  # type: ignore[union-attr]
                seen.update(_descendants(_server_pid(project)))

    anyio.run(scenario)

    status = out["status"]
    assert status["state"] == "completed", status
    assert status["finished"] == status["planned"] == 4
    assert {r["seq"]: r["result"] for r in status["results"]} == dict.fromkeys(
        ["01", "02", "03", "04"], "completed"
    )
    batches = [b["number"] for b in expected_plan["batches"]]
    assert batches == [1, 2]
    assert [b["batch"] for b in status["batches_done"]] == batches
    assert progress, "run_status sent no progress notification while it waited"
    assert all(total == 4 for _, total, _ in progress)
    assert [value for value, _, _ in progress] == sorted(value for value, _, _ in progress)

    report, markdown = out["report"]
    assert report["run_id"] == status["batchq_run_id"]
    assert [r["batch"] for r in report["reports"]] == batches
    assert "auth-system" in markdown and "Batch 1" in markdown
    _, as_json = out["report_json"]
    assert [r["batch"] for r in json.loads(as_json)] == batches

    assert "batchq://tasks/auth-system/task.json" in out["uris"]
    saved = sorted(u for u in out["uris"] if u.startswith("batchq://reports/auth-system/"))
    assert len(saved) == len(batches)
    assert out["subtask_04"]["status"] == "completed"

    feature = load_feature(project, "auth-system")
    assert feature.completed_count == 4
    assert (project / "authkit" / "passwords.py").is_file()

    # The embedded stack (redis-server, workers) went with the server.
    assert seen, "the server started no process: no embedded stack?"
    assert _still_alive(seen) == []


def test_a_non_loopback_bind_without_a_token_is_refused(project: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "batchq", "mcp", "--http", "--host", "0.0.0.0", "--port", "0"],
        cwd=project,
        env={**os.environ, **_server_env()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "BATCHQ_MCP_TOKEN" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture
def http_server(project: Path, redis_url: str) -> Iterator[str]:
    """``batchq mcp --http`` with a token, on the session Redis (so it only
    enqueues); yields its URL, read from the line it prints once it listens."""
    env = {
        **os.environ,
        **_server_env(BATCHQ_MCP_TOKEN="right-token", BATCHQ_REDIS_URL=redis_url),
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "batchq", "mcp", "--http", "--port", "0", "--root", str(project)],
        cwd=project,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    url: list[str] = []
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert child.stderr is not None
        for line in child.stderr:
            lines.append(line)
            if "serving MCP on " in line and not url:
                url.append(line.split("serving MCP on ", 1)[1].split()[0])
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        ready.wait(120)
        assert url, "".join(lines)
        yield url[0]
    finally:
        child.terminate()
        child.wait(30)
        reader.join(10)
        if child.stderr is not None:
            child.stderr.close()


def _post(url: str, token: str | None) -> int:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_over_http_a_wrong_or_missing_token_is_rejected(http_server: str) -> None:
    assert _post(http_server, "wrong-token") == 401
    assert _post(http_server, None) == 401

    async def with_the_right_token() -> list[str]:
        client = httpx2.AsyncClient(headers={"authorization": "Bearer right-token"})
        async with (
            client,
            streamable_http_client(http_server, http_client=client) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            result = await session.call_tool("list_features", {})
            assert not result.is_error
            assert result.structured_content is not None
            return [f["feature"] for f in result.structured_content["features"]]

    assert anyio.run(with_the_right_token) == ["auth-system"]


def test_sigterm_stops_the_server_and_its_embedded_stack(project: Path) -> None:
    """A client that kills the server (SIGTERM, as the SDK does after its grace) must
    not leave the redis-server and workers it started running."""
    child = subprocess.Popen(
        [sys.executable, "-m", "batchq", "mcp", "--root", str(project)],
        cwd=project,
        env={**os.environ, **_server_env()},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        hello = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "test", "version": "0"},
            },
        }
        child.stdin.write((json.dumps(hello) + "\n").encode())
        child.stdin.flush()
        answer = json.loads(child.stdout.readline())  # served: the stack is up
        assert answer["id"] == 1 and "result" in answer, answer
        seen = _descendants(child.pid)
        assert seen, "no embedded stack under the server"
        child.terminate()
        assert child.wait(60) != 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        child.stdin.close()
        child.stdout.close()
    assert _still_alive(seen) == []
