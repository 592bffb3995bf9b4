"""The `static` verifier: a fixed list of tokens, each naming a principal and its scopes.

Tokens are held only as SHA-256 digests. Every verification compares the presented token's
digest with every entry using `hmac.compare_digest` — no early exit — so the time taken does not
depend on which entry (if any) matches.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from gateway.auth import AuthError, Principal

ISSUER = "static"


class StaticVerifier:
    def __init__(self, entries: Iterable[tuple[str, str, Iterable[str]]]) -> None:
        """`entries`: (hex SHA-256 of the token, principal name, scopes)."""
        self._entries = [
            (bytes.fromhex(digest), Principal(issuer=ISSUER, subject=name, scopes=frozenset(scopes)))
            for digest, name, scopes in entries
        ]

    async def verify(self, token: str) -> Principal:
        presented = hashlib.sha256(token.encode()).digest()
        found: Principal | None = None
        for digest, principal in self._entries:
            if hmac.compare_digest(digest, presented) and found is None:
                found = principal
        if found is None:
            raise AuthError("invalid_token", "no static token matches")
        return found


def digest_of(token: str) -> str:
    """The hex SHA-256 digest a configuration stores for `token`."""
    return hashlib.sha256(token.encode()).hexdigest()
