"""A legacy child's requests to its client, carried to 2026-07-28 clients as multi round-trip requests.

A handshake-era server asks its client for input with a request of its own (`elicitation/create`,
`sampling/createMessage`, `roots/list`) while it serves a `tools/call`, `prompts/get` or
`resources/read`. A 2026-07-28 client cannot be sent requests: the gateway answers the call's
HTTP request instead with `resultType: "input_required"`, the child's request(s) in
`inputRequests`, and a `requestState` it signs. The client's retry (a new id, `inputResponses`,
the same `requestState`) is checked, its responses go to the child as the answers it is waiting
for, and the retry takes over the call, still running on the child (which may ask again).

Invariants:
- A `requestState` is the gateway's own (`StateSigner`): HMAC-SHA256 over what it binds — the
  principal (a digest of its key), the child, the call (its gateway id), a nonce and an expiry —
  accepted only in the exact spelling it was issued in. One that was altered, was used already
  (each round has a fresh nonce: a state is accepted once), belongs to a call that has ended or
  to another tool, prompt or resource, is refused with the reason and changes nothing; another
  principal's is refused as one naming no call at all (nothing of others' calls is told).
- A child's request is asked of the client only when the client declared the capability it
  needs, and only when it belongs to exactly one call (the only such call in flight on that
  child; a stdio server does not say which call a request serves): otherwise the child is
  answered with an error at once, and never waits.
- A call waiting for its client's retry waits at most `input_timeout` seconds: then it is
  cancelled at the child, and whatever the child still waits for is answered with an error.
- `ping` from the child is answered here (an empty result): it needs no client.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from gateway import jsonrpc
from gateway.eras.envelope import CLIENT_CAPABILITIES_KEY, NAMED_BY
from gateway.eras.translate import INPUT_REQUIRED
from gateway.jsonrpc import JsonObject, Message, RequestId
from gateway.sessions.router import Exchange, Router

log = logging.getLogger("gateway.mrtr")

STATE_PREFIX: Final = "mcpgw1."
# The capability (in the client's envelope) each request of a child needs.
NEEDS: Final[Mapping[str, str]] = {
    "elicitation/create": "elicitation",
    "sampling/createMessage": "sampling",
    "roots/list": "roots",
}
# Requests for input one call may have waiting to be asked at once (more are answered with an error).
MAX_QUEUED: Final = 16
# How a call that waits for its client is cancelled when the client never comes back.
GAVE_UP: Final = "The client did not answer the server's request in time"


class StateRefused(Exception):
    """A `requestState` that cannot be used; the message says why (fixed text, never the state)."""


class StateSigner:
    """Signs and checks the gateway's `requestState`s (one key per gateway process)."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)

    def sign(self, claims: JsonObject) -> str:
        payload = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
        return STATE_PREFIX + payload + "." + _b64(self._mac(payload))

    def open(self, state: str) -> JsonObject:
        """The claims of a state this gateway signed, exactly as it wrote it; `StateRefused` for
        anything else (another spelling of the same bytes included)."""
        if not state.startswith(STATE_PREFIX):
            raise StateRefused("Invalid requestState: not issued by this gateway")
        payload, _, mac = state[len(STATE_PREFIX) :].partition(".")
        if not (payload.isascii() and mac.isascii()):
            raise StateRefused("Invalid requestState: its signature does not verify")
        try:
            given = _unb64(mac)
        except ValueError:
            raise StateRefused("Invalid requestState: its signature does not verify") from None
        if not hmac.compare_digest(given, self._mac(payload)):
            raise StateRefused("Invalid requestState: its signature does not verify")
        claims = json.loads(_unb64(payload))
        if not isinstance(claims, dict):  # pragma: no cover - only this gateway signs
            raise StateRefused("Invalid requestState")
        return claims

    def _mac(self, payload: str) -> bytes:
        return hmac.new(self._key, payload.encode("ascii"), hashlib.sha256).digest()


def is_gateway_state(state: object) -> bool:
    return isinstance(state, str) and state.startswith(STATE_PREFIX)


def principal_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """The bytes `_b64` wrote as `text`; ValueError for any other text (non-canonical included)."""
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None
    if _b64(data) != text:
        raise ValueError("not the canonical spelling")
    return data


@dataclass(slots=True, eq=False)
class Call:
    """A modern client's call on a legacy child that may ask its client for input."""

    exchange: Exchange
    capabilities: JsonObject
    method: str
    name: object  # what it calls, gets or reads: a retry must name the same
    asked: dict[str, RequestId] = field(default_factory=dict)  # key → the child's request id
    queued: list[tuple[str, Message]] = field(default_factory=list)  # not yet sent to the client
    nonce: str | None = None  # of the requestState the client holds, until it is used
    timer: asyncio.TimerHandle | None = None
    flushing: bool = False

    @property
    def gateway_id(self) -> int:
        return self.exchange.gateway_ids[0]


class InputBridge:
    """The calls of one legacy child that may ask for input, and its requests to their clients."""

    def __init__(
        self, router: Router, signer: StateSigner, *, child: str, principal: str, input_timeout: float
    ) -> None:
        self._router = router
        self._signer = signer
        self._child = child  # the child's session id (never a key to anything from outside): states name it
        self._principal = principal_digest(principal)
        self._input_timeout = input_timeout
        self._calls: dict[int, Call] = {}
        self._keys = 0
        router.on_request = self.child_request

    def track(self, exchange: Exchange, capabilities: JsonObject, method: str, name: object) -> Call:
        """A call whose child may ask for input (tools/call, prompts/get, resources/read), of the
        tool, prompt or resource `name`."""
        call = Call(exchange, capabilities, method, name)
        self._calls[call.gateway_id] = call
        return call

    def done(self, call: Call) -> None:
        """The call has its final answer (or was abandoned): nothing more is asked for it."""
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        if self._calls.get(call.gateway_id) is call:
            del self._calls[call.gateway_id]
        for child_id in call.asked.values():
            self._router.reply(child_id, error=(jsonrpc.INTERNAL_ERROR, "The request this belonged to has ended"))
        for _, message in call.queued:
            if message.id is not None:
                self._router.reply(message.id, error=(jsonrpc.INTERNAL_ERROR, "The request this belonged to has ended"))
        call.asked.clear()
        call.queued.clear()

    # --- the child asks --------------------------------------------------------------------

    def child_request(self, message: Message) -> bool:
        """The router's hook for every request the child sends: always taken (True)."""
        method, child_id = message.method or "", message.id
        if child_id is None:  # pragma: no cover - a request always has an id
            return True
        if method == "ping":
            self._router.reply(child_id, result={})
            return True
        needed = NEEDS.get(method)
        if needed is None:
            self._router.reply(child_id, error=(jsonrpc.METHOD_NOT_FOUND, f"Method not found: {method}"))
            return True
        open_calls = [call for call in self._calls.values() if not call.exchange.finished]
        if len(open_calls) != 1:
            log.warning(
                "the MCP server sent %s while %d calls that could ask were in flight: refused",
                method,
                len(open_calls),
                extra={"session": self._router.label},
            )
            self._router.reply(
                child_id,
                error=(jsonrpc.INTERNAL_ERROR, "The gateway cannot tell which request this belongs to"),
            )
            return True
        call = open_calls[0]
        if not isinstance(call.capabilities.get(needed), dict):
            self._router.reply(
                child_id, error=(jsonrpc.METHOD_NOT_FOUND, f"The client did not declare the {needed} capability")
            )
            return True
        if len(call.queued) >= MAX_QUEUED:
            self._router.reply(child_id, error=(jsonrpc.INTERNAL_ERROR, "Too many requests for input at once"))
            return True
        self._keys += 1
        call.queued.append((f"input-{self._keys}", message))
        if not call.exchange.parked and not call.flushing:
            # Requests the child writes together are asked together: after this read of its output.
            call.flushing = True
            asyncio.get_running_loop().call_soon(self._flush, call)
        return True

    def _flush(self, call: Call) -> None:
        """End the call's round: its HTTP request is answered with what the child asks."""
        call.flushing = False
        if not call.queued or call.exchange.finished or call.exchange.parked:
            return
        requests: JsonObject = {}
        for key, message in call.queued:
            requests[key] = {"method": message.method, "params": message.params}
            if message.id is not None:
                call.asked[key] = message.id
        call.queued.clear()
        call.nonce = secrets.token_urlsafe(16)
        expires = time.time() + self._input_timeout
        state = self._signer.sign(
            {"p": self._principal, "c": self._child, "g": call.gateway_id, "n": call.nonce, "e": int(expires) + 1}
        )
        result = {"resultType": INPUT_REQUIRED, "inputRequests": requests, "requestState": state}
        self._router.end_round(call.exchange, result)
        call.timer = asyncio.get_running_loop().call_later(self._input_timeout, self._give_up, call)

    def _give_up(self, call: Call) -> None:
        call.timer = None
        log.info("no retry came for an input request: the call is cancelled", extra={"session": self._router.label})
        self._router.abandon(call.exchange, GAVE_UP)
        self._router.forget(call.exchange)
        self.done(call)

    # --- the client answers ----------------------------------------------------------------

    def resume(self, claims: JsonObject, principal: str, client_id: RequestId, method: str, params: JsonObject) -> Call:
        """Hand a verified retry's answers to the child; the call, now the retry's to answer."""
        if claims.get("p") != principal_digest(principal):
            raise StateRefused("Invalid requestState: it was not issued to this client")
        if not isinstance(claims.get("e"), int) or claims["e"] < time.time():
            raise StateRefused("Invalid requestState: it has expired")
        call = self._calls.get(claims.get("g"))  # type: ignore[arg-type]
        if call is None or call.exchange.finished:
            raise StateRefused("Invalid requestState: the request it belongs to has ended")
        if call.nonce is None or not hmac.compare_digest(call.nonce, str(claims.get("n"))):
            raise StateRefused("Invalid requestState: it was used already")
        if method != call.method or params.get(NAMED_BY[method]) != call.name:
            raise StateRefused("Invalid requestState: it belongs to another request")
        call.nonce = None
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        responses = params.get("inputResponses")
        responses = responses if isinstance(responses, dict) else {}
        for key, child_id in call.asked.items():
            answer = responses.get(key)
            if isinstance(answer, dict):
                self._router.reply(child_id, result=answer)
            else:
                self._router.reply(
                    child_id, error=(jsonrpc.INTERNAL_ERROR, "The client sent no answer to this request")
                )
        call.asked.clear()
        meta = params.get("_meta")
        capabilities = meta.get(CLIENT_CAPABILITIES_KEY) if isinstance(meta, dict) else None
        if isinstance(capabilities, dict):
            call.capabilities = capabilities
        self._router.resume(call.exchange, client_id)
        if call.queued:  # the child asked again before this retry came: that is this round's answer
            call.flushing = True
            asyncio.get_running_loop().call_soon(self._flush, call)
        return call
