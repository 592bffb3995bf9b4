"""The pages a browser visits: the authorization endpoint, sign-in, consent, and the upstream
OpenID provider's callback.

The flow's state lives in the browser's encrypted cookie (browser_state.py): a CSRF token checked
on every form, the pending authorization requests, and the signed-in user. A user signs in by
pasting their service token (checked by the configured verifier) or with the upstream OpenID
provider (oidc.py): the sign-in form sends the browser there with a `state`, `nonce` and PKCE
verifier stored in the pending request, and `/oauth/oidc/callback` takes them back out — once —
before it redeems the code, so a replayed or forged callback finds nothing to continue. Errors
before the client and its redirect URI are verified are shown as a page; after, they go back to
the client as a redirect carrying `error`, `state` and `iss` (RFC 9207).

Rate limits: a pasted token that is refused, and a provider's answer that does not sign anyone
in, count as a failed authentication of the address (`auth_failures_ip`); once those are spent
the form refuses before asking the verifier.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from typing import Final
from urllib.parse import urlencode, urlsplit, urlunsplit

from aiohttp import web

from gateway import keys
from gateway.auth import AuthError
from gateway.auth.static import ISSUER as STATIC_ISSUER
from gateway.errors import GatewayError
from gateway.http.ratelimit import address_key
from gateway.oauth.browser_state import SIGNIN_LIFETIME, BrowserState, OidcFlow, PendingRequest, SignedInUser
from gateway.oauth.clients import Client
from gateway.oauth.errors import NO_STORE, OAuthError
from gateway.oauth.oidc import OidcError
from gateway.oauth.pages import Markup, error_page, fragment, page
from gateway.oauth.params import read_form, single
from gateway.oauth.refusals import Attempt, answers_refusals, unavailable_page
from gateway.oauth.server import OAuthServer, server_of
from gateway.oauth.tokens import Grant, s256

log = logging.getLogger("gateway.oauth")

# A user's consent to a client is remembered this long.
CONSENT_TTL: Final = 30 * 86400.0
# PKCE: the length of an S256 code challenge (RFC 7636 §4.2).
CHALLENGE_CHARS: Final = range(43, 129)
# Random bytes of the handle under which a signed-in user's service token is stored (token_to_env).
CREDENTIAL_HANDLE_BYTES: Final = 24


def _state(request: web.Request) -> BrowserState:
    return BrowserState(request[keys.BROWSER_SESSION])


def _with_params(uri: str, params: dict[str, str]) -> str:
    parts = urlsplit(uri)
    query = f"{parts.query}&{urlencode(params)}" if parts.query else urlencode(params)
    return urlunsplit(parts._replace(query=query))


def _redirect(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location, **NO_STORE})


def _error_location(server: OAuthServer, redirect_uri: str, error: OAuthError, state: str | None) -> str:
    params = {"error": error.code, "error_description": error.description}
    if state:
        params["state"] = state
    params["iss"] = server.issuer
    return _with_params(redirect_uri, params)


def _consent_key(user: SignedInUser, client_id: str) -> str:
    """Consents are per user and client; a user of an OpenID provider is named with its issuer."""
    if user.issuer:
        return f"{user.issuer}\x1f{user.subject}\x1f{client_id}"
    return f"{user.subject}\x1f{client_id}"


# --- authorization endpoint ---------------------------------------------------------------------


@answers_refusals("authorize", answer="page")
async def handle_authorize(request: web.Request, attempt: Attempt) -> web.Response:
    server = server_of(request)
    params = single(request.query.items())
    client_id = params.get("client_id")
    if not client_id:
        raise OAuthError("invalid_request", "client_id is missing")
    client = await server.clients.find(client_id)
    redirect_uri = params.get("redirect_uri")
    if not redirect_uri or not client.redirect_allowed(redirect_uri):
        raise OAuthError("invalid_request", "redirect_uri is missing or not registered for this client")
    # From here on the redirect URI is the client's: errors go back to it.
    try:
        pending = _authorization_request(server, client, redirect_uri, params)
    except OAuthError as error:
        server.record("oauth.refused", endpoint="authorize", client_id=client.client_id, error=error.code)
        return _redirect(_error_location(server, redirect_uri, error, params.get("state")))
    state = _state(request)
    request_id = state.add_pending(pending)
    return await _continue(request, state, request_id, client)


def _authorization_request(
    server: OAuthServer, client: Client, redirect_uri: str, params: dict[str, str]
) -> PendingRequest:
    """The checked parameters of an authorization request from a verified client and redirect URI."""
    if params.get("response_type") != "code":
        raise OAuthError("unsupported_response_type", "Only response_type=code is supported")
    state = params.get("state")
    if not state:
        raise OAuthError("invalid_request", "state is required")
    challenge = params.get("code_challenge", "")
    if params.get("code_challenge_method") != "S256" or len(challenge) not in CHALLENGE_CHARS:
        raise OAuthError("invalid_request", "PKCE is required: code_challenge with code_challenge_method=S256")
    if params.get("resource") != server.resource:
        raise OAuthError("invalid_target", f"resource must be {server.resource}")
    return PendingRequest(
        client_id=client.client_id,
        redirect_uri=redirect_uri,
        state=state,
        challenge=challenge,
        scope=params.get("scope"),
        at=time.time(),
    )


async def _continue(request: web.Request, state: BrowserState, request_id: str, client: Client) -> web.Response:
    """The next step for a pending request: sign in, consent, or (consent remembered) the code."""
    server = server_of(request)
    pending = state.pending(request_id)
    user = state.user()
    if user is None:
        return _signin_page(server, state, request_id, client)
    scope = server.grantable_scope(pending.scope, user.scopes)
    remembered = await server.store.get("consent", _consent_key(user, client.client_id))
    if (
        remembered is not None
        and remembered.get("redirect_uri") == pending.redirect_uri
        and set(scope.split()) <= set(remembered.get("scope", "").split())
    ):
        return await _issue_code(request, state, request_id, client, user=user, scope=scope, remembered=True)
    return page(
        "consent.html",
        title=f"Allow {client.name}?",
        form_targets=[pending.redirect_uri],
        service=server.service,
        client_name=client.name,
        client_id=client.client_id,
        client_note=(
            "The app's name and address come from its metadata document at its client ID."
            if client.metadata_document
            else "This app registered itself: its name is what it says it is. Allow it only if you just started "
            "connecting it."
        ),
        redirect_uri=pending.redirect_uri,
        scopes=scope or "none (the access your sign-in gives)",
        resource=server.resource,
        subject=user.label or user.subject,
        csrf=state.csrf(),
        request=request_id,
    )


def _signin_page(
    server: OAuthServer,
    state: BrowserState,
    request_id: str,
    client: Client,
    *,
    message: str | None = None,
    status: int = 200,
) -> web.Response:
    pending = state.pending(request_id)
    methods = []
    # A form may end in a redirect: to the app (consent remembered), or to the OpenID provider.
    targets = [pending.redirect_uri]
    if server.oidc is not None and "oidc" in server.signin_methods:
        methods.append(fragment("signin_oidc.html", csrf=state.csrf(), request=request_id, provider=server.oidc.name))
        targets.append(server.oidc.endpoints.authorization)
    if "token" in server.signin_methods:
        methods.append(fragment("signin_token.html", csrf=state.csrf(), request=request_id))
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


async def _issue_code(
    request: web.Request,
    state: BrowserState,
    request_id: str,
    client: Client,
    *,
    user: SignedInUser,
    scope: str,
    remembered: bool,
) -> web.Response:
    server = server_of(request)
    pending = state.take_pending(request_id)
    credential = None
    if server.token_to_env and user.credential is not None:
        stored = await server.store.get("credential", user.credential)
        credential = stored.get("sealed") if stored else None
    grant = Grant(
        subject=user.subject,
        client_id=client.client_id,
        scope=scope,
        resource=server.resource,
        method=user.method,
        credential=credential,
        issuer=user.issuer,
    )
    code = await server.tokens.issue_code(grant, redirect_uri=pending.redirect_uri, challenge=pending.challenge)
    await server.clients.touch(client)
    server.record(
        "oauth.authorize",
        subject=user.subject,
        issuer=user.issuer,
        client_id=client.client_id,
        redirect_uri=pending.redirect_uri,
        scope=scope,
        consent="remembered" if remembered else "given",
    )
    return _redirect(_with_params(pending.redirect_uri, {"code": code, "state": pending.state, "iss": server.issuer}))


async def _browser_form(request: web.Request) -> tuple[OAuthServer, BrowserState, dict[str, str], str, Client]:
    """A form posted by one of the pages: CSRF-checked, for a pending request, of a known client."""
    server = server_of(request)
    form = await read_form(request)
    state = _state(request)
    state.check_csrf(form.get("csrf", ""))
    request_id = form.get("request", "")
    pending = state.pending(request_id)
    client = await server.clients.find(pending.client_id)
    return server, state, form, request_id, client


# --- sign-in ------------------------------------------------------------------------------------


@answers_refusals("signin", answer="page")
async def handle_signin(request: web.Request, attempt: Attempt) -> web.Response:
    server, state, form, request_id, client = await _browser_form(request)
    method = form.get("method", "token")
    if method not in server.signin_methods:
        return error_page("invalid_request", "This sign-in method is not offered", status=400)
    limiter = request.app[keys.LIMITER]
    address = address_key(request[keys.CLIENT_IP])
    await limiter.spent("auth_failures_ip", address)
    if method == "oidc" and server.oidc is not None:
        return _start_oidc(server, state, request_id)
    if method != "token" or server.signin_verifier is None:  # pragma: no cover - settings ensure it
        return error_page("invalid_request", "This sign-in method is not offered", status=400)
    token = form.get("token", "").strip()
    try:
        principal = await server.signin_verifier.verify(token) if token else None
    except AuthError as error:
        if error.code == "unavailable":
            log.warning("sign-in verifier unavailable: %s", error.reason)
            return unavailable_page()
        principal = None
        reason = error.reason
    else:
        reason = "empty token"
    if principal is None:
        server.record("oauth.signin_fail", client_id=client.client_id, reason=reason)
        with contextlib.suppress(GatewayError):  # the refusal shows on the next attempt
            await limiter.hit("auth_failures_ip", address)
        return _signin_page(
            server,
            state,
            request_id,
            client,
            message="That token was not accepted. Check it and try again.",
            status=401,
        )
    credential = None
    if server.token_to_env:
        credential = secrets.token_urlsafe(CREDENTIAL_HANDLE_BYTES)
        await server.store.put("credential", credential, {"sealed": server.tokens.seal(token)}, SIGNIN_LIFETIME)
    state.sign_in(
        SignedInUser(
            subject=principal.subject,
            method="token",
            at=time.time(),
            # A static token names its scopes: a grant never exceeds them. Other verifiers say nothing.
            scopes=tuple(sorted(principal.scopes)) if principal.issuer == STATIC_ISSUER else None,
            credential=credential,
        )
    )
    server.record("oauth.signin", subject=principal.subject, client_id=client.client_id, method="token")
    return await _continue(request, state, request_id, client)


def _start_oidc(server: OAuthServer, state: BrowserState, request_id: str) -> web.Response:
    """Send the browser to the OpenID provider, remembering this sign-in's secrets in its pending
    request (a new attempt replaces an unfinished one)."""
    if server.oidc is None:  # pragma: no cover - the caller checks
        raise OAuthError("invalid_request", "This sign-in method is not offered")
    flow = OidcFlow.start()
    state.start_oidc(request_id, flow)
    location = server.oidc.authorization_url(state=flow.state, nonce=flow.nonce, challenge=s256(flow.verifier))
    return _redirect(location)


@answers_refusals("oidc_callback", answer="page")
async def handle_oidc_callback(request: web.Request, attempt: Attempt) -> web.Response:
    """The OpenID provider's answer: the code (or error) for a sign-in this browser started."""
    server = server_of(request)
    state = _state(request)
    limiter = request.app[keys.LIMITER]
    address = address_key(request[keys.CLIENT_IP])
    await limiter.spent("auth_failures_ip", address)
    client_id: str | None = None
    try:
        oidc = server.oidc
        if oidc is None:  # pragma: no cover - the route exists only with the provider
            raise OidcError("unavailable", "no OpenID provider is configured")
        params = single(request.query.items())
        taken = state.take_oidc_flow(params.get("state", ""))
        if taken is None:
            raise OidcError("unknown_state", "no sign-in of this browser is waiting for this state")
        request_id, flow = taken
        client_id = state.pending(request_id).client_id  # expired requests end here
        if "iss" in params and params["iss"] != oidc.issuer:  # RFC 9207: a mix-up of providers
            raise OidcError("wrong_issuer", "the answer's iss is not the provider's")
        if "error" in params:
            raise OidcError("provider_refused", f"the provider answered error={params['error'][:64]!r}")
        code = params.get("code")
        if not code:
            raise OidcError("provider_refused", "the answer has no code")
        client = await server.clients.find(client_id)
        user = await oidc.sign_in(code=code, verifier=flow.verifier, nonce=flow.nonce)
    except OidcError as error:
        server.record("oauth.signin_fail", client_id=client_id, method="oidc", reason=error.code, detail=error.detail)
        if error.code == "unavailable":
            log.warning("OpenID provider unavailable: %s", error.detail)
        else:
            with contextlib.suppress(GatewayError):  # the refusal shows on the next attempt
                await limiter.hit("auth_failures_ip", address)
        return error_page(error.code, error.text, status=error.status)
    state.sign_in(
        SignedInUser(
            subject=user.subject, method="oidc", at=time.time(), scopes=None, issuer=user.issuer, label=user.label
        )
    )
    server.record("oauth.signin", subject=user.subject, issuer=user.issuer, client_id=client_id, method="oidc")
    return await _continue(request, state, request_id, client)


# --- consent ------------------------------------------------------------------------------------


@answers_refusals("consent", answer="page")
async def handle_consent(request: web.Request, attempt: Attempt) -> web.Response:
    server, state, form, request_id, client = await _browser_form(request)
    pending = state.pending(request_id)
    user = state.user()
    if user is None:
        return _signin_page(server, state, request_id, client, message="Your sign-in expired. Sign in again.")
    if form.get("decision") != "allow":
        state.take_pending(request_id)
        server.record(
            "oauth.consent", subject=user.subject, issuer=user.issuer, client_id=client.client_id, decision="deny"
        )
        denied = OAuthError("access_denied", "The user did not allow the connection")
        return _redirect(_error_location(server, pending.redirect_uri, denied, pending.state))
    scope = server.grantable_scope(pending.scope, user.scopes)
    record = {"scope": scope, "redirect_uri": pending.redirect_uri, "at": time.time()}
    await server.store.put("consent", _consent_key(user, client.client_id), record, CONSENT_TTL)
    server.record(
        "oauth.consent", subject=user.subject, issuer=user.issuer, client_id=client.client_id, decision="allow"
    )
    return await _issue_code(request, state, request_id, client, user=user, scope=scope, remembered=False)
