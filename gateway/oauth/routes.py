"""HTTP endpoints of the built-in authorization server.

The browser part — authorize, sign-in, consent — keeps its state in the encrypted session
cookie: a CSRF token checked on every form, the pending authorization requests (by a random id,
a few at a time, each for `PENDING_LIFETIME`), and the signed-in user. A user signs in by pasting
their service token (checked by the configured verifier) or with the upstream OpenID provider
(oidc.py): the sign-in form sends the browser there with a `state`, `nonce` and PKCE verifier
stored in the pending request, and `/oauth/oidc/callback` takes them back out — once — before it
redeems the code, so a replayed or forged callback finds nothing to continue. Errors before the
client and its redirect URI are verified are shown as a page; after, they go back to the client
as a redirect carrying `error`, `state` and `iss` (RFC 9207). The token, registration and revocation
endpoints speak JSON (errors.py) and allow any origin, as browser-based clients need.

Rate limits: every `/oauth/` request counts against `oauth_ip` (ratelimit.py); a pasted token
that is refused counts as a failed authentication of the address, and once those are spent the
form refuses before asking the verifier. A person at a browser sees a refusal of the gateway's
own (a 429 with `Retry-After`, a rate-limit storage that fails closed) as an error page
(`browser_error_pages`), never as the JSON-RPC body the MCP endpoint answers with.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import json
import logging
import secrets
import time
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from aiohttp_session import Session
from aiohttp_session.cookie_storage import EncryptedCookieStorage

from gateway import keys
from gateway.auth import AuthError, Principal
from gateway.auth.static import ISSUER as STATIC_ISSUER
from gateway.errors import GatewayError
from gateway.http.ratelimit import address_key
from gateway.oauth.clients import MAX_REGISTRATION_BYTES, Client, ClientRegistry
from gateway.oauth.errors import NO_STORE, OAuthError, json_response
from gateway.oauth.oidc import OidcError
from gateway.oauth.pages import Markup, error_page, fragment, page
from gateway.oauth.server import (
    BROWSER_PATHS,
    CONSENT_TTL,
    JWKS_PATH,
    OIDC_CALLBACK_PATH,
    PENDING_LIFETIME,
    PREFIX,
    SIGNIN_LIFETIME,
    OAuthServer,
)
from gateway.oauth.storage import StorageError
from gateway.oauth.tokens import Grant, ReusedToken, s256

log = logging.getLogger("gateway.oauth")

MAX_FORM_BYTES: Final = 16 * 1024
# Pending authorization requests kept per browser (the oldest is dropped).
MAX_PENDING: Final = 4
CORS: Final = {"Access-Control-Allow-Origin": "*"}
FORM_TYPE: Final = "application/x-www-form-urlencoded"


def add_routes(app: web.Application, *, dynamic_registration: bool, oidc: bool) -> None:
    app.router.add_get(JWKS_PATH, handle_jwks)
    app.router.add_get(PREFIX + "authorize", handle_authorize)
    app.router.add_post(PREFIX + "signin", handle_signin)
    app.router.add_post(PREFIX + "consent", handle_consent)
    if oidc:
        app.router.add_get(OIDC_CALLBACK_PATH, handle_oidc_callback)
    app.router.add_post(PREFIX + "token", handle_token)
    app.router.add_post(PREFIX + "revoke", handle_revoke)
    app.router.add_route("OPTIONS", PREFIX + "token", handle_preflight)
    app.router.add_route("OPTIONS", PREFIX + "revoke", handle_preflight)
    if dynamic_registration:
        app.router.add_post(PREFIX + "register", handle_register)
        app.router.add_route("OPTIONS", PREFIX + "register", handle_preflight)


def _server(request: web.Request) -> OAuthServer:
    server = request.app[keys.OAUTH]
    if server is None:  # pragma: no cover - routes exist only with the server
        raise GatewayError("not_found", "No authorization server here")
    return server


def _audit(
    request: web.Request, event: Any, *, subject: str | None = None, issuer: str | None = None, **fields: Any
) -> None:
    """Record `event`; the user is `subject` of `issuer` (an OpenID provider), else of this server."""
    server = _server(request)
    principal = Principal(issuer=issuer or server.issuer, subject=subject) if subject is not None else None
    request.app[keys.AUDIT].record(event, principal=principal, **fields)


# --- discovery ----------------------------------------------------------------------------------


async def handle_jwks(request: web.Request) -> web.Response:
    headers = {**CORS, "Cache-Control": "public, max-age=300"}
    return web.json_response(_server(request).keys.jwks(), headers=headers)


async def handle_preflight(request: web.Request) -> web.Response:
    return web.Response(
        status=204,
        headers={
            **CORS,
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": "Authorization, Content-Type",
            "Access-Control-Max-Age": "600",
        },
    )


# --- form and parameter parsing ---------------------------------------------------------------


def _single(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Parameters as a dict; a repeated parameter is an error (RFC 6749 §3.1)."""
    values: dict[str, str] = {}
    for name, value in pairs:
        if name in values:
            raise OAuthError("invalid_request", f"The parameter {name!r} is repeated")
        values[name] = value
    return values


async def _form(request: web.Request) -> dict[str, str]:
    if request.content_type != FORM_TYPE:
        raise OAuthError("invalid_request", f"The body must be {FORM_TYPE}")
    body = await request.content.read(MAX_FORM_BYTES + 1)
    if len(body) > MAX_FORM_BYTES:
        raise OAuthError("invalid_request", "The form is too large")
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise OAuthError("invalid_request", "The form is not UTF-8") from None
    return _single(parse_qsl(text, keep_blank_values=True))


def _with_params(uri: str, params: dict[str, str]) -> str:
    parts = urlsplit(uri)
    query = f"{parts.query}&{urlencode(params)}" if parts.query else urlencode(params)
    return urlunsplit(parts._replace(query=query))


def _redirect(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location, **NO_STORE})


# --- the browser session ------------------------------------------------------------------------


# What an error page says for the gateway's own refusals of a page (else the error's message).
PAGE_TEXT: Final[dict[str, str]] = {
    "rate_limited": "Too many attempts from your network. Wait a little and try again.",
    "ratelimit_unavailable": "The sign-in cannot be checked right now. Try again in a moment.",
}


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


def browser_session_middleware(storage: EncryptedCookieStorage) -> Middleware:
    """The aiohttp-session cookie of the sign-in pages: loaded before their handler, written back
    after it; no other path ever reads or sets a cookie."""

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


async def get_session(request: web.Request) -> Session:
    return request[keys.BROWSER_SESSION]


def _csrf(session: Session) -> str:
    token = session.get("csrf")
    if not isinstance(token, str):
        token = session["csrf"] = secrets.token_urlsafe(24)
    return token


def _check_csrf(session: Session, form: dict[str, str]) -> None:
    expected = session.get("csrf")
    presented = form.get("csrf", "")
    if not isinstance(expected, str) or not hmac.compare_digest(expected.encode(), presented.encode()):
        raise OAuthError("access_denied", "This form has expired or did not come from this site; start again")


def _pending(session: Session, request_id: str | None) -> dict[str, Any]:
    pending = session.get("pending")
    entry = pending.get(request_id) if isinstance(pending, dict) and request_id else None
    if not isinstance(entry, dict) or entry.get("at", 0) + PENDING_LIFETIME < time.time():
        raise OAuthError("invalid_request", "This sign-in request has expired; start again from your app")
    return entry


def _signed_in(session: Session) -> dict[str, Any] | None:
    user = session.get("user")
    if isinstance(user, dict) and user.get("at", 0) + SIGNIN_LIFETIME > time.time():
        return user
    return None


# --- authorization endpoint ---------------------------------------------------------------------


async def handle_authorize(request: web.Request) -> web.Response:
    server = _server(request)
    try:
        params = _single(list(request.query.items()))
        client_id = params.get("client_id")
        if not client_id:
            raise OAuthError("invalid_request", "client_id is missing")
        client = await server.clients.find(client_id)
        redirect_uri = params.get("redirect_uri")
        if not redirect_uri or not client.redirect_allowed(redirect_uri):
            raise OAuthError("invalid_request", "redirect_uri is missing or not registered for this client")
    except OAuthError as error:
        _audit(request, "oauth.refused", endpoint="authorize", error=error.code, detail=error.description)
        return error_page(error.code, error.description, status=error.status)
    except StorageError:
        return _unavailable_page()
    state = params.get("state")
    try:
        pending = _authorization_request(server, client, params)
    except OAuthError as error:
        _audit(request, "oauth.refused", endpoint="authorize", client_id=client.client_id, error=error.code)
        return _redirect(_error_location(server, redirect_uri, error, state))
    session = await get_session(request)
    request_id = secrets.token_urlsafe(12)
    pending["at"] = time.time()
    waiting = {
        key: value
        for key, value in (session.get("pending") or {}).items()
        if value.get("at", 0) + PENDING_LIFETIME >= time.time()
    }
    waiting[request_id] = pending
    session["pending"] = dict(sorted(waiting.items(), key=lambda item: item[1]["at"])[-MAX_PENDING:])
    return await _continue(request, session, request_id, client)


def _authorization_request(server: OAuthServer, client: Client, params: dict[str, str]) -> dict[str, Any]:
    """The checked parameters of an authorization request from a verified client and redirect URI."""
    if params.get("response_type") != "code":
        raise OAuthError("unsupported_response_type", "Only response_type=code is supported")
    if not params.get("state"):
        raise OAuthError("invalid_request", "state is required")
    challenge = params.get("code_challenge", "")
    if params.get("code_challenge_method") != "S256" or not 43 <= len(challenge) <= 128:
        raise OAuthError("invalid_request", "PKCE is required: code_challenge with code_challenge_method=S256")
    if params.get("resource") != server.resource:
        raise OAuthError("invalid_target", f"resource must be {server.resource}")
    return {
        "client_id": client.client_id,
        "redirect_uri": params["redirect_uri"],
        "state": params["state"],
        "challenge": challenge,
        "scope": params.get("scope"),
    }


def _error_location(server: OAuthServer, redirect_uri: str, error: OAuthError, state: str | None) -> str:
    params = {"error": error.code, "error_description": error.description}
    if state:
        params["state"] = state
    params["iss"] = server.issuer
    return _with_params(redirect_uri, params)


def _unavailable_page() -> web.Response:
    return error_page("temporarily_unavailable", "The authorization server cannot answer now; try again", status=503)


async def _continue(request: web.Request, session: Session, request_id: str, client: Client) -> web.Response:
    """The next step for a pending request: sign in, consent, or (consent remembered) the code."""
    server = _server(request)
    pending = _pending(session, request_id)
    user = _signed_in(session)
    if user is None:
        return _signin_page(server, session, request_id, client)
    scope = server.grantable_scope(pending["scope"], user.get("scopes"))
    remembered = await server.store.get("consent", _consent_key(user, client.client_id))
    if (
        remembered is not None
        and remembered.get("redirect_uri") == pending["redirect_uri"]
        and set(scope.split()) <= set(remembered.get("scope", "").split())
    ):
        return await _issue_code(
            request, session, request_id=request_id, client=client, user=user, scope=scope, remembered=True
        )
    return page(
        "consent.html",
        title=f"Allow {client.name}?",
        form_targets=[pending["redirect_uri"]],
        service=server.service,
        client_name=client.name,
        client_id=client.client_id,
        client_note=(
            "The app's name and address come from its metadata document at its client ID."
            if client.metadata_document
            else "This app registered itself: its name is what it says it is. Allow it only if you just started "
            "connecting it."
        ),
        redirect_uri=pending["redirect_uri"],
        scopes=scope or "none (the access your sign-in gives)",
        resource=server.resource,
        subject=user.get("label") or user["subject"],
        csrf=_csrf(session),
        request=request_id,
    )


def _signin_page(
    server: OAuthServer,
    session: Session,
    request_id: str,
    client: Client,
    *,
    message: str | None = None,
    status: int = 200,
) -> web.Response:
    pending = _pending(session, request_id)
    methods = []
    # A form may end in a redirect: to the app (consent remembered), or to the OpenID provider.
    targets = [pending["redirect_uri"]]
    if server.oidc is not None and "oidc" in server.signin_methods:
        methods.append(fragment("signin_oidc.html", csrf=_csrf(session), request=request_id, provider=server.oidc.name))
        targets.append(server.oidc.endpoints.authorization)
    if "token" in server.signin_methods:
        methods.append(fragment("signin_token.html", csrf=_csrf(session), request=request_id))
    return page(
        "signin.html",
        title=f"Sign in to {server.service}",
        status=status,
        form_targets=targets,
        service=server.service,
        client_name=client.name,
        resource=server.resource,
        message=fragment("message.html", text=message) if message else "",
        methods=Markup("\n<hr>\n".join(methods)),
    )


def _consent_key(user: dict[str, Any], client_id: str) -> str:
    """Consents are per user and client; a user of an OpenID provider is named with its issuer."""
    issuer = user.get("issuer")
    return f"{issuer}\x1f{user['subject']}\x1f{client_id}" if issuer else f"{user['subject']}\x1f{client_id}"


async def _issue_code(
    request: web.Request,
    session: Session,
    *,
    request_id: str,
    client: Client,
    user: dict[str, Any],
    scope: str,
    remembered: bool,
) -> web.Response:
    server = _server(request)
    pending = session["pending"].pop(request_id)
    session.changed()
    credential = None
    if server.token_to_env and isinstance(handle := user.get("credential"), str):
        stored = await server.store.get("credential", handle)
        credential = stored.get("sealed") if stored else None
    grant = Grant(
        subject=user["subject"],
        client_id=client.client_id,
        scope=scope,
        resource=server.resource,
        method=user["method"],
        credential=credential,
        issuer=user.get("issuer"),
    )
    code = await server.tokens.issue_code(grant, redirect_uri=pending["redirect_uri"], challenge=pending["challenge"])
    await server.clients.touch(client)
    _audit(
        request,
        "oauth.authorize",
        subject=user["subject"],
        issuer=user.get("issuer"),
        client_id=client.client_id,
        redirect_uri=pending["redirect_uri"],
        scope=scope,
        consent="remembered" if remembered else "given",
    )
    return _redirect(
        _with_params(pending["redirect_uri"], {"code": code, "state": pending["state"], "iss": server.issuer})
    )


async def _browser_form(request: web.Request) -> tuple[OAuthServer, Session, dict[str, str], str, Client]:
    server = _server(request)
    form = await _form(request)
    session = await get_session(request)
    _check_csrf(session, form)
    request_id = form.get("request", "")
    pending = _pending(session, request_id)
    client = await server.clients.find(pending["client_id"])
    return server, session, form, request_id, client


async def handle_signin(request: web.Request) -> web.Response:
    try:
        server, session, form, request_id, client = await _browser_form(request)
    except OAuthError as error:
        _audit(request, "oauth.refused", endpoint="signin", error=error.code, detail=error.description)
        return error_page(error.code, error.description, status=error.status)
    except StorageError:
        return _unavailable_page()
    method = form.get("method", "token")
    if method not in server.signin_methods:
        return error_page("invalid_request", "This sign-in method is not offered", status=400)
    limiter = request.app[keys.LIMITER]
    address = address_key(request[keys.CLIENT_IP])
    await limiter.spent("auth_failures_ip", address)
    if method == "oidc" and server.oidc is not None:
        return _start_oidc(server, session, request_id)
    if method != "token" or server.signin_verifier is None:  # pragma: no cover - settings ensure it
        return error_page("invalid_request", "This sign-in method is not offered", status=400)
    token = form.get("token", "").strip()
    try:
        principal = await server.signin_verifier.verify(token) if token else None
    except AuthError as error:
        if error.code == "unavailable":
            log.warning("sign-in verifier unavailable: %s", error.reason)
            return _unavailable_page()
        principal = None
        reason = error.reason
    else:
        reason = "empty token"
    if principal is None:
        _audit(request, "oauth.signin_fail", client_id=client.client_id, reason=reason)
        with contextlib.suppress(GatewayError):  # the refusal shows on the next attempt
            await limiter.hit("auth_failures_ip", address)
        return _signin_page(
            server,
            session,
            request_id,
            client,
            message="That token was not accepted. Check it and try again.",
            status=401,
        )
    user: dict[str, Any] = {
        "subject": principal.subject,
        "method": "token",
        "at": time.time(),
        # A static token names its scopes: a grant never exceeds them. Other verifiers say nothing.
        "scopes": sorted(principal.scopes) if principal.issuer == STATIC_ISSUER else None,
    }
    if server.token_to_env:
        handle = secrets.token_urlsafe(24)
        await server.store.put("credential", handle, {"sealed": server.tokens.seal(token)}, SIGNIN_LIFETIME)
        user["credential"] = handle
    session["user"] = user
    session["csrf"] = secrets.token_urlsafe(24)  # a new CSRF token with the new sign-in
    _audit(request, "oauth.signin", subject=principal.subject, client_id=client.client_id, method="token")
    return await _continue(request, session, request_id, client)


def _start_oidc(server: OAuthServer, session: Session, request_id: str) -> web.Response:
    """Send the browser to the OpenID provider, remembering this sign-in's secrets in its pending
    request (a new attempt replaces an unfinished one)."""
    if server.oidc is None:  # pragma: no cover - the caller checks
        raise OAuthError("invalid_request", "This sign-in method is not offered")
    flow = {
        "state": secrets.token_urlsafe(32),
        "nonce": secrets.token_urlsafe(32),
        "verifier": secrets.token_urlsafe(48),
    }
    session["pending"][request_id]["oidc"] = flow
    session.changed()
    location = server.oidc.authorization_url(state=flow["state"], nonce=flow["nonce"], challenge=s256(flow["verifier"]))
    return _redirect(location)


def _take_oidc_flow(session: Session, state: str) -> tuple[str, dict[str, str]]:
    """The pending request a provider's answer with `state` continues, and that sign-in's secrets,
    removed from the session: a second answer with the same state finds nothing."""
    for request_id, entry in (session.get("pending") or {}).items():
        flow = entry.get("oidc") if isinstance(entry, dict) else None
        if isinstance(flow, dict) and hmac.compare_digest(str(flow.get("state", "")).encode(), state.encode()):
            del entry["oidc"]
            session.changed()
            _pending(session, request_id)  # expired requests end here
            return request_id, flow
    raise OidcError("unknown_state", "no sign-in of this browser is waiting for this state")


async def handle_oidc_callback(request: web.Request) -> web.Response:
    """The OpenID provider's answer: the code (or error) for a sign-in this browser started."""
    server = _server(request)
    session = await get_session(request)
    limiter = request.app[keys.LIMITER]
    address = address_key(request[keys.CLIENT_IP])
    await limiter.spent("auth_failures_ip", address)
    client_id: str | None = None
    try:
        oidc = server.oidc
        if oidc is None:  # pragma: no cover - the route exists only with the provider
            raise OidcError("unavailable", "no OpenID provider is configured")
        params = _single(list(request.query.items()))
        request_id, flow = _take_oidc_flow(session, params.get("state", ""))
        client_id = _pending(session, request_id)["client_id"]
        if "iss" in params and params["iss"] != oidc.issuer:  # RFC 9207: a mix-up of providers
            raise OidcError("wrong_issuer", "the answer's iss is not the provider's")
        if "error" in params:
            raise OidcError("provider_refused", f"the provider answered error={params['error'][:64]!r}")
        code = params.get("code")
        if not code:
            raise OidcError("provider_refused", "the answer has no code")
        client = await server.clients.find(client_id)
        user = await oidc.sign_in(code=code, verifier=flow["verifier"], nonce=flow["nonce"])
    except OidcError as error:
        _audit(request, "oauth.signin_fail", client_id=client_id, method="oidc", reason=error.code, detail=error.detail)
        if error.code == "unavailable":
            log.warning("OpenID provider unavailable: %s", error.detail)
        else:
            with contextlib.suppress(GatewayError):  # the refusal shows on the next attempt
                await limiter.hit("auth_failures_ip", address)
        return error_page(error.code, error.text, status=error.status)
    except OAuthError as error:
        _audit(request, "oauth.refused", endpoint="oidc_callback", error=error.code, detail=error.description)
        return error_page(error.code, error.description, status=error.status)
    except StorageError:
        return _unavailable_page()
    session["user"] = {
        "subject": user.subject,
        "issuer": user.issuer,
        "label": user.label,
        "method": "oidc",
        "at": time.time(),
        "scopes": None,
    }
    session["csrf"] = secrets.token_urlsafe(24)  # a new CSRF token with the new sign-in
    _audit(request, "oauth.signin", subject=user.subject, issuer=user.issuer, client_id=client_id, method="oidc")
    try:
        return await _continue(request, session, request_id, client)
    except StorageError:
        return _unavailable_page()


async def handle_consent(request: web.Request) -> web.Response:
    try:
        server, session, form, request_id, client = await _browser_form(request)
        pending = _pending(session, request_id)
        user = _signed_in(session)
        if user is None:
            return _signin_page(server, session, request_id, client, message="Your sign-in expired. Sign in again.")
        who = {"subject": user["subject"], "issuer": user.get("issuer")}
        if form.get("decision") != "allow":
            session["pending"].pop(request_id)
            session.changed()
            _audit(request, "oauth.consent", **who, client_id=client.client_id, decision="deny")
            denied = OAuthError("access_denied", "The user did not allow the connection")
            return _redirect(_error_location(server, pending["redirect_uri"], denied, pending["state"]))
        scope = server.grantable_scope(pending["scope"], user.get("scopes"))
        record = {"scope": scope, "redirect_uri": pending["redirect_uri"], "at": time.time()}
        await server.store.put("consent", _consent_key(user, client.client_id), record, CONSENT_TTL)
        _audit(request, "oauth.consent", **who, client_id=client.client_id, decision="allow")
        return await _issue_code(
            request, session, request_id=request_id, client=client, user=user, scope=scope, remembered=False
        )
    except OAuthError as error:
        _audit(request, "oauth.refused", endpoint="consent", error=error.code, detail=error.description)
        return error_page(error.code, error.description, status=error.status)
    except StorageError:
        return _unavailable_page()


# --- token, revocation and registration endpoints ------------------------------------------------


async def _client(server: OAuthServer, request: web.Request, form: dict[str, str]) -> Client:
    """The client making a token or revocation request, authenticated as it registered."""
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    basic = scheme.lower() == "basic"
    secret: str | None
    if basic:
        try:
            user, _, password = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise _invalid_client(basic) from None
        client_id, secret = unquote(user), unquote(password)
        if form.get("client_id", client_id) != client_id:
            raise OAuthError("invalid_request", "client_id differs from the authenticated client")
    else:
        client_id, secret = form.get("client_id", ""), form.get("client_secret")
    if not client_id:
        raise _invalid_client(basic)
    if ClientRegistry.is_metadata_url(client_id):
        # A metadata-document client is public; its document was checked when the code was issued.
        if secret is not None:
            raise _invalid_client(basic)
        return Client(client_id, client_id, (), frozenset({"authorization_code", "refresh_token"}), "none", None, True)
    try:
        client = await server.clients.find(client_id)
    except OAuthError:
        raise _invalid_client(basic) from None
    if client.auth_method == "none":
        if secret is not None:
            raise _invalid_client(basic)
        return client
    expected_basic = client.auth_method == "client_secret_basic"
    if secret is None or basic != expected_basic or not client.secret_matches(secret):
        raise _invalid_client(basic)
    return client


def _invalid_client(basic: bool) -> OAuthError:
    headers = {"WWW-Authenticate": 'Basic realm="mcp-gateway"'} if basic else None
    return OAuthError("invalid_client", "Client authentication failed", headers=headers)


async def handle_token(request: web.Request) -> web.Response:
    server = _server(request)
    client_id: str | None = None
    try:
        form = await _form(request)
        client = await _client(server, request, form)
        client_id = client.client_id
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            code = form.get("code")
            if not code:
                raise OAuthError("invalid_request", "code is missing")
            issued = await server.tokens.redeem_code(
                code,
                client_id=client.client_id,
                redirect_uri=form.get("redirect_uri"),
                verifier=form.get("code_verifier"),
                resource=form.get("resource"),
                refresh="refresh_token" in client.grant_types,
            )
            event = "oauth.grant"
        elif grant_type == "refresh_token":
            if "refresh_token" not in client.grant_types:
                raise OAuthError("unauthorized_client", "This client did not register for refresh tokens")
            token = form.get("refresh_token")
            if not token:
                raise OAuthError("invalid_request", "refresh_token is missing")
            issued = await server.tokens.refresh(
                token, client_id=client.client_id, resource=form.get("resource"), scope=form.get("scope")
            )
            event = "oauth.refresh"
        else:
            raise OAuthError("unsupported_grant_type", "grant_type is authorization_code or refresh_token")
    except ReusedToken as error:
        _audit(request, "oauth.reuse", client_id=client_id, family=error.family, detail=error.description)
        return json_response(error)
    except OAuthError as error:
        _audit(
            request, "oauth.refused", endpoint="token", client_id=client_id, error=error.code, detail=error.description
        )
        return json_response(error)
    except StorageError as exc:
        log.error("OAuth storage failed: %s", exc)
        return json_response(OAuthError("temporarily_unavailable", "Try again later"))
    _audit(
        request,
        event,
        subject=issued.grant.subject,
        issuer=issued.grant.issuer,
        client_id=client_id,
        scope=issued.grant.scope,
        family=issued.family,
    )
    return web.json_response(issued.body, headers={**NO_STORE, **CORS})


async def handle_revoke(request: web.Request) -> web.Response:
    server = _server(request)
    try:
        form = await _form(request)
        client = await _client(server, request, form)
        token = form.get("token")
        if not token:
            raise OAuthError("invalid_request", "token is missing")
        family = await server.tokens.revoke(token, client_id=client.client_id)
    except OAuthError as error:
        _audit(request, "oauth.refused", endpoint="revoke", error=error.code, detail=error.description)
        return json_response(error)
    except StorageError:
        return json_response(OAuthError("temporarily_unavailable", "Try again later"))
    _audit(request, "oauth.revoke", client_id=client.client_id, family=family, revoked=family is not None)
    return web.Response(status=200, headers={**NO_STORE, **CORS})


async def handle_register(request: web.Request) -> web.Response:
    server = _server(request)
    try:
        if request.content_type != "application/json":
            raise OAuthError("invalid_client_metadata", "The registration body is application/json")
        body = await request.content.read(MAX_REGISTRATION_BYTES + 1)
        if len(body) > MAX_REGISTRATION_BYTES:
            raise OAuthError("invalid_client_metadata", "The registration body is too large")
        try:
            metadata = json.loads(body)
        except ValueError:
            raise OAuthError("invalid_client_metadata", "The registration body is not JSON") from None
        client, response = await server.clients.register(metadata)
    except OAuthError as error:
        _audit(request, "oauth.refused", endpoint="register", error=error.code, detail=error.description)
        return json_response(error)
    except StorageError:
        return json_response(OAuthError("temporarily_unavailable", "Try again later"))
    _audit(
        request,
        "oauth.register",
        client_id=client.client_id,
        client_name=client.name,
        redirect_uris=list(client.redirect_uris),
        auth_method=client.auth_method,
    )
    return web.json_response(response, status=201, headers={**NO_STORE, **CORS})
