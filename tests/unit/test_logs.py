from __future__ import annotations

import json
import logging
import sys

from aiohttp.http_exceptions import BadHttpMessage

from gateway.observe.logs import JsonFormatter, MalformedRequests, TextFormatter


def _record() -> logging.LogRecord:
    record = logging.makeLogRecord(
        {"name": "gateway.sessions", "levelname": "INFO", "msg": "session %s", "args": ("open",)}
    )
    record.session = "abc12345"
    record.pid = 42
    return record


def test_json_lines_carry_extra_fields() -> None:
    entry = json.loads(JsonFormatter().format(_record()))
    assert entry["msg"] == "session open"
    assert (entry["level"], entry["logger"], entry["session"], entry["pid"]) == (
        "info",
        "gateway.sessions",
        "abc12345",
        42,
    )
    assert entry["ts"].endswith("Z")


def test_text_lines_carry_extra_fields() -> None:
    line = TextFormatter().format(_record())
    assert line.endswith("INFO gateway.sessions: session open session=abc12345 pid=42")


def _refused(message: str) -> logging.LogRecord:
    try:
        raise BadHttpMessage(message)
    except BadHttpMessage:
        return logging.LogRecord(
            "aiohttp.server", logging.ERROR, __file__, 1, "Error handling request", (), sys.exc_info()
        )


def test_a_malformed_request_is_one_line_without_a_traceback_and_floods_are_thinned() -> None:
    thinning = MalformedRequests(interval=3600.0)
    first = _refused("Invalid header value char")
    assert thinning.filter(first)
    assert (first.levelno, first.exc_info) == (logging.INFO, None)
    assert first.getMessage() == "malformed HTTP request refused: Invalid header value char"
    assert not any(thinning.filter(_refused("again")) for _ in range(50))
    other = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "a real error", (), None)
    assert thinning.filter(other)
    assert other.levelno == logging.ERROR  # anything but a malformed request is left alone


def test_the_held_back_reports_are_counted_in_the_next_line() -> None:
    thinning = MalformedRequests(interval=0.0)
    thinning._held = 7
    record = _refused("bad framing")
    assert thinning.filter(record)
    assert record.getMessage().endswith("(7 more since the last report)")
