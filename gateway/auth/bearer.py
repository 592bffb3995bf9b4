"""Bearer authentication of the MCP endpoint: parsing `Authorization`, checking the token and
scopes, and the `WWW-Authenticate` challenge, which is rendered here and nowhere else (`/metrics`
and the step-up refusal of a handler, `InsufficientScope`, included).

Only the MCP endpoint is protected, by exact path (preflight OPTIONS excepted: browsers send no
credentials on it); discovery and health are public because of their paths, never because of a
header or a user agent. Outcomes follow RFC 6750: no bearer credentials → 401 without an error
code; malformed credentials → 400 `invalid_request`; a rejected token → 401 `invalid_token`; a
missing scope → 403 `insufficient_scope`; a verifier that cannot answer → 503 (fail closed,
never 401). Error descriptions are fixed text; tokens are logged only as fingerprints.

Tokens that verified are remembered for a while, as SHA-256 digests only (never the tokens),
bounded in number and age, and forgotten as soon as one is refused: a user whose token verified
passes the failed-authentication gate that someone else at the same address spent, while
unknown tokens there are still refused unverified.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from multidict import CIMultiDictProxy

from gateway import keys, request_context
from gateway.auth import ANONYMOUS, AuthError, Principal
from gateway.errors import ErrorCode, GatewayError, InsufficientScope
from gateway.jsonrpc import RequestId
from gateway.logline import fingerprint

log = logging.getLogger("gateway.auth")

REALM: Final = "mcp-gateway"
# RFC 6750 b64token: the only characters a bearer token may contain.
_TOKEN68: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# Retry-After when the verifier's backend cannot answer.
UNAVAILABLE_RETRY_AFTER: Final = 5
# A token that verified passes a spent failed-authentication gate this long after its last
# success: longer than a user pauses between uses of a session (an hour covers a meeting; each
# success renews it), short enough that a token a user stopped using is soon treated as unknown.
VERIFIED_TOKEN_TTL: Final = 3600.0
# Most digests remembered (about 150 bytes each): the least recently verified go first.
VERIFIED_TOKEN_LIMIT: Final = 4096

ChallengeError = Literal["invalid_request", "invalid_token", "insufficient_scope"]
_DESCRIPTIONS: Final[dict[ChallengeError, str]] = {
    "invalid_request": "The Authorization header is malformed",
    "invalid_token": "The access token is invalid or expired",
    "insufficient_scope": "The access token lacks a required scope",
}


def challenge(
    *,
    realm: str = REALM,
    resource_metadata: str | None = None,
    error: ChallengeError | None = None,
    scope: str | None = None,
) -> str:
    """The one `WWW-Authenticate` value of every refusal (RFC 6750 §3, with RFC 9728's `resource_metadata`)."""
    parts = [f'realm="{realm}"']
    if resource_metadata is not None:
        parts.append(f'resource_metadata="{resource_metadata}"')
    if scope:
        parts.append(f'scope="{scope}"')
    if error is not None:
        parts.append(f'error="{error}"')
        parts.append(f'error_description="{_DESCRIPTIONS[error]}"')
    return "Bearer " + ", ".join(parts)


def bearer_token(headers: CIMultiDictProxy[str]) -> str | None:
    """The bearer token of a request; None when it carries no bearer credentials.

    Raises `ValueError` when the credentials are malformed (empty, several tokens, characters a
    token cannot hold, several Authorization headers).
    """
    values = headers.getall("Authorization", [])
    if not values:
        return None
    if len(values) > 1:
        raise ValueError("several Authorization headers")
    scheme, _, credentials = values[0].strip().partition(" ")
    if scheme.lower() != "bearer":  # RFC 7235: schemes are case-insensitive
        return None
    credentials = credentials.strip()
    if not _TOKEN68.fullmatch(credentials):
        raise ValueError("not a single bearer token")
    return credentials


class RecentlyVerified:
    """SHA-256 digests of the tokens that verified lately, each with the time of its last success."""

    def __init__(self, ttl: float = VERIFIED_TOKEN_TTL, limit: int = VERIFIED_TOKEN_LIMIT) -> None:
        self._ttl = ttl
        self._limit = limit
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # oldest success first

    @staticmethod
    def _digest(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def remember(self, token: str) -> None:
        digest = self._digest(token)
        self._seen.pop(digest, None)
        self._seen[digest] = time.monotonic()
        while len(self._seen) > self._limit:
            self._seen.popitem(last=False)

    def forget(self, token: str) -> None:
        self._seen.pop(self._digest(token), None)

    def holds(self, token: str) -> bool:
        digest = self._digest(token)
        verified = self._seen.get(digest)
        if verified is None:
            return False
        if time.monotonic() - verified >= self._ttl:
            del self._seen[digest]
            return False
        return True

    def recognises(self, request: web.Request) -> bool:
        """Whether the request presents a token that verified lately."""
        try:
            token = bearer_token(request.headers)
        except ValueError:
            return False
        return token is not None and self.holds(token)


_REFUSALS: Final[dict[ChallengeError, ErrorCode]] = {
    "invalid_request": "bad_authorization",
    "invalid_token": "unauthorized",
    "insufficient_scope": "insufficient_scope",
}


@dataclass(frozen=True, slots=True)
class Authenticator:
    """Everything the middleware needs, built once from settings."""

    protected_path: str
    resource_metadata: str
    required_scopes: frozenset[str]
    verified: RecentlyVerified = field(default_factory=RecentlyVerified, compare=False, repr=False)

    @property
    def _scope(self) -> str | None:
        return " ".join(sorted(self.required_scopes)) or None

    def _refusal(
        self, error: ChallengeError | None, scope: str | None = None, request_id: RequestId | None = None
    ) -> GatewayError:
        value = challenge(resource_metadata=self.resource_metadata, error=error, scope=scope or self._scope)
        header = {"WWW-Authenticate": value}
        if error is None:
            return GatewayError("unauthorized", "Authentication required", headers=header)
        return GatewayError(_REFUSALS[error], _DESCRIPTIONS[error], request_id=request_id, headers=header)

    def insufficient_scope(self, scopes: Iterable[str], request_id: RequestId | None = None) -> GatewayError:
        """The step-up refusal (403) of an operation that needs `scopes`: the challenge names every
        scope the operation needs, the always-required ones included, as MCP asks."""
        needed = " ".join(sorted(self.required_scopes.union(scopes)))
        return self._refusal("insufficient_scope", needed, request_id)

    async def authenticate(self, request: web.Request) -> Principal:
        verifier = request.app[keys.VERIFIER]
        if verifier is None:  # authentication is off (a loopback bind)
            return ANONYMOUS
        audit = request.app[keys.AUDIT]
        try:
            token = bearer_token(request.headers)
        except ValueError:
            audit.record("auth.fail", reason="malformed")
            raise self._refusal("invalid_request") from None
        if token is None:
            audit.record("auth.fail", reason="missing")
            raise self._refusal(None)
        try:
            principal = await verifier.verify(token)
        except AuthError as error:
            self.verified.forget(token)
            log.info(
                "authentication failed", extra={"code": error.code, "reason": error.reason, "token": fingerprint(token)}
            )
            audit.record("auth.fail", reason=error.code, detail=error.reason, fingerprint=fingerprint(token))
            if error.code == "unavailable":
                raise GatewayError(
                    "auth_unavailable",
                    "Authentication is unavailable; try again later",
                    retry_after=UNAVAILABLE_RETRY_AFTER,
                ) from None
            raise self._refusal("invalid_token") from None
        except Exception:
            # A verifier bug must not become a 401 (the client would discard a good token).
            log.exception("token verifier failed", extra={"token": fingerprint(token)})
            audit.record("auth.fail", reason="verifier_error", fingerprint=fingerprint(token))
            raise GatewayError(
                "auth_unavailable",
                "Authentication is unavailable; try again later",
                retry_after=UNAVAILABLE_RETRY_AFTER,
            ) from None
        if not self.required_scopes <= principal.scopes:
            log.info("insufficient scope", extra={"subject": principal.subject, "token": fingerprint(token)})
            audit.record(
                "auth.fail",
                principal=principal,
                reason="insufficient_scope",
                scopes=sorted(principal.scopes),
                fingerprint=fingerprint(token),
            )
            raise self._refusal("insufficient_scope")
        log.debug("authenticated", extra={"subject": principal.subject, "token": fingerprint(token)})
        self.verified.remember(token)
        # A token this gateway issued never reaches a child: at most the user's own service token does.
        child_token = principal.credential if principal.delegated else token
        if child_token is not None:
            request[keys.BEARER] = child_token
        audit.record("auth.ok", principal=principal, scopes=sorted(principal.scopes), fingerprint=fingerprint(token))
        return principal


def auth_middleware(authenticator: Authenticator) -> Middleware:
    """Authenticate every request to the protected path; record its principal on the request.

    A handler there that finds the principal's scopes short of what an operation needs raises
    `InsufficientScope`: it is answered here with the step-up challenge, naming the JSON-RPC
    request it refuses when the handler could read its id (`keys.ANSWERING`).
    """

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != authenticator.protected_path or request.method == "OPTIONS":
            return await handler(request)
        principal = request[keys.PRINCIPAL] = await authenticator.authenticate(request)
        if (context := request_context.current()) is not None:
            context.principal = principal
        try:
            return await handler(request)
        except InsufficientScope as refusal:
            raise authenticator.insufficient_scope(refusal.scopes, request.get(keys.ANSWERING)) from None

    return authenticate
