"""A JSON Web Key Set fetched with aiohttp and cached: never pyjwt's blocking `PyJWKClient`.

Behaviour (the shape Envoy's `jwt_authn` and go-oidc converge on):
- prefetched at startup, so the first request never waits on the identity provider;
- refreshed when older than `ttl`, single-flight: concurrent callers share one fetch;
- an unknown `kid` forces a refresh at most once per `cooldown`, so a burst of forged kids
  costs the provider one request, not one per token;
- a failed refresh keeps the last good key set; only a cache that never held keys is
  "unavailable" (503 upstream, never 401).
Only signing keys of asymmetric types are kept: a `kty: oct` key (which pyjwt would treat as
an HMAC secret) never enters the cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import aiohttp
import jwt

from gateway import net
from gateway.auth import AuthError
from gateway.jose import public_jwk

log = logging.getLogger("gateway.auth.jwks")

FETCH_TIMEOUT: Final = 5.0  # seconds for one JWKS request
MAX_JWKS_BYTES: Final = 1024 * 1024
ASYMMETRIC_KEY_TYPES: Final = frozenset({"RSA", "EC", "OKP"})


class JwksCache:
    def __init__(self, http: aiohttp.ClientSession, url: str, *, ttl: float, cooldown: float) -> None:
        self._http = http
        self._url = url
        self._ttl = ttl
        self._cooldown = cooldown
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._forced_at = float("-inf")
        self._lock = asyncio.Lock()
        self.fetches = 0  # requests made to the endpoint, for operators and tests

    async def prefetch(self) -> None:
        """Fetch once; raises `AuthError("unavailable")` when the endpoint gives no usable keys."""
        await self._refresh(kid_miss=False)
        if not self._keys:
            raise AuthError("unavailable", f"no usable signing keys at {self._url}")

    async def key(self, kid: str | None) -> jwt.PyJWK:
        """The signing key for `kid`; `AuthError("invalid_token")` if the set does not hold it."""
        if time.monotonic() - self._fetched_at > self._ttl:
            await self._refresh(kid_miss=False)
        found = self._lookup(kid)
        if found is None and time.monotonic() - self._forced_at >= self._cooldown:
            await self._refresh(kid_miss=True)
            found = self._lookup(kid)
        if found is None:
            if not self._keys:
                raise AuthError("unavailable", "no signing keys could be fetched")
            raise AuthError("invalid_token", f"unknown key id {kid!r}")
        return found

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None and len(self._keys) == 1:  # a lone key may be used without a kid
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    async def _refresh(self, *, kid_miss: bool) -> None:
        started = time.monotonic()
        async with self._lock:
            # Someone else refreshed while this caller waited: their result is as fresh as ours.
            if self._fetched_at >= started:
                return
            if kid_miss:  # only refreshes forced by unknown key ids are rate-limited
                self._forced_at = time.monotonic()
            self.fetches += 1
            try:
                keys = await self._fetch()
            except ValueError as exc:
                log.warning("JWKS fetch failed; keeping %d cached keys: %s", len(self._keys), exc)
                self._fetched_at = time.monotonic() - self._ttl + self._cooldown  # retry after the cooldown
                return
            self._keys = keys
            self._fetched_at = time.monotonic()

    async def _fetch(self) -> dict[str | None, jwt.PyJWK]:
        try:
            answer = await net.fetch_json(self._http, "GET", self._url, limit=MAX_JWKS_BYTES, within=FETCH_TIMEOUT)
        except net.FetchError as exc:
            raise ValueError("JWKS document too large" if exc.problem == "too_large" else exc.detail) from None
        document = answer.document
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise ValueError('JWKS document has no "keys" list')
        keys: dict[str | None, jwt.PyJWK] = {}
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("kty") not in ASYMMETRIC_KEY_TYPES:
                continue
            if entry.get("use", "sig") != "sig":
                continue
            try:
                keys[entry.get("kid")] = jwt.PyJWK(entry)
            except jwt.PyJWKError as exc:
                log.warning("skipping unusable JWK %r: %s", entry.get("kid"), exc)
        return keys


class StaticKeySet:
    """Signing keys from PEM files, for issuers without a JWKS endpoint: each file's name
    (without its extension) is the key id; a single key also serves tokens without a `kid`."""

    def __init__(self, files: Iterable[Path]) -> None:
        self._keys = {path.stem: public_jwk(path.read_bytes(), kid=path.stem) for path in files}

    async def key(self, kid: str | None) -> jwt.PyJWK:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        found = self._keys.get(kid) if kid is not None else None
        if found is None:
            raise AuthError("invalid_token", f"unknown key id {kid!r}")
        return found
