"""Command line: `mcp-gateway serve [options] -- CMD [ARGS…]`, `check`, `hash-token`,
`oauth-key`, `connect URL` (the stdio bridge for clients that cannot speak HTTP, see
`gateway.bridge`), `new-service NAME` (a deployable service folder, see `gateway.scaffold`) and
`client-config` (what to paste into an MCP client, see `gateway.clientconfig`).

Every setting has a flag named after it (`--max-sessions`, `--child-env KEY=VALUE`, …); flags
override `MCP_GATEWAY_*` variables, which override the `.env` file. A flag takes what its
variable takes: a list flag given once a JSON array or comma-separated values (repeated, one
value each), a list of objects (`--static-tokens`) a JSON array or one JSON object per flag, a
mapping (`--child-env`, `--plugin-options`, …) a JSON object or `KEY=VALUE` per flag. The server
command follows `--` and is executed directly, never through a shell.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import signal
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from cryptography.fernet import Fernet
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import NoDecode

from gateway import __version__, bridge, clientconfig, connections, keys, logs, scaffold, shutdown
from gateway.app import SERVER_OPTIONS, create_app
from gateway.auth.static import digest_of
from gateway.auth.verifiers import AuthStartupError
from gateway.sessions.child import use_pidfd_child_watcher
from gateway.settings import Settings, describe_errors, is_loopback_host

log = logging.getLogger("gateway")

EXIT_STARTUP = 1  # configuration valid, but a dependency (an identity provider) did not answer
EXIT_CONFIG = 2  # invalid configuration


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shape(field: FieldInfo) -> type | None:
    """`list` or `dict` for a field holding one (optional or not), else None."""
    annotation = field.annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [member for member in typing.get_args(annotation) if member is not type(None)]
        annotation = members[0] if len(members) == 1 else annotation
    origin = typing.get_origin(annotation) or annotation
    return origin if origin in (list, dict) else None


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env-file", help="Read settings from this file instead of ./.env.")
    for name, field in Settings.model_fields.items():
        if name == "command":
            continue
        shape = _shape(field)
        help_text = field.description
        if field.annotation is bool:
            parser.add_argument(_flag(name), action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif shape is list:
            parser.add_argument(_flag(name), action="append", metavar="VALUE", help=f"{help_text} (repeatable)")
        elif shape is dict:
            parser.add_argument(
                _flag(name), action="append", metavar="KEY=VALUE|JSON", help=f"{help_text} (repeatable)"
            )
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


def _mapping_flag(items: list[str]) -> dict[str, Any]:
    """A mapping flag: each one a JSON object or `KEY=VALUE`, later ones winning."""
    mapping: dict[str, Any] = {}
    for item in items:
        if item.lstrip().startswith("{"):
            value = json.loads(item)
            if not isinstance(value, dict):  # pragma: no cover - a JSON text starting with { is an object
                raise ValueError("not a JSON object")
            mapping.update(value)
            continue
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r} is neither KEY=VALUE nor a JSON object")
        mapping[key] = text
    return mapping


def _list_flag(items: list[str], field: FieldInfo) -> str | list[Any]:
    """A list flag. Objects (a field the environment gives as JSON): a JSON array, or one JSON
    object, per flag. Other lists: given once, the text the field parses from its environment
    variable (a JSON array or comma-separated values); repeated, one value per flag."""
    if NoDecode in field.metadata:
        return items[0] if len(items) == 1 else items
    values: list[Any] = []
    for item in items:
        value = json.loads(item)
        if isinstance(value, list):
            values.extend(value)
        elif isinstance(value, dict):
            values.append(value)
        else:
            raise ValueError("expected a JSON array, or a JSON object")
    return values


def _overrides(args: argparse.Namespace, command: list[str], problems: list[InitErrorDetails]) -> dict[str, Any]:
    """Settings given as flags; a flag that cannot be read is added to `problems`."""
    values: dict[str, Any] = {}
    for name, field in Settings.model_fields.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        shape = _shape(field)
        try:
            if shape is dict:
                values[name] = _mapping_flag(value)
            elif shape is list:
                values[name] = _list_flag(value, field)
            else:
                values[name] = value
        except ValueError as exc:  # json.JSONDecodeError included
            problems.append({"type": PydanticCustomError("flag", str(exc)), "loc": (name,), "input": value})
    if command:
        values["command"] = command
    return values


def load_settings(args: argparse.Namespace, command: list[str]) -> Settings:
    """The settings from flags, environment and `.env`; every problem, flags' included, is
    reported at once in one `ValidationError`."""
    problems: list[InitErrorDetails] = []
    overrides = _overrides(args, command, problems)
    try:
        if args.env_file is not None:
            settings = Settings(_env_file=args.env_file, **overrides)
        else:
            settings = Settings(**overrides)
    except ValidationError as error:
        if not problems:
            raise
        # Each problem keeps its message verbatim (a template without context is not formatted).
        problems += [
            {"type": PydanticCustomError(item["type"], item["msg"]), "loc": item["loc"], "input": item["input"]}
            for item in error.errors()
        ]
    if problems:
        raise ValidationError.from_exception_data(Settings.__name__, problems)
    return settings


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
        if (problem := connections.descriptor_problem(settings, connections.reachable_descriptor_limit())) is not None:
            print(f"mcp-gateway: warning: {problem}", file=sys.stderr)
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
    loop = asyncio.get_running_loop()
    accept_errors = connections.AcceptErrorLog(loop)
    accept_errors.install()
    descriptors = _check_descriptors(settings)
    app = create_app(settings)
    if descriptors.raised_from is not None:  # what the gateway was given is what its children get
        app[keys.CHILD_NOFILE] = (descriptors.raised_from, descriptors.hard)
    runner = web.AppRunner(
        app,
        shutdown_timeout=shutdown.HANDLER_GRACE,
        handle_signals=False,
        keepalive_timeout=settings.http_keepalive_timeout,
        **SERVER_OPTIONS,
    )
    await runner.setup()
    guard = connections.ConnectionGuard(connections.ConnectionLimits.from_settings(settings))
    guard.accept_errors = accept_errors
    guard.start()
    try:
        site = connections.GuardedSite(runner, settings.host, settings.port, guard)
        await site.start()
        for host, port in (address[:2] for address in runner.addresses):
            log.info(
                "serving %s",
                settings.command[0],
                extra={"url": f"http://{_url_host(host)}:{port}{settings.mcp_path}", "version": __version__},
            )
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("shutting down")
        await shutdown.drain(runner.app[keys.SESSIONS], guard, settings.shutdown_timeout)
    finally:
        await runner.cleanup()
        await guard.aclose()
        accept_errors.uninstall()
    log.info("stopped")


def _check_descriptors(settings: Settings) -> connections.DescriptorLimit:
    """Raise the open-file limit as far as allowed; warn when sessions and connections do not fit."""
    limit = connections.raise_descriptor_limit()
    if limit.raised_from is not None:
        log.info("open-file limit raised", extra={"from": limit.raised_from, "to": limit.soft})
    if (problem := connections.descriptor_problem(settings, limit.soft)) is not None:
        log.warning(
            "%s", problem, extra={"open_file_limit": limit.soft, "needed": connections.descriptors_needed(settings)}
        )
    return limit


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
