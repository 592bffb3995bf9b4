"""`subscriptions/listen` for 2026-07-28 clients: each principal's listen streams, fed by what any
of that principal's children announce.

A listen stream is an SSE response that stays open: first `notifications/subscriptions/
acknowledged` (the subset of what was asked that the server can announce), then every list
change and resource update it asked for, each tagged with its subscription id (the listen
request's id). A child announces the same way whatever its era: a legacy child's unsolicited
notifications (after `resources/subscribe` on it for the URIs asked), a modern child's own
listen stream, which the gateway holds open on it with everything its principal's listeners
ask for. So a list change caused through one child reaches a listen held on another.

Invariants:
- A listener receives only the kinds it asked for and the server can announce, and only the
  announcements of its own principal's children.
- The resources a principal's children are subscribed to are the union of what its listeners
  asked for: a URI is subscribed on a child when the first listener asks for it (on a child
  started later, when it starts), and unsubscribed when the last one that asked has gone.
- A listener whose client stops reading is ended (`Stream` congestion), never buffered without
  bound; one whose child ends gets the listen request's result, the graceful end. A principal
  holds at most `MAX_PER_PRINCIPAL` listen streams, each watching at most `MAX_RESOURCES`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from gateway import jsonrpc
from gateway.eras.envelope import SUBSCRIPTION_ID_KEY
from gateway.eras.facade import ACKNOWLEDGED, without_meta
from gateway.jsonrpc import JsonObject, Message, RequestId
from gateway.sessions.child import ChildGone
from gateway.sessions.streams import Stream

if TYPE_CHECKING:
    from gateway.sessions.router import Router

log = logging.getLogger("gateway.listen")

# The resources one listen may watch (those beyond are not acknowledged: the client knows), and
# the listen streams one principal may hold open at once.
MAX_RESOURCES: Final = 64
MAX_PER_PRINCIPAL: Final = 16
# Characters of a child's error quoted in a log line.
QUOTED_ERROR: Final = 300
# Seconds before a listen a child ended on its own is asked for again.
RELISTEN_DELAY: Final = 1.0
RESOURCE_UPDATED: Final = "notifications/resources/updated"
# Each list-changed notification, the filter key that asks for it and the capability that offers it.
LIST_CHANGES: Final = {
    "notifications/tools/list_changed": ("toolsListChanged", "tools"),
    "notifications/prompts/list_changed": ("promptsListChanged", "prompts"),
    "notifications/resources/list_changed": ("resourcesListChanged", "resources"),
}


def honored(requested: object, capabilities: JsonObject) -> JsonObject:
    """What of a listen's filter a server of `capabilities` can announce (its acknowledgement)."""
    asked = requested if isinstance(requested, dict) else {}
    granted: JsonObject = {}
    for flag, capability in LIST_CHANGES.values():
        offered = capabilities.get(capability)
        if asked.get(flag) is True and isinstance(offered, dict) and offered.get("listChanged") is True:
            granted[flag] = True
    uris = asked.get("resourceSubscriptions")
    resources = capabilities.get("resources")
    if isinstance(uris, list) and isinstance(resources, dict) and resources.get("subscribe") is True:
        kept = [uri for uri in dict.fromkeys(uris) if isinstance(uri, str)][:MAX_RESOURCES]
        if kept:
            granted["resourceSubscriptions"] = kept
    return granted


@dataclass(slots=True, eq=False)
class Listener:
    """One open listen stream."""

    subscription: RequestId  # the listen request's id, which tags everything sent on it
    key: str  # whose: the principal's children key
    child: str  # the (secret) session id of the child that keeps it alive
    flags: frozenset[str]
    uris: frozenset[str]
    stream: Stream = field(init=False)

    def __post_init__(self) -> None:
        self.stream = Stream(0, self._congested)

    def _congested(self, stream: Stream, congested: bool) -> None:
        if congested and not stream.finished:
            log.info("a listen stream's client stopped reading: the stream is ended")
            stream.finish()

    def wants(self, method: str, params: JsonObject) -> bool:
        change = LIST_CHANGES.get(method)
        if change is not None:
            return change[0] in self.flags
        return method == RESOURCE_UPDATED and params.get("uri") in self.uris

    def send(self, method: str, params: JsonObject) -> None:
        meta = params.get("_meta")
        tagged = {
            **params,
            "_meta": {**(meta if isinstance(meta, dict) else {}), SUBSCRIPTION_ID_KEY: self.subscription},
        }
        self.stream.push(jsonrpc.encode(jsonrpc.notification(method, tagged)))

    def end(self) -> None:
        """The graceful end: the listen request's result, then the stream closes."""
        if self.stream.finished:
            return
        result = {"resultType": "complete", "_meta": {SUBSCRIPTION_ID_KEY: self.subscription}}
        self.stream.push(jsonrpc.encode({"jsonrpc": "2.0", "id": self.subscription, "result": result}), final=True)


def quoted(error: object) -> str:
    """A child's error as a log line quotes it: its text, cut short."""
    text = str(error)
    return text if len(text) <= QUOTED_ERROR else text[:QUOTED_ERROR] + "…"


async def hold(router: Router, notifications: JsonObject) -> bool:
    """Hold the gateway's own listen on a modern child until it ends; True when the child ended
    it (a result, or its cancellation), so it is to be asked for again; False when refused, or
    the child is gone."""
    try:
        answer = await router.ask("subscriptions/listen", {"notifications": notifications})
    except ChildGone:
        return False
    error = answer.get("error")
    if isinstance(error, dict) and error.get("code") != jsonrpc.REQUEST_CANCELLED:
        log.warning("the MCP server refused subscriptions/listen: %s", quoted(error))
        return False
    return not router.closed


class Listeners:
    """Every principal's open listen streams."""

    def __init__(self) -> None:
        self._by_key: dict[str, set[Listener]] = {}

    def count(self, key: str) -> int:
        return len(self._by_key.get(key, ()))

    def open(self, key: str, child: str, subscription: RequestId, granted: JsonObject) -> Listener:
        flags = frozenset(flag for flag, value in granted.items() if value is True)
        uris = frozenset(granted.get("resourceSubscriptions", ()))
        listener = Listener(subscription, key, child, flags, uris)
        self._by_key.setdefault(key, set()).add(listener)
        listener.send(ACKNOWLEDGED, {"notifications": granted})
        return listener

    def close(self, listener: Listener) -> None:
        listeners = self._by_key.get(listener.key)
        if listeners is not None:
            listeners.discard(listener)
            if not listeners:
                del self._by_key[listener.key]

    def of(self, key: str) -> Iterable[Listener]:
        return self._by_key.get(key, ())

    def uris(self, key: str) -> frozenset[str]:
        """The resources the principal's listeners ask about: what its children are subscribed to."""
        return frozenset(uri for listener in self.of(key) for uri in listener.uris)

    def announce(self, key: str, message: Message) -> None:
        """A child of the principal announced something: to each of its listeners that asked."""
        method = message.method or ""
        if method == ACKNOWLEDGED:
            return  # a modern child's acknowledgement of the gateway's own listen
        params = without_meta(message.params, SUBSCRIPTION_ID_KEY)
        for listener in self.of(key):
            if listener.wants(method, params):
                listener.send(method, params)

    def child_ended(self, key: str, child: str) -> None:
        """A child ended: the listeners it kept alive get the graceful end."""
        for listener in list(self.of(key)):
            if listener.child == child:
                listener.end()
