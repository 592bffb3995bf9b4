"""Outbound HTTP and URLs: the one way the gateway opens a client session (so every request it
makes names itself with the same `User-Agent`), and the URL helpers both configuration and
runtime need. A leaf: it imports nothing of the gateway but the version.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp

from gateway._version import __version__

# What the gateway calls itself on every outbound request (identity providers, JWKS, CIMD, …).
USER_AGENT: Final = f"mcp-gateway/{__version__}"


def client_session(**options: Any) -> aiohttp.ClientSession:
    """An outbound HTTP client session: `aiohttp.ClientSession(**options)`, sending `USER_AGENT`."""
    headers = {"User-Agent": USER_AGENT, **options.pop("headers", {})}
    return aiohttp.ClientSession(headers=headers, **options)


def is_loopback_host(host: str) -> bool:
    """`localhost`, or a loopback address (IPv6 in brackets or not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def https_url_problem(url: str, what: str) -> str | None:
    """Why `url` cannot be a provider's URL: https, or plain http on a loopback address."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.username is not None:
        return f"{what} is an absolute https URL, got {url!r}"
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        return f"{what} must be https (plain http only on a loopback address, for development), got {url!r}"
    if parts.query or parts.fragment:
        return f"{what} has no query or fragment, got {url!r}"
    return None


def mask_url_password(url: str) -> str:
    """`url` with the password of its user-info, if any, replaced by asterisks."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return parts._replace(netloc=f"{user}:**********@{host}").geturl()
