"""Bounded JSON fetches: `gateway.net.fetch_json` against a real (fake) server on loopback, then
each caller's own path refusing a document that is too large — the JWKS (bearer tokens and the
OpenID provider's keys), token introspection, whoami, the authorization server's metadata, the
OpenID provider's discovery document, and client metadata documents. (The OpenID token
endpoint's oversized answer is tested with the sign-in flow, in test_oauth_oidc.py.)"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import unused_port
from cryptography.hazmat.primitives.asymmetric import ec
from pytest_aiohttp import AiohttpServer

from gateway import create_app, net
from gateway.auth import AuthError, AuthStartupError, introspection, whoami
from gateway.auth.jwks import MAX_JWKS_BYTES, JwksCache
from gateway.auth.jwt import JwtVerifier
from gateway.auth.server_metadata import MAX_METADATA_BYTES
from gateway.auth.static import digest_of
from gateway.oauth.clients import MAX_CIMD_BYTES
from gateway.oauth.oidc import MAX_DISCOVERY_BYTES
from tests.support.mcp import ACCEPT_BOTH, LATEST, Mcp
from tests.support.oauth import REDIRECT_URI, GatewayFactory, authorize_url, oauth_settings, pkce
from tests.support.oidc_provider import FakeProvider
from tests.support.settings import make_settings
from tests.support.types import Gateway

ISSUER = "https://idp.example"
RESOURCE = "https://mcp.example.com/mcp"
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": LATEST}}
CHUNK = 16 * 1024  # a streamed body is written in pieces this big, without a Content-Length


@pytest.fixture(autouse=True)
def _info_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)


@dataclass
class Answer:
    body: bytes
    status: int = 200
    streamed: bool = False  # chunked, so the client learns the size only by reading
    delay: float = 0.0


@dataclass
class Documents:
    """A server answering each path with what a test put there (404 for anything else)."""

    answers: dict[str, Answer] = field(default_factory=dict)
    base: str = ""

    def url(self, path: str) -> str:
        return self.base + path

    async def handle(self, request: web.Request) -> web.StreamResponse:
        answer = self.answers.get(request.path)
        if answer is None:
            raise web.HTTPNotFound()
        await asyncio.sleep(answer.delay)
        if not answer.streamed:
            return web.Response(status=answer.status, body=answer.body, content_type="application/json")
        response = web.StreamResponse(status=answer.status, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(answer.body), CHUNK):
            await response.write(answer.body[start : start + CHUNK])
        await response.write_eof()
        return response


@pytest.fixture
async def documents(aiohttp_server: AiohttpServer) -> Documents:
    served = Documents()
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", served.handle)
    server = await aiohttp_server(app)
    served.base = str(server.make_url("")).rstrip("/")
    return served


def padded(document: dict[str, Any], size: int) -> bytes:
    """`document` as JSON, padded to at least `size` bytes: valid, only too large."""
    return json.dumps({**document, "padding": "x" * size}).encode()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with net.client_session() as session:
        yield session


# --- the one fetch ----------------------------------------------------------------------------------

LIMIT = 64 * 1024


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (Answer(padded({}, LIMIT)), "too_large"),
        (Answer(padded({}, LIMIT), streamed=True), "too_large"),
        (Answer(b"[" * 5000 + b"]" * 5000), "not_json"),
        (Answer(b"{}", status=302), "status"),
        (Answer(b"{}", delay=1.0), "timeout"),
    ],
    ids=["declared-too-large", "streamed-too-large", "nested-too-deep", "redirect-not-followed", "slow"],
)
async def test_what_fetch_json_refuses(
    documents: Documents, http: aiohttp.ClientSession, answer: Answer, problem: str
) -> None:
    documents.answers["/doc"] = answer
    with pytest.raises(net.FetchError) as caught:
        await net.fetch_json(http, "GET", documents.url("/doc"), limit=LIMIT, within=0.3)
    assert caught.value.problem == problem


async def test_a_document_in_many_pieces_is_read_whole(documents: Documents, http: aiohttp.ClientSession) -> None:
    """`read(n)` returns what has arrived: a document under the limit is read to its end."""
    body = padded({"keys": []}, LIMIT - 100)
    documents.answers["/doc"] = Answer(body, streamed=True)
    answer = await net.fetch_json(http, "GET", documents.url("/doc"), limit=LIMIT, within=5.0)
    assert answer.status == 200
    assert answer.document == json.loads(body)


async def test_every_status_read_when_asked(documents: Documents, http: aiohttp.ClientSession) -> None:
    documents.answers["/doc"] = Answer(b'{"error": "invalid_grant"}', status=400)
    answer = await net.fetch_json(http, "GET", documents.url("/doc"), limit=LIMIT, within=5.0, expect=None)
    assert (answer.status, answer.document) == (400, {"error": "invalid_grant"})
    documents.answers["/doc"] = Answer(b"<html>down</html>", status=502)
    with pytest.raises(net.FetchError) as caught:
        await net.fetch_json(http, "GET", documents.url("/doc"), limit=LIMIT, within=5.0, expect=None)
    assert (caught.value.problem, caught.value.status) == ("not_json", 502)


async def test_an_unreachable_server(http: aiohttp.ClientSession) -> None:
    with pytest.raises(net.FetchError) as caught:
        await net.fetch_json(http, "GET", f"http://127.0.0.1:{unused_port()}/doc", limit=LIMIT, within=5.0)
    assert caught.value.problem == "unreachable"
    assert str(caught.value) == "ClientConnectorError"  # the reason names no host; the detail does
    assert "127.0.0.1" in caught.value.detail


async def test_the_user_agent_names_the_gateway(aiohttp_server: AiohttpServer, http: aiohttp.ClientSession) -> None:
    seen: list[str] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(request.headers["User-Agent"])
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/", echo)
    server = await aiohttp_server(app)
    await net.fetch_json(http, "GET", str(server.make_url("/")), limit=LIMIT, within=5.0)
    assert seen == [net.USER_AGENT]


# --- each caller refuses an oversized document --------------------------------------------------------


def _jwk(kid: str) -> tuple[ec.EllipticCurvePrivateKey, dict[str, Any]]:
    key = ec.generate_private_key(ec.SECP256R1())
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    return key, {**public, "kid": kid, "use": "sig"}


def _jwt_settings(documents: Documents) -> dict[str, Any]:
    return {
        "auth": "jwt",
        "token_issuer": ISSUER,
        "token_audience": [RESOURCE],
        "jwt_jwks_url": documents.url("/jwks"),
        "public_url": "https://mcp.example.com",
    }


async def _mcp_status(mcp: Mcp, token: str) -> int:
    headers = {"Accept": ACCEPT_BOTH, "Authorization": f"Bearer {token}"}
    async with mcp.http.post("/mcp", json=INIT, headers=headers) as response:
        return response.status


async def test_an_oversized_jwks_is_unavailable(
    documents: Documents, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """A bearer token checked against a JWKS that grew too large: 503 (never 401), and why is logged."""
    key, jwk = _jwk("k1")
    documents.answers["/jwks"] = Answer(padded({"keys": [jwk]}, MAX_JWKS_BYTES), streamed=True)
    now = int(time.time())
    token = jwt.encode(
        {"iss": ISSUER, "aud": RESOURCE, "sub": "u", "iat": now, "exp": now + 60},
        key,
        algorithm="ES256",
        headers={"kid": "k1"},
    )
    verifier = JwtVerifier(
        JwksCache(http, documents.url("/jwks"), ttl=600, cooldown=30),
        issuer=ISSUER,
        audiences=[RESOURCE],
        algorithms=["ES256"],
    )
    with pytest.raises(AuthError) as caught:
        await verifier.verify(token)
    assert caught.value.code == "unavailable"  # rendered as 503 + Retry-After
    assert "JWKS document too large" in caplog.text


async def test_an_oversized_jwks_stops_startup(documents: Documents, caplog: pytest.LogCaptureFixture) -> None:
    _, jwk = _jwk("k1")
    documents.answers["/jwks"] = Answer(padded({"keys": [jwk]}, MAX_JWKS_BYTES))
    runner = web.AppRunner(create_app(make_settings(**_jwt_settings(documents))))
    with pytest.raises(AuthStartupError, match="JWKS"):
        await runner.setup()
    await runner.cleanup()
    assert "JWKS document too large" in caplog.text


async def test_an_oversized_introspection_answer_is_503(
    gateway: Gateway, documents: Documents, caplog: pytest.LogCaptureFixture
) -> None:
    documents.answers["/introspect"] = Answer(b'{"active": false}')  # the startup probe
    mcp = await gateway(
        auth="introspection",
        introspection_url=documents.url("/introspect"),
        introspection_client_id="gateway",
        introspection_client_secret="s3cret",
        public_url="https://mcp.example.com",
    )
    active = {"active": True, "sub": "u", "exp": int(time.time()) + 60}
    documents.answers["/introspect"] = Answer(padded(active, introspection.MAX_RESPONSE_BYTES), streamed=True)
    assert await _mcp_status(mcp, "tok") == 503
    reasons = [getattr(record, "reason", None) for record in caplog.records]
    assert "introspection: answer too large" in reasons


async def test_an_oversized_whoami_answer_is_503(gateway: Gateway, documents: Documents) -> None:
    documents.answers["/user"] = Answer(b'{"message": "no token"}', status=401)  # the startup probe
    mcp = await gateway(auth="whoami", whoami_url=documents.url("/user"), public_url="https://mcp.example.com")
    documents.answers["/user"] = Answer(padded({"login": "ada"}, whoami.MAX_RESPONSE_BYTES), streamed=True)
    assert await _mcp_status(mcp, "gh-token") == 503


@pytest.mark.parametrize("streamed", [False, True], ids=["declared", "streamed"])
async def test_oversized_authorization_server_metadata_is_refused_as_too_large(
    documents: Documents, streamed: bool
) -> None:
    """It was cut at the limit and then failed as bad JSON; it is refused for its size."""
    metadata = {"issuer": documents.base, "token_endpoint": documents.url("/token")}
    body = padded(metadata, MAX_METADATA_BYTES)
    documents.answers["/.well-known/oauth-authorization-server"] = Answer(body, streamed=streamed)
    settings = make_settings(
        auth="static",
        static_tokens=[{"principal": "a", "sha256": digest_of("t")}],
        public_url="https://mcp.example.com",
        authorization_servers=[documents.base],
    )
    runner = web.AppRunner(create_app(settings))
    with pytest.raises(AuthStartupError, match=f"larger than {MAX_METADATA_BYTES} bytes"):
        await runner.setup()
    await runner.cleanup()


def _oidc_settings(provider: FakeProvider) -> dict[str, Any]:
    return {
        "oauth_signin_methods": "token,oidc",
        "oauth_oidc_issuer": provider.issuer,
        "oauth_oidc_client_id": provider.client_id,
        "oauth_oidc_client_secret": provider.client_secret,
        "oauth_oidc_allowed_domains": "example.com",
    }


async def test_an_oversized_openid_discovery_document_stops_startup(aiohttp_server: AiohttpServer) -> None:
    provider = FakeProvider()
    await provider.start(aiohttp_server)
    provider.discovery_changes = {"padding": "x" * MAX_DISCOVERY_BYTES}
    runner = web.AppRunner(create_app(oauth_settings(8080, **_oidc_settings(provider))))
    with pytest.raises(AuthStartupError, match=f"larger than {MAX_DISCOVERY_BYTES} bytes"):
        await runner.setup()
    await runner.cleanup()


async def test_an_oversized_openid_key_set_stops_startup(
    aiohttp_server: AiohttpServer, documents: Documents, caplog: pytest.LogCaptureFixture
) -> None:
    provider = FakeProvider()
    await provider.start(aiohttp_server)
    _, jwk = _jwk(provider.kid)
    documents.answers["/jwks"] = Answer(padded({"keys": [jwk]}, MAX_JWKS_BYTES), streamed=True)
    provider.discovery_changes = {"jwks_uri": documents.url("/jwks")}
    runner = web.AppRunner(create_app(oauth_settings(8080, **_oidc_settings(provider))))
    with pytest.raises(AuthStartupError, match="the provider's keys"):
        await runner.setup()
    await runner.cleanup()
    assert "JWKS document too large" in caplog.text


async def test_an_oversized_client_metadata_document_is_refused(
    oauth_gateway: GatewayFactory, documents: Documents
) -> None:
    url = documents.url("/client.json")
    document = {"client_id": url, "client_name": "Big Client", "redirect_uris": [REDIRECT_URI]}
    documents.answers["/client.json"] = Answer(padded(document, MAX_CIMD_BYTES), streamed=True)
    gw = await oauth_gateway(oauth_cimd_allow_private=True)
    _, challenge = pkce()
    step = await gw.browser.get(authorize_url(gw.base, url, challenge))
    assert step.status == 401
    assert f"larger than {MAX_CIMD_BYTES} bytes" in step.text
