"""The graceful stop on SIGTERM or SIGINT, and its budget: at most `shutdown_timeout` plus
`CHILD_STOP_BUDGET` seconds from the signal to the exit.

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
import logging
from typing import Final

from gateway.connections import ConnectionGuard
from gateway.sessions.child import SIGKILL_CONFIRM, SIGTERM_GRACE, STDIN_CLOSE_GRACE
from gateway.sessions.store import SessionStore

log = logging.getLogger("gateway")

# Answers already decided (errors in memory) take milliseconds to write; a client that does not
# read them is not waited for beyond this.
ANSWER_GRACE: Final = 1.0
# aiohttp's own shutdown wait per connection (`AppRunner(shutdown_timeout=…)`): by then every
# handler has answered, so this only bounds one that has not.
HANDLER_GRACE: Final = 0.5
# What the stop sequence of the children may take once they are told to stop, in parallel.
CHILD_STOP_BUDGET: Final = STDIN_CLOSE_GRACE + SIGTERM_GRACE + SIGKILL_CONFIRM


async def drain(store: SessionStore, guard: ConnectionGuard, budget: float) -> None:
    """Steps 1 to 3 (see the module docstring); the caller then cleans up the runner."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    store.begin_drain()
    log.info("draining", extra={"budget": budget, "requests": guard.working, "sessions": len(store)})
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout_at(started + budget):
            await guard.quiet(streams=False)
    cut = guard.working
    store.end_sessions()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(ANSWER_GRACE):
            await guard.quiet(streams=True)
    log.info(
        "drained",
        extra={"seconds": round(loop.time() - started, 3), "requests_ended": cut, "unanswered": guard.handling},
    )
