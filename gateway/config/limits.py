"""How much and how long: message and batch sizes, session lifetimes and caps, open connections
and their deadlines, and the rate limits with the storage that counts them. Field groups of
`Settings`; runtime reads the limits as values (`rate_limit`, `ratelimit_shared_storage`), never
by parsing the settings' text itself.
"""

from __future__ import annotations

from typing import Final, Literal

from limits import RateLimitItem, parse_many
from pydantic import BaseModel, Field, field_validator

MiB: Final = 1024 * 1024
# The spellings of the local, in-process storage.
MEMORY_SCHEMES: Final = ("memory://", "async+memory://")
# `limits` async storages with a moving window (memcached has none).
SHARED_SCHEMES: Final = (
    "async+redis",
    "async+rediss",
    "async+redis+sentinel",
    "async+redis+cluster",
    "async+valkey",
    "async+valkeys",
    "async+mongodb",
)


def parse_limit(text: str) -> list[RateLimitItem]:
    """`"10/second;600/minute"` as `limits` items; empty or `off` means no limit."""
    text = text.strip()
    if not text or text == "off":
        return []
    return parse_many(text)


class MessageSettings(BaseModel):
    """The largest message and batch, and how many requests a session may have waiting."""

    max_message_bytes: int = Field(
        16 * MiB, ge=1024, le=1024 * MiB, description="Largest JSON-RPC message accepted in either direction."
    )
    max_batch_size: int = Field(100, ge=1, description="Most messages in one JSON-RPC batch (2025-03-26 clients only).")
    max_requests_in_flight: int = Field(
        256, ge=1, description="Most requests one session may have waiting for an answer at once."
    )


class SessionSettings(BaseModel):
    """How long a session lives, how many there may be, and how long a request may wait."""

    session_idle_ttl: float = Field(
        1800.0, gt=0, description="Seconds a session may sit idle (nothing in flight, no open stream) before it ends."
    )
    session_max_lifetime: float | None = Field(
        86400.0,
        gt=0,
        description="Seconds a session may live at most, busy or not (an open stream cannot hold its child longer).",
    )
    session_evict_idle_after: float = Field(
        60.0,
        ge=0,
        description="At a session cap, seconds idle after which another caller's session may end to make room.",
    )
    max_sessions: int = Field(256, ge=1, description="Most concurrent sessions (each is one child process).")
    request_timeout: float = Field(
        300.0, gt=0, description="Seconds a request may go without an answer or progress before it is cancelled."
    )


class SessionCapSettings(BaseModel):
    """How many sessions one caller may hold."""

    max_sessions_per_principal: int = Field(32, ge=1, description="Most concurrent sessions one principal may hold.")
    max_sessions_per_ip: int = Field(
        64, ge=1, description="Most concurrent sessions one client address (an IPv6 /64) may hold."
    )


class ConnectionSettings(BaseModel):
    """How many HTTP connections may be open, and the deadlines a client meets on one."""

    max_connections: int = Field(
        1024, ge=1, description="Most open HTTP connections; more are refused with 503 at once (see Connection limits)."
    )
    max_connections_per_ip: int = Field(
        128,
        ge=1,
        description="Most open HTTP connections from one TCP peer (an IPv6 /64); trusted_proxies are exempt.",
    )
    http_header_timeout: float = Field(
        10.0, gt=0, description="Seconds a client has to send a complete request head (from connect or its first byte)."
    )
    http_body_timeout: float = Field(
        60.0, gt=0, description="Seconds a client has to send a whole request body, once its head has arrived."
    )
    http_keepalive_timeout: float = Field(
        75.0, gt=0, description="Seconds an idle keep-alive connection stays open (longer than nginx's 60 s upstream)."
    )
    http_write_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a response may go without progress (client not reading) before its socket closes.",
    )


class RateLimitSettings(BaseModel):
    """The rate limits, each a `limits` rate string, and the storage that counts them."""

    ratelimit_storage: str = Field(
        "memory://", description="Rate-limit state: memory:// (this process) or async+redis://host:6379/0 (shared)."
    )
    ratelimit_storage_failure: Literal["open", "closed"] = Field(
        "open",
        description="When the rate-limit storage fails: serve without limits (open) or refuse with 503 (closed).",
    )
    ratelimit_requests_ip: str = Field("600/minute", description="MCP requests per client address ('' turns it off).")
    ratelimit_requests_principal: str = Field("1200/minute", description="MCP requests per authenticated principal.")
    ratelimit_auth_failures_ip: str = Field(
        "10/minute", description="Refused credentials per client address before its requests are refused unverified."
    )
    ratelimit_sessions_ip: str = Field("60/minute", description="Sessions started per client address.")
    ratelimit_sessions_principal: str = Field("60/minute", description="Sessions started per authenticated principal.")
    ratelimit_public_ip: str = Field(
        "300/minute", description="Discovery, health and metrics requests per client address."
    )
    ratelimit_oauth_ip: str = Field(
        "120/minute", description="Requests to the built-in authorization server's endpoints per client address."
    )
    ratelimit_spawn: str = Field("20/second", description="Child processes started per second, gateway-wide.")

    @field_validator(
        "ratelimit_requests_ip",
        "ratelimit_requests_principal",
        "ratelimit_auth_failures_ip",
        "ratelimit_sessions_ip",
        "ratelimit_sessions_principal",
        "ratelimit_public_ip",
        "ratelimit_oauth_ip",
        "ratelimit_spawn",
    )
    @classmethod
    def _check_rate(cls, value: str) -> str:
        try:
            parse_limit(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a rate like '600/minute' or '10/second;600/hour'") from None
        return value

    @field_validator("ratelimit_storage")
    @classmethod
    def _check_ratelimit_storage(cls, value: str) -> str:
        scheme = value.partition("://")[0]
        if value in MEMORY_SCHEMES:
            return value
        if scheme not in SHARED_SCHEMES:
            raise ValueError(f"use memory:// or one of {', '.join(s + '://' for s in SHARED_SCHEMES)}; got {scheme!r}")
        return value

    def rate_limit(self, name: str) -> list[RateLimitItem]:
        """The items of the limit `ratelimit_<name>` (`requests_ip`, `spawn`, …); empty when it is off."""
        text: str = getattr(self, f"ratelimit_{name}")
        return parse_limit(text)

    @property
    def ratelimit_shared_storage(self) -> str | None:
        """The URL of the storage shared by every gateway process; None when the count is this
        process's own (memory://)."""
        return None if self.ratelimit_storage in MEMORY_SCHEMES else self.ratelimit_storage
