"""`Settings` for a gateway in front of the echo server, and the `Host` a client sends it."""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlsplit

from gateway.config import Settings
from tests.support.servers import echo_command

# The isolation every test's children run with unless the test names another: one mode on every
# host (`auto` would pick by what the host allows).
CHILD_ISOLATION: Final = "none"


def make_settings(*flags: str, **overrides: Any) -> Settings:
    """Settings around the echo server; keyword arguments override any field."""
    values: dict[str, Any] = {"command": echo_command(*flags), "port": 0, "log_level": "debug"}
    values.update(overrides)
    return Settings(**values)


def public_host(settings: Settings) -> dict[str, str]:
    """The `Host` header of a client that reached the gateway at its public URL (which the gateway
    checks on the MCP endpoint); none without a public URL."""
    if settings.public_url is None:
        return {}
    return {"Host": urlsplit(str(settings.public_url)).netloc}
