"""mcp-gateway: serve any stdio MCP server over Streamable HTTP, one process per session.

`Settings` and `create_app` are loaded on first use, so importing one room of the package (the
`connect` bridge a desktop client launches, say) never loads the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway._version import __version__

if TYPE_CHECKING:
    from gateway.app import create_app
    from gateway.config import Settings

__all__ = ["Settings", "__version__", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from gateway.app import create_app

        return create_app
    if name == "Settings":
        from gateway.config import Settings

        return Settings
    raise AttributeError(f"module 'gateway' has no attribute {name!r}")
