"""The introspection and whoami verifiers against a fake authorization server / upstream API (a
real HTTP server that counts its hits and can be made slow or failing)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from gateway import create_app
from gateway.auth import AuthStartupError, introspection
from tests.support.mcp import ACCEPT_BOTH, LATEST, Mcp
from tests.support.settings import make_settings
from tests.support.types import Gateway

RESOURCE = "https://mcp.example.com/mcp"
ISSUER = "https://auth.example.com"
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": LATEST}}


@dataclass
class FakeBackend:
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)  # introspection answers by token
    users: dict[str, Any] = field(default_factory=dict)  # whoami answers by token
    failing: bool = False
    delay: float = 0.0
    hits: int = 0
    base: str = ""

    async def introspect(self, request: web.Request) -> web.Response:
        self.hits += 1
        await asyncio.sleep(self.delay)
        if self.failing:
            return web.Response(status=500)
        if request.headers.get("Authorization") != "Basic " + base64.b64encode(b"gateway:s3cret").decode():
            return web.json_response({"error": "invalid_client"}, status=401)
        token = (await request.post()).get("token")
        return web.json_response(self.answers.get(str(token), {"active": False}))

    async def user(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.failing:
            return web.Response(status=502)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.users:
            return web.json_response({"message": "Bad credentials"}, status=401)
        return web.json_response(self.users[token])


@pytest.fixture
async def backend(aiohttp_server: AiohttpServer) -> FakeBackend:
    fake = FakeBackend()
    app = web.Application()
    app.router.add_post("/introspect", fake.introspect)
    app.router.add_get("/user", fake.user)
    server: TestServer = await aiohttp_server(app)
    fake.base = str(server.make_url("/"))
    return fake


def introspection_settings(backend: FakeBackend, **extra: Any) -> dict[str, Any]:
    return {
        "auth": "introspection",
        "introspection_url": backend.base + "introspect",
        "introspection_client_id": "gateway",
        "introspection_client_secret": "s3cret",
        "token_issuer": ISSUER,
        "token_audience": [RESOURCE],
        "public_url": "https://mcp.example.com",
        **extra,
    }


def whoami_settings(backend: FakeBackend, **extra: Any) -> dict[str, Any]:
    return {"auth": "whoami", "whoami_url": backend.base + "user", "public_url": "https://mcp.example.com", **extra}


async def status_for(mcp: Mcp, token: str) -> tuple[int, str | None]:
    headers = {"Accept": ACCEPT_BOTH, "Authorization": f"Bearer {token}"}
    async with mcp.http.post("/mcp", json=INIT, headers=headers) as response:
        if response.status == 503:
            assert int(response.headers["Retry-After"]) > 0
        error = response.headers.get("WWW-Authenticate", "").partition('error="')[2].partition('"')[0] or None
        return response.status, error


def active(**claims: Any) -> dict[str, Any]:
    return {"active": True, "sub": "user-1", "iss": ISSUER, "aud": RESOURCE, "exp": int(time.time()) + 300, **claims}


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (active(), (200, None)),
        (active(aud=["https://other.example", RESOURCE]), (200, None)),
        ({"active": False}, (401, "invalid_token")),
        (active(aud="https://other.example/mcp"), (401, "invalid_token")),
        (active(iss="https://evil.example"), (401, "invalid_token")),
        (active(sub=None), (401, "invalid_token")),
    ],
    ids=["active", "aud-list", "inactive", "wrong-aud", "wrong-iss", "no-sub"],
)
async def test_introspection_matrix(
    gateway: Gateway, backend: FakeBackend, answer: dict[str, Any], expected: tuple[int, str | None]
) -> None:
    backend.answers["tok"] = {key: value for key, value in answer.items() if value is not None}
    mcp = await gateway(**introspection_settings(backend))
    assert await status_for(mcp, "tok") == expected


async def test_introspection_caches_answers(gateway: Gateway, backend: FakeBackend) -> None:
    backend.answers["good"] = active()
    mcp = await gateway(**introspection_settings(backend))
    before = backend.hits
    for _ in range(3):
        assert await status_for(mcp, "good") == (200, None)
        assert await status_for(mcp, "bad") == (401, "invalid_token")
    assert backend.hits - before == 2  # one question per token, positive and negative alike


@pytest.mark.parametrize("failure", ["timeout", "server-error"])
async def test_introspection_unavailable_is_503(
    gateway: Gateway, backend: FakeBackend, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    backend.answers["tok"] = active()
    mcp = await gateway(**introspection_settings(backend))
    monkeypatch.setattr(introspection, "REQUEST_TIMEOUT", 0.2)
    if failure == "timeout":
        backend.delay = 1.0
    else:
        backend.failing = True
    assert await status_for(mcp, "tok") == (503, None)
    backend.delay, backend.failing = 0.0, False
    assert await status_for(mcp, "tok") == (200, None)  # failures were not cached


@pytest.mark.parametrize(
    ("user", "expected"),
    [({"login": "ada", "id": 7}, (200, None)), ({"id": 7}, (503, None))],
    ids=["login", "no-login-field"],
)
async def test_whoami(
    gateway: Gateway, backend: FakeBackend, user: dict[str, Any], expected: tuple[int, str | None]
) -> None:
    backend.users["gh-token"] = user
    mcp = await gateway(**whoami_settings(backend))
    assert await status_for(mcp, "gh-token") == expected
    assert await status_for(mcp, "revoked") == (401, "invalid_token")


async def test_whoami_nested_field_and_cache(gateway: Gateway, backend: FakeBackend) -> None:
    backend.users["t"] = {"user": {"login": "grace"}}
    mcp = await gateway(**whoami_settings(backend, whoami_principal_field="user.login"))
    before = backend.hits
    for _ in range(3):
        assert await status_for(mcp, "t") == (200, None)
    assert backend.hits - before == 1


async def test_whoami_upstream_failure_is_503(gateway: Gateway, backend: FakeBackend) -> None:
    backend.users["t"] = {"login": "ada"}
    mcp = await gateway(**whoami_settings(backend))
    backend.failing = True
    assert await status_for(mcp, "t") == (503, None)


@pytest.mark.parametrize(
    ("settings", "fault"),
    [
        (introspection_settings, "wrong-credentials"),
        (introspection_settings, "failing"),
        (whoami_settings, "failing"),
    ],
    ids=["introspection-credentials", "introspection-down", "whoami-down"],
)
async def test_backends_must_answer_at_startup(
    backend: FakeBackend, settings: Callable[..., dict[str, Any]], fault: str
) -> None:
    overrides = {"introspection_client_secret": "wrong"} if fault == "wrong-credentials" else {}
    backend.failing = fault == "failing"
    runner = web.AppRunner(create_app(make_settings(**settings(backend, **overrides))))
    with pytest.raises(AuthStartupError, match="did not answer"):
        await runner.setup()
    await runner.cleanup()


async def test_whoami_probe_accepts_a_401(backend: FakeBackend, gateway: Gateway) -> None:
    """Without a token the upstream answers 401: it is up, so startup proceeds."""
    await gateway(**whoami_settings(backend))
    assert backend.hits >= 1
