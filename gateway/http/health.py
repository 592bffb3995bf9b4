"""Liveness and readiness: `GET /health` (the process serves) and `GET /ready` (it takes sessions).

While the gateway drains for shutdown both are still answered (the listener stays open): `/health`
200, `/ready` 503 with `"draining": true`, so a load balancer stops sending new clients.
"""

from __future__ import annotations

import time

from aiohttp import web

from gateway import keys
from gateway._version import __version__
from gateway.paths import HEALTH_PATH, READY_PATH


async def handle_health(request: web.Request) -> web.Response:
    app = request.app
    return web.json_response(
        {
            "status": "ok",
            "version": __version__,
            "uptime_seconds": round(time.monotonic() - app[keys.STARTED_AT], 3),
            "sessions": len(app[keys.SESSIONS]),
            "isolation": app[keys.SANDBOX].mode,
        }
    )


async def handle_ready(request: web.Request) -> web.Response:
    """Ready when sessions are taken, the orphan watchdog runs, and the rate-limit storage answers
    (a failing storage only makes the gateway unready when it is configured to fail closed);
    not while every session slot is held by sessions that may not give way (`"sessions": "full"`:
    a new client would get 503)."""
    app = request.app
    store = app[keys.SESSIONS]
    limiter = app[keys.LIMITER]
    watchdog_ok = app[keys.WATCHDOG].running
    storage_ok = await limiter.healthy()
    full = store.full
    ready = store.accepting and watchdog_ok and (storage_ok or not limiter.fails_closed) and not full
    body = {
        "ready": ready,
        "accepting_sessions": store.accepting,
        "draining": store.draining,  # shutting down: in-flight requests finish, new sessions get 503
        "orphan_guard": watchdog_ok,  # the key operators' probes already read
        "ratelimit_storage": "ok" if storage_ok else "down",
        "sessions": "full" if full else "ok",
    }
    return web.json_response(body, status=200 if ready else 503)


def add_routes(app: web.Application) -> None:
    app.router.add_get(HEALTH_PATH, handle_health)
    app.router.add_get(READY_PATH, handle_ready)
