"""Outbound HTTP and URLs: the one way the gateway opens a client session (so every request it
makes names itself with the same `User-Agent`), the one way it fetches a JSON document from
another server, reading a body up to a bound (`read_at_most`, for the forms clients post too),
and the URL helpers both configuration and runtime need. A leaf: it imports nothing of the
gateway but the version.

Invariant of `fetch_json`: it never follows a redirect, never waits longer than its caller's
time limit, never holds more than `limit + 1` bytes of a body (a longer one is refused as too large,
never cut and then misread), and fails only with a `FetchError` saying which way it failed.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import urlsplit

import aiohttp

from gateway._version import __version__

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy

# What the gateway calls itself on every outbound request (identity providers, JWKS, CIMD, …).
USER_AGENT: Final = f"mcp-gateway/{__version__}"
# The statuses whose body `fetch_json` reads unless told otherwise.
OK_STATUSES: Final = frozenset({200})

FetchProblem = Literal["status", "too_large", "not_json", "unreachable", "timeout"]


def client_session(**options: Any) -> aiohttp.ClientSession:
    """An outbound HTTP client session: `aiohttp.ClientSession(**options)`, sending `USER_AGENT`."""
    headers = {"User-Agent": USER_AGENT, **options.pop("headers", {})}
    return aiohttp.ClientSession(headers=headers, **options)


class FetchError(Exception):
    """A bounded JSON fetch that gave no document. `problem` says which way it failed; `str()` is
    a short reason (no host or address in it, fit for an audit record), `detail` says more, for
    an operator's log; `status` is the answer's, when one came."""

    def __init__(self, problem: FetchProblem, reason: str, *, status: int | None = None, detail: str = "") -> None:
        super().__init__(reason)
        self.problem: FetchProblem = problem
        self.status = status
        self.detail = detail or reason


@dataclass(frozen=True, slots=True)
class JsonAnswer:
    """What `fetch_json` got: the answer's status and headers, and its body parsed as JSON."""

    status: int
    headers: CIMultiDictProxy[str]
    document: Any


async def fetch_json(
    http: aiohttp.ClientSession,
    method: Literal["GET", "POST"],
    url: str,
    *,
    limit: int,
    within: float,
    expect: Container[int] | None = OK_STATUSES,
    headers: Mapping[str, str] | None = None,
    data: Mapping[str, str] | None = None,
) -> JsonAnswer:
    """Ask `url` for a JSON document of at most `limit` bytes, answered `within` seconds in all.

    An answer whose status is not in `expect` fails as `"status"` with its body unread (`None`
    reads every answer's body). The body is parsed with `json.loads`: these are documents of
    servers the gateway was configured to ask or that a client named, not MCP messages (which
    `gateway.jsonrpc` parses strictly). Raises `FetchError`.
    """
    try:
        async with http.request(
            method,
            url,
            headers=headers,
            data=data,
            timeout=aiohttp.ClientTimeout(total=within),
            allow_redirects=False,
        ) as response:
            status = response.status
            if expect is not None and status not in expect:
                raise FetchError("status", f"HTTP {status}", status=status)
            declared = response.content_length
            if declared is not None and declared > limit:
                raise _too_large(limit, status)
            body = await read_at_most(response.content, limit + 1)
            answer_headers = response.headers
    except TimeoutError as exc:  # before ClientError: aiohttp's timeouts are both
        raise FetchError("timeout", type(exc).__name__, detail=str(exc)) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise FetchError("unreachable", type(exc).__name__, detail=str(exc)) from exc
    if len(body) > limit:
        raise _too_large(limit, status)
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise FetchError("not_json", "not JSON", status=status, detail=str(exc)) from None
    except RecursionError:
        raise FetchError("not_json", "not JSON", status=status, detail="nested too deeply") from None
    return JsonAnswer(status, answer_headers, document)


def _too_large(limit: int, status: int) -> FetchError:
    return FetchError("too_large", f"the document is larger than {limit} bytes", status=status)


async def read_at_most(content: aiohttp.StreamReader, size: int) -> bytes:
    """Up to `size` bytes of a body (a response's or a request's): `read(n)` returns only what has
    arrived, so read until the end of the body or `size`."""
    chunks: list[bytes] = []
    remaining = size
    while remaining > 0:
        chunk = await content.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


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
