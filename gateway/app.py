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
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web
from limits import RateLimitItem

from gateway import keys, net, request_context
from gateway._version import __version__
from gateway.auth import AuthStartupError, discovery
from gateway.auth.bearer import Authenticator, auth_middleware
from gateway.auth.discovery import protected_resource_metadata
from gateway.auth.identity import IdentityIssuer
from gateway.auth.registry import build_verifier, check_startup_token
from gateway.auth.server_metadata import AuthorizationServerMetadata
from gateway.errors import error_middleware
from gateway.http import connections, cors, health, ratelimit
from gateway.http.clientip import client_ip_middleware
from gateway.http.headers import HostPolicy, OriginPolicy, host_middleware
from gateway.oauth import routes as oauth_routes
from gateway.observe import metrics
from gateway.observe.audit import Audit
from gateway.observe.metrics import Metrics
from gateway.paths import OAUTH_PREFIX
from gateway.sessions.bubblewrap import is_host_root
from gateway.sessions.child import ChildSpec
from gateway.sessions.policy import ToolFilter, ToolPolicy
from gateway.sessions.principals import EraBook, PrincipalChildren
from gateway.sessions.sandbox import IsolationRequest, IsolationUnavailable, Sandbox, shared_user_refusal
from gateway.sessions.store import SessionLimits, SessionStore
from gateway.sessions.watchdog import OrphanWatchdog
from gateway.transport import legacy

if TYPE_CHECKING:
    from gateway.config import Settings

log = logging.getLogger("gateway")

# Bytes of slack over the message cap for the HTTP body (whitespace, a batch's brackets).
BODY_SLACK = 64 * 1024


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
        secure = settings.base_url.startswith("https://")
        cookie = oauth_routes.browser_session_middleware(settings.oauth_session_key.get_secret_value(), secure=secure)
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
    app.cleanup_ctx.append(_tool_filter)
    app.cleanup_ctx.append(_identity_provider)
    app.cleanup_ctx.append(oauth_routes.authorization_server)
    app.cleanup_ctx.append(_orphan_watchdog)
    app.cleanup_ctx.append(_sandbox)
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


async def _tool_filter(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    policy = ToolPolicy.from_settings(settings)
    tool_filter = ToolFilter(policy, settings.request_timeout, app[keys.AUDIT]) if policy is not None else None
    app[keys.TOOL_FILTER] = tool_filter
    yield


async def _rate_limiter(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    limits: dict[ratelimit.LimitName, list[RateLimitItem]] = {
        name: settings.rate_limit(name) for name in ratelimit.LIMIT_NAMES
    }
    storage = ratelimit.build_storage(settings.ratelimit_shared_storage)
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
    async with net.client_session() as http:
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


async def _orphan_watchdog(app: web.Application) -> AsyncIterator[None]:
    watchdog = OrphanWatchdog()
    app[keys.WATCHDOG] = watchdog
    yield
    await watchdog.aclose()


async def _sandbox(app: web.Application) -> AsyncIterator[None]:
    """Decide how children are isolated and say which isolation is in force. `IsolationUnavailable`
    stops startup when the isolation asked for cannot be had, and when children would share one
    user while their environments hold per-user values (unless that risk is accepted)."""
    settings = app[keys.SETTINGS]
    sandbox = await Sandbox.open(IsolationRequest.of(settings), app[keys.WATCHDOG], app.get(keys.ISOLATION))
    app[keys.SANDBOX] = sandbox
    log.info("child isolation: %s", sandbox.mode, extra={"reason": sandbox.decision.reason})
    refusal = shared_user_refusal(sandbox.mode, settings.per_user_child_values, settings.allow_shared_uid_children)
    if refusal is not None:
        sandbox.close()
        raise IsolationUnavailable(refusal)
    if sandbox.mode == "none" and is_host_root():
        log.warning("children run as the host's root (child_isolation=none)")
    if sandbox.mode == "none" and settings.per_user_child_values:
        log.warning("children are not isolated and can read each other's per-user values (allow_shared_uid_children)")
    yield
    sandbox.close()


async def _session_store(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    spec = ChildSpec(
        argv=settings.child_argv(),
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
    store = SessionStore(
        spec, limits, app[keys.WATCHDOG], identity_issuer(settings), app[keys.AUDIT], sandbox=app[keys.SANDBOX]
    )
    app[keys.SESSIONS] = store
    app[keys.PRINCIPAL_CHILDREN] = PrincipalChildren(
        store,
        EraBook(settings.child_era),
        per_principal=settings.children_per_principal,
        probe_timeout=settings.era_probe_timeout,
        request_timeout=settings.request_timeout,
        input_timeout=settings.input_request_timeout,
    )
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
