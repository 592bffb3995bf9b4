"""The verifier registry: settings name a verifier, this builds it with explicit arguments and
checks, before anything is served, that its backend answers."""

from __future__ import annotations

from typing import Final

import aiohttp

from gateway.auth import AuthError, TokenVerifier
from gateway.auth.jwks import JwksCache
from gateway.auth.jwt import JwtVerifier
from gateway.auth.static import StaticVerifier
from gateway.settings import Settings

# An unknown key id forces at most one JWKS refresh per this many seconds.
JWKS_KID_MISS_COOLDOWN: Final = 30.0


class VerifierStartupError(RuntimeError):
    """The configured verifier cannot work: the gateway must not start."""


async def build_verifier(settings: Settings, http: aiohttp.ClientSession) -> TokenVerifier | None:
    """The configured verifier, ready to use; None when authentication is off."""
    if settings.auth == "static":
        tokens = settings.all_static_tokens()
        return StaticVerifier((token.sha256, token.principal, token.scopes) for token in tokens)
    if settings.auth == "jwt":
        if settings.jwt_issuer is None or settings.jwt_jwks_url is None:  # pragma: no cover - Settings ensures it
            raise VerifierStartupError("jwt needs jwt_issuer and jwt_jwks_url")
        keys = JwksCache(http, str(settings.jwt_jwks_url), ttl=settings.jwt_jwks_ttl, cooldown=JWKS_KID_MISS_COOLDOWN)
        try:
            await keys.prefetch()
        except AuthError as exc:
            raise VerifierStartupError(f"the JWKS endpoint did not answer: {exc.reason}") from None
        return JwtVerifier(
            keys, issuer=settings.jwt_issuer, audiences=settings.jwt_audience, algorithms=settings.jwt_algorithms
        )
    return None
