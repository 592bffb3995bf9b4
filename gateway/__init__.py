"""mcp-gateway: serve any stdio MCP server over Streamable HTTP, one process per session."""

from __future__ import annotations

__version__ = "0.1.0"

from gateway.app import create_app  # modules below read __version__
from gateway.settings import Settings

__all__ = ["Settings", "__version__", "create_app"]
