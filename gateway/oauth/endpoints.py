"""The endpoints clients call: token, revocation and registration (with client authentication),
the JWK Set, and the CORS preflight. They speak JSON (errors.py) and allow any origin, as
browser-based clients need; no cookie is ever read or set here.

Client authentication is the one the client registered (RFC 6749 §2.3, RFC 7591): a public
client (`none`, and every client named by a metadata document) presents no secret; a confidential
one presents its secret by HTTP Basic or in the form, whichever it registered, never the other.
A failed authentication is `invalid_client`, with a Basic challenge when Basic was tried.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote

from aiohttp import web

from gateway.net import read_at_most
from gateway.oauth.clients import GRANT_TYPES, MAX_REGISTRATION_BYTES, Client, ClientRegistry
from gateway.oauth.errors import NO_STORE, OAuthError
from gateway.oauth.params import read_form
from gateway.oauth.refusals import Attempt, answers_refusals
from gateway.oauth.server import JWKS_CACHE_SECONDS, OAuthServer, server_of

if TYPE_CHECKING:
    from gateway.observe.audit import EventName

CORS: Final = {"Access-Control-Allow-Origin": "*"}
PREFLIGHT: Final = {
    **CORS,
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Max-Age": "600",
}
# Caches may keep the JWK Set as long as a retired key stays published beyond its tokens' lives.
JWKS_HEADERS: Final = {**CORS, "Cache-Control": f"public, max-age={JWKS_CACHE_SECONDS}"}


async def handle_jwks(request: web.Request) -> web.Response:
    return web.json_response(server_of(request).keys.jwks(), headers=JWKS_HEADERS)


async def handle_preflight(request: web.Request) -> web.Response:
    return web.Response(status=204, headers=PREFLIGHT)


async def authenticate_client(server: OAuthServer, request: web.Request, form: dict[str, str]) -> Client:
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
        return Client(client_id, client_id, (), GRANT_TYPES, "none", None, True)
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


@answers_refusals("token", answer="json", names_client=True)
async def handle_token(request: web.Request, attempt: Attempt) -> web.Response:
    server = server_of(request)
    form = await read_form(request)
    client = await authenticate_client(server, request, form)
    attempt.client_id = client.client_id
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
        event: EventName = "oauth.grant"
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
    server.record(
        event,
        subject=issued.grant.subject,
        issuer=issued.grant.issuer,
        client_id=client.client_id,
        scope=issued.grant.scope,
        family=issued.family,
    )
    return web.json_response(issued.body, headers={**NO_STORE, **CORS})


@answers_refusals("revoke", answer="json")
async def handle_revoke(request: web.Request, attempt: Attempt) -> web.Response:
    server = server_of(request)
    form = await read_form(request)
    client = await authenticate_client(server, request, form)
    token = form.get("token")
    if not token:
        raise OAuthError("invalid_request", "token is missing")
    family = await server.tokens.revoke(token, client_id=client.client_id)
    server.record("oauth.revoke", client_id=client.client_id, family=family, revoked=family is not None)
    return web.Response(status=200, headers={**NO_STORE, **CORS})


@answers_refusals("register", answer="json")
async def handle_register(request: web.Request, attempt: Attempt) -> web.Response:
    server = server_of(request)
    if request.content_type != "application/json":
        raise OAuthError("invalid_client_metadata", "The registration body is application/json")
    body = await read_at_most(request.content, MAX_REGISTRATION_BYTES + 1)
    if len(body) > MAX_REGISTRATION_BYTES:
        raise OAuthError("invalid_client_metadata", "The registration body is too large")
    try:
        metadata = json.loads(body)
    except ValueError:
        raise OAuthError("invalid_client_metadata", "The registration body is not JSON") from None
    client, response = await server.clients.register(metadata)
    server.record(
        "oauth.register",
        client_id=client.client_id,
        client_name=client.name,
        redirect_uris=list(client.redirect_uris),
        auth_method=client.auth_method,
    )
    return web.json_response(response, status=201, headers={**NO_STORE, **CORS})
