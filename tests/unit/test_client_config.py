"""`mcp-gateway client-config`: every client's output parsed the way its consumer reads it.

JSON snippets must be one JSON document each; shell snippets one command line whose words are
what `claude mcp add` receives. The token is never written unless given; URLs are checked.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

import pytest

from gateway import cli
from gateway.tools.client_config import (
    CLIENTS,
    MCP_REMOTE_HEADER_VAR,
    MCP_REMOTE_PACKAGE,
    TOKEN_PLACEHOLDER,
    ClientConfigError,
    ClientName,
    Snippet,
    default_name,
    default_token_env,
    make_target,
    snippets,
)

URL = "https://tools.example.com/mcp"
TOKEN = "tok-3f9a_Z.~+/=="


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(["client-config", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def split_sections(output: str) -> list[tuple[list[str], str]]:
    """(comment lines, body) for each section of client-config's output."""
    sections = []
    for block in output.strip("\n").split("\n\n"):
        lines = block.split("\n")
        header = [line for line in lines if line.startswith("#")]
        body = "\n".join(line for line in lines if not line.startswith("#"))
        assert lines[: len(header)] == header, "comments come before the body"
        sections.append((header, body))
    return sections


def parsed(snippet: Snippet) -> Any:
    assert snippet.format == "json"
    return json.loads(snippet.text)


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("token", [None, TOKEN], ids=["placeholder", "given-token"])
def test_every_section_parses(capsys: pytest.CaptureFixture[str], client: str, token: str | None) -> None:
    extra = ["--token", token] if token else []
    status, out, err = run(capsys, "--url", URL, "--client", client, "--token-env", "TOOLS_TOKEN", *extra)
    assert status == 0, err
    sections = split_sections(out)
    assert len(sections) == len(snippets(client, make_target(URL, token_env="TOOLS_TOKEN", token=token)))  # type: ignore[arg-type]
    for header, body in sections:
        assert header[0].startswith("# "), header
        if header[0].startswith("# Claude Code: add the server from a shell"):
            words = shlex.split(body)
            assert words[:5] == ["claude", "mcp", "add", "--transport", "http"]
        else:
            json.loads(body)
        if token is None:
            assert TOKEN not in body
        else:
            assert TOKEN in body
    assert ("written in clear" in err) == (token is not None)


def test_claude_desktop_runs_the_bridge_with_the_token_in_env_only() -> None:
    bridge, remote = snippets("claude-desktop", make_target(URL, name="tools", token_env="TOOLS_TOKEN"))
    server = parsed(bridge)["mcpServers"]["tools"]
    assert server == {
        "command": "mcp-gateway",
        "args": ["connect", URL, "--bearer-env", "TOOLS_TOKEN"],
        "env": {"TOOLS_TOKEN": TOKEN_PLACEHOLDER},
    }
    via_remote = parsed(remote)["mcpServers"]["tools"]
    assert via_remote["command"] == "npx"
    # mcp-remote's header form for clients that do not quote args: no space after the colon, and
    # the value (with its space) in the environment.
    assert via_remote["args"] == [
        "-y",
        MCP_REMOTE_PACKAGE,
        URL,
        "--header",
        f"Authorization:${{{MCP_REMOTE_HEADER_VAR}}}",
    ]
    assert not any(" " in arg for arg in via_remote["args"])
    assert via_remote["env"] == {MCP_REMOTE_HEADER_VAR: f"Bearer {TOKEN_PLACEHOLDER}"}


def test_claude_desktop_bridge_command_and_given_token() -> None:
    target = make_target(URL, name="tools", token=TOKEN, bridge_command="/opt/tools/bin/mcp-gateway")
    bridge, remote = snippets("claude-desktop", target)
    server = parsed(bridge)["mcpServers"]["tools"]
    assert server["command"] == "/opt/tools/bin/mcp-gateway"
    assert server["env"] == {"TOOLS_TOKEN": TOKEN}
    assert TOKEN not in " ".join(server["args"])  # argv is visible to every local user: never the token
    assert parsed(remote)["mcpServers"]["tools"]["env"] == {MCP_REMOTE_HEADER_VAR: f"Bearer {TOKEN}"}


@pytest.mark.parametrize(
    ("url", "allow_http"),
    [
        ("https://tools.example.com/mcp", False),
        ("http://127.0.0.1:8080/mcp", False),
        ("http://localhost:8080/mcp", False),
        ("http://[::1]:8080/mcp", True),  # mcp-remote knows only the two names above
        ("http://10.0.0.5:8080/mcp", True),
    ],
    ids=["https", "ipv4-loopback", "localhost", "ipv6-loopback", "private-http"],
)
def test_mcp_remote_gets_allow_http_where_it_would_refuse(url: str, allow_http: bool) -> None:
    _, remote = snippets("claude-desktop", make_target(url, name="tools"))
    assert ("--allow-http" in parsed(remote)["mcpServers"]["tools"]["args"]) is allow_http


def test_claude_code_command_leaves_the_token_to_the_shell() -> None:
    command, project = snippets("claude-code", make_target(URL, name="tools", token_env="TOOLS_TOKEN"))
    assert command.format == "shell"
    # The variable stays a reference in the text (double quotes: the user's shell expands it).
    assert '--header "Authorization: Bearer ${TOOLS_TOKEN}"' in command.text
    assert shlex.split(command.text) == [
        "claude", "mcp", "add", "--transport", "http", "tools", URL, "--header", "Authorization: Bearer ${TOOLS_TOKEN}",
    ]  # fmt: skip
    assert parsed(project) == {
        "mcpServers": {"tools": {"type": "http", "url": URL, "headers": {"Authorization": "Bearer ${TOOLS_TOKEN}"}}}
    }


def test_claude_code_quotes_every_word() -> None:
    url = "https://tools.example.com/mcp?team=a&x='y'"
    command, _ = snippets("claude-code", make_target(url, name="tools", token=TOKEN))
    words = shlex.split(command.text)
    assert words[6] == url
    assert words[-2:] == ["--header", f"Authorization: Bearer {TOKEN}"]
    assert f"'Authorization: Bearer {TOKEN}'" in command.text  # single quotes: a given token is taken as is


def test_cursor_uses_its_env_interpolation() -> None:
    (cursor,) = snippets("cursor", make_target(URL, name="tools", token_env="TOOLS_TOKEN"))
    assert parsed(cursor) == {
        "mcpServers": {"tools": {"url": URL, "headers": {"Authorization": "Bearer ${env:TOOLS_TOKEN}"}}}
    }


def test_vscode_prompts_for_a_secret_input() -> None:
    (vscode,) = snippets("vscode", make_target(URL, name="tools"))
    document = parsed(vscode)
    assert document["inputs"] == [
        {"type": "promptString", "id": "tools-token", "description": f"Bearer token for {URL}", "password": True}
    ]
    assert document["servers"]["tools"] == {
        "type": "http",
        "url": URL,
        "headers": {"Authorization": "Bearer ${input:tools-token}"},
    }
    (given,) = snippets("vscode", make_target(URL, name="tools", token=TOKEN))
    assert parsed(given)["inputs"] == []
    assert parsed(given)["servers"]["tools"]["headers"] == {"Authorization": f"Bearer {TOKEN}"}


def test_generic_description() -> None:
    (generic,) = snippets("json", make_target(URL, name="tools"))
    assert parsed(generic) == {
        "name": "tools",
        "transport": "streamable-http",
        "url": URL,
        "headers": {"Authorization": "Bearer ${TOOLS_TOKEN}"},
    }


@pytest.mark.parametrize("client", CLIENTS)
def test_no_token_means_no_authorization_anywhere(client: ClientName) -> None:
    for snippet in snippets(client, make_target("http://127.0.0.1:8080/mcp", name="local", no_token=True)):
        assert "Authorization" not in snippet.text
        assert "Bearer" not in snippet.text
        assert TOKEN_PLACEHOLDER not in snippet.text


@pytest.mark.parametrize(
    ("url", "name", "token_env"),
    [
        ("https://time.example.com/mcp", "time", "TIME_TOKEN"),
        ("https://team-tools.example.com/mcp", "team-tools", "TEAM_TOOLS_TOKEN"),
        ("http://127.0.0.1:8080/mcp", "mcp-gateway", "MCP_GATEWAY_TOKEN"),
        ("http://localhost:8080/mcp", "mcp-gateway", "MCP_GATEWAY_TOKEN"),
        ("https://[2001:db8::1]/mcp", "mcp-gateway", "MCP_GATEWAY_TOKEN"),
    ],
    ids=["host", "dashed-host", "ipv4", "localhost", "ipv6"],
)
def test_defaults_from_the_url(url: str, name: str, token_env: str) -> None:
    assert default_name(url) == name
    assert default_token_env(name) == token_env
    target = make_target(url)
    assert (target.name, target.token_env) == (name, token_env)


def test_a_leading_digit_still_makes_a_variable_name() -> None:
    assert default_token_env("9lives") == "_9LIVES_TOKEN"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--url", "ftp://example.com/mcp"], "http:// or https:// URL with a host"),
        (["--url", "https:///mcp"], "http:// or https:// URL with a host"),
        (["--url", "https://user:pw@example.com/mcp"], "must not carry credentials"),
        (["--url", "https://example.com:99999/mcp"], "is not valid"),
        (["--url", "https://example.com/a b"], "whitespace or control characters"),
        (["--url", URL, "--name", "has space"], "--name 'has space'"),
        (["--url", URL, "--token-env", "1BAD"], "not an environment variable name"),
        (["--url", URL, "--token", "two words"], "--token: a bearer token"),
        (["--url", URL, "--no-token", "--token", "x"], "--no-token excludes"),
    ],
    ids=[
        "scheme",
        "no-host",
        "credentials",
        "bad-port",
        "space",
        "name",
        "token-env",
        "token-chars",
        "no-token-and-token",
    ],
)
def test_refusals(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    status, out, err = run(capsys, *argv, "--client", "cursor")
    assert status == 2
    assert out == ""
    assert message in err


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ClientConfigError) as caught:
        make_target("ftp://x/mcp", name="bad name", token_env="1BAD")
    assert len(caught.value.problems) == 3


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("http://mcp.internal:8080/mcp", True),
        ("http://10.1.2.3/mcp", True),
        ("http://127.0.0.1:8080/mcp", False),
        ("http://[::1]:8080/mcp", False),
        ("http://localhost/mcp", False),
        ("https://mcp.example.com/mcp", False),
    ],
    ids=["http-name", "http-private", "loopback-v4", "loopback-v6", "localhost", "https"],
)
def test_plain_http_beyond_loopback_is_warned(capsys: pytest.CaptureFixture[str], url: str, warned: bool) -> None:
    status, out, err = run(capsys, "--url", url, "--client", "json")
    assert status == 0
    json.loads(split_sections(out)[0][1])
    assert ("plain http" in err) is warned
