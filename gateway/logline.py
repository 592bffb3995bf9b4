"""One log line: a record and its `extra=` fields as a JSON object or as text, and the fingerprint
a secret is logged as. A leaf shared by the server (`gateway.observe.logs`) and `connect`.

Fields passed with `extra=` become keys of the JSON object (or `key=value` pairs after the text).
Nothing here ever formats a credential; callers log fingerprints, not tokens.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from typing import Any, Final

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD: Final = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def fingerprint(secret: str) -> str:
    """A short, non-reversible name for a token (or session id), safe to log."""
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


def record_extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a record was given with `extra=`."""
    return {key: value for key, value in vars(record).items() if key not in _STANDARD}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: `ts`, `level`, `logger`, `msg`, the extras, `exc`."""

    def extras(self, record: logging.LogRecord) -> dict[str, Any]:
        return record_extras(record)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(self.extras(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value …` for people reading a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def extras(self, record: logging.LogRecord) -> dict[str, Any]:
        return record_extras(record)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = " ".join(f"{key}={value}" for key, value in self.extras(record).items())
        return f"{line} {extras}" if extras else line


def to_stderr(formatter: logging.Formatter, level: str) -> None:
    """Send every log record at `level` or above to stderr through `formatter`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
