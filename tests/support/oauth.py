"""Helpers for tests of the built-in authorization server: settings around the echo server, a
"browser" (an aiohttp client with a cookie jar) that follows the sign-in and consent forms, PKCE
values, and `Gateway`: a served gateway with the client-side steps of a flow."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any, TypeAlias
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import aiohttp
from aiohttp import web
from cryptography.fernet import Fernet
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

from gateway import keys
from gateway.auth.static import digest_of
from gateway.config import Settings
from gateway.oauth.server import OAuthServer
from tests.support.mcp import ACCEPT_BOTH, LATEST, parse_sse
from tests.support.settings import make_settings
from tests.support.waits import WAIT

SERVICE_TOKEN = "alice-service-token-1234"
OTHER_TOKEN = "bob-service-token-5678"
REDIRECT_URI = "http://localhost:3030/callback"


def oauth_settings(port: int, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "auth": "static",
        "static_tokens": [
            {"principal": "alice", "sha256": digest_of(SERVICE_TOKEN)},
            {"principal": "bob", "sha256": digest_of(OTHER_TOKEN)},
        ],
        "public_url": f"http://127.0.0.1:{port}",
        "oauth_server": True,
        "oauth_session_key": Fernet.generate_key().decode(),
        "port": port,
    }
    values.update(overrides)
    return make_settings(**values)


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


@dataclass
class Form:
    action: str
    fields: dict[str, str] = field(default_factory=dict)
    buttons: list[tuple[str, str]] = field(default_factory=list)


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = {key: value or "" for key, value in attrs}
        if tag == "form":
            self.forms.append(Form(action=named.get("action", "")))
        elif tag == "input" and self.forms and "name" in named:
            self.forms[-1].fields[named["name"]] = named.get("value", "")
        elif tag == "button" and self.forms and "name" in named:
            self.forms[-1].buttons.append((named["name"], named.get("value", "")))


def forms_of(html: str) -> list[Form]:
    parser = _Forms()
    parser.feed(html)
    return parser.forms


@dataclass
class Step:
    status: int
    text: str
    headers: Any
    url: str

    @property
    def location(self) -> str:
        return str(self.headers["Location"])

    @property
    def redirect_params(self) -> dict[str, str]:
        return {key: values[0] for key, values in parse_qs(urlsplit(self.location).query).items()}

    @property
    def form(self) -> Form:
        [form] = forms_of(self.text)
        return form


class Browser:
    """A person at a browser: follows the pages by their forms, one request at a time."""

    def __init__(self) -> None:
        self.http = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=aiohttp.ClientTimeout(total=WAIT)
        )
        self.log: list[str] = []

    async def close(self) -> None:
        await self.http.close()

    async def get(self, url: str) -> Step:
        async with self.http.get(url, allow_redirects=False) as response:
            step = Step(response.status, await response.text(), response.headers, url)
        self.log.append(f"GET {urlsplit(url).path} → {step.status}")
        return step

    async def submit(self, page: Step, form: Form | None = None, *, button: str | None = None, **values: str) -> Step:
        form = form or page.form
        data = dict(form.fields)
        if button is not None:
            name, value = next((n, v) for n, v in form.buttons if v == button)
            data[name] = value
        data.update(values)
        url = urljoin(page.url, form.action)
        async with self.http.post(url, data=data, allow_redirects=False) as response:
            step = Step(response.status, await response.text(), response.headers, url)
        self.log.append(f"POST {urlsplit(url).path} {sorted(set(data) - {'csrf', 'request'})} → {step.status}")
        return step

    async def sign_in_and_consent(self, authorization_url: str, token: str = SERVICE_TOKEN) -> dict[str, str]:
        """The whole browser part: authorize page → sign in → allow; the redirect's parameters."""
        signin = await self.get(authorization_url)
        if signin.status == 302:  # still signed in, consent remembered
            return signin.redirect_params
        assert signin.status == 200, signin.text
        consent = await self.submit(signin, token=token)
        if consent.status == 302:  # consent remembered
            return consent.redirect_params
        assert consent.status == 200, consent.text
        done = await self.submit(consent, button="allow")
        assert done.status == 302, done.text
        return done.redirect_params


def authorize_url(base: str, client_id: str, challenge: str, **overrides: str | None) -> str:
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT_URI,
        "state": secrets.token_urlsafe(12),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "resource": base + "/mcp",
    }
    params.update(overrides)
    return base + "/oauth/authorize?" + urlencode({k: v for k, v in params.items() if v is not None})


@dataclass
class Gateway:
    """A gateway serving the built-in authorization server at `base`, and the steps of a client
    (registration, the token endpoint, the browser's part of a flow, an MCP request)."""

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

    async def child_environment(self, access_token: str) -> dict[str, str]:
        """The environment of the child a session with `access_token` gets (the echo server's `env` tool)."""
        headers = {"Authorization": f"Bearer {access_token}", "Accept": ACCEPT_BOTH}
        initialize = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"protocolVersion": LATEST, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
        }
        async with self.http.post(self.resource, json=initialize, headers=headers) as response:
            assert response.status == 200
            headers["Mcp-Session-Id"] = response.headers["Mcp-Session-Id"]
            headers["MCP-Protocol-Version"] = LATEST
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "env", "arguments": {}}}
        async with self.http.post(self.resource, json=call, headers=headers) as response:
            text = await response.text()
            messages = [json.loads(data) for _, data in parse_sse(text)] if "data:" in text else [json.loads(text)]
        async with self.http.delete(self.resource, headers=headers):
            pass
        environment: dict[str, str] = json.loads(messages[-1]["result"]["content"][0]["text"])
        return environment


GatewayFactory: TypeAlias = Callable[..., Awaitable[Gateway]]
"""The `oauth_gateway` fixture: `await oauth_gateway(**settings)` serves one on a port of its own."""


class MemoryTokenStorage:
    """The MCP SDK OAuth client's token storage, in memory: one test's client, one test's tokens."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info
