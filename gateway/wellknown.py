"""The well-known URIs (RFC 8615) the gateway serves that configuration must also know: the
protected-resource metadata's path, which names the metadata URL in every challenge and which
no `mcp_path` may take. A leaf: it imports nothing.
"""

from __future__ import annotations

from typing import Final

WELL_KNOWN_PREFIX: Final = "/.well-known/"
# RFC 9728: served at this path and at this path followed by the MCP path.
PRM_PATH: Final = WELL_KNOWN_PREFIX + "oauth-protected-resource"
