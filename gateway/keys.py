"""Every piece of application state, as typed `web.AppKey`s (and per-request `web.RequestKey`s)
declared in one place.

A leaf: the types are named for mypy only, so a module that reads one key loads nothing else of
the gateway. Every key is declared the same way: `NAME: web.AppKey[Type] = web.AppKey("name")`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from aiohttp_session import Session as BrowserSession

    from gateway.auth import Principal, TokenVerifier
    from gateway.auth.server_metadata import AuthorizationServerMetadata
    from gateway.config import Settings
    from gateway.http.headers import OriginPolicy
    from gateway.http.ratelimit import RateLimiter
    from gateway.jsonrpc import RequestId
    from gateway.oauth.server import OAuthServer
    from gateway.observe.audit import Audit
    from gateway.observe.metrics import Metrics
    from gateway.sessions.policy import ToolFilter
    from gateway.sessions.principals import PrincipalChildren
    from gateway.sessions.sandbox import Decision, Sandbox
    from gateway.sessions.store import SessionStore
    from gateway.sessions.watchdog import OrphanWatchdog

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
ORIGINS: web.AppKey[OriginPolicy] = web.AppKey("origins")
WATCHDOG: web.AppKey[OrphanWatchdog] = web.AppKey("orphan_watchdog")
# How children are isolated from each other (decided at startup).
SANDBOX: web.AppKey[Sandbox] = web.AppKey("sandbox")
# The isolation decided before the app starts (by `serve`, which drops privileges to match it).
ISOLATION: web.AppKey[Decision] = web.AppKey("isolation")
SESSIONS: web.AppKey[SessionStore] = web.AppKey("sessions")
# The children of each principal's 2026-07-28 requests (sessions of `SESSIONS` no one knows the id of).
PRINCIPAL_CHILDREN: web.AppKey[PrincipalChildren] = web.AppKey("principal_children")
RESOURCE_METADATA: web.AppKey[bytes | None] = web.AppKey("resource_metadata")
VERIFIER: web.AppKey[TokenVerifier | None] = web.AppKey("token_verifier")
AS_METADATA: web.AppKey[AuthorizationServerMetadata | None] = web.AppKey("authorization_server_metadata")
STARTED_AT: web.AppKey[float] = web.AppKey("started_at")
# The open-file limit (soft, hard) children start with, when the gateway raised its own at startup.
CHILD_NOFILE: web.AppKey[tuple[int, int]] = web.AppKey("child_nofile")
AUDIT: web.AppKey[Audit] = web.AppKey("audit")
METRICS: web.AppKey[Metrics | None] = web.AppKey("metrics")
LIMITER: web.AppKey[RateLimiter] = web.AppKey("rate_limiter")
# The built-in authorization server; None unless `oauth_server` is on.
OAUTH: web.AppKey[OAuthServer | None] = web.AppKey("oauth_server")
# The tool policy; None when none is configured, and then no message is screened.
TOOL_FILTER: web.AppKey[ToolFilter | None] = web.AppKey("tool_filter")

# Per request: the client's address (see http/clientip.py).
CLIENT_IP: web.RequestKey[str] = web.RequestKey("client_ip")
# Per request: who is calling (set by the auth middleware on the MCP endpoint).
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal")
# Per request: the token a child may receive (token_env): the bearer token it authenticated with,
# or for a token issued by the built-in authorization server the user's stored service token
# (absent when authentication is off, or there is none).
BEARER: web.RequestKey[str] = web.RequestKey("bearer")
# Per request: the JSON-RPC id a POST's refusal should answer, once the body has been read.
ANSWERING: web.RequestKey[RequestId | None] = web.RequestKey("answering")
# Per request to the sign-in pages: the browser's encrypted-cookie session (oauth/routes.py).
BROWSER_SESSION: web.RequestKey[BrowserSession] = web.RequestKey("browser_session")
