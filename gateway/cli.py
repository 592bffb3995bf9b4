"""Command line: `mcp-gateway serve [options] -- CMD [ARGS…]`, `check`, `hash-token`,
`oauth-key`, `connect URL` (the stdio bridge for clients that cannot speak HTTP, see
`gateway.bridge`), `new-service NAME` (a deployable service folder, see `gateway.scaffold`) and
`client-config` (what to paste into an MCP client, see `gateway.clientconfig`).

Every setting has a flag named after it (`--max-sessions`, `--child-env KEY=VALUE`, …); flags
override `MCP_GATEWAY_*` variables, which override the `.env` file. The server command follows
`--` and is executed directly, never through a shell.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import signal
import sys
import typing
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from cryptography.fernet import Fernet
from pydantic import ValidationError

from gateway import __version__, bridge, clientconfig, logs, scaffold
from gateway.app import create_app
from gateway.auth.static import digest_of
from gateway.auth.verifiers import AuthStartupError
from gateway.sessions.child import use_pidfd_child_watcher
from gateway.settings import Settings, describe_errors, is_loopback_host

log = logging.getLogger("gateway")

EXIT_STARTUP = 1  # configuration valid, but a dependency (an identity provider) did not answer
EXIT_CONFIG = 2  # invalid configuration


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env-file", help="Read settings from this file instead of ./.env.")
    for name, field in Settings.model_fields.items():
        if name == "command":
            continue
        annotation = typing.get_origin(field.annotation) or field.annotation
        help_text = field.description
        if field.annotation is bool:
            parser.add_argument(_flag(name), action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif annotation is list:
            parser.add_argument(_flag(name), action="append", metavar="VALUE", help=f"{help_text} (repeatable)")
        elif annotation is dict:
            parser.add_argument(_flag(name), action="append", metavar="KEY=VALUE", help=f"{help_text} (repeatable)")
        else:
            parser.add_argument(_flag(name), metavar="VALUE", help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcp-gateway",
        description="Serve a stdio MCP server over Streamable HTTP, one process per client session.",
    )
    parser.add_argument("--version", action="version", version=f"mcp-gateway {__version__}")
    commands = parser.add_subparsers(dest="action", required=True)
    serve = commands.add_parser("serve", help="Run the gateway: mcp-gateway serve [options] -- CMD [ARGS...]")
    check = commands.add_parser("check", help="Validate the configuration and print it, secrets redacted.")
    for sub in (serve, check):
        _add_setting_flags(sub)
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
    bridge.add_arguments(connect)
    new_service = commands.add_parser(
        "new-service",
        help="Write a folder that deploys one stdio MCP server behind mcp-gateway: Dockerfile, compose service, "
        ".env.example, nginx snippets, client configs.",
    )
    scaffold.add_arguments(new_service)
    client_config = commands.add_parser(
        "client-config", help="Print what to paste into an MCP client (Claude, Cursor, VS Code) to reach a gateway."
    )
    clientconfig.add_arguments(client_config)
    return parser


def _overrides(args: argparse.Namespace, command: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, field in Settings.model_fields.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        if (typing.get_origin(field.annotation) or field.annotation) is dict:
            pairs = [item.partition("=") for item in value]
            values[name] = {key: val for key, _, val in pairs}
        else:
            values[name] = value
    if command:
        values["command"] = command
    return values


def load_settings(args: argparse.Namespace, command: list[str]) -> Settings:
    overrides = _overrides(args, command)
    if args.env_file is not None:
        return Settings(_env_file=args.env_file, **overrides)
    return Settings(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :]
    args = build_parser().parse_args(argv)
    if args.action == "hash-token":
        return _hash_token()
    if args.action == "oauth-key":
        print(Fernet.generate_key().decode())
        return 0
    if args.action == "connect":
        return bridge.main(args)
    if args.action == "new-service":
        return scaffold.main(args)
    if args.action == "client-config":
        return clientconfig.main(args)
    try:
        settings = load_settings(args, command)
    except ValidationError as error:
        print("mcp-gateway: invalid configuration:", file=sys.stderr)
        for line in describe_errors(error):
            print(f"  {line}", file=sys.stderr)
        return EXIT_CONFIG
    if args.action == "check":
        print(json.dumps(settings.redacted(), indent=2))
        return 0
    logs.configure(settings.log_level, settings.log_format)
    use_pidfd_child_watcher()
    try:
        asyncio.run(serve(settings))
    except AuthStartupError as error:
        log.error("cannot start: %s", error)
        return EXIT_STARTUP
    return 0


def _hash_token() -> int:
    token = getpass.getpass("token: ") if sys.stdin.isatty() else sys.stdin.readline()
    token = token.strip()
    if not token:
        print("mcp-gateway: no token on stdin", file=sys.stderr)
        return EXIT_CONFIG
    print(digest_of(token))
    return 0


async def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    if settings.auth == "none" and not settings.oauth_server and not is_loopback_host(settings.host):
        log.warning(
            "SERVING WITHOUT AUTHENTICATION on %s: anyone who can reach it can run the MCP server "
            "(allow_remote_unauthenticated is set)",
            settings.host,
        )
    runner = web.AppRunner(create_app(settings), shutdown_timeout=settings.shutdown_timeout, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        for host, port in (address[:2] for address in runner.addresses):
            log.info(
                "serving %s",
                settings.command[0],
                extra={"url": f"http://{_url_host(host)}:{port}{settings.mcp_path}", "version": __version__},
            )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()
    log.info("stopped")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
