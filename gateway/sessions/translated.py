"""A legacy session whose child speaks only 2026-07-28: the gateway drives the era facade
(`gateway.eras.facade`) between the session's router and the child.

The session is opened as any other (`initialize` answered, from the child's `DiscoverResult`);
then each POST's messages are screened here before the router sends them: what 2026-07-28
removed is answered here, every request gets the envelope, `notifications/initialized` goes
nowhere. Each forwarded request's result is shaped for the handshake era; one that is
`input_required` is taken over: its input requests go to the client on the request's stream
(or the session's GET stream), and once the client has answered them all, the same request is
sent again with the answers, under a new gateway id, for the same waiting client. The child's
list changes and the updates of the resources the client subscribed to come from a listen
stream the gateway holds open on the child, and go to the session's GET stream.

Invariants:
- The client waits at most `input_timeout` for each of its answers; then its request is
  answered with an error (the child holds nothing: a 2026-07-28 server keeps no state between
  rounds but the `requestState` it handed out).
- The listen held on the child always asks for what the facade's filter says: it is opened
  again whenever a subscription changes (the POST that changed it answered once the child has
  acknowledged the new one, or `ACK_WAIT` passed), and ends with the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Final

from gateway import jsonrpc
from gateway.eras.facade import ACKNOWLEDGED, Facade, InputNeeded
from gateway.jsonrpc import JsonObject, Kind, Message
from gateway.sessions import listen
from gateway.sessions.child import ChildGone
from gateway.sessions.router import Exchange, Router, Screening

log = logging.getLogger("gateway.translated")

ASKED_TOO_LONG: Final = "The client did not answer the server's request in time"
# The rounds of one request the server may ask the client for input before it is refused: a
# server that keeps asking would otherwise hold the client's request forever.
MAX_ROUNDS: Final = 10
# Seconds a POST that changed the client's subscriptions waits for the child to acknowledge them.
ACK_WAIT: Final = 5.0


class Shaper:
    """Shapes one forwarded request's result for the handshake era (an `Interceptor`)."""

    __slots__ = ("_facade",)

    def __init__(self, facade: Facade) -> None:
        self._facade = facade

    def intercept(self, message: Message) -> bool:
        result = message.body.get("result")
        if not isinstance(result, dict):
            return False
        shaped = self._facade.result(result)
        if isinstance(shaped, InputNeeded):  # pragma: no cover - taken over by the `Asker` first
            return False
        message.body["result"] = shaped
        return True


class Asker:
    """Takes over a forwarded request whose result asks the client for input (a `Continuation`)."""

    __slots__ = ("_method", "_params", "_rounds", "_session")

    def __init__(self, session: Translated, method: str, params: JsonObject) -> None:
        self._session = session
        self._method = method
        self._params = params  # as forwarded: with the envelope
        self._rounds = 0

    def resolve(self, message: Message, gateway_id: int, exchange: Exchange) -> bool:
        result = message.body.get("result")
        if not isinstance(result, dict):
            return False
        needed = self._session.facade.result(result)
        if not isinstance(needed, InputNeeded):
            return False
        self._rounds += 1
        self._session.ask_client(self, gateway_id, exchange, needed, self._rounds)
        return True

    def retried(self, answers: JsonObject, state: str | None) -> tuple[str, JsonObject]:
        self._params = self._session.facade.retry_params(self._params, answers, state)
        return self._method, self._params


class Translated:
    """The facade of one legacy session with a modern-only child, and the tasks it runs."""

    def __init__(self, router: Router, facade: Facade, *, input_timeout: float) -> None:
        self.router = router
        self.facade = facade
        self._input_timeout = input_timeout
        self._tasks: set[asyncio.Task[None]] = set()
        self._listen: asyncio.Task[None] | None = None
        self._listening: JsonObject | None = None
        self._acknowledged = asyncio.Event()  # the child acknowledged the listen it holds now
        self._acknowledged.set()
        router.on_unrelated = self._announced
        router.on_closed = self._closed
        router.ask_meta = facade.request_params({})["_meta"]

    def screen(self, messages: Sequence[Message]) -> tuple[list[Message], Screening]:
        """A POST's messages as the child gets them, and what is answered or taken over here."""
        forwarded: list[Message] = []
        screening = Screening()
        for message in messages:
            if message.kind is Kind.NOTIFICATION and message.method == "notifications/initialized":
                continue  # a handshake the child never had
            if message.kind is not Kind.REQUEST:
                forwarded.append(message)
                continue
            method = message.method or ""
            index = len(forwarded)
            answered = self.facade.answer_here(method, message.params)
            if answered is not None:
                screening.answered[index] = answered
                forwarded.append(message)
                if method.startswith("resources/"):
                    self.relisten()
                continue
            params = self.facade.request_params(message.params)
            forwarded.append(jsonrpc.classify({**message.body, "params": params}))
            screening.intercepted[index] = Shaper(self.facade)
            screening.continued[index] = Asker(self, method, params)
        return forwarded, screening

    # --- input requests --------------------------------------------------------------------

    def ask_client(self, asker: Asker, gateway_id: int, exchange: Exchange, needed: InputNeeded, rounds: int) -> None:
        task = asyncio.get_running_loop().create_task(self._ask(asker, gateway_id, exchange, needed, rounds))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ask(self, asker: Asker, gateway_id: int, exchange: Exchange, needed: InputNeeded, rounds: int) -> None:
        router = self.router
        if rounds > MAX_ROUNDS:
            router.fail(gateway_id, jsonrpc.INTERNAL_ERROR, "The MCP server kept asking for input")
            return
        answers: JsonObject = {}
        try:
            for key, (method, params) in needed.requests.items():
                async with asyncio.timeout(self._input_timeout):
                    answer = await router.ask_client(exchange, method, params)
                result = answer.get("result")
                if not isinstance(result, dict):
                    error = answer.get("error")
                    text = error.get("message") if isinstance(error, dict) else None
                    router.fail(
                        gateway_id, jsonrpc.INTERNAL_ERROR, f"The client refused {method}: {text or 'no answer'}"
                    )
                    return
                answers[key] = result
        except TimeoutError:
            router.fail(gateway_id, jsonrpc.REQUEST_TIMEOUT, ASKED_TOO_LONG)
            return
        except ChildGone:
            return  # the session ended: its requests were answered with why
        method, params = asker.retried(answers, needed.state)
        with contextlib.suppress(ChildGone):
            router.retry(gateway_id, method, params)

    # --- the listen held on the child ------------------------------------------------------

    def relisten(self) -> None:
        """Hold a listen on the child that asks for what the facade's filter says now."""
        wanted = self.facade.listen_filter()
        if wanted == self._listening:
            return
        if self._listen is not None:
            self._listen.cancel()  # the child is told (notifications/cancelled)
            self._listen = None
        self._listening = wanted
        self._acknowledged = asyncio.Event()
        if wanted is None:
            self._acknowledged.set()
        else:
            self._listen = asyncio.get_running_loop().create_task(self._hold(wanted))

    async def settled(self) -> None:
        """Wait (at most `ACK_WAIT`) until the child acknowledged the listen that asks for the
        client's subscriptions now: an update the client's next request causes is not lost."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ACK_WAIT):
                await self._acknowledged.wait()

    async def _hold(self, wanted: JsonObject) -> None:
        if await listen.hold(self.router, wanted) and self._listening is wanted:
            await asyncio.sleep(listen.RELISTEN_DELAY)  # the child ended it: asked for again
            if self._listening is wanted:
                self._listening = self._listen = None
                self.relisten()

    def _announced(self, message: Message) -> None:
        if message.method == ACKNOWLEDGED:
            self._acknowledged.set()
            return
        shaped = self.facade.notification(message.method or "", message.params)
        if shaped is not None:
            self.router.get_stream.push(jsonrpc.encode(shaped))

    def _closed(self) -> None:
        if self._listen is not None:
            self._listen.cancel()
        for task in self._tasks:
            task.cancel()
