"""The audit log: one JSON line per security-relevant event, and the event feed metrics count.

Every event passes through `Audit.record`. It builds the envelope (schema version, time, event
name, the request's id and trace, client address, principal, session, child pid), redacts every
string that came from outside the gateway, writes one line, and hands the event to listeners
(the metrics). Invariants:
- a line never holds a bearer token, nor any string shaped like a secret (see redaction.py);
- tool arguments appear only as a digest unless the operator opts in, and then redacted;
- recording never raises into the request path, and costs nothing when nobody listens.

Lines go to stdout (the container way), stderr, or a file (reopened when logrotate moves it).
The lines recorded during one turn of the event loop leave in one write at the end of that turn:
under load one system call carries many lines, and no line waits longer than the turn that made it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import sys
import time
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, Final, Literal, Protocol

from gateway import request_context
from gateway.auth import Principal
from gateway.observe.redaction import redact, redact_text

log = logging.getLogger("gateway.audit")

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
    "oauth.register",
    "oauth.signin",
    "oauth.signin_fail",
    "oauth.consent",
    "oauth.authorize",
    "oauth.grant",
    "oauth.refresh",
    "oauth.reuse",
    "oauth.revoke",
    "oauth.refused",
]
OAUTH_EVENTS: Final[tuple[EventName, ...]] = tuple(
    name for name in typing.get_args(EventName) if name.startswith("oauth.")
)
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
        "family",
        "consent",
        "decision",
        "endpoint",
        "error",
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


class _Timestamps:
    """ISO 8601 UTC times with milliseconds; the part up to the second is formatted once per second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int(now * 1000) % 1000:03d}Z"


class LineSink:
    """Where audit lines go: a stream, or a file reopened when it is moved or deleted.

    `write` queues a line; the queue is written at the end of the event loop's turn (at once when
    no loop runs, as at startup and shutdown). A failed write is logged and loses only its batch.
    """

    def __init__(self, stream: IO[str] | None = None, path: Path | None = None) -> None:
        if (stream is None) == (path is None):
            raise ValueError("a sink writes to a stream or to a file, not both")
        self._path = path
        self._stream: IO[str] = stream if stream is not None else self._open()
        self._owned = stream is None
        self._pending: list[str] = []

    def _open(self) -> IO[str]:
        assert self._path is not None  # noqa: S101 - only file sinks reopen
        return self._path.open("a", encoding="utf-8")

    def write(self, line: str) -> None:
        self._pending.append(line)
        if len(self._pending) > 1:
            return  # a flush is already scheduled
        try:
            asyncio.get_running_loop().call_soon(self.flush)
        except RuntimeError:  # no running loop: nothing would flush later
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        try:
            if self._owned:
                self._reopen_if_moved()
            self._stream.write("\n".join(lines) + "\n")
            self._stream.flush()
        except (OSError, ValueError) as exc:  # a full disk, a closed pipe: the request still goes on
            log.error("cannot write %d audit lines: %s", len(lines), exc)

    def _reopen_if_moved(self) -> None:
        """Reopen the file when logrotate (or anyone) renamed or deleted it since it was opened."""
        assert self._path is not None  # noqa: S101 - only file sinks are owned
        try:
            on_disk = os.stat(self._path)
        except FileNotFoundError:
            on_disk = None
        opened = os.fstat(self._stream.fileno())
        if on_disk is None or (on_disk.st_dev, on_disk.st_ino) != (opened.st_dev, opened.st_ino):
            self._stream.close()
            self._stream = self._open()

    def close(self) -> None:
        self.flush()
        if self._owned:
            self._stream.close()


class Audit:
    """Records events: to the audit log when one is configured, and to every listener."""

    def __init__(self, sink: LineSink | None, *, tool_arguments: bool = False) -> None:
        self.tool_arguments = tool_arguments
        self._listeners: list[Listener] = []
        # A sink of its own, outside the logging tree: audit lines never mix with, nor get
        # filtered by, the operational log configuration.
        self._sink = sink
        self._timestamps = _Timestamps()

    @classmethod
    def to(cls, destination: str, *, tool_arguments: bool = False) -> Audit:
        """An audit log writing to `stdout`, `stderr`, a file path, or nowhere (`off`)."""
        sink: LineSink | None
        if destination == "off":
            sink = None
        elif destination in ("stdout", "stderr"):
            sink = LineSink(stream=sys.stdout if destination == "stdout" else sys.stderr)
        else:
            sink = LineSink(path=Path(destination))
        return cls(sink, tool_arguments=tool_arguments)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    @property
    def active(self) -> bool:
        return self._sink is not None or bool(self._listeners)

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
            if self._sink is not None:
                self._sink.write(self._line(event, session, principal, fields))
        except Exception:  # an audit failure must never fail the request being audited
            log.exception("cannot record audit event %s", event)

    def _line(
        self,
        event: EventName,
        session: AuditedSession | None,
        principal: Principal | None,
        fields: Mapping[str, Any],
    ) -> str:
        context = request_context.current()
        if principal is None:
            principal = session.principal if session is not None else context.principal if context else None
        client_ip = session.client_ip if session is not None else context.client_ip if context else None
        request_id = None
        if context is not None:  # a request id the gateway made needs no redaction
            request_id = redact_text(context.request_id) if context.request_id_chosen_by_client else context.request_id
        entry: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "ts": self._timestamps.format(time.time()),
            "event": event,
            "request_id": request_id,
            "trace_id": context.trace_id if context else None,
            "span_id": context.span_id if context else None,
            "client_ip": redact_text(client_ip) if client_ip is not None else None,
            "principal": redact_text(principal.subject) if principal is not None else None,
            "issuer": redact_text(principal.issuer) if principal is not None and principal.issuer else None,
            "session": session.id[:SESSION_LABEL_CHARS] if session is not None else None,
            "pid": session.pid if session is not None else None,
        }
        by_key = event != "config.loaded"  # the configuration's secrets are masked at the source
        for name, value in fields.items():
            if name in _OWN_FIELDS or value is None or isinstance(value, int | float):  # bool is an int
                entry[name] = value
            elif isinstance(value, str):
                entry[name] = redact_text(value)
            else:
                entry[name] = redact(value, by_key=by_key)
        return json.dumps(entry, ensure_ascii=False, separators=(",", ":"), default=str)

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()
