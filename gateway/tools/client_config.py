"""`mcp-gateway client-config`: the exact text a user pastes into an MCP client to reach a gateway.

This module owns the shape of every client's configuration (Claude Desktop, Claude Code, Cursor,
VS Code, a generic description) for one Streamable HTTP URL with a bearer token. `new-service`
writes the same snippets into a service's `clients/` folder, so there is one source for both.

Invariants:
- A token is written in clear only when the caller passes it (`--token`); otherwise every snippet
  refers to an environment variable or a client-side prompt, and the only literal is a
  placeholder that no gateway accepts.
- Every JSON snippet is one valid JSON document; every shell snippet is one command line whose
  words are quoted for a POSIX shell. Snippets are data (`Snippet`); printing them is separate.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import re
import shlex
import sys
from collections.abc import Sequence
from typing import Any, Final, Literal, get_args
from urllib.parse import urlsplit

ClientName = Literal["claude-desktop", "claude-code", "cursor", "vscode", "json"]
CLIENTS: Final[tuple[ClientName, ...]] = get_args(ClientName)

EXIT_OK: Final = 0
EXIT_USAGE: Final = 2

# What the env value / header holds when no token is given: obviously not a token, and refused by
# every verifier, so a config pasted unchanged fails with a 401 that names the variable.
TOKEN_PLACEHOLDER: Final = "paste-your-token-here"  # noqa: S105 - a placeholder, refused by every verifier
DEFAULT_BRIDGE_COMMAND: Final = "mcp-gateway"
# mcp-remote, pinned to a minor release: npx would otherwise fetch and run whatever is newest at
# every client start, with the user's token in its environment.
MCP_REMOTE_PACKAGE: Final = "mcp-remote@0.15"
# mcp-remote expands ${NAME} inside --header values itself. The header is written without a space
# after the colon, and the "Bearer <token>" value (which has one) lives in this variable: Cursor
# and Claude Desktop on Windows pass args with spaces to npx unquoted (mcp-remote's README).
MCP_REMOTE_HEADER_VAR: Final = "AUTH_HEADER"
# Hosts mcp-remote accepts plain http:// for without --allow-http (it checks these two names only).
MCP_REMOTE_PLAIN_HTTP_HOSTS: Final = frozenset({"localhost", "127.0.0.1"})

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A server name every client accepts as a key (Claude Code: letters, digits, '-' and '_').
_SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# Bearer tokens are RFC 6750 b64token characters; anything else could not travel in a header.
_B64TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")


class ClientConfigError(ValueError):
    """The options cannot make a usable configuration; `problems` lists every reason."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a client connects and how it authenticates. Build it with `make_target`."""

    url: str
    name: str
    token_env: str | None  # None: the server takes no token (a loopback gateway without auth)
    token: str | None = None  # given explicitly: written in clear into the snippets
    bridge_command: str = DEFAULT_BRIDGE_COMMAND

    def bearer(self, env_reference: str) -> str:
        """The Authorization value: the token if given, else `env_reference` standing for it."""
        return f"Bearer {self.token if self.token is not None else env_reference}"

    @property
    def env_value(self) -> str:
        return self.token if self.token is not None else TOKEN_PLACEHOLDER


@dataclasses.dataclass(frozen=True)
class Snippet:
    """One thing to paste: a JSON document or a shell command line."""

    title: str
    format: Literal["json", "shell"]
    text: str
    filename: str  # its file in a service's clients/ folder
    notes: tuple[str, ...] = ()


def default_name(url: str) -> str:
    """The server's name in client configs when none is given: the host's first DNS label."""
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        label = host.split(".")[0]
        if label and label != "localhost" and _SERVER_NAME.match(label):
            return label
    return "mcp-gateway"


def default_token_env(name: str) -> str:
    """`team-tools` → `TEAM_TOOLS_TOKEN`."""
    stem = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").upper() or "MCP"
    return f"{'_' if stem[0].isdigit() else ''}{stem}_TOKEN"


def url_problems(url: str) -> list[str]:
    if any(char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F for char in url):
        return [f"URL {url!r} holds whitespace or control characters"]
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as error:
        return [f"URL {url!r} is not valid: {error}"]
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return [f"URL must be an http:// or https:// URL with a host, got {url!r}"]
    if parts.username is not None or parts.password is not None:
        return ["URL must not carry credentials (user:password@): clients would store and log them"]
    if parts.fragment:
        return [f"URL must not have a fragment, got {url!r}"]
    return []


def is_plain_http_beyond_loopback(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme != "http":
        return False
    host = parts.hostname or ""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def make_target(
    url: str,
    *,
    name: str | None = None,
    token_env: str | None = None,
    token: str | None = None,
    no_token: bool = False,
    bridge_command: str = DEFAULT_BRIDGE_COMMAND,
) -> Target:
    """Validate every option at once; `ClientConfigError` lists all problems."""
    problems = url_problems(url)
    name = default_name(url) if name is None and not problems else (name or "mcp-gateway")
    if not _SERVER_NAME.match(name):
        problems.append(f"--name {name!r}: use letters, digits, '-' and '_' (at most 64, starting alphanumeric)")
    if no_token:
        if token is not None or token_env is not None:
            problems.append("--no-token excludes --token and --token-env")
        resolved_env = None
    else:
        resolved_env = token_env if token_env is not None else default_token_env(name)
        if not _ENV_NAME.match(resolved_env):
            problems.append(f"--token-env {resolved_env!r} is not an environment variable name")
    if token is not None and not _B64TOKEN.match(token):
        problems.append("--token: a bearer token is letters, digits and -._~+/ (then any '='), nothing else")
    if not bridge_command or any(char in bridge_command for char in "\r\n\0"):
        problems.append("--bridge-command must be a program name or path")
    if problems:
        raise ClientConfigError(problems)
    return Target(url=url, name=name, token_env=resolved_env, token=token, bridge_command=bridge_command)


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def _headers(target: Target, env_reference: str) -> dict[str, str]:
    return {} if target.token_env is None else {"Authorization": target.bearer(env_reference)}


def claude_desktop(target: Target) -> list[Snippet]:
    bridge: dict[str, Any] = {"command": target.bridge_command, "args": ["connect", target.url]}
    remote_args = ["-y", MCP_REMOTE_PACKAGE, target.url]
    remote: dict[str, Any] = {"command": "npx", "args": remote_args}
    if target.token_env is not None:
        bridge["args"] += ["--bearer-env", target.token_env]
        bridge["env"] = {target.token_env: target.env_value}
        remote_args += ["--header", f"Authorization:${{{MCP_REMOTE_HEADER_VAR}}}"]
        remote["env"] = {MCP_REMOTE_HEADER_VAR: target.bearer(TOKEN_PLACEHOLDER)}
    if urlsplit(target.url).scheme == "http" and urlsplit(target.url).hostname not in MCP_REMOTE_PLAIN_HTTP_HOSTS:
        remote_args.append("--allow-http")
    token_note = () if target.token_env is None or target.token is not None else (f"Replace {TOKEN_PLACEHOLDER}.",)
    return [
        Snippet(
            title="claude_desktop_config.json: through mcp-gateway connect",
            format="json",
            text=_json({"mcpServers": {target.name: bridge}}),
            filename="claude_desktop_config.json",
            notes=(
                "Needs mcp-gateway on this machine, installed from its repository (pipx install PATH-OR-URL); "
                "give its absolute path in `command` when the client does not search your PATH.",
                *token_note,
            ),
        ),
        Snippet(
            title="claude_desktop_config.json: through mcp-remote (machines with Node.js)",
            format="json",
            text=_json({"mcpServers": {target.name: remote}}),
            filename="claude_desktop_config.mcp-remote.json",
            notes=(f"{MCP_REMOTE_HEADER_VAR} holds the whole header value, 'Bearer <token>'.",)
            if target.token_env is not None
            else (),
        ),
    ]


def claude_code(target: Target) -> list[Snippet]:
    words = ["claude", "mcp", "add", "--transport", "http", target.name, target.url]
    command = shlex.join(words)
    notes: tuple[str, ...] = ()
    if target.token_env is not None:
        if target.token is not None:
            command += " --header " + shlex.quote(f"Authorization: {target.bearer('')}")
        else:
            # Double quotes on purpose: the shell that runs the command puts the token in, so it
            # never sits in this text or in shell history (the name is checked: [A-Za-z0-9_]).
            command += f' --header "Authorization: Bearer ${{{target.token_env}}}"'
            notes = (f"Run it where {target.token_env} holds your token; Claude Code stores the header it is given.",)
    server: dict[str, Any] = {"type": "http", "url": target.url}
    if target.token_env is not None:
        server["headers"] = _headers(target, f"${{{target.token_env}}}")
    return [
        Snippet(
            title="Claude Code: add the server from a shell",
            format="shell",
            text=command,
            filename="claude-code.sh",
            notes=notes,
        ),
        Snippet(
            title="Claude Code: .mcp.json (project scope)",
            format="json",
            text=_json({"mcpServers": {target.name: server}}),
            filename="claude-code.mcp.json",
            notes=(f"Claude Code reads ${{{target.token_env}}} from its environment when it starts.",)
            if target.token_env is not None and target.token is None
            else (),
        ),
    ]


def cursor(target: Target) -> list[Snippet]:
    server: dict[str, Any] = {"url": target.url}
    if target.token_env is not None:
        server["headers"] = _headers(target, f"${{env:{target.token_env}}}")
    return [
        Snippet(
            title="Cursor: ~/.cursor/mcp.json (or .cursor/mcp.json in a project)",
            format="json",
            text=_json({"mcpServers": {target.name: server}}),
            filename="cursor.mcp.json",
            notes=(f"Cursor reads ${{env:{target.token_env}}} from the environment it was started in.",)
            if target.token_env is not None and target.token is None
            else (),
        )
    ]


def vscode(target: Target) -> list[Snippet]:
    input_id = f"{target.name}-token"
    server: dict[str, Any] = {"type": "http", "url": target.url}
    inputs: list[dict[str, Any]] = []
    if target.token_env is not None:
        server["headers"] = _headers(target, f"${{input:{input_id}}}")
        if target.token is None:
            inputs.append(
                {
                    "type": "promptString",
                    "id": input_id,
                    "description": f"Bearer token for {target.url}",
                    "password": True,
                }
            )
    return [
        Snippet(
            title="VS Code: .vscode/mcp.json",
            format="json",
            text=_json({"inputs": inputs, "servers": {target.name: server}}),
            filename="vscode.mcp.json",
            notes=("VS Code asks for the token once and keeps it in its secret storage.",) if inputs else (),
        )
    ]


def generic(target: Target) -> list[Snippet]:
    description: dict[str, Any] = {"name": target.name, "transport": "streamable-http", "url": target.url}
    if target.token_env is not None:
        description["headers"] = _headers(target, f"${{{target.token_env}}}")
    return [
        Snippet(
            title="Any Streamable HTTP client",
            format="json",
            text=_json(description),
            filename="streamable-http.json",
            notes=(f"${{{target.token_env}}} stands for the token.",)
            if target.token_env is not None and target.token is None
            else (),
        )
    ]


_RENDERERS: Final = {
    "claude-desktop": claude_desktop,
    "claude-code": claude_code,
    "cursor": cursor,
    "vscode": vscode,
    "json": generic,
}


def snippets(client: ClientName, target: Target) -> list[Snippet]:
    return _RENDERERS[client](target)


def all_snippets(target: Target) -> list[Snippet]:
    return [snippet for client in CLIENTS for snippet in snippets(client, target)]


def format_snippets(items: Sequence[Snippet]) -> str:
    """Each snippet under `# title` and `# note` lines, separated by a blank line. The bodies hold
    no blank line and no line starting with '#', so a reader can split them apart again."""
    blocks = []
    for item in items:
        header = [f"# {item.title}", *(f"# {note}" for note in item.notes)]
        blocks.append("\n".join([*header, item.text]))
    return "\n\n".join(blocks) + "\n"


# --- command line --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="The MCP endpoint, e.g. https://mcp.example.com/mcp")
    parser.add_argument("--client", required=True, choices=CLIENTS, help="Which client the snippet is for.")
    parser.add_argument("--name", help="The server's name in the client (default: the host's first label).")
    parser.add_argument(
        "--token-env",
        metavar="NAME",
        help="The environment variable holding the bearer token (default: <NAME>_TOKEN).",
    )
    parser.add_argument(
        "--token",
        help="Write this token in clear into the output (it also lands in shell history; prefer --token-env).",
    )
    parser.add_argument("--no-token", action="store_true", help="The server takes no token (loopback, auth none).")
    parser.add_argument(
        "--bridge-command",
        default=DEFAULT_BRIDGE_COMMAND,
        metavar="PATH",
        help="Where mcp-gateway is installed on the client's machine, for claude-desktop (default: mcp-gateway).",
    )


def main(args: argparse.Namespace) -> int:
    try:
        target = make_target(
            args.url,
            name=args.name,
            token_env=args.token_env,
            token=args.token,
            no_token=args.no_token,
            bridge_command=args.bridge_command,
        )
    except ClientConfigError as error:
        print("mcp-gateway client-config: invalid options:", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    if is_plain_http_beyond_loopback(target.url):
        print(
            f"mcp-gateway client-config: warning: {target.url} is plain http beyond this machine: "
            "the token would cross the network readable; use https",
            file=sys.stderr,
        )
    if target.token is not None:
        print(
            "mcp-gateway client-config: warning: the token is written in clear below; "
            "keep the file out of version control",
            file=sys.stderr,
        )
    sys.stdout.write(format_snippets(snippets(args.client, target)))
    return EXIT_OK
