"""The server's log output: one JSON object per line (default) or plain text, to stderr.

Lines are formatted as `gateway.logline` says, and a record made while a request is handled names
it (`request_id`), as the audit log does. What a client can make the gateway log is bounded: a
malformed HTTP request (which aiohttp reports with a traceback) is one line without one, and at
most one such line per `MALFORMED_LOG_INTERVAL`.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

from aiohttp.http_exceptions import HttpProcessingError

from gateway import logline, request_context

# At most one "malformed request" line per this many seconds; the ones held back are counted.
MALFORMED_LOG_INTERVAL: Final = 10.0
# Characters of aiohttp's description of a malformed request kept in that line.
MALFORMED_DETAIL_CHARS: Final = 200


class _NamesTheRequest:
    """A record made while a request is handled carries its `request_id`."""

    def extras(self, record: logging.LogRecord) -> dict[str, Any]:
        extras = logline.record_extras(record)
        context = request_context.current()
        if context is not None:
            extras.setdefault("request_id", context.request_id)
        return extras


class JsonFormatter(_NamesTheRequest, logline.JsonFormatter):
    """`gateway.logline.JsonFormatter`, naming the request being handled."""


class TextFormatter(_NamesTheRequest, logline.TextFormatter):
    """`gateway.logline.TextFormatter`, naming the request being handled."""


class MalformedRequests(logging.Filter):
    """On aiohttp's server logger: a request refused as malformed HTTP (bad header bytes, bad
    framing, a content coding it cannot decode) is the client's doing, not the gateway's error.
    Its record becomes one INFO line without a traceback, and such lines are thinned to one per
    interval, so a client sending garbage cannot flood the log."""

    def __init__(self, interval: float = MALFORMED_LOG_INTERVAL) -> None:
        super().__init__()
        self._interval = interval
        self._next = 0.0
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        cause = error.__cause__ if error is not None else None
        if not isinstance(error, HttpProcessingError) and not isinstance(cause, HttpProcessingError):
            return True
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return False
        self._next = now + self._interval
        refused = error if isinstance(error, HttpProcessingError) else cause
        detail = " ".join(str(getattr(refused, "message", "") or refused).split())[:MALFORMED_DETAIL_CHARS]
        record.msg = "malformed HTTP request refused: %s%s"
        record.args = (detail, f" ({self._held} more since the last report)" if self._held else "")
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.exc_info = record.exc_text = None
        self._held = 0
        return True


def configure(level: str, fmt: str) -> None:
    logline.to_stderr(JsonFormatter() if fmt == "json" else TextFormatter(), level)
    # aiohttp's access log repeats every request at INFO; keep it for debugging only.
    logging.getLogger("aiohttp.access").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(existing, MalformedRequests) for existing in server.filters):
        server.addFilter(MalformedRequests())
