"""The `jwt` verifier: signed access tokens from an OAuth/OIDC provider.

Issuer and audience are both required; the algorithm comes from a configured allow-list of
asymmetric algorithms (never `none`, never HMAC, so a public key can never be used as an HMAC
secret); `exp`, `iss`, `aud` and `sub` must be present; clocks may differ by `LEEWAY_SECONDS`.
Cheap checks run first — algorithm, then the unverified issuer — so tokens from elsewhere are
refused before any key lookup can trigger a JWKS refresh.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final, Protocol

import jwt as pyjwt

from gateway.auth import AuthError, Principal

# The clock skew tolerated on exp/nbf/iat (Envoy, Pomerium and go-oidc all use one minute).
LEEWAY_SECONDS: Final = 60
REQUIRED_CLAIMS: Final = ("exp", "iss", "aud", "sub")
MAX_KID_LENGTH: Final = 256


class KeySource(Protocol):
    """Where signing keys come from: a JWKS endpoint (`JwksCache`) or PEM files (`StaticKeySet`)."""

    async def key(self, kid: str | None) -> pyjwt.PyJWK: ...


class JwtVerifier:
    def __init__(self, keys: KeySource, *, issuer: str, audiences: Sequence[str], algorithms: Iterable[str]) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audiences = list(audiences)
        self._algorithms = frozenset(algorithms)

    async def verify(self, token: str) -> Principal:
        try:
            header = pyjwt.get_unverified_header(token)
            unverified = pyjwt.decode(token, options={"verify_signature": False})
        except pyjwt.PyJWTError as exc:
            raise AuthError("invalid_token", f"not a JWT: {exc}") from None
        algorithm = header.get("alg")
        if algorithm not in self._algorithms:
            raise AuthError("invalid_token", f"algorithm {algorithm!r} is not allowed")
        if unverified.get("iss") != self._issuer:
            raise AuthError("invalid_token", "issuer mismatch")
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or len(kid) > MAX_KID_LENGTH):
            raise AuthError("invalid_token", "malformed key id")
        key = await self._keys.key(kid)
        # A key that names its algorithm serves only that one; a key of the wrong type for the
        # algorithm is refused by pyjwt itself.
        declared = _declared_alg(key)
        if declared is not None and declared != algorithm:
            raise AuthError("invalid_token", f"key {kid!r} is for {declared}, not {algorithm}")
        try:
            claims = pyjwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=self._audiences,
                issuer=self._issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except pyjwt.PyJWTError as exc:
            raise AuthError("invalid_token", f"{type(exc).__name__}: {exc}") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise AuthError("invalid_token", "sub is not a non-empty string")
        return Principal(issuer=self._issuer, subject=subject, scopes=_scopes(claims), claims=claims)


def _declared_alg(key: pyjwt.PyJWK) -> str | None:
    alg = key._jwk_data.get("alg")
    return alg if isinstance(alg, str) else None


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    """OAuth `scope` (a space-separated string) or the `scp` list some providers use."""
    scope = claims.get("scope")
    if isinstance(scope, str):
        return frozenset(scope.split())
    scp = claims.get("scp")
    if isinstance(scp, list):
        return frozenset(item for item in scp if isinstance(item, str))
    return frozenset()
