"""Settings of the built-in authorization server: every problem reported before serving."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from gateway.auth.static import digest_of
from gateway.cli import EXIT_CONFIG, main
from gateway.config import describe_errors
from tests.support.settings import make_settings

KEY = Fernet.generate_key().decode()
STATIC = {"auth": "static", "static_tokens": [{"principal": "a", "sha256": digest_of("t")}]}


def _settings(**overrides: Any) -> Any:
    values = {**STATIC, "oauth_server": True, "public_url": "https://mcp.example.com", "oauth_session_key": KEY}
    return make_settings(**{**values, **overrides})


def test_a_complete_configuration() -> None:
    settings = _settings()
    assert settings.advertised_authorization_servers == ["https://mcp.example.com"]
    assert settings.oauth_storage_url.startswith("sqlite:///")
    assert settings.oauth_storage_url.endswith("/data/oauth.sqlite3")


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"public_url": None}, "needs public_url"),
        ({"public_url": "http://mcp.example.com"}, "must be https"),
        ({"oauth_session_key": None}, "needs oauth_session_key"),
        ({"oauth_session_key": "not-a-key"}, "not a Fernet key"),
        ({"auth": "none", "static_tokens": []}, "static or whoami verifier"),
        ({"authorization_servers": ["https://auth.example.com"]}, "leave authorization_servers empty"),
        ({"oauth_storage": "postgres://db"}, "sqlite:///"),
        ({"oauth_token_to_env": True}, "needs token_env"),
        ({"oauth_access_token_ttl": 30}, "greater than or equal to 300"),
        ({"oauth_access_token_ttl": 7200}, "less than or equal to 3600"),
        ({"oauth_signin_methods": "password"}, "oauth_signin_methods"),
    ],
    ids=[
        "no-url",
        "http",
        "no-key",
        "bad-key",
        "no-verifier",
        "external-as",
        "storage",
        "to-env",
        "short",
        "long",
        "m",
    ],
)
def test_configuration_problems(overrides: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        _settings(**overrides)


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        ({"public_url": None}, "public_url"),
        ({"public_url": "http://mcp.example.com"}, "public_url"),
        ({"oauth_session_key": "not-a-key"}, "oauth_session_key"),
        ({"auth": "none", "static_tokens": []}, "auth"),
        ({"authorization_servers": ["https://auth.example.com"]}, "authorization_servers"),
        ({"oauth_storage": "postgres://db"}, "oauth_storage"),
        ({"data_dir": "/nonexistent/data/dir"}, "data_dir"),
        ({"oauth_signin_methods": []}, "oauth_signin_methods"),
        ({"oauth_token_to_env": True}, "oauth_token_to_env"),
        ({"oauth_oidc_issuer": "https://accounts.example.com"}, "oauth_oidc_issuer"),
    ],
    ids=[
        "no-url",
        "http",
        "bad-key",
        "no-verifier",
        "external-as",
        "storage",
        "data-dir",
        "no-method",
        "to-env",
        "oidc",
    ],
)
def test_each_problem_is_filed_under_its_own_setting(overrides: dict[str, Any], setting: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _settings(**overrides)
    assert [item["loc"] for item in caught.value.errors()] == [(setting,)]


BAD_PUBLIC_URL = [
    "public_url: URL scheme should be 'http' or 'https'",
    "auth: oauth_server: token sign-in checks the pasted token with the static or whoami verifier: set auth",
    "oauth_session_key: oauth_server: needs oauth_session_key (generate one with `mcp-gateway oauth-key`)",
]


def test_a_bad_public_url_is_reported_once() -> None:
    """The URL's own problem, not also "needs public_url"; the others under their own settings,
    none under oauth_token_to_env, which nobody set."""
    with pytest.raises(ValidationError) as caught:
        make_settings(oauth_server=True, public_url="ftp://x")
    assert describe_errors(caught.value) == BAD_PUBLIC_URL


def test_check_reports_a_bad_public_url_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--oauth-server", "--public-url", "ftp://x", "--", sys.executable]) == EXIT_CONFIG
    assert capsys.readouterr().err.splitlines() == [
        "mcp-gateway: invalid configuration:",
        *(f"  {line}" for line in BAD_PUBLIC_URL),
    ]


def test_plain_http_is_allowed_on_loopback_only() -> None:
    assert _settings(public_url="http://127.0.0.1:8080").oauth_server


def test_every_problem_at_once() -> None:
    with pytest.raises(ValidationError) as caught:
        _settings(public_url=None, oauth_session_key=None, auth="none", static_tokens=[])
    text = str(caught.value)
    assert "needs public_url" in text
    assert "needs oauth_session_key" in text
    assert "static or whoami" in text


def test_signing_key_files_must_be_p256(tmp_path: Path) -> None:
    good = tmp_path / "good.pem"
    good.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    assert _settings(oauth_signing_key_files=[good]).oauth_signing_key_files == [good]
    rsa_key = tmp_path / "rsa.pem"
    rsa_key.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ValidationError, match="not a P-256"):
        _settings(oauth_signing_key_files=[good, rsa_key])


def test_the_mcp_path_cannot_take_the_oauth_prefix() -> None:
    with pytest.raises(ValidationError, match="reserved"):
        make_settings(mcp_path="/oauth/mcp")


def test_oauth_key_command_prints_a_fernet_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["oauth-key"]) == 0
    Fernet(capsys.readouterr().out.strip())


OIDC = {
    "oauth_signin_methods": "oidc",
    "oauth_oidc_issuer": "https://accounts.example.com",
    "oauth_oidc_client_id": "gateway",
    "oauth_oidc_allowed_domains": "example.com",
}


def test_an_oidc_configuration() -> None:
    settings = _settings(**OIDC, auth="none", static_tokens=[], oauth_oidc_scopes="openid email")
    assert settings.oauth_signin_methods == ["oidc"]
    assert settings.oauth_oidc_scopes == ["openid", "email"]
    assert settings.oauth_oidc_allowed_domains == ["example.com"]
    assert settings.oauth_oidc_subject_claim == "sub"
    both = _settings(**{**OIDC, "oauth_signin_methods": "token,oidc"}, oauth_oidc_client_secret="provider-secret-xyz")
    assert both.oauth_signin_methods == ["token", "oidc"]
    assert "provider-secret-xyz" not in both.model_dump_json()


def test_oidc_sign_in_protects_a_public_bind_without_a_verifier() -> None:
    wildcard = "0.0.0.0"  # noqa: S104 - the point of the test
    assert _settings(**OIDC, auth="none", static_tokens=[], host=wildcard).host == wildcard


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"oauth_oidc_issuer": None}, "needs oauth_oidc_issuer"),
        ({"oauth_oidc_issuer": "http://accounts.example.com"}, "must be https"),
        ({"oauth_oidc_issuer": "accounts.example.com"}, "absolute https URL"),
        ({"oauth_oidc_issuer": "https://accounts.example.com/?tenant=1"}, "no query"),
        ({"oauth_oidc_client_id": None}, "needs oauth_oidc_client_id"),
        ({"oauth_oidc_scopes": "email profile"}, "must include openid"),
        ({"oauth_oidc_scopes": "openid profile"}, "need the email scope"),
        ({"oauth_oidc_allowed_domains": "@example.com"}, "domains like example.com"),
        ({"oauth_oidc_allowed_domains": []}, "needs an allow-list"),
        ({"oauth_oidc_subject_claim": "name"}, "oauth_oidc_subject_claim"),
        ({"oauth_signin_methods": "token"}, "oidc is not in oauth_signin_methods"),
    ],
    ids=[
        "no-issuer",
        "http-issuer",
        "relative-issuer",
        "issuer-query",
        "no-client",
        "no-openid",
        "no-email-scope",
        "bad-domain",
        "no-allow-list",
        "claim",
        "not-offered",
    ],
)
def test_oidc_configuration_problems(overrides: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        _settings(**{**OIDC, **overrides})


@pytest.mark.parametrize(
    "given",
    ["openid email", "openid,email", '["openid", "email"]', ["openid email"], ["openid", "email"]],
    ids=["spaces", "commas", "json", "one-flag", "repeated-flag"],
)
def test_oidc_scopes_are_read_in_every_spelling(given: Any) -> None:
    assert _settings(**OIDC, oauth_oidc_scopes=given).oauth_oidc_scopes == ["openid", "email"]


def test_an_allow_list_of_subjects_or_every_account_will_do() -> None:
    subjects = {**OIDC, "oauth_oidc_allowed_domains": [], "oauth_oidc_allowed_subjects": "1234,5678"}
    assert _settings(**subjects).oauth_oidc_allowed_subjects == ["1234", "5678"]
    anyone = {**OIDC, "oauth_oidc_allowed_domains": [], "oauth_oidc_allow_any_account": True}
    assert _settings(**anyone).oauth_oidc_allow_any_account


def test_a_loopback_issuer_may_be_plain_http() -> None:
    assert (
        _settings(**{**OIDC, "oauth_oidc_issuer": "http://127.0.0.1:9000"}).oauth_oidc_issuer == "http://127.0.0.1:9000"
    )


def test_every_oidc_problem_at_once() -> None:
    with pytest.raises(ValidationError) as caught:
        _settings(
            oauth_signin_methods="oidc",
            oauth_oidc_issuer="http://idp.example.com",
            oauth_oidc_scopes="profile",
            oauth_session_key=None,
        )
    text = str(caught.value)
    for problem in ("needs oauth_session_key", "must be https", "oauth_oidc_client_id", "openid", "allow-list"):
        assert problem in text
