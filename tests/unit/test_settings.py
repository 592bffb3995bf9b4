from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway import cli
from gateway.config import Settings, describe_errors

PY = sys.executable


def test_defaults_bind_loopback() -> None:
    settings = Settings(command=[PY])
    assert (settings.host, settings.port, settings.mcp_path) == ("127.0.0.1", 8080, "/mcp")
    assert settings.max_message_bytes == 16 * 1024 * 1024
    assert settings.session_idle_ttl == 1800


def test_sessions_are_bounded_in_time_by_default() -> None:
    """A forgotten open stream holds its child for a day at most; at a cap, another caller's idle
    session gives way after a minute."""
    settings = Settings(command=[PY])
    assert settings.session_max_lifetime == 24 * 3600
    assert settings.session_evict_idle_after == 60


def test_environment_and_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("MCP_GATEWAY_PORT=9000\nMCP_GATEWAY_MAX_SESSIONS=3\n")
    monkeypatch.setenv("MCP_GATEWAY_COMMAND", f"{PY} -m some_server --flag 'two words'")
    monkeypatch.setenv("MCP_GATEWAY_PORT", "9001")  # the environment beats .env
    monkeypatch.setenv("MCP_GATEWAY_ALLOWED_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("MCP_GATEWAY_CHILD_ENV", '{"API_KEY": "s3cret"}')
    settings = Settings()
    assert settings.command == [PY, "-m", "some_server", "--flag", "two words"]
    assert (settings.port, settings.max_sessions) == (9001, 3)
    assert settings.allowed_origins == ["https://a.example", "https://b.example"]
    assert settings.child_environment()["API_KEY"] == "s3cret"


def test_command_as_json_array(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_GATEWAY_COMMAND", json.dumps([PY, "a b"]))
    assert Settings().command == [PY, "a b"]


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(
            command=["no-such-program-anywhere"],
            port=70000,
            mcp_path="mcp/",
            host="0.0.0.0",  # noqa: S104 - the point of the test
            max_message_bytes=10,
            allowed_origins=["example.com"],
        )
    problems = "\n".join(describe_errors(caught.value))
    for field in (
        "port",
        "mcp_path",
        "command",
        "max_message_bytes",
        "allowed_origins",
        "allow_remote_unauthenticated",
    ):
        assert f"{field}:" in problems


def test_non_loopback_bind_needs_explicit_consent() -> None:
    with pytest.raises(ValidationError, match="not loopback"):
        Settings(command=[PY], host="0.0.0.0")  # noqa: S104
    assert Settings(command=[PY], host="::1").host == "::1"
    Settings(command=[PY], host="0.0.0.0", allow_remote_unauthenticated=True)  # noqa: S104


def test_child_environment_is_allow_list_plus_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "leak")
    monkeypatch.setenv("HOME", "/home/x")
    env = Settings(command=[PY], child_env={"EXTRA": "1"}).child_environment()
    assert env["HOME"] == "/home/x"
    assert env["EXTRA"] == "1"
    assert "AWS_SECRET_ACCESS_KEY" not in env


def test_cli_check_prints_effective_configuration_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        ["check", "--port", "9100", "--child-env", "TOKEN=abc", "--allowed-origins", "https://x.example", "--", PY]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["port"] == 9100
    assert printed["command"] == [PY]
    assert printed["allowed_origins"] == ["https://x.example"]
    assert printed["child_env"] == {"TOKEN": "**********"}


def test_check_masks_every_secret(capsys: pytest.CaptureFixture[str]) -> None:
    secrets = {"client-secret-1", "startup-token-2", "plugin-key-3", "redis-password-4"}
    env = {
        "MCP_GATEWAY_RATELIMIT_STORAGE": "async+redis://limiter:redis-password-4@redis.internal:6379/0",
        "MCP_GATEWAY_AUTH": "introspection",
        "MCP_GATEWAY_INTROSPECTION_URL": "https://auth.example/introspect",
        "MCP_GATEWAY_INTROSPECTION_CLIENT_ID": "gw",
        "MCP_GATEWAY_INTROSPECTION_CLIENT_SECRET": "client-secret-1",
        "MCP_GATEWAY_STARTUP_TOKEN": "startup-token-2",
        "MCP_GATEWAY_PLUGIN_OPTIONS": '{"api_key": "plugin-key-3"}',
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        assert cli.main(["check", "--", PY]) == 0
    printed = capsys.readouterr().out
    assert not any(secret in printed for secret in secrets)
    assert json.loads(printed)["plugin_options"] == {"api_key": "**********"}
    assert json.loads(printed)["ratelimit_storage"] == "async+redis://limiter:**********@redis.internal:6379/0"


def test_cli_check_reports_problems_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "--port", "x", "--mcp-path", "/health"]) == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert "port:" in err
    assert "mcp_path:" in err
    assert "command:" in err


DIGEST = "a" * 64
CI_TOKEN = {"principal": "ci", "sha256": DIGEST, "scopes": ["tools"]}
BOT_TOKEN = {"principal": "bot", "sha256": "b" * 64, "scopes": []}
AS_METADATA = {"issuer": "https://auth.example", "token_endpoint": "https://auth.example/token"}
MASKED = "**********"


@pytest.mark.parametrize(
    ("flags", "setting", "printed"),
    [
        (["--static-tokens", json.dumps([CI_TOKEN, BOT_TOKEN])], "static_tokens", [CI_TOKEN, BOT_TOKEN]),
        (
            ["--static-tokens", json.dumps(CI_TOKEN), "--static-tokens", json.dumps(BOT_TOKEN)],
            "static_tokens",
            [CI_TOKEN, BOT_TOKEN],
        ),
        (
            ["--static-tokens", json.dumps([CI_TOKEN]), "--static-tokens", json.dumps(BOT_TOKEN)],
            "static_tokens",
            [CI_TOKEN, BOT_TOKEN],
        ),
        (
            ["--plugin-options", '{"api_key": "k-1", "retries": 3}'],
            "plugin_options",
            {"api_key": MASKED, "retries": MASKED},
        ),
        (
            ["--plugin-options", "api_key=k-1", "--plugin-options", '{"retries": 3}'],
            "plugin_options",
            {"api_key": MASKED, "retries": MASKED},
        ),
        (["--authorization-server-metadata", json.dumps(AS_METADATA)], "authorization_server_metadata", AS_METADATA),
        (["--child-env", '{"API_KEY": "s3cret", "MODE": "x=y"}'], "child_env", {"API_KEY": MASKED, "MODE": MASKED}),
        (
            ["--child-env", "API_KEY=s3cret", "--child-env", '{"MODE": "fast"}'],
            "child_env",
            {"API_KEY": MASKED, "MODE": MASKED},
        ),
        # Claims in the environment of children that share one user: a risk `check` refuses unless accepted.
        (
            ["--child-env-claims", '{"GITHUB_LOGIN": "login"}', "--allow-shared-uid-children"],
            "child_env_claims",
            {"GITHUB_LOGIN": "login"},
        ),
        (
            ["--allowed-origins", '["https://a.example", "https://b.example"]'],
            "allowed_origins",
            ["https://a.example", "https://b.example"],
        ),
        (
            ["--allowed-origins", "https://a.example,https://b.example"],
            "allowed_origins",
            ["https://a.example", "https://b.example"],
        ),
        (
            ["--allowed-origins", "https://a.example", "--allowed-origins", "https://b.example"],
            "allowed_origins",
            ["https://a.example", "https://b.example"],
        ),
    ],
    ids=[
        "tokens-array",
        "tokens-one-object-per-flag",
        "tokens-mixed",
        "plugin-options-json",
        "plugin-options-mixed",
        "as-metadata-json",
        "child-env-json",
        "child-env-mixed",
        "claims-json",
        "list-json-array",
        "list-commas",
        "list-repeated",
    ],
)
def test_flags_take_what_their_environment_variables_take(
    capsys: pytest.CaptureFixture[str], flags: list[str], setting: str, printed: object
) -> None:
    assert cli.main(["check", *flags, "--", PY]) == 0
    assert json.loads(capsys.readouterr().out)[setting] == printed


def test_unreadable_flags_are_reported_with_every_other_problem(capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--static-tokens", "{not json", "--child-env", "NO_EQUALS_SIGN", "--static-tokens", "42", "--port", "x"]
    assert cli.main(["check", *flags, "--", PY]) == cli.EXIT_CONFIG
    problems = capsys.readouterr().err.splitlines()[1:]
    assert [line.strip().split(":")[0] for line in problems] == ["child_env", "static_tokens", "port"]
    assert "'NO_EQUALS_SIGN' is neither KEY=VALUE nor a JSON object" in problems[0]


def test_static_auth_needs_tokens(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="needs static_tokens"):
        Settings(command=[PY], auth="static")
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps([{"principal": "ci", "sha256": DIGEST, "scopes": ["tools"]}]))
    settings = Settings(command=[PY], auth="static", static_tokens_file=tokens)
    assert [(t.principal, t.scopes) for t in settings.all_static_tokens()] == [("ci", ["tools"])]


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"static_tokens": [{"principal": "x", "sha256": "nothex"}]}, "static_tokens"),
        ({"static_tokens": [{"principal": "", "sha256": DIGEST}]}, "static_tokens"),
        ({"static_tokens_file": "/nonexistent/tokens.json"}, "static_tokens_file"),
        ({"public_url": "https://mcp.example.com/prefix"}, "public_url"),
        ({"host": "0.0.0.0"}, "auth"),  # noqa: S104 - a wildcard bind needs a public URL
        ({"authorization_servers": ["auth.example.com"]}, "authorization_servers"),
    ],
    ids=["digest", "principal", "file", "url-path", "wildcard-no-url", "issuer"],
)
def test_auth_configuration_problems(overrides: dict[str, Any], problem: str) -> None:
    values: dict[str, object] = {
        "command": [PY],
        "auth": "static",
        "static_tokens": [{"principal": "a", "sha256": DIGEST}],
    }
    with pytest.raises(ValidationError) as caught:
        Settings(**{**values, **overrides})
    assert any(line.startswith(f"{problem}") for line in describe_errors(caught.value))


STATIC = {"auth": "static", "static_tokens": [{"principal": "a", "sha256": DIGEST}]}
WILDCARD = "0.0.0.0"  # noqa: S104 - a bind the rules are about


@pytest.mark.parametrize(
    ("values", "settings"),
    [
        ({"auth": "static"}, ["static_tokens"]),
        ({"auth": "jwt"}, ["token_issuer", "token_audience", "jwt_public_keys"]),
        (
            {"auth": "introspection", "introspection_url": "https://auth.example/introspect"},
            ["introspection_client_id", "introspection_client_secret"],
        ),
        ({"auth": "chain", "auth_chain": "whoami,plugin"}, ["whoami_url", "plugin"]),
        (
            {"startup_token": "t", "child_identity": True, "tool_scope_write": "w"},
            ["startup_token", "child_identity", "tool_scope_write"],
        ),
        ({"metrics_host": WILDCARD, "metrics_port": 9100}, ["metrics_port"]),
        ({**STATIC, "host": WILDCARD}, ["auth"]),
        # A setting that failed its own check is not read as unset: its problem alone is reported.
        ({**STATIC, "host": WILDCARD, "public_url": "ftp://x"}, ["public_url"]),
        ({**STATIC, "host": WILDCARD, "public_url": "https://x.example/prefix"}, ["public_url"]),
        ({"auth": "static", "static_tokens_file": "/nonexistent/tokens.json"}, ["static_tokens_file"]),
        ({"auth": "static", "static_tokens": [{"principal": "x", "sha256": "nothex"}]}, ["static_tokens.0.sha256"]),
        ({"auth": "bogus", "host": WILDCARD}, ["auth"]),
        ({"auth": "jwt", "token_env": "1bad"}, ["token_issuer", "token_audience", "jwt_public_keys", "token_env"]),
        ({"tool_scope_write": "two words"}, ["tool_scope_write"]),
    ],
    ids=[
        "static",
        "jwt",
        "introspection",
        "chain",
        "need-auth",
        "metrics",
        "wildcard",
        "wildcard-bad-url",
        "wildcard-url-path",
        "bad-tokens-file",
        "bad-token",
        "bad-auth",
        "bad-token-env",
        "bad-scope",
    ],
)
def test_each_problem_between_settings_is_filed_once_under_its_setting(
    values: dict[str, Any], settings: list[str]
) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(command=[PY], **values)
    assert [line.split(":")[0] for line in describe_errors(caught.value)] == settings


def test_problems_of_both_kinds_come_together_in_the_order_of_the_settings() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(command=[PY], auth="jwt", token_issuer="https://idp.example", port="x", jwt_algorithms="HS256")
    errors = caught.value.errors()
    assert [(item["loc"], item["type"]) for item in errors] == [
        (("port",), "int_parsing"),
        (("token_audience",), "value_error"),
        (("jwt_public_keys",), "value_error"),
        (("jwt_algorithms",), "value_error"),
    ]
    # A setting's own problem keeps its words and its type among the others.
    assert errors[0]["msg"] == "Input should be a valid integer, unable to parse string as an integer"
    assert errors[1]["msg"] == "Value error, the jwt verifier requires token_audience"


def test_rate_limits_read_as_values() -> None:
    settings = Settings(command=[PY], ratelimit_spawn="5/second;100/minute", ratelimit_requests_ip="off")
    assert [str(item) for item in settings.rate_limit("spawn")] == ["5 per 1 second", "100 per 1 minute"]
    assert settings.rate_limit("requests_ip") == []
    assert settings.ratelimit_shared_storage is None
    assert Settings(command=[PY], ratelimit_storage="async+memory://").ratelimit_shared_storage is None
    shared = "async+redis://redis.internal:6379/0"
    assert Settings(command=[PY], ratelimit_storage=shared).ratelimit_shared_storage == shared


def test_authentication_allows_a_remote_bind() -> None:
    tokens = [{"principal": "a", "sha256": DIGEST}]
    settings = Settings(
        command=[PY],
        host="0.0.0.0",  # noqa: S104 - the point of the test
        auth="static",
        static_tokens=tokens,
        public_url="https://x.example",
    )
    assert settings.resource_url == "https://x.example/mcp"
    assert settings.resource_metadata_url == "https://x.example/.well-known/oauth-protected-resource/mcp"


def test_hash_token_reads_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    assert cli.main(["hash-token"]) == 0
    assert capsys.readouterr().out.strip() == hashlib.sha256(b"s3cret").hexdigest()


def test_a_relative_child_cwd_is_made_absolute(tmp_path: Path) -> None:
    """A child may start in a view of its own (namespaces) where a relative path means nothing."""
    (tmp_path / "work").mkdir()
    assert Settings(command=[PY], child_cwd="work").child_cwd == tmp_path / "work"  # the tests run in tmp_path
