"""A bounded cache of verification results, keyed by the token's SHA-256 digest (never the token).

Positive results live until the token's own expiry or a cap, whichever is sooner; negative
results live briefly, so a storm of bad tokens costs the backend little but a token that just
became valid is not refused for long. Backend failures are never cached.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import Final

from gateway.auth import AuthError, Principal

MAX_ENTRIES: Final = 10_000
NEGATIVE_TTL: Final = 10.0  # seconds a rejected token is remembered


class VerdictCache:
    def __init__(self, positive_ttl: float) -> None:
        self._positive_ttl = positive_ttl
        self._entries: OrderedDict[bytes, tuple[float, Principal | AuthError]] = OrderedDict()

    @staticmethod
    def key(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def get(self, key: bytes) -> Principal | None:
        """The cached principal; raises the cached rejection; None when nothing is cached."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, verdict = entry
        if time.monotonic() >= expires:
            del self._entries[key]
            return None
        if isinstance(verdict, AuthError):
            raise AuthError(verdict.code, verdict.reason)
        return verdict

    def accept(self, key: bytes, principal: Principal, token_expires_at: float | None = None) -> None:
        """Cache a principal until `token_expires_at` (epoch seconds) or the TTL, whichever is sooner."""
        ttl = self._positive_ttl
        if token_expires_at is not None:
            ttl = min(ttl, token_expires_at - time.time())
        if ttl > 0:
            self._put(key, time.monotonic() + ttl, principal)

    def reject(self, key: bytes, error: AuthError) -> None:
        self._put(key, time.monotonic() + NEGATIVE_TTL, error)

    def _put(self, key: bytes, expires: float, verdict: Principal | AuthError) -> None:
        self._entries[key] = (expires, verdict)
        self._entries.move_to_end(key)
        while len(self._entries) > MAX_ENTRIES:
            self._entries.popitem(last=False)
