"""The `introspection` verifier: RFC 7662 token introspection at the authorization server.

The gateway authenticates to the endpoint with its own client credentials (RFC 7662 §2.1
requires the endpoint to be protected). A token is accepted only when `active` is true, `sub`
is present, and the configured issuer and audience match; positive answers are cached until
`min(exp, 60 s)`, negative ones briefly. A timeout, a network error or a 5xx is "unavailable"
(503), never a rejection.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import quote_plus

import aiohttp

from gateway import net
from gateway.auth import AuthError, Principal
from gateway.auth.cache import VerdictCache

REQUEST_TIMEOUT: Final = 5.0
POSITIVE_TTL: Final = 60.0
MAX_RESPONSE_BYTES: Final = 256 * 1024
# How a failed request is named (otherwise by its status, or the network error's type).
_FAILURES: Final[dict[net.FetchProblem, str]] = {"too_large": "answer too large", "not_json": "answer is not JSON"}


class IntrospectionVerifier:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        url: str,
        *,
        client_id: str,
        client_secret: str,
        issuer: str | None,
        audiences: Sequence[str],
    ) -> None:
        self._http = http
        self._url = url
        # RFC 6749 §2.3.1: form-encode each part, then HTTP Basic.
        credentials = f"{quote_plus(client_id)}:{quote_plus(client_secret)}".encode()
        self._authorization = "Basic " + base64.b64encode(credentials).decode()
        self._issuer = issuer
        self._audiences = frozenset(audiences)
        self._cache = VerdictCache(POSITIVE_TTL)

    async def probe(self) -> None:
        """Startup check: the endpoint answers an introspection request (with `active: false`)."""
        answer = await self._introspect("mcp-gateway-startup-probe")
        if "active" not in answer:
            raise AuthError("unavailable", "the introspection endpoint's answer has no 'active' member")

    async def verify(self, token: str) -> Principal:
        key = self._cache.key(token)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        answer = await self._introspect(token)
        try:
            principal, expires = self._judge(answer)
        except AuthError as error:
            self._cache.reject(key, error)
            raise
        self._cache.accept(key, principal, expires)
        return principal

    def _judge(self, answer: dict[str, Any]) -> tuple[Principal, float | None]:
        if answer.get("active") is not True:
            raise AuthError("invalid_token", "introspection: token is not active")
        subject = answer.get("sub")
        if not isinstance(subject, str) or not subject:
            raise AuthError("invalid_token", "introspection: no subject")
        if self._issuer is not None and answer.get("iss") != self._issuer:
            raise AuthError("invalid_token", "introspection: issuer mismatch")
        if self._audiences:
            audience = answer.get("aud")
            audiences = {audience} if isinstance(audience, str) else set(audience or [])
            if not audiences & self._audiences:
                raise AuthError("invalid_token", "introspection: audience mismatch")
        expires = answer.get("exp")
        scope = answer.get("scope")
        principal = Principal(
            issuer=str(answer.get("iss") or self._url),
            subject=subject,
            scopes=frozenset(scope.split()) if isinstance(scope, str) else frozenset(),
            claims=answer,
        )
        return principal, float(expires) if isinstance(expires, int | float) else None

    async def _introspect(self, token: str) -> dict[str, Any]:
        form = {"token": token, "token_type_hint": "access_token"}
        try:
            response = await net.fetch_json(
                self._http,
                "POST",
                self._url,
                limit=MAX_RESPONSE_BYTES,
                within=REQUEST_TIMEOUT,
                headers={"Authorization": self._authorization},
                data=form,
            )
        except net.FetchError as exc:
            raise AuthError("unavailable", f"introspection: {_FAILURES.get(exc.problem, str(exc))}") from None
        answer = response.document
        if not isinstance(answer, dict):
            raise AuthError("unavailable", "introspection: answer is not an object")
        return answer
