"""Liveness and readiness: `GET /health` (the process serves) and `GET /ready` (it takes sessions)."""

from __future__ import annotations

import time

from aiohttp import web

from gateway import __version__, keys


async def handle_health(request: web.Request) -> web.Response:
    app = request.app
    return web.json_response(
        {
            "status": "ok",
            "version": __version__,
            "uptime_seconds": round(time.monotonic() - app[keys.STARTED_AT], 3),
            "sessions": len(app[keys.SESSIONS]),
        }
    )


async def handle_ready(request: web.Request) -> web.Response:
    """Ready when sessions are taken, the orphan guard runs, and the rate-limit storage answers
    (a failing storage only makes the gateway unready when it is configured to fail closed)."""
    app = request.app
    store = app[keys.SESSIONS]
    limiter = app[keys.LIMITER]
    guard_ok = app[keys.GUARD].running
    storage_ok = await limiter.healthy()
    ready = store.accepting and guard_ok and (storage_ok or not limiter.fails_closed)
    body = {
        "ready": ready,
        "accepting_sessions": store.accepting,
        "orphan_guard": guard_ok,
        "ratelimit_storage": "ok" if storage_ok else "down",
    }
    return web.json_response(body, status=200 if ready else 503)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/health", handle_health)
    app.router.add_get("/ready", handle_ready)
