"""``batchq mcp``: batchq's commands as Model Context Protocol tools, so an AI
orchestrator (OpenCode, Claude Code, ...) calls batchq directly instead of parsing a
terminal. A layer beside :mod:`batchq.cli`, above ``local | run``: it runs features
through the same orchestrator and renders reports with the same renderers.

- :mod:`.runs`: runs in background threads of the server process, and their registry;
- :mod:`.service`: what each tool does, as plain calls returning models and text;
- :mod:`.server`: the MCP server (tools, resources, progress) on the official SDK;
- :mod:`.http`: streamable HTTP with its bind and bearer-token rules.
"""
