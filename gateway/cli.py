"""Command line: parse the arguments and hand them to the room that does the work.

`serve [options] -- CMD [ARGS…]` (`gateway.serve`), `check` (validate the configuration and print
it), `hash-token`, `oauth-key`, `connect URL` (the stdio bridge for clients that cannot speak
HTTP, `gateway.client.connect`), `new-service NAME` (a deployable service folder,
`gateway.tools.new_service`) and `client-config` (what to paste into an MCP client,
`gateway.tools.client_config`). The flags of `serve` and `check` are the settings
(`gateway.config.flags`). The server command follows `--` and is executed directly, never
through a shell.

Each command imports only what it needs: `connect` is launched by desktop clients for every
server they start, so it never loads the server, its configuration or its dependencies.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Final

from gateway._version import __version__

EXIT_CONFIG: Final = 2  # invalid configuration
# The commands whose flags are the settings: building those flags loads the configuration model.
SETTINGS_COMMANDS: Final = frozenset({"serve", "check"})


def build_parser(action: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; given the `action` about to run, only that command's flags are built
    in full (the others are named, for `--help`, but not loaded)."""
    parser = argparse.ArgumentParser(
        prog="mcp-gateway",
        description="Serve a stdio MCP server over Streamable HTTP, one process per client session.",
    )
    parser.add_argument("--version", action="version", version=f"mcp-gateway {__version__}")
    commands = parser.add_subparsers(dest="action", required=True)
    serve = commands.add_parser("serve", help="Run the gateway: mcp-gateway serve [options] -- CMD [ARGS...]")
    check = commands.add_parser("check", help="Validate the configuration and print it, secrets redacted.")
    if action is None or action in SETTINGS_COMMANDS:
        from gateway.config import flags

        for sub in (serve, check):
            flags.add_setting_flags(sub)
    commands.add_parser(
        "hash-token",
        help="Print the SHA-256 digest of a token read from stdin, for static_tokens (the token never goes in argv).",
    )
    commands.add_parser(
        "oauth-key", help="Print a new random key for oauth_session_key (the built-in authorization server)."
    )
    connect = commands.add_parser(
        "connect",
        help="Serve a remote Streamable HTTP MCP server as a stdio server, for clients that only launch stdio servers.",
    )
    new_service = commands.add_parser(
        "new-service",
        help="Write a folder that deploys one stdio MCP server behind mcp-gateway: Dockerfile, compose service, "
        ".env.example, nginx snippets, client configs.",
    )
    client_config = commands.add_parser(
        "client-config", help="Print what to paste into an MCP client (Claude, Cursor, VS Code) to reach a gateway."
    )
    if action is None or action == "connect":
        from gateway.client import connect as connect_command

        connect_command.add_arguments(connect)
    if action is None or action in ("new-service", "client-config"):
        from gateway.tools import client_config as client_config_tool
        from gateway.tools import new_service as new_service_tool

        new_service_tool.add_arguments(new_service)
        client_config_tool.add_arguments(client_config)
    return parser


def _action(argv: Sequence[str]) -> str | None:
    """The command about to run (the first argument, when it names one), else None."""
    return argv[0] if argv and not argv[0].startswith("-") else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :]
    args = build_parser(_action(argv)).parse_args(argv)
    if args.action == "hash-token":
        return _hash_token()
    if args.action == "oauth-key":
        from cryptography.fernet import Fernet

        print(Fernet.generate_key().decode())
        return 0
    if args.action == "connect":
        from gateway.client import connect

        return connect.main(args)
    if args.action == "new-service":
        from gateway.tools import new_service

        return new_service.main(args)
    if args.action == "client-config":
        from gateway.tools import client_config

        return client_config.main(args)
    return _settings_command(args, command)


def _settings_command(args: argparse.Namespace, command: list[str]) -> int:
    """`check` or `serve`: both validate every setting first and report every problem at once."""
    from pydantic import ValidationError

    from gateway import serve
    from gateway.config import describe_errors
    from gateway.config.flags import load_settings

    try:
        settings = load_settings(args, command)
    except ValidationError as error:
        print("mcp-gateway: invalid configuration:", file=sys.stderr)
        for line in describe_errors(error):
            print(f"  {line}", file=sys.stderr)
        return EXIT_CONFIG
    return serve.check(settings) if args.action == "check" else serve.run(settings)


def _hash_token() -> int:
    import getpass

    from gateway.auth.static import digest_of

    token = getpass.getpass("token: ") if sys.stdin.isatty() else sys.stdin.readline()
    token = token.strip()
    if not token:
        print("mcp-gateway: no token on stdin", file=sys.stderr)
        return EXIT_CONFIG
    print(digest_of(token))
    return 0
