"""A handshake-era client's session with a server that speaks only 2026-07-28: the translation,
without I/O, that the gateway (a legacy session whose child refuses `initialize`) and the
`connect` bridge (a legacy stdio client of a modern-only remote server) both drive.

What the facade does:
- `initialize` is answered from the server's `DiscoverResult`: its capabilities, instructions
  and identity, at the handshake version the client asked for when it is one the gateway speaks;
- every request forwarded carries the 2026-07-28 envelope: the version, the capabilities and
  identity the client declared at `initialize`, and the log level it set with `logging/setLevel`
  (until it sets one, every level: a handshake-era server sends the log messages it chooses, and
  a 2026-07-28 one none unless asked);
- what 2026-07-28 removed is answered here: `ping`, `logging/setLevel`, and `resources/subscribe`
  and `resources/unsubscribe`, which change the filter of the listen stream the driver holds open
  on the server (`listen_filter`), whose notifications reach the client as the session's own;
- a result `input_required` is the server asking the client: its input requests become requests
  to the client (`InputNeeded`), and the answers a retry of the same request (`retry_params`);
- results lose what only 2026-07-28 has (`resultType`, `ttlMs`, `cacheScope`, the server's
  identity in `_meta`); notifications lose their subscription id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from gateway.eras.envelope import (
    CLIENT_CAPABILITIES_KEY,
    CLIENT_INFO_KEY,
    LOG_LEVEL_KEY,
    MODERN_VERSION,
    PROTOCOL_VERSION_KEY,
    SERVER_INFO_KEY,
    SUBSCRIPTION_ID_KEY,
)
from gateway.eras.translate import INPUT_REQUIRED, LEGACY_VERSION
from gateway.jsonrpc import JsonObject

# The handshake versions a facade answers `initialize` with (the client's own when it is one).
HANDSHAKE_VERSIONS: Final = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
# Each list-changed notification a listen asks for, by the capability that offers it.
LIST_CHANGED: Final[Mapping[str, str]] = {
    "tools": "toolsListChanged",
    "prompts": "promptsListChanged",
    "resources": "resourcesListChanged",
}
RESULT_ONLY_MODERN: Final = ("resultType", "ttlMs", "cacheScope")
ACKNOWLEDGED: Final = "notifications/subscriptions/acknowledged"
DEFAULT_LOG_LEVEL: Final = "debug"


@dataclass(frozen=True, slots=True)
class InputNeeded:
    """The server asks the client before it answers: `requests` (key → method, params) to send
    the client, then a retry of the original request with the answers and `state`."""

    requests: dict[str, tuple[str, JsonObject]]
    state: str | None


class Facade:
    """One legacy client's session with a modern-only server."""

    def __init__(self, discovery: JsonObject) -> None:
        self._discovery = discovery
        capabilities = discovery.get("capabilities")
        self.server_capabilities: JsonObject = capabilities if isinstance(capabilities, dict) else {}
        self._client_capabilities: JsonObject = {}
        self._client_info: JsonObject | None = None
        self._log_level = DEFAULT_LOG_LEVEL
        self.subscriptions: set[str] = set()

    # --- the handshake ---------------------------------------------------------------------

    def initialize(self, params: JsonObject) -> JsonObject:
        """The `InitializeResult` for the client's `initialize` params (which it remembers)."""
        capabilities = params.get("capabilities")
        self._client_capabilities = capabilities if isinstance(capabilities, dict) else {}
        info = params.get("clientInfo")
        self._client_info = info if isinstance(info, dict) else None
        requested = params.get("protocolVersion")
        version = requested if requested in HANDSHAKE_VERSIONS else LEGACY_VERSION
        result: JsonObject = {"protocolVersion": version, "capabilities": self._handshake_capabilities()}
        meta = self._discovery.get("_meta")
        server_info = meta.get(SERVER_INFO_KEY) if isinstance(meta, dict) else None
        result["serverInfo"] = server_info if isinstance(server_info, dict) else {"name": "mcp-server", "version": "0"}
        if isinstance(self._discovery.get("instructions"), str):
            result["instructions"] = self._discovery["instructions"]
        return result

    def _handshake_capabilities(self) -> JsonObject:
        """The server's capabilities as a handshake states them: subscriptions and logging are
        served here (through listen, and by the envelope's log level)."""
        capabilities = {name: value for name, value in self.server_capabilities.items()}
        resources = capabilities.get("resources")
        if isinstance(resources, dict):
            capabilities["resources"] = {**resources, "subscribe": True}
        capabilities.setdefault("logging", {})
        return capabilities

    # --- client → server -------------------------------------------------------------------

    def answer_here(self, method: str, params: JsonObject) -> JsonObject | None:
        """The result of a request 2026-07-28 removed, answered here; None for one to forward.
        A subscription's change shows in `listen_filter`."""
        if method == "ping":
            return {}
        if method == "logging/setLevel":
            level = params.get("level")
            self._log_level = level if isinstance(level, str) else DEFAULT_LOG_LEVEL
            return {}
        if method in ("resources/subscribe", "resources/unsubscribe"):
            uri = params.get("uri")
            if isinstance(uri, str):
                if method == "resources/subscribe":
                    self.subscriptions.add(uri)
                else:
                    self.subscriptions.discard(uri)
            return {}
        return None

    def request_params(self, params: JsonObject) -> JsonObject:
        """A request's params with the envelope (the client's own `_meta` keys kept)."""
        meta = params.get("_meta")
        envelope: JsonObject = {
            **(meta if isinstance(meta, dict) else {}),
            PROTOCOL_VERSION_KEY: MODERN_VERSION,
            CLIENT_CAPABILITIES_KEY: self._client_capabilities,
        }
        if self._client_info is not None:
            envelope[CLIENT_INFO_KEY] = self._client_info
        envelope[LOG_LEVEL_KEY] = self._log_level
        return {**params, "_meta": envelope}

    def retry_params(self, params: JsonObject, answers: JsonObject, state: str | None) -> JsonObject:
        """The retry of a request the server asked about: the answers and its state added."""
        retried = {name: value for name, value in params.items() if name not in ("inputResponses", "requestState")}
        retried["inputResponses"] = answers
        if state is not None:
            retried["requestState"] = state
        return retried

    def listen_filter(self) -> JsonObject | None:
        """What the listen stream held on the server asks for (None: nothing to listen to)."""
        wanted: JsonObject = {}
        for capability, flag in LIST_CHANGED.items():
            offered = self.server_capabilities.get(capability)
            if isinstance(offered, dict) and offered.get("listChanged") is True:
                wanted[flag] = True
        if self.subscriptions:
            wanted["resourceSubscriptions"] = sorted(self.subscriptions)
        return wanted or None

    # --- server → client -------------------------------------------------------------------

    def result(self, result: JsonObject) -> JsonObject | InputNeeded:
        """A server's result as the client reads it, or what the server asks the client first."""
        if result.get("resultType") == INPUT_REQUIRED:
            requests: dict[str, tuple[str, JsonObject]] = {}
            asked = result.get("inputRequests")
            for key, request in asked.items() if isinstance(asked, dict) else ():
                if isinstance(request, dict) and isinstance(request.get("method"), str):
                    params = request.get("params")
                    requests[str(key)] = (request["method"], params if isinstance(params, dict) else {})
            state = result.get("requestState")
            return InputNeeded(requests, state if isinstance(state, str) else None)
        shaped = {name: value for name, value in result.items() if name not in RESULT_ONLY_MODERN}
        return without_meta(shaped, SERVER_INFO_KEY)

    def notification(self, method: str, params: JsonObject) -> JsonObject | None:
        """A notification of the server's listen stream as the session's own (None: not for the client)."""
        if method == ACKNOWLEDGED:
            return None
        if method == "notifications/resources/updated" and params.get("uri") not in self.subscriptions:
            return None
        return {"jsonrpc": "2.0", "method": method, "params": without_meta(params, SUBSCRIPTION_ID_KEY)}


def without_meta(value: JsonObject, key: str) -> JsonObject:
    """`value` with `key` gone from its `_meta` (and `_meta` gone when nothing else is in it);
    `value` itself when there is nothing to remove."""
    meta = value.get("_meta")
    if not isinstance(meta, dict) or key not in meta:
        return value
    shaped = {name: item for name, item in value.items() if name != "_meta"}
    kept = {name: item for name, item in meta.items() if name != key}
    if kept:
        shaped["_meta"] = kept
    return shaped
