"""`mcp-gateway connect` options: headers, `${VAR}` expansion, the bearer token, every problem at once."""

from __future__ import annotations

import pytest

from gateway import cli
from gateway.client.connect import ConfigError, build_config, parse_header

ENV = {"TOKEN": "s3cret", "TEAM": "blue", "EMPTY": ""}
URL = "https://mcp.example.com/mcp"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("X-Team: blue", ("X-Team", "blue")),
        ("X-Team:blue", ("X-Team", "blue")),
        ("Authorization: Bearer ${TOKEN}", ("Authorization", "Bearer s3cret")),
        ("X-Both: ${TEAM}-${TOKEN}", ("X-Both", "blue-s3cret")),
        ("X-Empty: ${EMPTY}", ("X-Empty", "")),
        ("X-Dollar: $TEAM", ("X-Dollar", "$TEAM")),  # only the braced form is expanded
    ],
    ids=["plain", "no-space", "bearer", "two-vars", "empty-var", "unbraced"],
)
def test_valid_headers(spec: str, expected: tuple[str, str]) -> None:
    assert parse_header(spec, ENV) == expected


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("no colon", "expected 'Name: value'"),
        ("Bad Name: x", "expected 'Name: value'"),
        (": x", "expected 'Name: value'"),
        ("X-A: ${MISSING}", "environment variable MISSING is not set"),
        ("X-A: ${1BAD}", "not a variable reference"),
        ("X-A: a\rb", "CR, LF or NUL"),
        ("X-A: a\nInjected: b", "CR, LF or NUL"),
        ("Mcp-Session-Id: x", "set by the bridge itself"),
        ("accept: x", "set by the bridge itself"),
    ],
    ids=["no-colon", "space-in-name", "no-name", "unknown-var", "bad-var", "cr", "lf", "session", "accept"],
)
def test_invalid_headers(spec: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_header(spec, ENV)


def test_a_newline_from_a_variable_is_refused_too() -> None:
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        parse_header("X-A: ${V}", {"V": "a\r\nInjected: b"})


def test_bearer_token_from_the_environment() -> None:
    config = build_config(URL, ["X-Team: ${TEAM}"], "TOKEN", 4096, ENV)
    assert dict(config.headers) == {"X-Team": "blue", "Authorization": "Bearer s3cret"}
    assert config.token_source == "TOKEN"


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as raised:
        build_config("ftp://nowhere", ["X-A: ${NOPE}", "bad"], "EMPTY", 10, ENV)
    problems = raised.value.problems
    assert len(problems) == 5, problems
    assert any("URL must be" in p for p in problems)
    assert any("NOPE" in p for p in problems)
    assert any("EMPTY is not set or empty" in p for p in problems)
    assert any("--max-message-bytes" in p for p in problems)


def test_bearer_env_and_an_authorization_header_conflict() -> None:
    with pytest.raises(ConfigError, match="mutually exclusive"):
        build_config(URL, ["Authorization: Basic eA=="], "TOKEN", 4096, ENV)


def test_cli_exits_2_naming_the_missing_variable(capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["connect", URL, "--header", "Authorization: Bearer ${SURELY_NOT_SET_ANYWHERE}"])
    assert status == 2
    assert "SURELY_NOT_SET_ANYWHERE is not set" in capsys.readouterr().err
