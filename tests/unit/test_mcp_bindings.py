"""The MCP server's tool surface (names, input and output schemas) and the bindings
shipped in ``integrations/``, which must name only tools the server has."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, cast

import anyio
import yaml

from batchq.mcp.server import build_server
from batchq.mcp.service import Service
from batchq.settings import Settings

REPO = Path(__file__).resolve().parents[2]
INTEGRATIONS = REPO / "integrations"
TOOLS = {"list_features", "validate", "plan", "run", "run_status", "report", "cancel", "complete"}


def _tools(tmp_path: Path) -> dict[str, Any]:
    service = Service(tmp_path, Settings(), cast(Any, None))
    listed = anyio.run(build_server(service).list_tools)
    return {tool.name: tool for tool in listed}


def test_the_server_has_exactly_the_documented_tools_each_with_both_schemas(
    tmp_path: Path,
) -> None:
    tools = _tools(tmp_path)
    assert set(tools) == TOOLS
    for name, tool in tools.items():
        assert tool.description, name
        assert tool.input_schema["type"] == "object", name
        assert tool.output_schema is not None and tool.output_schema["type"] == "object", name


def test_the_input_schemas_say_what_each_tool_takes(tmp_path: Path) -> None:
    tools = _tools(tmp_path)
    run = tools["run"].input_schema
    assert run["required"] == ["feature"]
    assert set(run["properties"]) == {"feature", "seqs", "mode", "on_failure", "context"}
    status = tools["run_status"].input_schema
    assert status["required"] == ["run_id"]
    assert status["properties"]["wait_s"]["maximum"] == 30
    assert status["properties"]["wait_s"]["minimum"] == 0
    report = tools["report"].input_schema
    assert report["properties"]["format"]["enum"] == ["markdown", "json"]
    assert set(tools["complete"].input_schema["required"]) == {"feature", "seq", "summary"}
    assert "state" in tools["run_status"].output_schema["properties"]
    assert "run_id" in tools["run"].output_schema["required"]


def test_the_opencode_agent_uses_only_tools_the_server_has() -> None:
    text = (INTEGRATIONS / "opencode" / "agents" / "batch-executor.md").read_text()
    _, front, body = text.split("---", 2)
    meta = yaml.safe_load(front)
    assert meta["mode"] == "subagent"
    assert meta["description"].strip()
    named = set(re.findall(r"`batchq_(\w+)`", body))
    assert named <= TOOLS
    assert {"validate", "plan", "run", "run_status", "report"} <= named


def test_the_mcp_snippets_start_batchq_mcp() -> None:
    opencode = json.loads((INTEGRATIONS / "opencode" / "opencode.json").read_text())
    assert opencode["mcp"]["batchq"]["type"] == "local"
    assert opencode["mcp"]["batchq"]["command"] == ["batchq", "mcp"]
    claude = json.loads((INTEGRATIONS / "claude-code" / ".mcp.json").read_text())
    server = claude["mcpServers"]["batchq"]
    assert [server["command"], *server["args"]] == ["batchq", "mcp"]
    remote = json.loads((INTEGRATIONS / "claude-code" / "mcp-http.json").read_text())
    entry = remote["mcpServers"]["batchq"]
    assert entry["url"].endswith("/mcp")
    assert entry["headers"]["Authorization"] == "Bearer ${BATCHQ_MCP_TOKEN}"
