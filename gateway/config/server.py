"""The gateway's face: where it listens and the URL clients reach it at, which proxies and
browsers it believes, how it keeps streams alive and stops, and the consent a remote bind without
authentication needs. Field groups of `Settings`; the rules between settings are in `checks.py`.
"""

from __future__ import annotations

import ipaddress
from typing import Final

from pydantic import BaseModel, Field, HttpUrl, field_validator

from gateway.config.parsing import TextList
from gateway.paths import HEALTH_PATH, OAUTH_PREFIX, PRM_PATH, READY_PATH, WELL_KNOWN_PREFIX

DEFAULT_ALLOWED_ORIGINS: Final = ("http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*")
WILDCARD_HOSTS: Final = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - names, not a bind
# Paths the gateway serves itself, which the MCP endpoint may not take.
RESERVED_PATHS: Final = frozenset({HEALTH_PATH, READY_PATH})
RESERVED_PREFIXES: Final = (WELL_KNOWN_PREFIX, OAUTH_PREFIX)


class ListenerSettings(BaseModel):
    """Where the gateway listens, and the URL clients reach it at."""

    host: str = Field(
        "127.0.0.1", description="Address to bind. Anything but loopback needs authentication, or the override below."
    )
    port: int = Field(8080, ge=0, le=65535, description="TCP port to bind (0 picks a free port).")
    public_url: HttpUrl | None = Field(
        None, description="Public base URL clients use (e.g. https://mcp.example.com); its origin is allowed."
    )
    mcp_path: str = Field("/mcp", description="Path of the MCP endpoint.")

    @field_validator("mcp_path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        if not value.startswith("/") or value.endswith("/") or "//" in value or "?" in value or "#" in value:
            raise ValueError("must start with '/', not end with '/', and hold no '//', '?' or '#'")
        if value in RESERVED_PATHS or value.startswith(RESERVED_PREFIXES):
            raise ValueError(f"{value!r} is reserved by the gateway")
        return value

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: HttpUrl | None) -> HttpUrl | None:
        if value is not None and (value.path not in (None, "", "/") or value.query or value.fragment):
            raise ValueError("give the origin only (scheme://host[:port]); the MCP path is mcp_path")
        return value

    @property
    def base_url(self) -> str:
        """Where clients reach this gateway: `public_url`, else the bind address."""
        if self.public_url is not None:
            return str(self.public_url).rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def resource_url(self) -> str:
        """The MCP endpoint's canonical URL: the OAuth resource this gateway protects."""
        return self.base_url + self.mcp_path

    @property
    def resource_metadata_url(self) -> str:
        """RFC 9728 metadata URL, in its path-inserted form."""
        return f"{self.base_url}{PRM_PATH}{self.mcp_path}"


class CallerSettings(BaseModel):
    """Whom the gateway believes about a request: the proxies in front, the browsers' origins."""

    trusted_proxies: TextList[str] = Field(
        default_factory=list,
        description="Networks (CIDR) of proxies whose X-Real-IP / X-Forwarded-For are believed (e.g. 172.18.0.0/16).",
    )
    allowed_origins: TextList[str] = Field(
        list(DEFAULT_ALLOWED_ORIGINS),
        description="Origins browsers may call from ('scheme://host:port', ':*' for any port, '*' for all).",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        bad = []
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                bad.append(network)
        if bad:
            raise ValueError(f"not networks (like 172.18.0.0/16 or 10.0.0.5): {', '.join(map(repr, bad))}")
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        bad = [o for o in value if o != "*" and ("://" not in o or o.endswith("/"))]
        if bad:
            raise ValueError(f"origins look like 'https://app.example.com', got {', '.join(map(repr, bad))}")
        return value

    def proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(network, strict=False) for network in self.trusted_proxies]


class StreamSettings(BaseModel):
    """How open streams are kept alive, and how long stopping waits for them."""

    sse_keepalive: float = Field(15.0, gt=0, le=300, description="Seconds between SSE keep-alive comments.")
    shutdown_timeout: float = Field(
        10.0,
        ge=0,
        description="Seconds in-flight requests get to finish on SIGTERM; then they get an error (see Stopping).",
    )


class ExposureSettings(BaseModel):
    """The explicit consent to serve everyone (see `checks.exposure`)."""

    allow_remote_unauthenticated: bool = Field(
        False, description="Permit a non-loopback bind without authentication. Never do this on a shared network."
    )
