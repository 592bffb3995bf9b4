"""The type aliases several test modules share, declared once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from tests.support.mcp import Mcp

JsonObj: TypeAlias = dict[str, Any]
"""A JSON object as `json.loads` returns it: a JSON-RPC message, a body, a log record."""

Gateway: TypeAlias = Callable[..., Awaitable["Mcp"]]
"""The `gateway` fixture: `await gateway(*echo_flags, **settings)` serves the app, returns an `Mcp`."""
