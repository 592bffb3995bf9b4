"""Translation between a modern (2026-07-28) client and a legacy (handshake-era) server.

Toward the server a request loses the modern `_meta` keys (others, such as `progressToken`,
stay). Toward the client a result gains what 2026-07-28 requires of every result: `resultType`,
the server's identity in `_meta`, and on list and read results the caching hints `ttlMs` and
`cacheScope`. `server/discover` is synthesised from the server's `InitializeResult`.

Caching hints the gateway adds are the conservative ones (`ttlMs: 0`, `"private"`): a legacy
server says nothing about how long its lists hold, nor whether they differ per user.
"""

from __future__ import annotations

from typing import Final

from gateway.eras.envelope import (
    CLIENT_CAPABILITIES_KEY,
    CLIENT_INFO_KEY,
    ENVELOPE_KEYS,
    MODERN_VERSION,
    MODERN_VERSIONS,
    PROTOCOL_VERSION_KEY,
    SERVER_INFO_KEY,
)
from gateway.jsonrpc import JsonObject

# The handshake version the gateway speaks to a legacy server on behalf of modern clients.
LEGACY_VERSION: Final = "2025-11-25"
# Results that must say how long a client may cache them.
CACHEABLE: Final = frozenset(
    {
        "server/discover",
        "tools/list",
        "prompts/list",
        "resources/list",
        "resources/templates/list",
        "resources/read",
    }
)
COMPLETE: Final = "complete"
INPUT_REQUIRED: Final = "input_required"
# The logging levels of RFC 5424, least severe first: a request that set a level receives the
# messages at that level and above.
LOG_LEVELS: Final = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")


def discover_request(client_info: JsonObject) -> JsonObject:
    """The params of a `server/discover` the gateway sends as a child's first message."""
    return {
        "_meta": {
            PROTOCOL_VERSION_KEY: MODERN_VERSION,
            CLIENT_CAPABILITIES_KEY: {},
            CLIENT_INFO_KEY: client_info,
        }
    }


def modern_discovery(answer: JsonObject) -> JsonObject | None:
    """The `DiscoverResult` of a probe's answer when it names 2026-07-28; None for anything else
    (an error, an answer of another shape, a server of other versions only)."""
    result = answer.get("result")
    if not isinstance(result, dict):
        return None
    versions = result.get("supportedVersions")
    if not isinstance(versions, list) or not any(version in MODERN_VERSIONS for version in versions):
        return None
    return result


def initialize_request(client_info: JsonObject, capabilities: JsonObject) -> JsonObject:
    """The params of the `initialize` the gateway sends a legacy child serving modern clients."""
    return {"protocolVersion": LEGACY_VERSION, "capabilities": capabilities, "clientInfo": client_info}


def discovery_from_initialize(result: JsonObject) -> JsonObject:
    """A `DiscoverResult` describing a legacy server, from its `InitializeResult`."""
    capabilities = result.get("capabilities")
    discovered: JsonObject = {
        "resultType": COMPLETE,
        "supportedVersions": list(MODERN_VERSIONS),
        "capabilities": capabilities if isinstance(capabilities, dict) else {},
        "ttlMs": 0,
        "cacheScope": "private",
    }
    if isinstance(result.get("instructions"), str):
        discovered["instructions"] = result["instructions"]
    server_info = result.get("serverInfo")
    if isinstance(server_info, dict):
        discovered["_meta"] = {SERVER_INFO_KEY: server_info}
    return discovered


def legacy_params(params: JsonObject) -> JsonObject:
    """Request params as a legacy server reads them: the modern `_meta` keys removed (the
    `_meta` itself too when nothing else is in it)."""
    meta = params.get("_meta")
    if not isinstance(meta, dict):
        return params
    kept = {key: value for key, value in meta.items() if key not in ENVELOPE_KEYS}
    stripped = {key: value for key, value in params.items() if key != "_meta"}
    if kept:
        stripped["_meta"] = kept
    return stripped


def modern_result(method: str, result: JsonObject, server_info: JsonObject | None) -> JsonObject:
    """A legacy server's result as 2026-07-28 shapes it (changed in place, and returned)."""
    result.setdefault("resultType", COMPLETE)
    if method in CACHEABLE:
        result.setdefault("ttlMs", 0)
        result.setdefault("cacheScope", "private")
    if server_info is not None:
        meta = result.get("_meta")
        if meta is None:
            result["_meta"] = {SERVER_INFO_KEY: server_info}
        elif isinstance(meta, dict):
            meta.setdefault(SERVER_INFO_KEY, server_info)
    return result


def log_wanted(requested: str | None, params: JsonObject) -> bool:
    """Whether a `notifications/message` goes to a request that set `requested` as its level."""
    if requested not in LOG_LEVELS:
        return False
    level = params.get("level")
    if level not in LOG_LEVELS:
        return True  # a level the server made up: shown rather than lost
    return LOG_LEVELS.index(level) >= LOG_LEVELS.index(requested)
