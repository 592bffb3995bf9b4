"""The built-in authorization server over real HTTP: metadata, registration, the browser steps
(sign-in, consent, CSRF), codes, tokens, refresh rotation, revocation, and the MCP endpoint
accepting what it issued. Negative cases are tables where they share a shape."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from pytest_aiohttp import AiohttpClient, AiohttpServer

from gateway import create_app
from gateway.oauth.clients import MAX_CIMD_BYTES, PublicResolver
from gateway.oauth.tokens import digest
from tests.support.oauth import REDIRECT_URI, SERVICE_TOKEN, Gateway, authorize_url, oauth_settings, pkce
from tests.support.settings import public_host


async def test_metadata_names_every_endpoint(oauth_gateway: Callable[..., Awaitable[Gateway]]) -> None:
    gw = await oauth_gateway()
    async with gw.http.get(gw.base + "/.well-known/oauth-authorization-server") as response:
        assert response.status == 200
        metadata = await response.json()
    assert metadata["issuer"] == gw.base
    assert metadata["authorization_endpoint"] == gw.base + "/oauth/authorize"
    assert metadata["token_endpoint"] == gw.base + "/oauth/token"
    assert metadata["registration_endpoint"] == gw.base + "/oauth/register"
    assert metadata["revocation_endpoint"] == gw.base + "/oauth/revoke"
    assert metadata["jwks_uri"] == gw.base + "/.well-known/jwks.json"
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["client_id_metadata_document_supported"] is True
    assert metadata["authorization_response_iss_parameter_supported"] is True
    async with gw.http.get(gw.base + "/.well-known/oauth-protected-resource/mcp") as response:
        resource = await response.json()
    assert resource["resource"] == gw.resource
    assert resource["authorization_servers"] == [gw.base]
    async with gw.http.get(gw.base + "/.well-known/jwks.json") as response:
        jwks = await response.json()
    [key] = jwks["keys"]
    assert (key["kty"], key["crv"], key["alg"], key["use"]) == ("EC", "P-256", "ES256", "sig")
    assert "d" not in key


async def test_flow_by_hand_then_refresh_rotation(oauth_gateway: Callable[..., Awaitable[Gateway]]) -> None:
    gw = await oauth_gateway()
    client = await gw.register()
    assert client["token_endpoint_auth_method"] == "none"
    assert "client_secret" not in client
    body = await gw.tokens(client["client_id"])
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert await gw.mcp_status(body["access_token"]) == (200, "")
    # Refresh: a new pair; the old refresh token is spent.
    status, renewed = await gw.token(
        grant_type="refresh_token", refresh_token=body["refresh_token"], client_id=client["client_id"]
    )
    assert status == 200, renewed
    assert renewed["refresh_token"] != body["refresh_token"]
    assert await gw.mcp_status(renewed["access_token"]) == (200, "")


# --- codes ----------------------------------------------------------------------------------------


async def _code(gw: Gateway, **authorize: str | None) -> tuple[str, str, str]:
    """(client_id, code, verifier) after a full browser pass."""
    client = await gw.register()
    verifier, challenge = pkce()
    url = authorize_url(gw.base, client["client_id"], challenge, **authorize)
    redirect = await gw.browser.sign_in_and_consent(url)
    return client["client_id"], redirect["code"], verifier


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"code_verifier": "x" * 43}, "invalid_grant"),
        ({"code_verifier": None}, "invalid_grant"),
        ({"redirect_uri": REDIRECT_URI + "/"}, "invalid_grant"),
        ({"redirect_uri": None}, "invalid_grant"),
        ({"resource": "https://other.example.com/mcp"}, "invalid_target"),
        ({"client_id": "mcpgw_000000000000000000000000"}, "invalid_client"),
        ({"grant_type": "password"}, "unsupported_grant_type"),
    ],
    ids=["wrong-verifier", "no-verifier", "other-redirect", "no-redirect", "other-resource", "other-client", "grant"],
)
async def test_code_redemption_checks(
    oauth_gateway: Callable[..., Awaitable[Gateway]], change: dict[str, str | None], error: str
) -> None:
    gw = await oauth_gateway()
    client_id, code, verifier = await _code(gw)
    form: dict[str, str | None] = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT_URI,
        "client_id": client_id,
        "code_verifier": verifier,
        "resource": gw.resource,
    }
    form.update(change)
    status, body = await gw.token(**{k: v for k, v in form.items() if v is not None})
    assert (status, body["error"]) == (401 if error == "invalid_client" else 400, error)


async def test_a_code_is_single_use_and_reuse_revokes_its_tokens(
    oauth_gateway: Callable[..., Awaitable[Gateway]], tmp_path: Any
) -> None:
    audit = tmp_path / "audit.log"
    gw = await oauth_gateway(audit_log=str(audit))
    client_id, code, verifier = await _code(gw)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT_URI,
        "client_id": client_id,
        "code_verifier": verifier,
    }
    status, first = await gw.token(**form)
    assert status == 200
    assert (await gw.mcp_status(first["access_token"]))[0] == 200
    status, second = await gw.token(**form)
    assert (status, second["error"]) == (400, "invalid_grant")
    status, challenge = await gw.mcp_status(first["access_token"])
    assert status == 401
    assert 'error="invalid_token"' in challenge
    status, refreshed = await gw.token(
        grant_type="refresh_token", refresh_token=first["refresh_token"], client_id=client_id
    )
    assert (status, refreshed["error"]) == (400, "invalid_grant")
    events = [json.loads(line)["event"] for line in audit.read_text().splitlines()]
    assert "oauth.reuse" in events


async def test_an_expired_code_is_refused(oauth_gateway: Callable[..., Awaitable[Gateway]]) -> None:
    gw = await oauth_gateway()
    client_id, code, verifier = await _code(gw)
    await gw.oauth.store.delete("code", digest(code))  # what expiry does
    status, body = await gw.token(
        grant_type="authorization_code",
        code=code,
        redirect_uri=REDIRECT_URI,
        client_id=client_id,
        code_verifier=verifier,
    )
    assert (status, body["error"]) == (400, "invalid_grant")


# --- the authorization request --------------------------------------------------------------------


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "http://localhost:3030/callback/",
        "http://localhost:3030/other",
        "http://evil.example.com:3030/callback",
        "http://localhost:3030/callback?x=1",
        None,
    ],
    ids=["trailing-slash", "other-path", "other-host", "extra-query", "missing"],
)
async def test_an_unregistered_redirect_uri_gets_a_page_not_a_redirect(
    oauth_gateway: Callable[..., Awaitable[Gateway]], redirect_uri: str | None
) -> None:
    gw = await oauth_gateway()
    client = await gw.register()
    _, challenge = pkce()
    step = await gw.browser.get(authorize_url(gw.base, client["client_id"], challenge, redirect_uri=redirect_uri))
    assert step.status == 400
    assert "Location" not in step.headers
    assert "redirect_uri" in step.text
    assert step.headers["X-Frame-Options"] == "DENY"


async def test_a_loopback_redirect_may_use_any_port(oauth_gateway: Callable[..., Awaitable[Gateway]]) -> None:
    gw = await oauth_gateway()
    client = await gw.register(redirect_uris=["http://127.0.0.1/callback"])
    _, challenge = pkce()
    url = authorize_url(gw.base, client["client_id"], challenge, redirect_uri="http://127.0.0.1:49152/callback")
    assert (await gw.browser.get(url)).status == 200


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"resource": "https://other.example.com/mcp"}, "invalid_target"),
        ({"resource": None}, "invalid_target"),
        ({"state": None}, "invalid_request"),
        ({"code_challenge": None}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
    ],
    ids=["other-resource", "no-resource", "no-state", "no-pkce", "plain-pkce", "implicit"],
)
async def test_authorization_errors_go_back_to_the_client(
    oauth_gateway: Callable[..., Awaitable[Gateway]], change: dict[str, str | None], error: str
) -> None:
    gw = await oauth_gateway()
    client = await gw.register()
    _, challenge = pkce()
    url = authorize_url(gw.base, client["client_id"], challenge, **change)
    step = await gw.browser.get(url)
    assert step.status == 302
    assert step.location.startswith(REDIRECT_URI + "?")
    params = step.redirect_params
    assert params["error"] == error
    assert params["iss"] == gw.base
    sent_state = parse_qs(urlsplit(url).query).get("state")
    assert params.get("state") == (sent_state[0] if sent_state else None)


async def test_unknown_client_gets_a_page(oauth_gateway: Callable[..., Awaitable[Gateway]]) -> None:
    gw = await oauth_gateway()
    _, challenge = pkce()
    step = await gw.browser.get(authorize_url(gw.base, "mcpgw_000000000000000000000000", challenge))
    assert step.status == 401
    assert "Location" not in step.headers


# --- the browser pages ----------------------------------------------------------------------------


@pytest.mark.parametrize("csrf", [None, "forged"], ids=["missing", "wrong"])
@pytest.mark.parametrize("page", ["signin", "consent"])
async def test_forms_need_their_csrf_token(
    oauth_gateway: Callable[..., Awaitable[Gateway]], csrf: str | None, page: str
) -> None:
    gw = await oauth_gateway()
    client = await gw.register()
    _, challenge = pkce()
    signin = await gw.browser.get(authorize_url(gw.base, client["client_id"], challenge))
    step = signin
    if page == "consent":
        step = await gw.browser.submit(signin, token=SERVICE_TOKEN)
        assert step.status == 200
    form = step.form
    if csrf is None:
        del form.fields["csrf"]
    else:
        form.fields["csrf"] = csrf
    extra = {"token": SERVICE_TOKEN} if page == "signin" else {}
    refused = await gw.browser.submit(step, form, button="allow" if page == "consent" else None, **extra)
    assert refused.status == 403
    assert "Location" not in refused.headers


async def test_a_wrong_service_token_is_refused_counted_and_audited(
    oauth_gateway: Callable[..., Awaitable[Gateway]], tmp_path: Any
) -> None:
    audit = tmp_path / "audit.log"
    gw = await oauth_gateway(audit_log=str(audit), ratelimit_auth_failures_ip="2/minute")
    client = await gw.register()
    _, challenge = pkce()
    signin = await gw.browser.get(authorize_url(gw.base, client["client_id"], challenge))
    statuses = []
    for _ in range(3):
        step = await gw.browser.submit(signin, token="not-a-token-of-this-service")
        statuses.append(step.status)
    assert statuses == [401, 401, 429]
    assert step.headers["Content-Type"].startswith("text/html")  # a page, not a JSON-RPC body
    assert int(step.headers["Retry-After"]) >= 1
    assert "Too many attempts" in step.text
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    failures = [line for line in lines if line["event"] == "oauth.signin_fail"]
    assert len(failures) == 2
    assert "not-a-token" not in audit.read_text()


async def test_consent_is_remembered_per_user_and_client(oauth_gateway: Callable[..., Awaitable[Gateway]]) -> None:
    gw = await oauth_gateway()
    client = await gw.register()
    await gw.tokens(client["client_id"])
    _, challenge = pkce()
    again = await gw.browser.get(authorize_url(gw.base, client["client_id"], challenge))
    assert again.status == 302  # signed in, consent remembered: straight back with a code
    assert "code" in again.redirect_params
    other = await gw.register()
    step = await gw.browser.get(authorize_url(gw.base, other["client_id"], challenge))
    assert step.status == 200
    assert 'value="allow"' in step.text  # another client: asked again


async def test_denying_sends_access_denied(oauth_gateway: Callable[..., Awaitable[Gateway]]) -> None:
    gw = await oauth_gateway()
    client = await gw.register()
    _, challenge = pkce()
    signin = await gw.browser.get(authorize_url(gw.base, client["client_id"], challenge))
    consent = await gw.browser.submit(signin, token=SERVICE_TOKEN)
    denied = await gw.browser.submit(consent, button="deny")
    assert denied.status == 302
    assert denied.redirect_params["error"] == "access_denied"


async def test_pages_carry_strict_headers_and_production_cookie(aiohttp_client: AiohttpClient) -> None:
    settings = oauth_settings(0, public_url="https://mcp.example.com")
    client = await aiohttp_client(create_app(settings), headers=public_host(settings))
    async with client.post(
        "/oauth/register", json={"redirect_uris": [REDIRECT_URI], "client_name": "<script>x</script>"}
    ) as response:
        client_id = (await response.json())["client_id"]
    _, challenge = pkce()
    url = authorize_url("https://mcp.example.com", client_id, challenge).removeprefix("https://mcp.example.com")
    async with client.get(url, allow_redirects=False) as response:
        assert response.status == 200
        text = await response.text()
        cookie = response.headers["Set-Cookie"]
        headers = response.headers
    assert cookie.startswith("__Host-mcp-gateway-oauth=")
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"secure", "httponly", "samesite", "path", "max-age"} <= attributes
    assert "domain" not in attributes
    assert "SameSite=Lax" in cookie
    assert "Path=/;" in cookie or cookie.endswith("Path=/")
    assert headers["X-Frame-Options"] == "DENY"
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "script-src" not in csp  # nothing may run
    assert headers["Cache-Control"] == "no-store"
    assert "<script>" not in text
    assert "&lt;script&gt;" in text


async def test_development_cookie_on_plain_http_loopback(oauth_gateway: Callable[..., Awaitable[Gateway]]) -> None:
    gw = await oauth_gateway()
    client = await gw.register()
    _, challenge = pkce()
    step = await gw.browser.get(authorize_url(gw.base, client["client_id"], challenge))
    cookie = step.headers["Set-Cookie"]
    assert cookie.startswith("mcp-gateway-oauth=")
    assert "Secure" not in cookie
    assert "HttpOnly" in cookie


# --- refresh, revocation, the MCP endpoint --------------------------------------------------------


async def test_refresh_reuse_revokes_the_family(
    oauth_gateway: Callable[..., Awaitable[Gateway]], tmp_path: Any
) -> None:
    audit = tmp_path / "audit.log"
    gw = await oauth_gateway(audit_log=str(audit))
    client = await gw.register()
    first = await gw.tokens(client["client_id"])
    refresh = {"grant_type": "refresh_token", "client_id": client["client_id"]}
    status, second = await gw.token(**refresh, refresh_token=first["refresh_token"])
    assert status == 200
    status, reused = await gw.token(**refresh, refresh_token=first["refresh_token"])
    assert (status, reused["error"]) == (400, "invalid_grant")
    # The whole family is gone: the newest refresh token and its access token too.
    status, third = await gw.token(**refresh, refresh_token=second["refresh_token"])
    assert (status, third["error"]) == (400, "invalid_grant")
    assert (await gw.mcp_status(second["access_token"]))[0] == 401
    assert any(json.loads(line)["event"] == "oauth.reuse" for line in audit.read_text().splitlines())


async def test_a_refresh_token_belongs_to_its_client(oauth_gateway: Callable[..., Awaitable[Gateway]]) -> None:
    gw = await oauth_gateway()
    client = await gw.register()
    other = await gw.register()
    tokens = await gw.tokens(client["client_id"])
    status, body = await gw.token(
        grant_type="refresh_token", refresh_token=tokens["refresh_token"], client_id=other["client_id"]
    )
    assert (status, body["error"]) == (400, "invalid_grant")


@pytest.mark.parametrize("which", ["refresh_token", "access_token"])
async def test_revocation_ends_the_grant(oauth_gateway: Callable[..., Awaitable[Gateway]], which: str) -> None:
    gw = await oauth_gateway()
    client = await gw.register()
    tokens = await gw.tokens(client["client_id"])
    form = {"token": tokens[which], "client_id": client["client_id"]}
    async with gw.http.post(gw.base + "/oauth/revoke", data=form) as response:
        assert response.status == 200
    assert (await gw.mcp_status(tokens["access_token"]))[0] == 401
    status, _ = await gw.token(
        grant_type="refresh_token", refresh_token=tokens["refresh_token"], client_id=client["client_id"]
    )
    assert status == 400
    async with gw.http.post(gw.base + "/oauth/revoke", data={**form, "token": "unknown"}) as response:
        assert response.status == 200  # RFC 7009: an unknown token is not an error


async def test_a_confidential_client_authenticates(oauth_gateway: Callable[..., Awaitable[Gateway]]) -> None:
    gw = await oauth_gateway()
    client = await gw.register(token_endpoint_auth_method="client_secret_basic")
    secret = client["client_secret"]
    verifier, challenge = pkce()
    redirect = await gw.code(client["client_id"], challenge)
    form = {"grant_type": "authorization_code", "code": redirect["code"], "redirect_uri": REDIRECT_URI}
    form["code_verifier"] = verifier
    wrong = {"Authorization": _basic(client["client_id"], "wrong")}
    async with gw.http.post(gw.base + "/oauth/token", data=form, headers=wrong) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    right = {"Authorization": _basic(client["client_id"], secret)}
    async with gw.http.post(gw.base + "/oauth/token", data=form, headers=right) as response:
        assert response.status == 200, await response.text()


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{quote(user, safe='')}:{quote(password, safe='')}".encode()).decode()


async def _resigned(gw: Gateway, access_token: str, **changes: Any) -> str:
    claims = jwt.decode(access_token, options={"verify_signature": False})
    claims.update(changes)
    return gw.oauth.keys.sign(claims)


@pytest.mark.parametrize(
    "changes",
    [
        {"exp": int(time.time()) - 300, "iat": int(time.time()) - 1300},
        {"aud": "https://other.example.com/mcp"},
        {"gid": "no-such-grant"},
    ],
    ids=["expired", "other-audience", "unknown-grant"],
)
async def test_the_mcp_endpoint_refuses_tokens_not_valid_for_it(
    oauth_gateway: Callable[..., Awaitable[Gateway]], changes: dict[str, Any]
) -> None:
    gw = await oauth_gateway()
    client = await gw.register()
    tokens = await gw.tokens(client["client_id"])
    status, challenge = await gw.mcp_status(await _resigned(gw, tokens["access_token"], **changes))
    assert status == 401
    assert 'error="invalid_token"' in challenge
    assert "resource_metadata=" in challenge


async def test_a_token_signed_by_another_key_is_refused(oauth_gateway: Callable[..., Awaitable[Gateway]]) -> None:
    gw = await oauth_gateway()
    client = await gw.register()
    tokens = await gw.tokens(client["client_id"])
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    header = jwt.get_unverified_header(tokens["access_token"])
    forged = jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers=header)
    assert (await gw.mcp_status(forged))[0] == 401


async def test_service_tokens_still_work_beside_oauth(oauth_gateway: Callable[..., Awaitable[Gateway]]) -> None:
    gw = await oauth_gateway()
    assert (await gw.mcp_status(SERVICE_TOKEN))[0] == 200
    assert (await gw.mcp_status("nobody"))[0] == 401


async def test_every_oauth_endpoint_is_rate_limited(oauth_gateway: Callable[..., Awaitable[Gateway]]) -> None:
    gw = await oauth_gateway(ratelimit_oauth_ip="3/minute")
    statuses = []
    for _ in range(4):
        async with gw.http.post(gw.base + "/oauth/token", data={"grant_type": "x"}) as response:
            statuses.append(response.status)
    assert statuses == [401, 401, 401, 429]


@pytest.mark.parametrize(
    ("method", "path", "page"),
    [
        ("GET", "/oauth/authorize", True),
        ("POST", "/oauth/signin", True),
        ("POST", "/oauth/consent", True),
        ("POST", "/oauth/token", False),
        ("POST", "/oauth/register", False),
        ("POST", "/oauth/revoke", False),
    ],
    ids=["authorize", "signin", "consent", "token", "register", "revoke"],
)
async def test_a_rate_limited_page_is_a_page_and_an_endpoint_keeps_json(
    oauth_gateway: Callable[..., Awaitable[Gateway]], method: str, path: str, page: bool
) -> None:
    gw = await oauth_gateway(ratelimit_oauth_ip="1/minute")
    for _ in range(2):
        async with gw.browser.http.request(method, gw.base + path, allow_redirects=False) as response:
            status, headers, text = response.status, response.headers, await response.text()
    assert status == 429
    assert int(headers["Retry-After"]) >= 1
    assert headers["RateLimit-Remaining"] == "0"
    if page:
        assert headers["Content-Type"].startswith("text/html")
        assert "Too many attempts" in text
        assert headers["X-Frame-Options"] == "DENY"
        assert "default-src 'none'" in headers["Content-Security-Policy"]
    else:
        assert headers["Content-Type"].startswith("application/json")
        assert "error" in json.loads(text)


# --- client metadata documents --------------------------------------------------------------------


async def _document_server(aiohttp_server: AiohttpServer, body: Callable[[str], bytes]) -> str:
    app = web.Application()

    async def document(request: web.Request) -> web.Response:
        return web.Response(body=body(str(request.url)), content_type="application/json")

    app.router.add_get("/client.json", document)
    server = await aiohttp_server(app)
    return str(server.make_url("/client.json"))


def _document(url: str, **extra: Any) -> bytes:
    return json.dumps(
        {"client_id": url, "client_name": "Document Client", "redirect_uris": [REDIRECT_URI], **extra}
    ).encode()


async def test_a_client_metadata_document_names_the_client(
    oauth_gateway: Callable[..., Awaitable[Gateway]], aiohttp_server: AiohttpServer
) -> None:
    url = await _document_server(aiohttp_server, _document)
    gw = await oauth_gateway(oauth_cimd_allow_private=True)
    verifier, challenge = pkce()
    signin = await gw.browser.get(authorize_url(gw.base, url, challenge))
    assert signin.status == 200, signin.text
    assert "Document Client" in signin.text
    consent = await gw.browser.submit(signin, token=SERVICE_TOKEN)
    assert url in consent.text
    done = await gw.browser.submit(consent, button="allow")
    status, body = await gw.token(
        grant_type="authorization_code",
        code=done.redirect_params["code"],
        redirect_uri=REDIRECT_URI,
        client_id=url,
        code_verifier=verifier,
    )
    assert status == 200, body
    assert (await gw.mcp_status(body["access_token"]))[0] == 200


@pytest.mark.parametrize(
    "client_id",
    [
        "https://127.0.0.1/client.json",
        "https://localhost/client.json",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/client.json",
        "https://[::ffff:127.0.0.1]/client.json",
        "http://example.com/client.json",
        "https://example.com/",
        "https://example.com/a/../client.json",
        "https://user:pw@example.com/client.json",
    ],
    ids=["loopback", "localhost", "link-local", "ipv6-loopback", "mapped", "http", "no-path", "dots", "userinfo"],
)
async def test_client_metadata_urls_that_are_refused_before_any_fetch(
    oauth_gateway: Callable[..., Awaitable[Gateway]], client_id: str
) -> None:
    gw = await oauth_gateway()
    _, challenge = pkce()
    step = await gw.browser.get(authorize_url(gw.base, client_id, challenge))
    assert step.status == 401
    assert "Location" not in step.headers


async def test_a_host_name_resolving_to_loopback_is_refused() -> None:
    resolver = PublicResolver()
    with pytest.raises(OSError, match="no public address"):
        await resolver.resolve("localhost", 443)
    await resolver.close()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (lambda url: _document(url, padding="x" * MAX_CIMD_BYTES), "larger than"),
        (lambda url: _document("https://elsewhere.example.com/client.json"), "own URL"),
        (lambda url: _document(url, client_secret="s"), "secret"),
        (lambda url: _document(url, redirect_uris=["http://evil.example.com/cb"]), "loopback"),
        (lambda url: b"not json", "not JSON"),
    ],
    ids=["oversized", "other-client-id", "secret", "bad-redirect", "not-json"],
)
async def test_bad_client_metadata_documents_are_refused(
    oauth_gateway: Callable[..., Awaitable[Gateway]],
    aiohttp_server: AiohttpServer,
    body: Callable[[str], bytes],
    reason: str,
) -> None:
    url = await _document_server(aiohttp_server, body)
    gw = await oauth_gateway(oauth_cimd_allow_private=True)
    _, challenge = pkce()
    step = await gw.browser.get(authorize_url(gw.base, url, challenge))
    assert step.status == 401
    assert reason in step.text


# --- what a child learns ------------------------------------------------------------------------


@pytest.mark.parametrize("opted_in", [True, False], ids=["token-to-env", "default"])
async def test_a_child_gets_the_pasted_service_token_only_with_the_opt_in(
    oauth_gateway: Callable[..., Awaitable[Gateway]], opted_in: bool
) -> None:
    gw = await oauth_gateway(token_env="UPSTREAM_TOKEN", oauth_token_to_env=opted_in, allow_shared_uid_children=True)
    client = await gw.register()
    tokens = await gw.tokens(client["client_id"])
    environment = await gw.child_environment(tokens["access_token"])
    assert environment.get("UPSTREAM_TOKEN") == (SERVICE_TOKEN if opted_in else None)
    assert tokens["access_token"] not in json.dumps(environment)  # the gateway's own token never
    stored = json.dumps(await gw.oauth.store.values("family"))
    assert SERVICE_TOKEN not in stored  # encrypted at rest


@pytest.mark.parametrize("endpoint", ["register", "token"])
async def test_a_body_arriving_in_pieces_is_read_whole(aiohttp_client: AiohttpClient, endpoint: str) -> None:
    """A registration or token request whose body reaches the gateway in several pieces (chunked,
    with a pause between them) is read to its end, not cut at the first piece."""
    settings = oauth_settings(0, public_url="https://mcp.example.com")
    client = await aiohttp_client(create_app(settings), headers=public_host(settings))
    if endpoint == "register":
        body = json.dumps({"redirect_uris": [REDIRECT_URI], "client_name": "pieces"}).encode()
        content_type = "application/json"
    else:
        # A form the endpoint refuses only once it has read it all: `code` is at its very end.
        registered = await client.post("/oauth/register", json={"redirect_uris": [REDIRECT_URI]})
        client_id = (await registered.json())["client_id"]
        form = f"grant_type=authorization_code&client_id={client_id}&redirect_uri={quote(REDIRECT_URI)}"
        body = (form + "&code_verifier=" + "v" * 64 + "&code=not-a-code").encode()
        content_type = "application/x-www-form-urlencoded"

    async def in_pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 16):
            yield body[start : start + 16]
            await asyncio.sleep(0.005)

    async with client.post(f"/oauth/{endpoint}", data=in_pieces(), headers={"Content-Type": content_type}) as response:
        answer = await response.json()
    if endpoint == "register":
        assert response.status == 201, answer
        assert answer["client_name"] == "pieces"
    else:  # the whole form was read: the code is judged, not a form cut short before it
        assert answer["error"] == "invalid_grant", answer
