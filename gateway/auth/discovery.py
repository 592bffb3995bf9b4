"""Discovery documents: RFC 9728 protected-resource metadata, built once from settings, and the
authorization server's RFC 8414 metadata, served on this origin for older clients.

Served at the root form and the path-inserted form for the MCP path. The document names the
configured authorization servers; without any there is nothing to discover (RFC 9728 requires
at least one) and both paths answer 404, while 401 challenges still carry `resource_metadata`.
Nothing here is ever derived from `Host` or `X-Forwarded-*`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from gateway import keys
from gateway.errors import GatewayError
from gateway.paths import PRM_PATH, WELL_KNOWN_PREFIX

if TYPE_CHECKING:
    from gateway.config import Settings

# Metadata changes rarely: caches may keep it for an hour.
CACHE_CONTROL: Final = "public, max-age=3600"


def protected_resource_metadata(settings: Settings) -> bytes | None:
    servers = settings.advertised_authorization_servers
    if not servers:
        return None
    document: dict[str, Any] = {
        "resource": settings.resource_url,
        "authorization_servers": servers,
        "bearer_methods_supported": ["header"],
    }
    if settings.scopes_supported:
        document["scopes_supported"] = settings.scopes_supported
    if settings.resource_documentation is not None:
        document["resource_documentation"] = str(settings.resource_documentation)
    return json.dumps(document).encode()


async def handle_protected_resource(request: web.Request) -> web.Response:
    document = request.app[keys.RESOURCE_METADATA]
    if document is None:
        raise GatewayError("not_found", "No authorization server is configured for this resource")
    # Public metadata: any origin may read it (browser-based clients discover from other origins).
    headers = {"Cache-Control": CACHE_CONTROL, "Access-Control-Allow-Origin": "*"}
    return web.Response(body=document, content_type="application/json", headers=headers)


def add_routes(app: web.Application, mcp_path: str) -> None:
    app.router.add_get(PRM_PATH, handle_protected_resource)
    app.router.add_get(PRM_PATH + mcp_path, handle_protected_resource)
    app.router.add_get(WELL_KNOWN_PREFIX + "oauth-authorization-server", handle_authorization_server)
    app.router.add_get(WELL_KNOWN_PREFIX + "openid-configuration", handle_authorization_server)


async def handle_authorization_server(request: web.Request) -> web.Response:
    metadata = request.app[keys.AS_METADATA]
    openid_path = request.path.endswith("/openid-configuration")
    if metadata is None or metadata.document is None or (openid_path and not metadata.openid):
        raise GatewayError("not_found", "No authorization server metadata is served here")
    headers = {"Cache-Control": CACHE_CONTROL, "Access-Control-Allow-Origin": "*"}
    return web.Response(body=metadata.document, content_type="application/json", headers=headers)
