"""The jwt verifier against a fake identity provider (a real HTTP server serving a JWKS that can
rotate, fail, and count its hits). Each case asserts the HTTP outcome the client sees."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError
from pytest_aiohttp import AiohttpServer

from gateway import create_app
from gateway.auth import AuthError, AuthStartupError
from gateway.auth.jwks import JwksCache
from gateway.auth.jwt import JwtVerifier
from gateway.config import Settings
from tests.support.mcp import ACCEPT_BOTH, LATEST, Mcp
from tests.support.settings import make_settings
from tests.support.types import Gateway

ISSUER = "https://idp.example"
RESOURCE = "https://mcp.example.com/mcp"
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": LATEST}}


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        algorithm = jwt.algorithms.RSAAlgorithm if self.alg.startswith("RS") else jwt.algorithms.ECAlgorithm
        document: dict[str, Any] = json.loads(algorithm.to_jwk(public))
        return {**document, "kid": self.kid, "use": "sig"}


def rsa_key(kid: str) -> SigningKey:
    return SigningKey(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))


def ec_key(kid: str) -> SigningKey:
    return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


@dataclass
class FakeIdentityProvider:
    keys: list[SigningKey] = field(default_factory=lambda: [rsa_key("rsa-1"), ec_key("ec-1")])
    failing: bool = False
    hits: int = 0
    url: str = ""

    async def jwks(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.failing:
            return web.Response(status=500)
        return web.json_response({"keys": [key.jwk() for key in self.keys]})

    def token(self, key: SigningKey | None = None, *, headers: dict[str, Any] | None = None, **claims: Any) -> str:
        key = key or self.keys[0]
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": RESOURCE, "sub": "user-1", "exp": now + 300, "iat": now, "scope": "tools"}
        payload.update(claims)
        payload = {name: value for name, value in payload.items() if value is not None}
        return jwt.encode(payload, key.private, algorithm=key.alg, headers={"kid": key.kid, **(headers or {})})


@pytest.fixture
async def idp(aiohttp_server: AiohttpServer) -> FakeIdentityProvider:
    provider = FakeIdentityProvider()
    app = web.Application()
    app.router.add_get("/jwks", provider.jwks)
    server: TestServer = await aiohttp_server(app)
    provider.url = str(server.make_url("/jwks"))
    return provider


def jwt_settings(idp: FakeIdentityProvider, **extra: Any) -> dict[str, Any]:
    return {
        "auth": "jwt",
        "token_issuer": ISSUER,
        "token_audience": [RESOURCE],
        "jwt_jwks_url": idp.url,
        "public_url": "https://mcp.example.com",
        **extra,
    }


async def status_for(mcp: Mcp, token: str) -> tuple[int, str | None]:
    headers = {"Accept": ACCEPT_BOTH, "Authorization": f"Bearer {token}"}
    async with mcp.http.post("/mcp", json=INIT, headers=headers) as response:
        challenge = response.headers.get("WWW-Authenticate", "")
        error = challenge.partition('error="')[2].partition('"')[0] or None
        return response.status, error


def _unsigned(idp: FakeIdentityProvider) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": RESOURCE, "sub": "u", "exp": now + 300}
    return jwt.encode(claims, None, algorithm="none", headers={"kid": "rsa-1"})  # type: ignore[arg-type]


def _hs256_with_public_key(idp: FakeIdentityProvider) -> str:
    """The classic confusion attack: an HMAC token keyed with the RSA public key's PEM."""
    pem = (
        idp.keys[0]
        .private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = jwt.utils.base64url_encode(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    now = int(time.time())
    body = jwt.utils.base64url_encode(
        json.dumps({"iss": ISSUER, "aud": RESOURCE, "sub": "u", "exp": now + 300}).encode()
    )
    signature = hmac.new(pem, header + b"." + body, hashlib.sha256).digest()
    return (header + b"." + body + b"." + jwt.utils.base64url_encode(signature)).decode()


CASES: list[tuple[str, Callable[[FakeIdentityProvider], str], int, str | None]] = [
    ("rs256", lambda p: p.token(), 200, None),
    ("es256", lambda p: p.token(p.keys[1]), 200, None),
    ("alg-none", _unsigned, 401, "invalid_token"),
    ("hs256-public-key", _hs256_with_public_key, 401, "invalid_token"),
    (
        "alg-not-allowed",
        lambda p: jwt.encode({"iss": ISSUER}, p.keys[0].private, algorithm="RS512", headers={"kid": "rsa-1"}),
        401,
        "invalid_token",
    ),
    ("expired", lambda p: p.token(exp=int(time.time()) - 120), 401, "invalid_token"),
    ("expired-within-leeway", lambda p: p.token(exp=int(time.time()) - 30), 200, None),
    ("nbf-within-leeway", lambda p: p.token(nbf=int(time.time()) + 30), 200, None),
    ("nbf-future", lambda p: p.token(nbf=int(time.time()) + 120), 401, "invalid_token"),
    ("missing-exp", lambda p: p.token(exp=None), 401, "invalid_token"),
    ("wrong-iss", lambda p: p.token(iss="https://evil.example"), 401, "invalid_token"),
    ("wrong-aud", lambda p: p.token(aud="https://other.example/mcp"), 401, "invalid_token"),
    ("missing-aud", lambda p: p.token(aud=None), 401, "invalid_token"),
    ("aud-list-with-ours", lambda p: p.token(aud=["https://other.example", RESOURCE]), 200, None),
    ("missing-sub", lambda p: p.token(sub=None), 401, "invalid_token"),
    ("bad-signature", lambda p: p.token()[:-4] + "AAAA", 401, "invalid_token"),
    ("garbage", lambda p: "not.a.jwt", 401, "invalid_token"),
]


@pytest.mark.parametrize(
    ("make_token", "status", "error"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
async def test_jwt_matrix(
    gateway: Gateway,
    idp: FakeIdentityProvider,
    make_token: Callable[[FakeIdentityProvider], str],
    status: int,
    error: str | None,
) -> None:
    mcp = await gateway(**jwt_settings(idp))
    assert await status_for(mcp, make_token(idp)) == (status, error)


async def test_foreign_issuer_never_reaches_the_jwks(gateway: Gateway, idp: FakeIdentityProvider) -> None:
    mcp = await gateway(**jwt_settings(idp))
    before = idp.hits
    for _ in range(5):
        await status_for(mcp, idp.token(iss="https://evil.example", headers={"kid": str(uuid.uuid4())}))
    assert idp.hits == before


async def test_unknown_kid_burst_fetches_at_most_once(gateway: Gateway, idp: FakeIdentityProvider) -> None:
    # The failed-authentication limit would refuse most of the burst before it reaches the verifier.
    mcp = await gateway(**jwt_settings(idp), ratelimit_auth_failures_ip="")
    before = idp.hits  # the startup prefetch
    forged = [idp.token(headers={"kid": str(uuid.uuid4())}) for _ in range(20)]
    results = [await status_for(mcp, token) for token in forged]
    assert set(results) == {(401, "invalid_token")}
    assert idp.hits - before <= 1


async def test_rotated_key_is_accepted_after_one_refresh(gateway: Gateway, idp: FakeIdentityProvider) -> None:
    mcp = await gateway(**jwt_settings(idp))
    before = idp.hits
    rotated = rsa_key("rsa-2")
    idp.keys = [rotated]
    assert await status_for(mcp, idp.token(rotated)) == (200, None)
    assert idp.hits == before + 1


async def test_failing_jwks_with_a_warm_cache_still_accepts(gateway: Gateway, idp: FakeIdentityProvider) -> None:
    mcp = await gateway(**jwt_settings(idp, jwt_jwks_ttl=0.1))
    idp.failing = True
    await asyncio.sleep(0.2)  # let the cached set go stale
    assert await status_for(mcp, idp.token()) == (200, None)
    assert idp.hits >= 2  # it did try to refresh, and kept the last good keys


async def test_cold_cache_with_a_failing_jwks_is_unavailable(idp: FakeIdentityProvider) -> None:
    idp.failing = True
    async with aiohttp.ClientSession() as http:
        verifier = JwtVerifier(
            JwksCache(http, idp.url, ttl=600, cooldown=30), issuer=ISSUER, audiences=[RESOURCE], algorithms=["RS256"]
        )
        with pytest.raises(AuthError) as caught:
            await verifier.verify(idp.token())
    assert caught.value.code == "unavailable"  # rendered as 503 + Retry-After, never 401


async def test_jwks_must_answer_at_startup(idp: FakeIdentityProvider) -> None:
    idp.failing = True
    runner = web.AppRunner(create_app(make_settings(**jwt_settings(idp))))
    with pytest.raises(AuthStartupError, match="JWKS"):
        await runner.setup()
    await runner.cleanup()


async def test_scopes_come_from_the_token(gateway: Gateway, idp: FakeIdentityProvider) -> None:
    mcp = await gateway(**jwt_settings(idp, required_scopes=["admin"]))
    assert await status_for(mcp, idp.token(scope="tools")) == (403, "insufficient_scope")
    assert await status_for(mcp, idp.token(scope="tools admin")) == (200, None)
    assert await status_for(mcp, idp.token(scope=None, scp=["admin"])) == (200, None)


async def test_static_pem_keys_instead_of_a_jwks(gateway: Gateway, idp: FakeIdentityProvider, tmp_path: Path) -> None:
    pem = tmp_path / "rsa-1.pem"  # the file name is the key id
    pem.write_bytes(
        idp.keys[0]
        .private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    settings = {**jwt_settings(idp), "jwt_jwks_url": None, "jwt_public_keys": [pem]}
    mcp = await gateway(**settings)
    hits = idp.hits
    assert await status_for(mcp, idp.token()) == (200, None)
    assert await status_for(mcp, idp.token(idp.keys[1])) == (401, "invalid_token")  # kid ec-1: no such file
    assert idp.hits == hits  # no JWKS involved


@pytest.mark.parametrize("keys", ["both", "neither"])
def test_jwt_keys_come_from_exactly_one_place(idp: FakeIdentityProvider, tmp_path: Path, keys: str) -> None:
    pem = tmp_path / "k.pem"
    pem.write_bytes(
        idp.keys[0]
        .private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    extra = {"jwt_public_keys": [pem]} if keys == "both" else {"jwt_jwks_url": None}
    with pytest.raises(ValidationError, match="give one"):
        Settings(command=["true"], **{**jwt_settings(idp), **extra})
