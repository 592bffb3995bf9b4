"""A fake OpenID provider for tests, served by `aiohttp_server` on loopback: a discovery document,
a JWK Set with one ES256 key, an authorization endpoint that signs its user in at once and sends
the browser back with a code, and a token endpoint that checks the client's credentials, the
redirect URI and the PKCE verifier before it answers with an ID token. Tests change what it does
through its attributes (the user's claims, changed or removed ID token claims, another signing
key, a failing or slow token endpoint)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import time
from typing import Any
from urllib.parse import unquote, urlencode

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from pytest_aiohttp import AiohttpServer

CLIENT_ID = "gateway-at-the-provider"
CLIENT_SECRET = "provider-client-secret-0123"
SUBJECT = "248289761001"


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")


class FakeProvider:
    """An OpenID provider whose behaviour a test sets through its attributes."""

    def __init__(self, *, client_secret: str | None = CLIENT_SECRET) -> None:
        self.client_id = CLIENT_ID
        self.client_secret = client_secret
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.kid = "provider-key-1"
        self.issuer = ""  # known once served
        self.user: dict[str, Any] = {
            "sub": SUBJECT,
            "email": "alice@example.com",
            "email_verified": True,
            "name": "Alice",
        }
        self.id_token_changes: dict[str, Any] = {}  # claims replaced; None removes one
        self.sign_with: ec.EllipticCurvePrivateKey | None = None  # another key under the same kid
        self.discovery_changes: dict[str, Any] = {}
        self.authorize_error: str | None = None  # e.g. access_denied: the user cancelled
        self.token_status: int | None = None  # the token endpoint fails with this status
        self.token_delay = 0.0
        self.token_padding = 0  # bytes added to the token response
        self.codes: dict[str, dict[str, str]] = {}
        self.authorize_requests: list[dict[str, str]] = []
        self.token_requests: list[dict[str, Any]] = []

    async def start(self, aiohttp_server: AiohttpServer) -> str:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_get("/authorize", self._authorize)
        app.router.add_post("/token", self._token)
        server = await aiohttp_server(app)
        self.issuer = str(server.make_url("")).rstrip("/")
        return self.issuer

    async def _discovery(self, request: web.Request) -> web.Response:
        document = {
            "issuer": self.issuer,
            "authorization_endpoint": self.issuer + "/authorize",
            "token_endpoint": self.issuer + "/token",
            "jwks_uri": self.issuer + "/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            **self.discovery_changes,
        }
        return web.json_response(document)

    async def _jwks(self, request: web.Request) -> web.Response:
        public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        return web.json_response({"keys": [{**public, "kid": self.kid, "alg": "ES256", "use": "sig"}]})

    async def _authorize(self, request: web.Request) -> web.Response:
        params = dict(request.query)
        self.authorize_requests.append(params)
        if params.get("client_id") != self.client_id or params.get("response_type") != "code":
            return web.Response(status=400, text="unknown client or response type")
        if "openid" not in params.get("scope", "").split() or params.get("code_challenge_method") != "S256":
            return web.Response(status=400, text="not an OpenID request with PKCE")
        back: dict[str, str] = {"state": params["state"]}
        if self.authorize_error is not None:
            back["error"] = self.authorize_error
        else:
            code = secrets.token_urlsafe(16)
            self.codes[code] = {
                "redirect_uri": params["redirect_uri"],
                "challenge": params["code_challenge"],
                "nonce": params["nonce"],
            }
            back["code"] = code
        raise web.HTTPFound(f"{params['redirect_uri']}?{urlencode(back)}")

    def _client_authenticated(self, request: web.Request, form: dict[str, str]) -> bool:
        if self.client_secret is None:
            return form.get("client_id") == self.client_id and "client_secret" not in form
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            return (unquote(user), unquote(password)) == (self.client_id, self.client_secret)
        return (form.get("client_id"), form.get("client_secret")) == (self.client_id, self.client_secret)

    async def _token(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.token_requests.append({"form": form, "authorization": request.headers.get("Authorization")})
        if self.token_delay:
            await asyncio.sleep(self.token_delay)
        if self.token_status is not None:
            return web.json_response({"error": "server_error"}, status=self.token_status)
        if not self._client_authenticated(request, {key: str(value) for key, value in form.items()}):
            return web.json_response({"error": "invalid_client"}, status=401)
        issued = self.codes.pop(str(form.get("code")), None)
        if (
            issued is None
            or form.get("grant_type") != "authorization_code"
            or form.get("redirect_uri") != issued["redirect_uri"]
            or _s256(str(form.get("code_verifier", ""))) != issued["challenge"]
        ):
            return web.json_response({"error": "invalid_grant"}, status=400)
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.client_id,
            "iat": now,
            "exp": now + 300,
            "nonce": issued["nonce"],
            **self.user,
        }
        for name, value in self.id_token_changes.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        key = self.sign_with or self.key
        id_token = jwt.encode(claims, key, algorithm="ES256", headers={"kid": self.kid})
        body = {"access_token": secrets.token_urlsafe(16), "token_type": "Bearer", "id_token": id_token}
        if self.token_padding:
            body["padding"] = "x" * self.token_padding
        return web.json_response(body)
