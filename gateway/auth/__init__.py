"""Authentication: turning a bearer token into a `Principal`, through a pluggable verifier.

A verifier is one-method `TokenVerifier`: `verify(token)` returns the principal or raises
`AuthError` with a `Literal` code. Verifiers never see HTTP and never log tokens; the bearer
middleware (bearer.py) turns their outcome into responses, in one place. `AuthStartupError` stops
startup when authentication cannot work as configured: a verifier's backend (registry.py) or the
built-in authorization server's storage or OpenID provider (gateway.oauth) did not answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

AuthErrorCode = Literal["invalid_token", "unavailable"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an issuer and a subject, with the scopes their token grants."""

    issuer: str
    subject: str
    scopes: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=dict)
    # The token was issued by this gateway's own authorization server: it is never handed to a
    # child; `credential` (the service token its user signed in with, when the operator opted in)
    # is what a child may receive instead.
    delegated: bool = False
    credential: str | None = field(default=None, repr=False, compare=False)

    @property
    def key(self) -> str:
        """Identity for ownership checks: the same subject from two issuers is two principals."""
        return f"{self.issuer}\x1f{self.subject}"


# The principal of every request when authentication is off (loopback only).
ANONYMOUS = Principal(issuer="", subject="anonymous")


class AuthError(Exception):
    """A token was not accepted. `reason` is for the log only, never for the response."""

    def __init__(self, code: AuthErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code: AuthErrorCode = code
        self.reason = reason


class AuthStartupError(RuntimeError):
    """Authentication cannot work as configured (a backend did not answer): do not start."""


class TokenVerifier(Protocol):
    """Checks one bearer token."""

    async def verify(self, token: str) -> Principal: ...
