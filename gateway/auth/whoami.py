"""The `whoami` verifier: the upstream service itself says whose token this is.

For servers whose users hold the upstream API's own tokens (GitHub, Coda, …): the gateway GETs a
configured "who am I" URL with the bearer token; a 2xx answer means the token is valid, and the
principal is read from a configured field of its JSON (a dotted path such as `user.login`). A
401 or 403 is a rejection; anything else (5xx, timeout, network) is "unavailable" (503). Answers
are cached by token digest for `ttl` seconds (rejections briefly).
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp

from gateway import net
from gateway.auth import AuthError, Principal
from gateway.auth.cache import VerdictCache

REQUEST_TIMEOUT: Final = 5.0
MAX_RESPONSE_BYTES: Final = 256 * 1024
REJECTING_STATUSES: Final = frozenset({401, 403})
SUCCESS_STATUSES: Final = range(200, 300)


class WhoamiVerifier:
    def __init__(self, http: aiohttp.ClientSession, url: str, *, principal_field: str, ttl: float) -> None:
        self._http = http
        self._url = url
        self._path = principal_field.split(".")
        self._cache = VerdictCache(ttl)
        parts = urlsplit(url)
        self._issuer = f"{parts.scheme}://{parts.netloc}"

    async def probe(self) -> None:
        """Startup check: the service answers (without a token, a 401 is the expected answer)."""
        try:
            async with self._http.get(self._url, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)) as response:
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AuthError("unavailable", f"whoami: {type(exc).__name__}") from None
        if status >= 500:
            raise AuthError("unavailable", f"whoami: HTTP {status}")

    async def verify(self, token: str) -> Principal:
        key = self._cache.key(token)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        try:
            principal = Principal(issuer=self._issuer, subject=await self._ask(token))
        except AuthError as error:
            if error.code == "invalid_token":
                self._cache.reject(key, error)
            raise
        self._cache.accept(key, principal)
        return principal

    async def _ask(self, token: str) -> str:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        value: Any = None  # an answer too large or not JSON names no one
        try:
            answer = await net.fetch_json(
                self._http,
                "GET",
                self._url,
                limit=MAX_RESPONSE_BYTES,
                within=REQUEST_TIMEOUT,
                expect=SUCCESS_STATUSES,
                headers=headers,
            )
            value = answer.document
        except net.FetchError as exc:
            if exc.problem == "status" and exc.status in REJECTING_STATUSES:
                raise AuthError("invalid_token", f"whoami: {exc}") from None
            if exc.problem not in ("too_large", "not_json"):  # another status, the network, a timeout
                raise AuthError("unavailable", f"whoami: {exc}") from None
        for name in self._path:
            value = value.get(name) if isinstance(value, dict) else None
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value:
            raise AuthError("unavailable", f"whoami: the answer has no {'.'.join(self._path)!r}")
        return value
