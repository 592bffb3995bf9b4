"""Serving: `mcp-gateway serve` runs the listener with its connection limits until SIGTERM or
SIGINT, then stops gracefully; `mcp-gateway check` shows what it would serve with. The budget of
the stop is at most `shutdown_timeout` plus `CHILD_STOP_BUDGET` seconds from the signal to the exit.

The order:
1. Drain. The listener stays open: `/health` is answered, `/ready` answers 503 (`draining`), a
   new session is refused with 503 `shutting_down`, and the live sessions keep being served. The
   drain ends as soon as no request is being handled (session streams excepted), at the latest
   after `shutdown_timeout`.
2. End every session. Each request still in flight is answered with a JSON-RPC error saying the
   gateway is shutting down: a complete JSON response, or the last event of its SSE stream before
   the stream ends properly; session streams end too; every child starts its stop sequence, all
   in parallel.
3. The handlers get up to `ANSWER_GRACE` to write those answers (while the children stop).
4. The listener and every connection close (aiohttp gives a handler still running
   `HANDLER_GRACE`, twice, then cancels it), and the application's cleanup waits for the
   children: close stdin, 2 s, SIGTERM, 2 s, SIGKILL, 1 s (`gateway.sessions.child`).
Steps 3 and 4 overlap the children's stop, so they fit in `CHILD_STOP_BUDGET`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from typing import TYPE_CHECKING, Final

from aiohttp import web

from gateway import keys
from gateway._version import __version__
from gateway.app import SERVER_OPTIONS, create_app
from gateway.auth import AuthStartupError
from gateway.http import connections
from gateway.http.connections import ConnectionLimiter
from gateway.net import is_loopback_host
from gateway.observe import logs
from gateway.sessions import privileges
from gateway.sessions.child import SIGKILL_CONFIRM, SIGTERM_GRACE, STDIN_CLOSE_GRACE, use_pidfd_child_watcher
from gateway.sessions.sandbox import (
    Decision,
    IsolationRequest,
    IsolationUnavailable,
    decide,
    preparation_problem,
    shared_user_refusal,
)
from gateway.sessions.store import SessionStore

if TYPE_CHECKING:
    from gateway.config import Settings

log = logging.getLogger("gateway")

EXIT_STARTUP: Final = 1  # configuration valid, but a dependency (an identity provider) did not answer

# Answers already decided (errors in memory) take milliseconds to write; a client that does not
# read them is not waited for beyond this.
ANSWER_GRACE: Final = 1.0
# aiohttp's own shutdown wait per connection (`AppRunner(shutdown_timeout=…)`): by then every
# handler has answered, so this only bounds one that has not.
HANDLER_GRACE: Final = 0.5
# What the stop sequence of the children may take once they are told to stop, in parallel.
CHILD_STOP_BUDGET: Final = STDIN_CLOSE_GRACE + SIGTERM_GRACE + SIGKILL_CONFIRM


async def drain(store: SessionStore, limiter: ConnectionLimiter, budget: float) -> None:
    """Steps 1 to 3 (see the module docstring); the caller then cleans up the runner."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    store.begin_drain()
    log.info("draining", extra={"budget": budget, "requests": limiter.working, "sessions": len(store)})
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout_at(started + budget):
            await limiter.quiet(streams=False)
    cut = limiter.working
    store.end_sessions()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(ANSWER_GRACE):
            await limiter.quiet(streams=True)
    log.info(
        "drained",
        extra={"seconds": round(loop.time() - started, 3), "requests_ended": cut, "unanswered": limiter.handling},
    )


async def serve(settings: Settings, isolation: Decision | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully; children get the `isolation`
    decided (by default, decided at startup)."""
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
    if isolation is not None:
        app[keys.ISOLATION] = isolation
    if descriptors.raised_from is not None:  # what the gateway was given is what its children get
        app[keys.CHILD_NOFILE] = (descriptors.raised_from, descriptors.hard)
    runner = web.AppRunner(
        app,
        shutdown_timeout=HANDLER_GRACE,
        handle_signals=False,
        keepalive_timeout=settings.http_keepalive_timeout,
        **SERVER_OPTIONS,
    )
    await runner.setup()
    limiter = connections.ConnectionLimiter(connections.ConnectionLimits.from_settings(settings))
    limiter.accept_errors = accept_errors
    limiter.start()
    try:
        site = connections.LimitedSite(runner, settings.host, settings.port, limiter)
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
        await drain(runner.app[keys.SESSIONS], limiter, settings.shutdown_timeout)
    finally:
        await runner.cleanup()
        await limiter.aclose()
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


def check(settings: Settings) -> int:
    """`mcp-gateway check`: print the configuration (secrets masked), warn when the open-file
    limit the gateway could reach does not fit its sessions and connections, and name the child
    isolation it would start with (exit status 1 when the isolation asked for is not possible)."""
    print(json.dumps(settings.redacted(), indent=2))
    if (problem := connections.descriptor_problem(settings, connections.reachable_descriptor_limit())) is not None:
        print(f"mcp-gateway: warning: {problem}", file=sys.stderr)
    try:
        decision = asyncio.run(decide(IsolationRequest.of(settings)))
        if (problem := preparation_problem(decision)) is not None:
            raise IsolationUnavailable(problem)
    except IsolationUnavailable as error:
        print(f"mcp-gateway: {error}", file=sys.stderr)
        return EXIT_STARTUP
    print(f"mcp-gateway: child isolation: {decision.mode} ({decision.reason})", file=sys.stderr)
    refusal = shared_user_refusal(decision.mode, settings.per_user_child_values, settings.allow_shared_uid_children)
    if refusal is not None:
        print(f"mcp-gateway: cannot start: {refusal}", file=sys.stderr)
        return EXIT_STARTUP
    return 0


def run(settings: Settings) -> int:
    """`mcp-gateway serve`: configure logging, keep only the capabilities the children's isolation
    needs, serve until a signal; the process exit status."""
    logs.configure(settings.log_level, settings.log_format)
    use_pidfd_child_watcher()
    try:
        decision = asyncio.run(decide(IsolationRequest.of(settings)))
        kept = privileges.keep_only(privileges.needed(decision.mode, (settings.port, settings.metrics_port)))
    except IsolationUnavailable as error:
        log.error("cannot start: %s", error)
        return EXIT_STARTUP
    except OSError as error:
        log.error("cannot start: cannot drop capabilities: %s", error)
        return EXIT_STARTUP
    log.info("capabilities kept: %s", privileges.describe(kept))
    try:
        asyncio.run(serve(settings, decision))
    except (AuthStartupError, IsolationUnavailable) as error:
        log.error("cannot start: %s", error)
        return EXIT_STARTUP
    return 0
