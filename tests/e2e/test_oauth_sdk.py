"""The official MCP SDK's OAuth client against the built-in authorization server, end to end:
401 → protected-resource metadata → authorization-server metadata → dynamic registration →
authorize → sign-in → consent → token → MCP calls → refresh. The browser steps are a person's:
an HTTP client that follows the pages' forms. Every request the gateway answered is recorded,
and the test checks the sequence."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import mcp
from aiohttp import web
from aiohttp.test_utils import unused_port
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata
from pydantic import AnyUrl
from pytest_aiohttp import AiohttpServer

from gateway import create_app
from tests.support.oauth import REDIRECT_URI, Browser, MemoryTokenStorage, oauth_settings

# Parameters worth showing in the recorded sequence (never a secret's value).
SHOWN_PARAMS = ("response_type", "client_id", "code_challenge_method", "resource", "scope")


def recorder(sequence: list[str]) -> Any:
    async def record(request: web.Request, response: web.StreamResponse) -> None:
        line = f"{request.method} {request.path}"
        if request.query:
            shown = {key: request.query[key] for key in SHOWN_PARAMS if key in request.query}
            hidden = sorted(set(request.query) - set(shown))
            line += f" {shown} +{hidden}"
        sequence.append(f"{line} → {response.status}")

    return record


async def test_sdk_oauth_client_full_flow(aiohttp_server: AiohttpServer) -> None:
    port = unused_port()
    app = create_app(oauth_settings(port))
    sequence: list[str] = []
    app.on_response_prepare.append(recorder(sequence))
    await aiohttp_server(app, port=port)
    url = f"http://127.0.0.1:{port}/mcp"
    browser = Browser()
    callbacks: list[dict[str, str]] = []

    async def redirect(authorization_url: str) -> None:
        query = parse_qs(urlsplit(authorization_url).query)
        assert query["resource"] == [url]
        callbacks.append(await browser.sign_in_and_consent(authorization_url))

    async def callback() -> AuthorizationCodeResult:
        params = callbacks[-1]
        return AuthorizationCodeResult(code=params["code"], state=params["state"], iss=params["iss"])

    storage = MemoryTokenStorage()
    provider = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(redirect_uris=[AnyUrl(REDIRECT_URI)], client_name="SDK test client"),
        storage=storage,
        redirect_handler=redirect,
        callback_handler=callback,
    )
    async with create_mcp_http_client(auth=provider) as http:
        async with mcp.Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
            result = await client.call_tool("echo", {"text": "through OAuth"})
            assert "through OAuth" in str(result.content[0])
            first = storage.tokens
            assert first is not None
            assert first.refresh_token
            provider.context.token_expiry_time = time.time() - 1  # the access token is due: refresh
            result = await client.call_tool("echo", {"text": "after a refresh"})
            assert "after a refresh" in str(result.content[0])
        second = storage.tokens
        assert second is not None
        assert second.access_token != first.access_token
        assert second.refresh_token != first.refresh_token
    await browser.close()
    assert callbacks[0]["iss"] == f"http://127.0.0.1:{port}"
    assert storage.client is not None
    assert storage.client.client_id.startswith("mcpgw_")
    print("\n" + "\n".join(sequence))
    paths = [line.split(" {")[0].split(" →")[0] for line in sequence]
    expected_start = [
        "POST /mcp",  # 401 with the challenge
        "GET /.well-known/oauth-protected-resource/mcp",
        "GET /.well-known/oauth-authorization-server",
        "POST /oauth/register",
        "GET /oauth/authorize",
        "POST /oauth/signin",
        "POST /oauth/consent",
        "POST /oauth/token",
        "POST /mcp",  # initialize, now with the token
    ]
    assert paths[: len(expected_start)] == expected_start
    assert sequence[0].endswith("401")
    assert paths.count("POST /oauth/token") == 2  # the code, then the refresh
