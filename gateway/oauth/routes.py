"""The built-in authorization server in the application: its route table, the two middlewares of
the pages a browser visits, and the cleanup context that runs it.

Middlewares: `browser_error_pages` shows a person at a browser the gateway's own refusals of a page
(a 429 with `Retry-After`, a rate-limit storage that fails closed) as an error page, never as the
JSON-RPC body the MCP endpoint answers with; `browser_session_middleware` loads the encrypted
cookie (browser_state.py) before a page's handler and writes it back after — no other path ever
reads or sets a cookie. Every `/oauth/` request counts against `oauth_ip` (http/ratelimit.py).

`authorization_server` (a `cleanup_ctx`) runs the server for the app's lifetime when
`oauth_server` is on; from then on the MCP endpoint accepts the tokens it issues before those of
the configured verifier, and the discovery document is its RFC 8414 metadata.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway import keys
from gateway.auth.server_metadata import AuthorizationServerMetadata
from gateway.errors import GatewayError
from gateway.oauth import browser, endpoints
from gateway.oauth.browser_state import session_cookie
from gateway.oauth.pages import error_page
from gateway.oauth.server import BROWSER_PATHS, JWKS_PATH, OIDC_CALLBACK_PATH, OAuthServer
from gateway.oauth.tokens import GrantVerifier, OwnTokensFirst
from gateway.paths import OAUTH_PREFIX

# What an error page says for the gateway's own refusals of a page (else the error's message).
PAGE_TEXT: Final[dict[str, str]] = {
    "rate_limited": "Too many attempts from your network. Wait a little and try again.",
    "ratelimit_unavailable": "The sign-in cannot be checked right now. Try again in a moment.",
}


def add_routes(app: web.Application, *, dynamic_registration: bool, oidc: bool) -> None:
    app.router.add_get(JWKS_PATH, endpoints.handle_jwks)
    app.router.add_get(OAUTH_PREFIX + "authorize", browser.handle_authorize)
    app.router.add_post(OAUTH_PREFIX + "signin", browser.handle_signin)
    app.router.add_post(OAUTH_PREFIX + "consent", browser.handle_consent)
    if oidc:
        app.router.add_get(OIDC_CALLBACK_PATH, browser.handle_oidc_callback)
    app.router.add_post(OAUTH_PREFIX + "token", endpoints.handle_token)
    app.router.add_post(OAUTH_PREFIX + "revoke", endpoints.handle_revoke)
    app.router.add_route("OPTIONS", OAUTH_PREFIX + "token", endpoints.handle_preflight)
    app.router.add_route("OPTIONS", OAUTH_PREFIX + "revoke", endpoints.handle_preflight)
    if dynamic_registration:
        app.router.add_post(OAUTH_PREFIX + "register", endpoints.handle_register)
        app.router.add_route("OPTIONS", OAUTH_PREFIX + "register", endpoints.handle_preflight)


@web.middleware
async def browser_error_pages(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The gateway's refusals of the pages a browser visits, rendered as an error page with the
    refusal's status and headers (`Retry-After` included); other paths keep their JSON bodies."""
    if request.path not in BROWSER_PATHS:
        return await handler(request)
    try:
        return await handler(request)
    except GatewayError as error:
        headers = dict(error.headers or {})
        if error.retry_after is not None:
            headers["Retry-After"] = str(error.retry_after)
        text = PAGE_TEXT.get(error.code, error.message)
        return error_page(error.code, text, status=error.status, headers=headers)


def browser_session_middleware(session_key: str, *, secure: bool) -> Middleware:
    """The aiohttp-session cookie of the sign-in pages, under a key derived from `session_key`
    (`secure` with an https public URL): loaded before their handler, written back after it; no
    other path ever reads or sets a cookie."""
    storage = session_cookie(session_key, secure=secure)

    @web.middleware
    async def browser_session(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in BROWSER_PATHS:
            return await handler(request)
        session = request[keys.BROWSER_SESSION] = await storage.load_session(request)
        response = await handler(request)
        if isinstance(response, web.Response) and not (session.new and session.empty):
            await storage.save_session(request, response, session)
        return response

    return browser_session


async def authorization_server(app: web.Application) -> AsyncIterator[None]:
    """The built-in authorization server, when it is on (else `keys.OAUTH` is None); it checks the
    service tokens users paste with the configured verifier, which it then stands in front of."""
    settings = app[keys.SETTINGS]
    if not settings.oauth_server:
        app[keys.OAUTH] = None
        yield
        return
    configured = app[keys.VERIFIER]
    async with OAuthServer.running(settings, signin_verifier=configured, audit=app[keys.AUDIT]) as server:
        app[keys.OAUTH] = server
        own = GrantVerifier(server.tokens, token_to_env=server.token_to_env)
        app[keys.VERIFIER] = OwnTokensFirst(server.issuer, own, configured)
        app[keys.AS_METADATA] = AuthorizationServerMetadata(server.cimd_http, server.issuer, server.metadata())
        yield
