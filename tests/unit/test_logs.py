from __future__ import annotations

import json
import logging

from gateway.logs import JsonFormatter, TextFormatter


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
