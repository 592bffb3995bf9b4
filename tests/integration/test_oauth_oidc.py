"""Signing in with an upstream OpenID provider (a fake one, served on loopback): the browser steps
from the sign-in page to the provider and back, consent, a gateway token and an MCP call as the
provider's user; then every refusal — the callback's state (wrong, replayed, from another browser),
the ID token (nonce, audience, issuer, expiry, age, signature), the allow-list, a provider that
refuses, fails, answers too much or too late — each an error page, audited, and startup refused for
a provider whose discovery document names another issuer."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from pytest_aiohttp import AiohttpServer

from gateway import create_app
from gateway.auth import AuthStartupError
from gateway.auth.identity import ASSERTION_ENV, PRINCIPAL_ENV
from gateway.auth.static import digest_of
from gateway.oauth import oidc as oidc_module
from tests.support.oauth import (
    REDIRECT_URI,
    SERVICE_TOKEN,
    Browser,
    Gateway,
    GatewayFactory,
    Step,
    authorize_url,
    forms_of,
    oauth_settings,
    pkce,
)
from tests.support.oidc_provider import SUBJECT, FakeProvider


@pytest.fixture
async def provider(aiohttp_server: AiohttpServer) -> FakeProvider:
    fake = FakeProvider()
    await fake.start(aiohttp_server)
    return fake


def oidc_settings(provider: FakeProvider, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "oauth_signin_methods": "token,oidc",
        "oauth_oidc_issuer": provider.issuer,
        "oauth_oidc_name": "Example ID",
        "oauth_oidc_client_id": provider.client_id,
        "oauth_oidc_client_secret": provider.client_secret,
        "oauth_oidc_allowed_domains": "example.com",
    }
    return {**values, **overrides}


@dataclass
class Setup:
    """A fake provider, and gateways signing users in with it that audit to one file."""

    provider: FakeProvider
    audit_log: Path
    start_gateway: GatewayFactory

    async def gateway(self, **overrides: Any) -> Gateway:
        return await self.start_gateway(audit_log=str(self.audit_log), **oidc_settings(self.provider, **overrides))

    def audit(self, event: str) -> list[dict[str, Any]]:
        lines = (json.loads(text) for text in self.audit_log.read_text().splitlines())
        return [line for line in lines if line["event"] == event]


@pytest.fixture
def oidc(oauth_gateway: GatewayFactory, provider: FakeProvider, tmp_path: Path) -> Setup:
    return Setup(provider, tmp_path / "audit.log", oauth_gateway)


async def _to_provider(gw: Gateway, client_id: str, challenge: str) -> tuple[Step, Step]:
    """(sign-in page, the gateway's redirect to the provider) after choosing the provider."""
    signin = await gw.browser.get(authorize_url(gw.base, client_id, challenge))
    assert signin.status == 200, signin.text
    [form] = [form for form in forms_of(signin.text) if form.fields.get("method") == "oidc"]
    return signin, await gw.browser.submit(signin, form)


async def _back_from_provider(gw: Gateway, client_id: str) -> tuple[str, Step]:
    """(the callback URL the provider sent the browser to, the gateway's answer to it)."""
    _, challenge = pkce()
    _, leaving = await _to_provider(gw, client_id, challenge)
    assert leaving.status == 302, leaving.text
    at_provider = await gw.browser.get(leaving.location)
    assert at_provider.status == 302, at_provider.text
    return at_provider.location, await gw.browser.get(at_provider.location)


def _error_page(step: Step, status: int, code: str) -> None:
    assert step.status == status, step.text
    assert step.headers["Content-Type"].startswith("text/html")
    assert f"<code>{code}</code>" in step.text
    assert "Location" not in step.headers


async def test_sign_in_with_the_provider_through_consent_to_an_mcp_call(oidc: Setup) -> None:
    gw = await oidc.gateway(child_identity=True, allow_shared_uid_children=True)
    client = await gw.register()
    verifier, challenge = pkce()
    signin, leaving = await _to_provider(gw, client["client_id"], challenge)
    # The page offers both methods, without script; its CSP lets the form go on to the oidc.provider.
    assert "Sign in with Example ID" in signin.text
    assert 'name="token"' in signin.text
    assert oidc.provider.issuer in signin.headers["Content-Security-Policy"]

    assert leaving.status == 302
    sent = {key: values[0] for key, values in parse_qs(urlsplit(leaving.location).query).items()}
    assert leaving.location.startswith(oidc.provider.issuer + "/authorize?")
    assert sent["redirect_uri"] == gw.base + "/oauth/oidc/callback"
    assert sent["scope"] == "openid email profile"
    assert sent["code_challenge_method"] == "S256"
    assert len(sent["state"]) >= 43
    assert len(sent["nonce"]) >= 43

    at_provider = await gw.browser.get(leaving.location)
    consent = await gw.browser.get(at_provider.location)
    assert consent.status == 200, consent.text
    assert "alice@example.com" in consent.text  # named by the verified email
    [exchange] = oidc.provider.token_requests
    assert exchange["authorization"].startswith("Basic ")  # client_secret_basic by default
    assert "client_secret" not in exchange["form"]
    done = await gw.browser.submit(consent, button="allow")
    assert done.status == 302
    assert done.location.startswith(REDIRECT_URI)
    status, tokens = await gw.token(
        grant_type="authorization_code",
        code=done.redirect_params["code"],
        redirect_uri=REDIRECT_URI,
        client_id=client["client_id"],
        code_verifier=verifier,
    )
    assert status == 200, tokens

    environment = await gw.child_environment(tokens["access_token"])
    assert environment[PRINCIPAL_ENV] == SUBJECT
    identity = jwt.decode(environment[ASSERTION_ENV], options={"verify_signature": False})
    assert identity["principal_issuer"] == oidc.provider.issuer  # the provider's user, not a token user
    assert "UPSTREAM_TOKEN" not in environment

    [signed_in] = oidc.audit("oauth.signin")
    assert (signed_in["method"], signed_in["principal"], signed_in["issuer"]) == ("oidc", SUBJECT, oidc.provider.issuer)
    [granted] = oidc.audit("oauth.grant")
    assert granted["issuer"] == oidc.provider.issuer
    # Refreshing keeps the provider's user.
    status, renewed = await gw.token(
        grant_type="refresh_token", refresh_token=tokens["refresh_token"], client_id=client["client_id"]
    )
    assert status == 200, renewed
    assert (await gw.child_environment(renewed["access_token"]))[PRINCIPAL_ENV] == SUBJECT


async def test_consent_is_remembered_per_provider_user(oidc: Setup) -> None:
    # A service token whose principal has the very name the provider's user gets here.
    namesake = [{"principal": "alice@example.com", "sha256": digest_of(SERVICE_TOKEN)}]
    gw = await oidc.gateway(oauth_oidc_subject_claim="email", static_tokens=namesake)
    client = await gw.register()
    _, consent = await _back_from_provider(gw, client["client_id"])
    done = await gw.browser.submit(consent, button="allow")
    assert done.status == 302
    # The same person again: straight back to the app.
    _, challenge = pkce()
    again = await gw.browser.get(authorize_url(gw.base, client["client_id"], challenge))
    assert again.status == 302
    assert "code" in again.redirect_params
    # The namesake who pastes a service token is someone else: asked for consent.
    other = Browser()
    try:
        signin = await other.get(authorize_url(gw.base, client["client_id"], challenge))
        [form] = [form for form in forms_of(signin.text) if form.fields.get("method") == "token"]
        asked = await other.submit(signin, form, token=SERVICE_TOKEN)
    finally:
        await other.close()
    assert asked.status == 200
    assert 'value="allow"' in asked.text


async def test_a_public_client_at_the_provider_and_oidc_alone(
    oauth_gateway: GatewayFactory, aiohttp_server: AiohttpServer
) -> None:
    provider = FakeProvider(client_secret=None)
    await provider.start(aiohttp_server)
    gw = await oauth_gateway(
        **oidc_settings(provider, oauth_signin_methods="oidc", oauth_oidc_client_secret=None),
        auth="none",
        static_tokens=[],
    )
    client = await gw.register()
    _, challenge = pkce()
    signin = await gw.browser.get(authorize_url(gw.base, client["client_id"], challenge))
    assert [form.fields["method"] for form in forms_of(signin.text)] == ["oidc"]
    pasted = await gw.browser.submit(signin, method="token", token=SERVICE_TOKEN)
    _error_page(pasted, 400, "invalid_request")
    _, consent = await _back_from_provider(gw, client["client_id"])
    assert consent.status == 200, consent.text
    [exchange] = provider.token_requests
    assert exchange["authorization"] is None
    assert exchange["form"]["client_id"] == provider.client_id
    assert (await gw.mcp_status(SERVICE_TOKEN))[0] == 401  # no verifier: only this server's tokens


async def test_the_client_secret_may_be_posted(oidc: Setup) -> None:
    gw = await oidc.gateway(oauth_oidc_client_auth="client_secret_post")
    client = await gw.register()
    _, consent = await _back_from_provider(gw, client["client_id"])
    assert consent.status == 200, consent.text
    [exchange] = oidc.provider.token_requests
    assert exchange["authorization"] is None
    assert exchange["form"]["client_secret"] == oidc.provider.client_secret


# --- the callback's state --------------------------------------------------------------------------


def _with_query(url: str, **changes: str | None) -> str:
    parts = urlsplit(url)
    query: dict[str, str | None] = {key: values[0] for key, values in parse_qs(parts.query).items()}
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode({k: v for k, v in query.items() if v is not None})))


@pytest.mark.parametrize("case", ["replayed", "wrong-state", "no-state", "other-browser"])
async def test_a_callback_this_browser_did_not_start_is_refused(oidc: Setup, case: str) -> None:
    gw = await oidc.gateway()
    client = await gw.register()
    _, challenge = pkce()
    _, leaving = await _to_provider(gw, client["client_id"], challenge)
    callback = (await gw.browser.get(leaving.location)).location
    if case == "replayed":
        assert (await gw.browser.get(callback)).status == 200
        refused = await gw.browser.get(callback)
    elif case == "other-browser":
        async with gw.http.get(callback, allow_redirects=False) as response:
            refused = Step(response.status, await response.text(), response.headers, callback)
    else:
        refused = await gw.browser.get(_with_query(callback, state="forged" if case == "wrong-state" else None))
    _error_page(refused, 400, "unknown_state")
    assert "expired or was already used" in refused.text
    assert [line["reason"] for line in oidc.audit("oauth.signin_fail")] == ["unknown_state"]
    assert len(oidc.provider.token_requests) == (1 if case == "replayed" else 0)  # never redeemed twice


async def test_an_answer_naming_another_issuer_is_refused(oidc: Setup) -> None:
    gw = await oidc.gateway()
    client = await gw.register()
    _, challenge = pkce()
    _, leaving = await _to_provider(gw, client["client_id"], challenge)
    callback = (await gw.browser.get(leaving.location)).location
    refused = await gw.browser.get(_with_query(callback, iss="https://other-oidc.provider.example.com"))
    _error_page(refused, 400, "wrong_issuer")
    assert oidc.provider.token_requests == []


async def test_a_user_who_cancels_at_the_provider(oidc: Setup) -> None:
    gw = await oidc.gateway()
    oidc.provider.authorize_error = "access_denied"
    client = await gw.register()
    _, refused = await _back_from_provider(gw, client["client_id"])
    _error_page(refused, 401, "provider_refused")
    [failure] = oidc.audit("oauth.signin_fail")
    assert failure["method"] == "oidc"
    assert failure["client_id"] == client["client_id"]


# --- the ID token -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"nonce": "not-the-nonce-this-sign-in-sent"},
        {"nonce": None},
        {"aud": "another-client"},
        {"aud": ["gateway-at-the-provider", "another-client"]},
        {"azp": "another-client"},
        {"iss": "https://impostor.example.com"},
        {"exp": int(time.time()) - 120},
        {"iat": int(time.time()) - 3600},
        {"iat": None},
        {"sub": None},
        {"signature": "another key"},
    ],
    ids=[
        "wrong-nonce",
        "no-nonce",
        "wrong-audience",
        "extra-audience",
        "other-azp",
        "wrong-issuer",
        "expired",
        "too-old",
        "no-iat",
        "no-sub",
        "bad-signature",
    ],
)
async def test_an_id_token_that_is_not_valid_is_refused(oidc: Setup, changes: dict[str, Any]) -> None:
    gw = await oidc.gateway()
    if "signature" in changes:
        oidc.provider.sign_with = ec.generate_private_key(ec.SECP256R1())
    else:
        oidc.provider.id_token_changes = changes
    client = await gw.register()
    _, refused = await _back_from_provider(gw, client["client_id"])
    _error_page(refused, 401, "invalid_id_token")
    [failure] = oidc.audit("oauth.signin_fail")
    assert failure["reason"] == "invalid_id_token"
    assert oidc.audit("oauth.signin") == []
    # Nobody is signed in: the next request asks for a sign-in again.
    _, challenge = pkce()
    signin = await gw.browser.get(authorize_url(gw.base, client["client_id"], challenge))
    assert "Sign in with" in signin.text


# --- who may sign in --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "settings", "admitted"),
    [
        ({"email": "mallory@evil.example"}, {}, False),
        ({"email": "alice@sub.example.com"}, {}, False),
        ({"email_verified": False}, {}, False),
        ({"email_verified": None}, {}, False),
        ({"email_verified": "true", "email": "Alice@Example.COM"}, {}, True),
        ({"email": "mallory@evil.example"}, {"oauth_oidc_allowed_subjects": SUBJECT}, True),
        ({"email": None}, {"oauth_oidc_allowed_subjects": SUBJECT}, True),
        ({}, {"oauth_oidc_allowed_domains": "other.example", "oauth_oidc_allow_any_account": True}, True),
        ({"email_verified": False}, {"oauth_oidc_subject_claim": "email", "oauth_oidc_allow_any_account": True}, False),
    ],
    ids=[
        "other-domain",
        "subdomain",
        "unverified",
        "verification-unknown",
        "verified-as-string",
        "listed-subject",
        "listed-subject-no-email",
        "any-account",
        "unverified-email-subject",
    ],
)
async def test_the_allow_list_decides_who_signs_in(
    oidc: Setup,
    user: dict[str, Any],
    settings: dict[str, Any],
    admitted: bool,
) -> None:
    gw = await oidc.gateway(**settings)
    for name, value in user.items():
        if value is None:
            oidc.provider.user.pop(name)
        else:
            oidc.provider.user[name] = value
    client = await gw.register()
    _, answer = await _back_from_provider(gw, client["client_id"])
    if admitted:
        assert answer.status == 200, answer.text
        assert 'value="allow"' in answer.text
    else:
        _error_page(answer, 403, "not_allowed")
        assert oidc.audit("oauth.signin_fail")[0]["reason"] == "not_allowed"


async def test_an_email_subject_is_the_verified_email(oidc: Setup) -> None:
    gw = await oidc.gateway(oauth_oidc_subject_claim="email", child_identity=True, allow_shared_uid_children=True)
    oidc.provider.user["email"] = "Alice@Example.com"
    client = await gw.register()
    tokens = await _tokens_through_the_provider(gw, client["client_id"])
    assert (await gw.child_environment(tokens["access_token"]))[PRINCIPAL_ENV] == "alice@example.com"


async def _tokens_through_the_provider(gw: Gateway, client_id: str) -> dict[str, Any]:
    verifier, challenge = pkce()
    _, leaving = await _to_provider(gw, client_id, challenge)
    consent = await gw.browser.get((await gw.browser.get(leaving.location)).location)
    done = await gw.browser.submit(consent, button="allow")
    status, tokens = await gw.token(
        grant_type="authorization_code",
        code=done.redirect_params["code"],
        redirect_uri=REDIRECT_URI,
        client_id=client_id,
        code_verifier=verifier,
    )
    assert status == 200, tokens
    return tokens


# --- a provider that refuses, fails or stalls -------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ({"token_status": 500}, 503, "unavailable"),
        ({"token_status": 400}, 401, "token_refused"),
        ({"client_secret": "another-secret"}, 401, "token_refused"),
        ({"token_padding": oidc_module.MAX_TOKEN_RESPONSE_BYTES}, 503, "unavailable"),
        ({"token_delay": 5.0}, 503, "unavailable"),
    ],
    ids=["failing", "refusing", "wrong-client-secret", "oversized", "too-slow"],
)
async def test_a_token_endpoint_that_fails_gives_an_error_page(
    oidc: Setup,
    monkeypatch: pytest.MonkeyPatch,
    fault: dict[str, Any],
    status: int,
    code: str,
) -> None:
    monkeypatch.setattr(oidc_module, "TOKEN_TIMEOUT", 0.5)
    gw = await oidc.gateway()
    for name, value in fault.items():
        setattr(oidc.provider, name, value)
    client = await gw.register()
    _, answer = await _back_from_provider(gw, client["client_id"])
    _error_page(answer, status, code)  # a slow provider is given up on: no consent page after its delay
    assert oidc.audit("oauth.signin_fail")[0]["reason"] == code


# --- rate limits ------------------------------------------------------------------------------------


async def test_a_rate_limited_callback_is_an_error_page(oidc: Setup) -> None:
    gw = await oidc.gateway(ratelimit_oauth_ip="1/minute")
    for _ in range(2):
        step = await gw.browser.get(gw.base + "/oauth/oidc/callback?state=x&code=y")
    assert step.status == 429
    assert step.headers["Content-Type"].startswith("text/html")
    assert int(step.headers["Retry-After"]) >= 1
    assert "Too many attempts" in step.text


async def test_refused_callbacks_count_as_failed_sign_ins(oidc: Setup) -> None:
    gw = await oidc.gateway(ratelimit_auth_failures_ip="2/minute")
    statuses = []
    for _ in range(3):
        statuses.append((await gw.browser.get(gw.base + "/oauth/oidc/callback?state=forged&code=y")).status)
    assert statuses == [400, 400, 429]


# --- startup ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"issuer": "https://impostor.example.com"}, "names the issuer"),
        ({"token_endpoint": "http://idp.example.com/token"}, "must be https"),
        ({"id_token_signing_alg_values_supported": ["HS256"]}, "no asymmetric algorithm"),
        ({"jwks_uri": None}, "jwks_uri is missing"),
    ],
    ids=["issuer", "http-endpoint", "hmac-only", "no-jwks"],
)
async def test_a_provider_whose_discovery_cannot_be_used_stops_startup(
    provider: FakeProvider, changes: dict[str, Any], message: str
) -> None:
    provider.discovery_changes = changes
    runner = web.AppRunner(create_app(oauth_settings(8080, **oidc_settings(provider))))
    with pytest.raises(AuthStartupError, match=message):
        await runner.setup()
    await runner.cleanup()


async def test_a_provider_that_does_not_answer_stops_startup(provider: FakeProvider) -> None:
    settings = oidc_settings(provider, oauth_oidc_issuer=provider.issuer + "/nowhere")
    runner = web.AppRunner(create_app(oauth_settings(8080, **settings)))
    with pytest.raises(AuthStartupError, match="HTTP 404"):
        await runner.setup()
    await runner.cleanup()
