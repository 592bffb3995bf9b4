"""The paths the gateway serves besides the MCP endpoint, named once: configuration keeps
`mcp_path` off them, the rate limiter and the Host check treat them by kind, and the rooms that
serve them route them. A leaf: it imports nothing.
"""

from __future__ import annotations

from typing import Final

HEALTH_PATH: Final = "/health"
READY_PATH: Final = "/ready"
METRICS_PATH: Final = "/metrics"
# RFC 8615: discovery documents (protected-resource and authorization-server metadata, JWKS).
WELL_KNOWN_PREFIX: Final = "/.well-known/"
# RFC 9728: served at this path and at this path followed by the MCP path.
PRM_PATH: Final = WELL_KNOWN_PREFIX + "oauth-protected-resource"
# The built-in authorization server's endpoints and pages.
OAUTH_PREFIX: Final = "/oauth/"
