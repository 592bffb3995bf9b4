"""The audit log: one JSON line per security-relevant event, and the event feed metrics count.

Every event passes through `Audit.record`. It builds the envelope (schema version, time, event
name, the request's id and trace, client address, principal, session, child pid), redacts every
string that came from outside the gateway, writes one line, and hands the event to listeners
(the metrics). Invariants:
- a line never holds a bearer token, nor any string shaped like a secret (see redaction.py);
- tool arguments appear only as a digest unless the operator opts in, and then redacted;
- recording never raises into the request path, and costs nothing when nobody listens.

Lines go to stdout (the container way), stderr, or a file (reopened when logrotate moves it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import logging.handlers
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from gateway import requestid
from gateway.auth import Principal
from gateway.redaction import redact

SCHEMA_VERSION: Final = 1
# Characters of a session id written down: enough to follow one session, not enough to be one.
SESSION_LABEL_CHARS: Final = 8
# Hex characters of an argument digest: equal arguments are recognisable, their content is not.
DIGEST_CHARS: Final = 16

EventName = Literal[
    "config.loaded",
    "auth.ok",
    "auth.fail",
    "session.open",
    "session.close",
    "mcp.request",
    "ratelimit.block",
    "child.spawn",
    "child.exit",
    "child.violation",
]
# Fields whose values the gateway makes itself, in formats that cannot carry a secret; every other
# string is redacted (trace ids are 32 hex digits, which the redaction rules would mask, and
# skipping what needs no redaction keeps an audit line cheap).
_OWN_FIELDS: Final = frozenset(
    {
        "schema",
        "ts",
        "event",
        "trace_id",
        "span_id",
        "session",
        "pid",
        "outcome",
        "arguments_digest",
        "fingerprint",
        "reason",
        "kind",
        "signal",
    }
)

Listener = Callable[[EventName, Mapping[str, Any]], None]


class AuditedSession(Protocol):
    """What an event may say about the session it concerns."""

    id: str
    client_ip: str
    principal: Principal

    @property
    def pid(self) -> int | None: ...


def argument_digest(arguments: object) -> str:
    """A stable digest of tool arguments: equal arguments, equal digests; nothing readable."""
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:DIGEST_CHARS]


# The parameter naming what a request acts on, for the methods that act on something.
_SUBJECT_PARAM: Final = {
    "tools/call": "name",
    "prompts/get": "name",
    "resources/read": "uri",
    "resources/subscribe": "uri",
    "resources/unsubscribe": "uri",
}
# Longest name or URI written to an audit line (a client chooses them).
MAX_NAME_CHARS: Final = 256


def describe_request(method: str, params: Mapping[str, Any], *, with_arguments: bool) -> dict[str, Any]:
    """The audit details of one MCP request: its method, what it acts on, and its arguments
    (a digest unless `with_arguments`)."""
    details: dict[str, Any] = {"method": method[:MAX_NAME_CHARS]}
    param = _SUBJECT_PARAM.get(method)
    if param is not None:
        name = params.get(param)
        details[param] = name[:MAX_NAME_CHARS] if isinstance(name, str) else None
        if method in ("tools/call", "prompts/get"):
            arguments = params.get("arguments")
            if with_arguments:
                details["arguments"] = arguments
            elif arguments is not None:
                details["arguments_digest"] = argument_digest(arguments)
    return details


def _timestamp(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


class Audit:
    """Records events: to the audit log when one is configured, and to every listener."""

    def __init__(self, handler: logging.Handler | None, *, tool_arguments: bool = False) -> None:
        self.tool_arguments = tool_arguments
        self._listeners: list[Listener] = []
        # A handler of its own, outside the logging tree: audit lines never mix with, nor get
        # filtered by, the operational log configuration.
        self._handler = handler
        if handler is not None:
            handler.setFormatter(logging.Formatter("%(message)s"))

    @classmethod
    def to(cls, destination: str, *, tool_arguments: bool = False) -> Audit:
        """An audit log writing to `stdout`, `stderr`, a file path, or nowhere (`off`)."""
        handler: logging.Handler | None
        if destination == "off":
            handler = None
        elif destination in ("stdout", "stderr"):
            handler = logging.StreamHandler(sys.stdout if destination == "stdout" else sys.stderr)
        else:
            handler = logging.handlers.WatchedFileHandler(Path(destination), encoding="utf-8")
        return cls(handler, tool_arguments=tool_arguments)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    @property
    def active(self) -> bool:
        return self._handler is not None or bool(self._listeners)

    def record(
        self,
        event: EventName,
        *,
        session: AuditedSession | None = None,
        principal: Principal | None = None,
        **fields: Any,
    ) -> None:
        """Record one event. `fields` are its details; the envelope is filled in here, from the
        session it concerns, else the request being handled (`principal` names who, when the
        request does not know yet)."""
        if not self.active:
            return
        try:
            for listener in self._listeners:
                listener(event, fields)
            if self._handler is not None:
                line = self._line(event, session, principal, fields)
                self._handler.handle(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))
        except Exception:  # an audit failure must never fail the request being audited
            logging.getLogger("gateway.audit").exception("cannot record audit event %s", event)

    def _line(
        self,
        event: EventName,
        session: AuditedSession | None,
        principal: Principal | None,
        fields: Mapping[str, Any],
    ) -> str:
        context = requestid.current()
        if principal is None:
            principal = session.principal if session is not None else context.principal if context else None
        entry: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "ts": _timestamp(time.time()),
            "event": event,
            "request_id": None,
            "trace_id": context.trace_id if context else None,
            "span_id": context.span_id if context else None,
            "client_ip": session.client_ip if session is not None else context.client_ip if context else None,
            "principal": principal.subject if principal is not None else None,
            "issuer": (principal.issuer or None) if principal is not None else None,
            "session": session.id[:SESSION_LABEL_CHARS] if session is not None else None,
            "pid": session.pid if session is not None else None,
        }
        by_key = event != "config.loaded"  # the configuration's secrets are masked at the source
        for name, value in fields.items():
            entry[name] = value
        for name, value in entry.items():
            if name not in _OWN_FIELDS and value is not None:
                entry[name] = redact(value, by_key=by_key)
        if context is not None:  # a request id the gateway made needs no redaction
            chosen = context.request_id_chosen_by_client
            entry["request_id"] = redact(context.request_id) if chosen else context.request_id
        return json.dumps(entry, ensure_ascii=False, separators=(",", ":"), default=str)

    def close(self) -> None:
        if self._handler is not None:
            self._handler.close()
