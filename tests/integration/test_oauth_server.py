"""The built-in authorization server over real HTTP: metadata, registration, the browser steps
(sign-in, consent, CSRF), codes, tokens, refresh rotation, revocation, and the MCP endpoint
accepting what it issued. Negative cases are tables where they share a shape."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import unused_port

from gateway import create_app, keys
from gateway.oauth.server import OAuthServer
from tests.conftest import ACCEPT_BOTH, LATEST, WAIT
from tests.oauth_helpers import (
    REDIRECT_URI,
    SERVICE_TOKEN,
    Browser,
    authorize_url,
    oauth_settings,
    pkce,
)

ServerFactory = Any


@dataclass
class Gateway:
    base: str
    app: web.Application
    http: aiohttp.ClientSession
    browser: Browser

    @property
    def resource(self) -> str:
        return self.base + "/mcp"

    @property
    def oauth(self) -> OAuthServer:
        server = self.app[keys.OAUTH]
        assert server is not None
        return server

    async def register(self, **metadata: Any) -> dict[str, Any]:
        body = {"redirect_uris": [REDIRECT_URI], "client_name": "Test Client", **metadata}
        async with self.http.post(self.base + "/oauth/register", json=body) as response:
            assert response.status == 201, await response.text()
            result: dict[str, Any] = await response.json()
            return result

    async def token(self, **form: str) -> tuple[int, dict[str, Any]]:
        async with self.http.post(self.base + "/oauth/token", data=form) as response:
            assert response.headers["Cache-Control"] == "no-store"
            return response.status, await response.json()

    async def code(self, client_id: str, challenge: str, token: str = SERVICE_TOKEN) -> dict[str, str]:
        return await self.browser.sign_in_and_consent(authorize_url(self.base, client_id, challenge), token)

    async def tokens(self, client_id: str) -> dict[str, Any]:
        verifier, challenge = pkce()
        redirect = await self.code(client_id, challenge)
        status, body = await self.token(
            grant_type="authorization_code",
            code=redirect["code"],
            redirect_uri=REDIRECT_URI,
            client_id=client_id,
            code_verifier=verifier,
            resource=self.resource,
        )
        assert status == 200, body
        return body

    async def mcp_status(self, access_token: str) -> tuple[int, str]:
        message = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"protocolVersion": LATEST, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
        }
        headers = {"Authorization": f"Bearer {access_token}", "Accept": ACCEPT_BOTH}
        async with self.http.post(self.resource, json=message, headers=headers) as response:
            challenge = response.headers.get("WWW-Authenticate", "")
            if response.status == 200 and "Mcp-Session-Id" in response.headers:
                delete = {**headers, "Mcp-Session-Id": response.headers["Mcp-Session-Id"]}
                async with self.http.delete(self.resource, headers=delete):
                    pass
            return response.status, challenge


@pytest.fixture
async def oauth_gateway(aiohttp_server: ServerFactory) -> AsyncIterator[Callable[..., Awaitable[Gateway]]]:
    opened: list[Gateway] = []

    async def start(**overrides: Any) -> Gateway:
        port = unused_port()
        app = create_app(oauth_settings(port, **overrides))
        await aiohttp_server(app, port=port)
        gateway = Gateway(
            f"http://127.0.0.1:{port}",
            app,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)),
            Browser(),
        )
        opened.append(gateway)
        return gateway

    yield start
    for gateway in opened:
        await gateway.http.close()
        await gateway.browser.close()


async def test_metadata_names_every_endpoint(oauth_gateway: Callable[..., Awaitable[Gateway]]) -> None:
    gw = await oauth_gateway()
    async with gw.http.get(gw.base + "/.well-known/oauth-authorization-server") as response:
        assert response.status == 200
        metadata = await response.json()
    assert metadata["issuer"] == gw.base
    assert metadata["authorization_endpoint"] == gw.base + "/oauth/authorize"
    assert metadata["token_endpoint"] == gw.base + "/oauth/token"
    assert metadata["registration_endpoint"] == gw.base + "/oauth/register"
    assert metadata["revocation_endpoint"] == gw.base + "/oauth/revoke"
    assert metadata["jwks_uri"] == gw.base + "/.well-known/jwks.json"
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["client_id_metadata_document_supported"] is True
    assert metadata["authorization_response_iss_parameter_supported"] is True
    async with gw.http.get(gw.base + "/.well-known/oauth-protected-resource/mcp") as response:
        resource = await response.json()
    assert resource["resource"] == gw.resource
    assert resource["authorization_servers"] == [gw.base]
    async with gw.http.get(gw.base + "/.well-known/jwks.json") as response:
        jwks = await response.json()
    [key] = jwks["keys"]
    assert (key["kty"], key["crv"], key["alg"], key["use"]) == ("EC", "P-256", "ES256", "sig")
    assert "d" not in key


async def test_flow_by_hand_then_refresh_rotation(oauth_gateway: Callable[..., Awaitable[Gateway]]) -> None:
    gw = await oauth_gateway()
    client = await gw.register()
    assert client["token_endpoint_auth_method"] == "none"
    assert "client_secret" not in client
    body = await gw.tokens(client["client_id"])
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert await gw.mcp_status(body["access_token"]) == (200, "")
    # Refresh: a new pair; the old refresh token is spent.
    status, renewed = await gw.token(
        grant_type="refresh_token", refresh_token=body["refresh_token"], client_id=client["client_id"]
    )
    assert status == 200, renewed
    assert renewed["refresh_token"] != body["refresh_token"]
    assert await gw.mcp_status(renewed["access_token"]) == (200, "")
