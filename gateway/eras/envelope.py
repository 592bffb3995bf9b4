"""The 2026-07-28 request: its `_meta` envelope, its routing headers, and the order of the checks.

A modern request carries `params._meta["io.modelcontextprotocol/protocolVersion"]` and is
checked in the order both official SDK servers use, the first failure winning: the envelope
(`-32602` when the client capabilities are missing), then the routing headers against the body
(`-32020`: `MCP-Protocol-Version`, `Mcp-Method`, and `Mcp-Name` for the three methods that name
something, each present exactly once), then the version itself (`-32022`, naming what is
supported), then the method (`-32601` for one this era removed). Each refusal carries the HTTP
status the spec gives its code.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from gateway import jsonrpc
from gateway.jsonrpc import JsonObject

MODERN_VERSION: Final = "2026-07-28"
MODERN_VERSIONS: Final = (MODERN_VERSION,)

# The envelope's keys in `params._meta` (a client's), and those of a result's `_meta` (a server's).
PROTOCOL_VERSION_KEY: Final = "io.modelcontextprotocol/protocolVersion"
CLIENT_CAPABILITIES_KEY: Final = "io.modelcontextprotocol/clientCapabilities"
CLIENT_INFO_KEY: Final = "io.modelcontextprotocol/clientInfo"
LOG_LEVEL_KEY: Final = "io.modelcontextprotocol/logLevel"
SERVER_INFO_KEY: Final = "io.modelcontextprotocol/serverInfo"
SUBSCRIPTION_ID_KEY: Final = "io.modelcontextprotocol/subscriptionId"
ENVELOPE_KEYS: Final = frozenset({PROTOCOL_VERSION_KEY, CLIENT_CAPABILITIES_KEY, CLIENT_INFO_KEY, LOG_LEVEL_KEY})

# The routing headers (names are case-insensitive; these are the spellings the gateway writes).
VERSION_HEADER: Final = "MCP-Protocol-Version"
METHOD_HEADER: Final = "Mcp-Method"
NAME_HEADER: Final = "Mcp-Name"

# The error codes of the 2026-07-28 era.
HEADER_MISMATCH: Final = -32020
MISSING_CLIENT_CAPABILITY: Final = -32021
UNSUPPORTED_VERSION: Final = -32022

# Methods a modern request names something with (`Mcp-Name` mirrors it), which are also the only
# ones whose answer may ask the client for input (multi round-trip requests).
NAMED_BY: Final[Mapping[str, str]] = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
# Methods of the handshake era that 2026-07-28 removed: under the envelope, unknown methods.
REMOVED_METHODS: Final = frozenset(
    {"initialize", "ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"}
)
# The HTTP status of a modern JSON-RPC error, by its code; any other error is a 200 answer.
ERROR_STATUS: Final[Mapping[int, int]] = {
    jsonrpc.PARSE_ERROR: 400,
    jsonrpc.INVALID_REQUEST: 400,
    jsonrpc.INVALID_PARAMS: 400,
    HEADER_MISMATCH: 400,
    MISSING_CLIENT_CAPABILITY: 400,
    UNSUPPORTED_VERSION: 400,
    jsonrpc.METHOD_NOT_FOUND: 404,
}

_SENTINEL: Final = re.compile(r"=\?base64\?(.*)\?=", re.DOTALL)

# Reads every value a request carries for one header name (more than one: it was repeated).
HeaderValues = Callable[[str], list[str]]


@dataclass(frozen=True, slots=True)
class Envelope:
    """What a modern request says about its client."""

    version: str
    capabilities: JsonObject
    client_info: JsonObject | None
    log_level: str | None

    def declares(self, capability: str) -> bool:
        return isinstance(self.capabilities.get(capability), dict)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A modern request refused before it reaches a server: its JSON-RPC error and HTTP status."""

    code: int
    message: str
    data: JsonObject | None = None

    @property
    def status(self) -> int:
        return ERROR_STATUS.get(self.code, 400)


def is_modern(params: JsonObject) -> bool:
    """Whether request params carry the 2026-07-28 envelope (a protocol version in `_meta`)."""
    meta = params.get("_meta")
    return isinstance(meta, dict) and PROTOCOL_VERSION_KEY in meta


def decode_header_value(value: str) -> str | None:
    """A header value as the text it stands for: `=?base64?…?=` decoded (canonical Base64 of
    UTF-8 only), anything else as it is; None for a sentinel that does not decode exactly."""
    match = _SENTINEL.fullmatch(value)
    if match is None:
        return value
    payload = match.group(1)
    try:
        raw = base64.b64decode(payload, validate=True)
        text = raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    # b64decode accepts non-zero padding bits; only the one canonical spelling names the text.
    if base64.b64encode(raw).decode("ascii") != payload:
        return None
    return text


def encode_header_value(text: str) -> str:
    """The header spelling of `text`: as it is when it survives a header unchanged, else the sentinel."""
    if re.fullmatch(r"[\x20-\x7e]*", text) and text == text.strip() and _SENTINEL.fullmatch(text) is None:
        return text
    return "=?base64?" + base64.b64encode(text.encode("utf-8")).decode("ascii") + "?="


def check(method: str, params: JsonObject, headers: HeaderValues) -> Envelope | Refusal:
    """Check a modern request (one whose params carry a protocol version in `_meta`)."""
    meta: dict[str, Any] = params["_meta"]
    if CLIENT_CAPABILITIES_KEY not in meta:
        return Refusal(jsonrpc.INVALID_PARAMS, f"params._meta is missing {CLIENT_CAPABILITIES_KEY}")
    capabilities = meta[CLIENT_CAPABILITIES_KEY]
    if not isinstance(capabilities, dict):
        return Refusal(jsonrpc.INVALID_PARAMS, f"params._meta {CLIENT_CAPABILITIES_KEY} must be an object")
    version = meta[PROTOCOL_VERSION_KEY]
    mismatch = _header_mismatch(method, params, version, headers)
    if mismatch is not None:
        return Refusal(HEADER_MISMATCH, mismatch)
    if not isinstance(version, str):
        return Refusal(jsonrpc.INVALID_PARAMS, "the protocol version in params._meta must be a string")
    if version not in MODERN_VERSIONS:
        return Refusal(
            UNSUPPORTED_VERSION,
            "Unsupported protocol version",
            {"supported": list(MODERN_VERSIONS), "requested": version},
        )
    if method in REMOVED_METHODS:
        return Refusal(jsonrpc.METHOD_NOT_FOUND, f"Method not found: {method} does not exist in {version}")
    client_info = meta.get(CLIENT_INFO_KEY)
    level = meta.get(LOG_LEVEL_KEY)
    return Envelope(
        version,
        capabilities,
        client_info if isinstance(client_info, dict) else None,
        level if isinstance(level, str) else None,
    )


def _header_mismatch(method: str, params: JsonObject, version: object, headers: HeaderValues) -> str | None:
    """What disagrees between the routing headers and the body, if anything."""
    expected: list[tuple[str, object]] = [(VERSION_HEADER, version), (METHOD_HEADER, method)]
    named_by = NAMED_BY.get(method)
    if named_by is not None and named_by in params:
        expected.append((NAME_HEADER, params[named_by]))
    for header, value in expected:
        values = headers(header)
        if not values:
            return f"the {header} header is required and must match the request body"
        if len(values) > 1:
            return f"the {header} header must be sent once"
        decoded = values[0] if header != NAME_HEADER else decode_header_value(values[0])
        if decoded != value:
            return f"the {header} header does not match the request body"
    return None
