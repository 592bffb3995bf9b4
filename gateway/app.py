"""The application factory: `create_app(settings)` builds everything, importing changes nothing.

Middleware order (outermost first): error rendering, the client's address, then authentication
of the MCP endpoint (so every refusal, 401s included, is rendered the same way). CORS headers are added as
responses are prepared, so streamed responses carry them too. Resources are `cleanup_ctx`
pairs, set up in order and torn down in reverse: the identity provider's side first (verifier
and discovery; a backend that does not answer stops startup before anything is spawned), then
the orphan guard (so it outlives every child), then the session store. On shutdown the store
stops taking sessions and ends open GET streams so that aiohttp's graceful drain can finish;
the in-flight POSTs get the shutdown budget; then every child is stopped, in parallel.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from gateway import __version__, health, keys
from gateway.auth import discovery
from gateway.auth.bearer import Authenticator, auth_middleware
from gateway.auth.discovery import protected_resource_metadata
from gateway.auth.identity import IdentityIssuer
from gateway.auth.server_metadata import AuthorizationServerMetadata
from gateway.auth.verifiers import AuthStartupError, build_verifier, check_startup_token
from gateway.clientip import client_ip_middleware
from gateway.errors import error_middleware
from gateway.policy import ToolGuard, ToolPolicy
from gateway.sessions.child import ChildSpec
from gateway.sessions.guard import OrphanGuard
from gateway.sessions.store import SessionLimits, SessionStore
from gateway.settings import Settings
from gateway.transport import cors, streamable
from gateway.transport.guards import OriginPolicy

# Bytes of slack over the message cap for the HTTP body (whitespace, a batch's brackets).
BODY_SLACK = 64 * 1024


def create_app(settings: Settings) -> web.Application:
    authenticator = Authenticator(
        protected_path=settings.mcp_path,
        resource_metadata=settings.resource_metadata_url,
        required_scopes=frozenset(settings.required_scopes),
    )
    app = web.Application(
        client_max_size=settings.max_message_bytes + BODY_SLACK,
        middlewares=[error_middleware, client_ip_middleware(settings.proxy_networks()), auth_middleware(authenticator)],
    )
    app[keys.SETTINGS] = settings
    app[keys.ORIGINS] = OriginPolicy.from_settings(settings)
    app[keys.STARTED_AT] = time.monotonic()
    app[keys.RESOURCE_METADATA] = protected_resource_metadata(settings)
    policy = ToolPolicy.from_settings(settings)
    app[keys.TOOL_GUARD] = ToolGuard(policy, authenticator, settings.request_timeout) if policy is not None else None
    app.cleanup_ctx.append(_identity_provider)
    app.cleanup_ctx.append(_orphan_guard)
    app.cleanup_ctx.append(_session_store)
    app.on_shutdown.append(_end_streams)
    streamable.add_routes(app, settings.mcp_path)
    cors.install(app, settings.mcp_path)
    health.add_routes(app)
    discovery.add_routes(app, settings.mcp_path)
    return app


async def _identity_provider(app: web.Application) -> AsyncIterator[None]:
    """Everything that talks to the identity provider, over one outbound HTTP client."""
    settings = app[keys.SETTINGS]
    headers = {"User-Agent": f"mcp-gateway/{__version__}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        verifier = app[keys.VERIFIER] = await build_verifier(settings, http)
        if verifier is not None and settings.startup_token is not None:
            await check_startup_token(verifier, settings.startup_token.get_secret_value())
        metadata = None
        if settings.authorization_servers:
            issuer = settings.authorization_servers[0]
            metadata = AuthorizationServerMetadata(http, issuer, settings.authorization_server_metadata)
            try:
                await metadata.load()
            except ValueError as exc:
                raise AuthStartupError(str(exc)) from None
        app[keys.AS_METADATA] = metadata
        refresher = asyncio.get_running_loop().create_task(metadata.refresh_forever()) if metadata else None
        try:
            yield
        finally:
            if refresher is not None:
                refresher.cancel()
                await asyncio.gather(refresher, return_exceptions=True)


async def _orphan_guard(app: web.Application) -> AsyncIterator[None]:
    guard = OrphanGuard()
    app[keys.GUARD] = guard
    yield
    await guard.aclose()


async def _session_store(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    spec = ChildSpec(
        argv=tuple(settings.command),
        env=settings.child_environment(),
        cwd=settings.child_cwd,
        max_line_bytes=settings.max_message_bytes,
    )
    limits = SessionLimits(
        max_sessions=settings.max_sessions,
        max_per_principal=settings.max_sessions_per_principal,
        idle_ttl=settings.session_idle_ttl,
        max_lifetime=settings.session_max_lifetime,
        request_timeout=settings.request_timeout,
        violation_limit=settings.stdout_violation_limit,
    )
    store = SessionStore(spec, limits, app[keys.GUARD], identity_issuer(settings))
    app[keys.SESSIONS] = store
    store.start()
    yield
    await store.aclose()


def identity_issuer(settings: Settings) -> IdentityIssuer | None:
    """What children learn of their user, when any of it is configured."""
    if not (settings.child_identity or settings.child_env_claims or settings.token_env):
        return None
    return IdentityIssuer(
        issuer=settings.base_url,
        audience=settings.identity_audience or settings.resource_url,
        lifetime=settings.identity_lifetime,
        key_file=settings.identity_key_file,
        claims_env=settings.child_env_claims,
        token_env=settings.token_env,
        signed=settings.child_identity,
    )


async def _end_streams(app: web.Application) -> None:
    app[keys.SESSIONS].end_streams()
