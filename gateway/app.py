"""The application factory: `create_app(settings)` builds everything, importing changes nothing.

Middleware order (outermost first): request tracking (the connection's read deadlines and the
shutdown drain see each request, see `gateway.http.connections`), the request id (so every
response, refusals included, names its request), error rendering (and, with the built-in
authorization server, error pages for the pages a browser visits), with a public URL the `Host`
check (421 for a request naming another host, before it is counted or authenticated), the client's
address, the per-address rate limits (then the sign-in pages' cookie), then authentication of the
MCP endpoint (so every refusal, 401s included, is rendered the same way). CORS and request-id
headers are added as responses are prepared, so streamed responses carry them too. Resources are
`cleanup_ctx` pairs, set up in order and torn down in reverse: the audit log (it records the
configuration first and the last child's exit last), the metrics listener when it has a port of its
own, the identity provider's side (verifier and discovery; a backend that does not answer stops
startup before anything is spawned), then the orphan watchdog (so it outlives every child), then
the session store. `mcp-gateway serve` drains before it stops the app (`gateway.serve`: in-flight
requests get the shutdown budget, then an error; then every child is stopped, in parallel); the app
alone (on_shutdown) stops taking sessions and ends open GET streams.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from limits import RateLimitItem

from gateway import keys
from gateway._version import __version__
from gateway.auth import discovery
from gateway.auth.bearer import Authenticator, auth_middleware
from gateway.auth.discovery import protected_resource_metadata
from gateway.auth.identity import IdentityIssuer
from gateway.auth.jwt import LEEWAY_SECONDS
from gateway.auth.registry import AuthStartupError, build_verifier, check_startup_token
from gateway.auth.server_metadata import AuthorizationServerMetadata
from gateway.config.settings import Settings, parse_limit
from gateway.errors import error_middleware
from gateway.http import connections, cors, health, ratelimit
from gateway.http import context as request_context
from gateway.http.clientip import client_ip_middleware
from gateway.http.headers import HostPolicy, OriginPolicy, host_middleware
from gateway.oauth import routes as oauth_routes
from gateway.oauth.clients import ClientRegistry, cimd_session
from gateway.oauth.keyset import KeySet, derive_fernet
from gateway.oauth.oidc import AllowList, ClientCredentials, OidcProvider
from gateway.oauth.server import PREFIX as OAUTH_PREFIX
from gateway.oauth.server import Endpoints, OAuthServer, session_cookie
from gateway.oauth.storage import StorageError, open_store
from gateway.oauth.tokens import GrantVerifier, OwnTokensFirst, Tokens
from gateway.observe import metrics
from gateway.observe.audit import Audit
from gateway.observe.metrics import Metrics
from gateway.sessions.child import ChildSpec
from gateway.sessions.policy import ToolFilter, ToolPolicy
from gateway.sessions.store import SessionLimits, SessionStore
from gateway.sessions.watchdog import OrphanWatchdog
from gateway.transport import legacy

log = logging.getLogger("gateway")

# Bytes of slack over the message cap for the HTTP body (whitespace, a batch's brackets).
BODY_SLACK = 64 * 1024
# Keys derived from oauth_session_key, one per use.
COOKIE_KEY_PURPOSE = "mcp-gateway oauth session cookie"
SECRETS_KEY_PURPOSE = "mcp-gateway oauth stored secrets"
# A generated signing key stays published this long after it stops signing: longer than any
# access token it signed can live (plus the clock leeway), and than a JWKS cache keeps a set.
JWKS_CACHE_SECONDS = 300


# How the HTTP server that runs the app must be configured (`AppRunner(app, **SERVER_OPTIONS)`):
# request bodies are never inflated by the server. No MCP client compresses what it sends, the MCP
# endpoint refuses any content coding (415), and inflating a body before any check is work and
# memory an attacker chooses.
SERVER_OPTIONS: Final[Mapping[str, Any]] = {"auto_decompress": False}


def create_app(settings: Settings) -> web.Application:
    authenticator = Authenticator(
        protected_path=settings.mcp_path,
        resource_metadata=settings.resource_metadata_url,
        required_scopes=frozenset(settings.required_scopes),
    )
    client_ip = client_ip_middleware(settings.proxy_networks())
    middlewares = [
        request_context.request_id_middleware,
        error_middleware,
        client_ip,
        ratelimit.ip_middleware(settings.mcp_path, authenticator.verified),
        auth_middleware(authenticator),
        ratelimit.principal_middleware(settings.mcp_path),
    ]
    if settings.oauth_server and settings.oauth_session_key is not None:
        cookie_key = derive_fernet(settings.oauth_session_key.get_secret_value(), COOKIE_KEY_PURPOSE)
        secure = settings.base_url.startswith("https://")
        cookie = oauth_routes.browser_session_middleware(session_cookie(cookie_key, secure=secure))
        # Pages get their refusals as pages (outside the rate limits); the cookie is read after them.
        middlewares[2:4] = [oauth_routes.browser_error_pages, *middlewares[2:4], cookie]
    if (hosts := HostPolicy.from_settings(settings)) is not None:
        # Before anything counts or verifies a request that was not meant for this server.
        guarded = _host_guarded(settings.mcp_path, oauth=settings.oauth_server)
        middlewares.insert(middlewares.index(client_ip), host_middleware(hosts, guarded))
    # Outermost: the connection's deadlines see the whole of every request (gateway.http.connections).
    middlewares.insert(0, connections.request_tracking(settings.mcp_path))
    app = web.Application(client_max_size=settings.max_message_bytes + BODY_SLACK, middlewares=middlewares)
    app[keys.SETTINGS] = settings
    app[keys.ORIGINS] = OriginPolicy.from_settings(settings)
    app[keys.STARTED_AT] = time.monotonic()
    app[keys.RESOURCE_METADATA] = protected_resource_metadata(settings)
    app[keys.METRICS] = Metrics() if settings.metrics_enabled else None
    app.cleanup_ctx.append(_audit_log)
    app.cleanup_ctx.append(_metrics_listener)
    app.cleanup_ctx.append(_rate_limiter)
    app.cleanup_ctx.append(functools.partial(_tool_filter, authenticator=authenticator))
    app.cleanup_ctx.append(_identity_provider)
    app.cleanup_ctx.append(_oauth_server)
    app.cleanup_ctx.append(_orphan_watchdog)
    app.cleanup_ctx.append(_session_store)
    app.on_shutdown.append(_end_streams)
    legacy.add_routes(app, settings.mcp_path)
    request_context.install(app)
    cors.install(app, settings.mcp_path)
    health.add_routes(app)
    discovery.add_routes(app, settings.mcp_path)
    if settings.oauth_server:
        oauth_routes.add_routes(
            app,
            dynamic_registration=settings.oauth_dynamic_registration,
            oidc="oidc" in settings.oauth_signin_methods,
        )
    registry = app[keys.METRICS]
    if registry is not None and settings.metrics_on_main_listener:
        app.router.add_get(metrics.PATH, metrics.handler(registry, _metrics_token(settings)))
    return app


def _host_guarded(mcp_path: str, *, oauth: bool) -> Callable[[str], bool]:
    """The paths whose `Host` must name the public URL: the MCP endpoint, and the built-in
    authorization server's endpoints when it runs (health, metrics and discovery stay open to
    probes that address the gateway by its container address)."""
    if oauth:
        return lambda path: path == mcp_path or path.startswith(OAUTH_PREFIX)
    return lambda path: path == mcp_path


def _metrics_token(settings: Settings) -> str | None:
    return settings.metrics_token.get_secret_value() if settings.metrics_token is not None else None


async def _audit_log(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    audit = app[keys.AUDIT] = Audit.to(settings.audit_log, tool_arguments=settings.audit_tool_arguments)
    if (registry := app[keys.METRICS]) is not None:
        audit.add_listener(registry.observe)
    audit.record("config.loaded", version=__version__, settings=settings.redacted())
    try:
        yield
    finally:
        audit.close()


async def _tool_filter(app: web.Application, *, authenticator: Authenticator) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    policy = ToolPolicy.from_settings(settings)
    tool_filter = (
        ToolFilter(policy, authenticator, settings.request_timeout, app[keys.AUDIT]) if policy is not None else None
    )
    app[keys.TOOL_FILTER] = tool_filter
    yield


async def _rate_limiter(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    limits: dict[ratelimit.LimitName, list[RateLimitItem]] = {
        name: parse_limit(getattr(settings, f"ratelimit_{name}")) for name in ratelimit.LIMIT_NAMES
    }
    storage = ratelimit.build_storage(settings.ratelimit_storage)
    app[keys.LIMITER] = ratelimit.RateLimiter(
        storage, limits, fail_open=settings.ratelimit_storage_failure == "open", audit=app[keys.AUDIT]
    )
    yield


async def _metrics_listener(app: web.Application) -> AsyncIterator[None]:
    """`/metrics` on a listener of its own, when `metrics_port` asks for one."""
    settings = app[keys.SETTINGS]
    registry = app[keys.METRICS]
    if registry is None or settings.metrics_port is None:
        if registry is not None and not settings.metrics_on_main_listener:
            log.warning("/metrics is not served: set metrics_token, or metrics_port for a listener of its own")
        yield
        return
    listener = web.Application()
    listener.router.add_get(metrics.PATH, metrics.handler(registry, _metrics_token(settings)))
    runner = web.AppRunner(listener, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.metrics_host, settings.metrics_port)
        await site.start()
        log.info("metrics listening", extra={"address": site.name})
        yield
    finally:
        await runner.cleanup()


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


async def _oauth_server(app: web.Application) -> AsyncIterator[None]:
    """The built-in authorization server, when it is on: its storage, keys, HTTP clients and
    background tasks (key rotation; the OpenID provider's discovery, when users sign in with one);
    from here on the MCP endpoint also accepts the tokens it issues."""
    settings = app[keys.SETTINGS]
    if not settings.oauth_server or settings.oauth_session_key is None:
        app[keys.OAUTH] = None
        yield
        return
    master = settings.oauth_session_key.get_secret_value()
    secrets_key = derive_fernet(master, SECRETS_KEY_PURPOSE)
    store = open_store(settings.oauth_storage_url)
    http = cimd_session(allow_private=settings.oauth_cimd_allow_private, user_agent=f"mcp-gateway/{__version__}")
    # The OpenID provider is configured, not named by a request: an ordinary client reaches it.
    oidc_http = (
        aiohttp.ClientSession(headers={"User-Agent": f"mcp-gateway/{__version__}"})
        if "oidc" in settings.oauth_signin_methods
        else None
    )
    tasks: list[asyncio.Task[None]] = []
    try:
        keyset = KeySet(
            store,
            secrets_key,
            files=settings.oauth_signing_key_files,
            rotation=settings.oauth_signing_key_rotation,
            overlap=settings.oauth_access_token_ttl + LEEWAY_SECONDS + JWKS_CACHE_SECONDS,
        )
        try:
            await store.open()
            await keyset.load()
        except StorageError as exc:
            raise AuthStartupError(f"the OAuth storage cannot be used: {exc}") from None
        oidc = await _oidc_provider(settings, oidc_http) if oidc_http is not None else None
        tokens = Tokens(
            store,
            keyset,
            secrets_key,
            issuer=settings.base_url,
            resource=settings.resource_url,
            access_ttl=settings.oauth_access_token_ttl,
            refresh_ttl=settings.oauth_refresh_token_ttl,
        )
        configured = app[keys.VERIFIER]
        server = OAuthServer(
            endpoints=Endpoints(settings.base_url),
            resource=settings.resource_url,
            service=urlsplit(settings.base_url).netloc,
            store=store,
            keys=keyset,
            tokens=tokens,
            clients=ClientRegistry(store, http, allow_private=settings.oauth_cimd_allow_private),
            cimd_http=http,
            signin_verifier=configured,
            oidc=oidc,
            signin_methods=tuple(settings.oauth_signin_methods),
            offered_scopes=offered_scopes(settings),
            token_to_env=settings.oauth_token_to_env,
            dynamic_registration=settings.oauth_dynamic_registration,
        )
        app[keys.OAUTH] = server
        own = GrantVerifier(tokens, token_to_env=settings.oauth_token_to_env)
        app[keys.VERIFIER] = OwnTokensFirst(settings.base_url, own, configured)
        app[keys.AS_METADATA] = AuthorizationServerMetadata(http, settings.base_url, server.metadata())
        loop = asyncio.get_running_loop()
        if not settings.oauth_signing_key_files:
            tasks.append(loop.create_task(keyset.maintain()))
        if oidc is not None:
            tasks.append(loop.create_task(oidc.refresh_forever()))
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if oidc_http is not None:
            await oidc_http.close()
        await http.close()
        await store.aclose()


async def _oidc_provider(settings: Settings, http: aiohttp.ClientSession) -> OidcProvider:
    """The upstream OpenID provider users may sign in with, its discovery document and keys read
    (a provider that does not answer stops startup)."""
    if settings.oauth_oidc_issuer is None or settings.oauth_oidc_client_id is None:  # pragma: no cover
        raise AuthStartupError("oidc sign-in needs oauth_oidc_issuer and oauth_oidc_client_id")  # Settings ensure it
    secret = settings.oauth_oidc_client_secret
    emails = settings.oauth_oidc_subject_claim == "email"
    provider = OidcProvider(
        http,
        issuer=settings.oauth_oidc_issuer,
        client=ClientCredentials(
            settings.oauth_oidc_client_id,
            secret.get_secret_value() if secret is not None else None,
            settings.oauth_oidc_client_auth,
        ),
        redirect_uri=Endpoints(settings.base_url).oidc_callback,
        scopes=settings.oauth_oidc_scopes,
        subject_claim=settings.oauth_oidc_subject_claim,
        allow=AllowList.of(
            settings.oauth_oidc_allowed_subjects,
            settings.oauth_oidc_allowed_domains,
            any_account=settings.oauth_oidc_allow_any_account,
            emails=emails,
        ),
        name=settings.oauth_oidc_name,
    )
    try:
        await provider.load()
    except ValueError as exc:
        raise AuthStartupError(f"the OpenID provider {settings.oauth_oidc_issuer} cannot be used: {exc}") from None
    return provider


def offered_scopes(settings: Settings) -> tuple[str, ...]:
    """Scopes the built-in server can grant: the advertised ones and every scope the gateway checks."""
    scopes = [*settings.scopes_supported, *settings.required_scopes]
    scopes += [scope for scope in (settings.tool_scope_write, settings.tool_scope_destructive) if scope]
    return tuple(sorted(set(scopes)))


async def _orphan_watchdog(app: web.Application) -> AsyncIterator[None]:
    watchdog = OrphanWatchdog()
    app[keys.WATCHDOG] = watchdog
    yield
    await watchdog.aclose()


async def _session_store(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    spec = ChildSpec(
        argv=tuple(settings.command),
        env=settings.child_environment(),
        cwd=settings.child_cwd,
        max_line_bytes=settings.max_message_bytes,
        rlimits=settings.child_rlimits(),
        nofile=app.get(keys.CHILD_NOFILE),
    )
    limits = SessionLimits(
        max_sessions=settings.max_sessions,
        max_per_principal=settings.max_sessions_per_principal,
        max_per_address=settings.max_sessions_per_ip,
        idle_ttl=settings.session_idle_ttl,
        max_lifetime=settings.session_max_lifetime,
        request_timeout=settings.request_timeout,
        violation_limit=settings.stdout_violation_limit,
        evict_idle_after=settings.session_evict_idle_after,
        max_in_flight=settings.max_requests_in_flight,
    )
    store = SessionStore(spec, limits, app[keys.WATCHDOG], identity_issuer(settings), app[keys.AUDIT])
    app[keys.SESSIONS] = store
    if (registry := app[keys.METRICS]) is not None:
        registry.watch(sessions=lambda: len(store), children=lambda: store.children, in_flight=store.requests_in_flight)
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
