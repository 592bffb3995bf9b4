from __future__ import annotations

import sys

import pytest

from gateway.config import Settings
from gateway.http.headers import OriginPolicy, accepted


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, (True, True)),
        ("", (True, True)),
        ("application/json, text/event-stream", (True, True)),
        ("application/json", (True, False)),
        ("text/event-stream", (False, True)),
        ("*/*", (True, True)),
        ("application/*", (True, False)),
        ("text/*;q=0.5", (False, True)),
        ("text/html", (False, False)),
        ("application/json;q=0, text/event-stream", (False, True)),
        ("APPLICATION/JSON", (True, False)),
    ],
)
def test_accept(header: str | None, expected: tuple[bool, bool]) -> None:
    assert accepted(header) == expected


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://localhost:6274", True),
        ("http://localhost", True),
        ("http://127.0.0.1:3000", True),
        ("http://[::1]:8080", True),
        ("https://localhost:6274", False),
        ("http://evil.example", False),
        ("http://localhost.evil.example:80", False),
        ("null", False),
        ("https://mcp.example.com", True),
        ("https://mcp.example.com:8443", False),
    ],
)
def test_default_origins(origin: str, allowed: bool) -> None:
    policy = OriginPolicy.from_settings(Settings(command=[sys.executable], public_url="https://mcp.example.com/"))
    assert policy.allows(origin) is allowed


def test_wildcard_origin() -> None:
    policy = OriginPolicy.from_settings(Settings(command=[sys.executable], allowed_origins=["*"]))
    assert policy.allows("https://anything.example")
