"""What a request is answered with when its session cannot pass it to the child: the one mapping
from the child's and the router's failures to `GatewayError`.

Whoever hands a session's child a request — the transport for a client's POST, the tool policy
for the gateway's own `tools/list` — answers the same failure with the same code and text:
a child that has exited is a session that no longer exists (404, so the client initializes
again); one that stopped reading its input is a stalled upstream (504); a session with as many
requests in flight as it may hold asks the client to wait for answers first (429).
"""

from __future__ import annotations

from typing import Final

from gateway.errors import GatewayError
from gateway.sessions.child import ChildGone, StdinStalled
from gateway.sessions.router import Overloaded

# Retry-After for a request refused because its session has too many in flight: one finishes soon.
IN_FLIGHT_RETRY_AFTER: Final = 1

SessionFailure = ChildGone | StdinStalled | Overloaded


def refusal(failure: SessionFailure) -> GatewayError:
    """The refusal of a request that met `failure` on its way to the child."""
    if isinstance(failure, StdinStalled):
        return GatewayError("upstream_stalled", "The MCP server is not reading its input")
    if isinstance(failure, Overloaded):
        return GatewayError(
            "too_many_in_flight",
            f"Too many requests in flight for this session ({failure}); wait for answers first",
            retry_after=IN_FLIGHT_RETRY_AFTER,
        )
    return GatewayError("session_not_found", "Session not found: its MCP server has exited")
