"""Every piece of application state, as typed `web.AppKey`s declared in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp_session import Session as BrowserSession

from gateway.audit import Audit
from gateway.auth import Principal, TokenVerifier
from gateway.auth.server_metadata import AuthorizationServerMetadata
from gateway.jsonrpc import RequestId
from gateway.metrics import Metrics
from gateway.oauth.server import OAuthServer
from gateway.policy import ToolGuard
from gateway.sessions.guard import OrphanGuard
from gateway.sessions.store import SessionStore
from gateway.settings import Settings
from gateway.transport.guards import OriginPolicy

if TYPE_CHECKING:  # imported for mypy only: the rate limiter's module reads these keys
    from gateway.ratelimit import RateLimiter  # noqa: F401 - named in the string type of LIMITER

SETTINGS = web.AppKey("settings", Settings)
ORIGINS = web.AppKey("origins", OriginPolicy)
GUARD = web.AppKey("orphan_guard", OrphanGuard)
SESSIONS = web.AppKey("sessions", SessionStore)
RESOURCE_METADATA = web.AppKey[bytes | None]("resource_metadata")
VERIFIER = web.AppKey[TokenVerifier | None]("token_verifier")
AS_METADATA = web.AppKey[AuthorizationServerMetadata | None]("authorization_server_metadata")
STARTED_AT = web.AppKey("started_at", float)
# The open-file limit (soft, hard) children start with, when the gateway raised its own at startup.
CHILD_NOFILE = web.AppKey("child_nofile", tuple[int, int])
AUDIT = web.AppKey("audit", Audit)
METRICS = web.AppKey[Metrics | None]("metrics")
LIMITER = web.AppKey["RateLimiter"]("rate_limiter")
# The built-in authorization server; None unless `oauth_server` is on.
OAUTH = web.AppKey[OAuthServer | None]("oauth_server")
# The tool policy; None when none is configured, and then no message is screened.
TOOL_GUARD = web.AppKey[ToolGuard | None]("tool_guard")

# Per request: the client's address (see clientip.py).
CLIENT_IP = web.RequestKey("client_ip", str)
# Per request: who is calling (set by the auth middleware on the MCP endpoint).
PRINCIPAL = web.RequestKey("principal", Principal)
# Per request: the token a child may receive (token_env): the bearer token it authenticated with,
# or for a token issued by the built-in authorization server the user's stored service token
# (absent when authentication is off, or there is none).
BEARER = web.RequestKey("bearer", str)
# Per request: the JSON-RPC id a POST's refusal should answer, once the body has been read.
ANSWERING = web.RequestKey[RequestId | None]("answering")
# Per request to the sign-in pages: the browser's encrypted-cookie session (oauth/routes.py).
BROWSER_SESSION = web.RequestKey("browser_session", BrowserSession)
