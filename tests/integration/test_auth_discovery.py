"""Authorization-server metadata on the gateway's own origin (RFC 8414, for 2025-03-26-era
clients), from a real (fake) authorization server, and the SDK's OAuth client discovering it."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import mcp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, unused_port
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.auth import OAuthClientMetadata
from pydantic import AnyUrl
from pytest_aiohttp import AiohttpServer

from gateway import create_app
from gateway.auth import AuthStartupError
from gateway.auth.static import digest_of
from tests.support.oauth import MemoryTokenStorage
from tests.support.settings import make_settings
from tests.support.types import Gateway


async def authorization_server(aiohttp_server: AiohttpServer, *, openid: bool, issuer_suffix: str = "") -> str:
    app = web.Application()
    issuer: dict[str, str] = {}

    async def metadata(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": issuer["url"] + issuer_suffix,
                "authorization_endpoint": issuer["url"] + "/authorize",
                "token_endpoint": issuer["url"] + "/token",
                "code_challenge_methods_supported": ["S256"],
            }
        )

    path = "/.well-known/openid-configuration" if openid else "/.well-known/oauth-authorization-server"
    app.router.add_get(path, metadata)
    server: TestServer = await aiohttp_server(app)
    issuer["url"] = str(server.make_url("")).rstrip("/")
    return issuer["url"]


def settings_for(issuer: str, **extra: Any) -> dict[str, Any]:
    return {
        "auth": "static",
        "static_tokens": [{"principal": "a", "sha256": digest_of("t")}],
        "public_url": "https://mcp.example.com",
        "authorization_servers": [issuer],
        **extra,
    }


@pytest.mark.parametrize("openid", [False, True], ids=["rfc8414", "openid"])
async def test_authorization_server_metadata_is_served(
    gateway: Gateway, aiohttp_server: AiohttpServer, openid: bool
) -> None:
    issuer = await authorization_server(aiohttp_server, openid=openid)
    mcp = await gateway(**settings_for(issuer))
    async with mcp.http.get("/.well-known/oauth-authorization-server") as response:
        assert response.status == 200
        assert response.headers["Cache-Control"] == "public, max-age=3600"
        document = await response.json()
    assert document["issuer"] == issuer
    assert document["token_endpoint"] == issuer + "/token"
    async with mcp.http.get("/.well-known/openid-configuration") as response:
        assert response.status == (200 if openid else 404)


async def test_inline_metadata_needs_no_fetch(gateway: Gateway) -> None:
    inline = {"issuer": "https://auth.example.com", "token_endpoint": "https://auth.example.com/token"}
    mcp = await gateway(**settings_for("https://auth.example.com", authorization_server_metadata=inline))
    async with mcp.http.get("/.well-known/oauth-authorization-server") as response:
        assert await response.json() == inline


async def test_no_authorization_server_no_metadata(gateway: Gateway) -> None:
    mcp = await gateway(auth="static", static_tokens=[{"principal": "a", "sha256": digest_of("t")}])
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        async with mcp.http.get(path) as response:
            assert response.status == 404


@pytest.mark.parametrize("fault", ["issuer-mismatch", "down"])
async def test_metadata_must_be_right_at_startup(aiohttp_server: AiohttpServer, fault: str) -> None:
    if fault == "down":
        dead = web.Application()
        server: TestServer = await aiohttp_server(dead)  # answers 404 everywhere
        issuer = str(server.make_url("")).rstrip("/")
    else:
        issuer = await authorization_server(aiohttp_server, openid=False, issuer_suffix="/other")
    runner = web.AppRunner(create_app(make_settings(**settings_for(issuer))))
    with pytest.raises(AuthStartupError, match="no authorization server metadata"):
        await runner.setup()
    await runner.cleanup()


class _Stop(Exception):
    """Ends the OAuth flow once the authorization URL is known (no browser in a test)."""


async def test_sdk_oauth_client_discovers_through_the_gateway(aiohttp_server: AiohttpServer) -> None:
    """401 → our resource metadata → the authorization server's metadata → registration → the
    authorization URL, which names our resource: the SDK's OAuth client finds its way."""
    hits: list[str] = []
    issuer: dict[str, str] = {}

    async def metadata(request: web.Request) -> web.Response:
        hits.append(request.path)
        base = issuer["url"]
        return web.json_response(
            {
                "issuer": base,
                "authorization_endpoint": base + "/authorize",
                "token_endpoint": base + "/token",
                "registration_endpoint": base + "/register",
                "code_challenge_methods_supported": ["S256"],
                "response_types_supported": ["code"],
            }
        )

    async def register(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({**await request.json(), "client_id": "registered-client"}, status=201)

    as_app = web.Application()
    as_app.router.add_get("/.well-known/oauth-authorization-server", metadata)
    as_app.router.add_post("/register", register)
    as_server: TestServer = await aiohttp_server(as_app)
    issuer["url"] = str(as_server.make_url("")).rstrip("/")

    port = unused_port()
    gateway_app = create_app(make_settings(**settings_for(issuer["url"], public_url=f"http://127.0.0.1:{port}")))
    await aiohttp_server(gateway_app, port=port)
    url = f"http://127.0.0.1:{port}/mcp"

    authorization_urls: list[str] = []

    async def redirect(authorization_url: str) -> None:
        authorization_urls.append(authorization_url)

    async def callback() -> Any:
        raise _Stop

    provider = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(redirect_uris=[AnyUrl("http://localhost:3030/callback")], client_name="t"),
        storage=MemoryTokenStorage(),
        redirect_handler=redirect,
        callback_handler=callback,
    )
    async with create_mcp_http_client(auth=provider) as http:
        with pytest.raises(BaseExceptionGroup) as stopped:
            async with mcp.Client(streamable_http_client(url, http_client=http), mode="legacy"):
                pass
    assert stopped.group_contains(_Stop, depth=None)
    assert "/.well-known/oauth-authorization-server" in hits
    assert "/register" in hits
    [authorization_url] = authorization_urls
    query = parse_qs(urlsplit(authorization_url).query)
    assert authorization_url.startswith(issuer["url"] + "/authorize?")
    assert query["resource"] == [url]
    assert query["client_id"] == ["registered-client"]
    assert query["code_challenge_method"] == ["S256"]
