"""The verifier registry: settings name a verifier, this builds it with explicit arguments and
checks, before anything is served, that its backend answers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

import aiohttp

from gateway.auth import AuthError, AuthStartupError, TokenVerifier
from gateway.auth.chain import ChainVerifier
from gateway.auth.introspection import IntrospectionVerifier
from gateway.auth.jwks import JwksCache, StaticKeySet
from gateway.auth.jwt import JwtVerifier, KeySource
from gateway.auth.plugin import PluginError, load_plugin
from gateway.auth.static import StaticVerifier
from gateway.auth.whoami import WhoamiVerifier
from gateway.logline import fingerprint

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.config.auth import VerifierName

log = logging.getLogger("gateway.auth")

# An unknown key id forces at most one JWKS refresh per this many seconds.
JWKS_KID_MISS_COOLDOWN: Final = 30.0


async def build_verifier(settings: Settings, http: aiohttp.ClientSession) -> TokenVerifier | None:
    """The configured verifier, ready to use; None when authentication is off."""
    if settings.auth == "none":
        return None
    if settings.auth == "chain":
        return ChainVerifier([(name, await _build(name, settings, http)) for name in settings.auth_chain])
    return await _build(settings.auth, settings, http)


async def _build(name: VerifierName, settings: Settings, http: aiohttp.ClientSession) -> TokenVerifier:
    if name == "plugin":
        if settings.plugin is None:  # pragma: no cover - Settings ensures it
            raise AuthStartupError("plugin needs 'module:attribute'")
        try:
            plugin = load_plugin(settings.plugin, settings.plugin_options, http)
        except PluginError as exc:
            raise AuthStartupError(str(exc)) from None
        probe = getattr(plugin, "probe", None)
        if probe is not None:
            await _probe(probe, f"the plugin {settings.plugin!r}")
        return plugin
    if name == "static":
        tokens = settings.all_static_tokens()
        return StaticVerifier((token.sha256, token.principal, token.scopes) for token in tokens)
    if name == "introspection":
        url, client_id, secret = (
            settings.introspection_url,
            settings.introspection_client_id,
            settings.introspection_client_secret,
        )
        if url is None or client_id is None or secret is None:  # pragma: no cover - Settings ensures it
            raise AuthStartupError("introspection needs its URL and client credentials")
        introspection = IntrospectionVerifier(
            http,
            str(url),
            client_id=client_id,
            client_secret=secret.get_secret_value(),
            issuer=settings.token_issuer,
            audiences=settings.token_audience,
        )
        await _probe(introspection.probe, "the introspection endpoint")
        return introspection
    if name == "whoami":
        if settings.whoami_url is None:  # pragma: no cover - Settings ensures it
            raise AuthStartupError("whoami needs whoami_url")
        whoami = WhoamiVerifier(
            http,
            str(settings.whoami_url),
            principal_field=settings.whoami_principal_field,
            ttl=settings.whoami_cache_ttl,
        )
        await _probe(whoami.probe, "the whoami URL")
        return whoami
    if name == "jwt":
        if settings.token_issuer is None:  # pragma: no cover - Settings ensures it
            raise AuthStartupError("jwt needs token_issuer")
        keys: KeySource
        if settings.jwt_jwks_url is not None:
            cache = JwksCache(
                http, str(settings.jwt_jwks_url), ttl=settings.jwt_jwks_ttl, cooldown=JWKS_KID_MISS_COOLDOWN
            )
            await _probe(cache.prefetch, "the JWKS endpoint")
            keys = cache
        else:
            keys = StaticKeySet(settings.jwt_public_keys)
        return JwtVerifier(
            keys, issuer=settings.token_issuer, audiences=settings.token_audience, algorithms=settings.jwt_algorithms
        )
    raise AuthStartupError(f"unknown verifier {name!r}")  # pragma: no cover - Settings ensures it


async def check_startup_token(verifier: TokenVerifier, token: str) -> None:
    """End-to-end startup check: the configured token must be accepted."""
    try:
        principal = await verifier.verify(token)
    except AuthError as exc:
        raise AuthStartupError(f"the startup token was refused ({exc.code}): {exc.reason}") from None
    log.info("startup token accepted", extra={"subject": principal.subject, "token": fingerprint(token)})


async def _probe(check: Callable[[], Awaitable[None]], what: str) -> None:
    try:
        await check()
    except AuthError as exc:
        raise AuthStartupError(f"{what} did not answer: {exc.reason}") from None
