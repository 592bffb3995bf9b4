"""The `chain` verifier: an ordered list of verifiers; the first to accept a token wins.

Rejections are aggregated for the log. If no verifier accepted and any of them could not answer,
the outcome is "unavailable" (503): that verifier might have accepted the token, and a good
token must never be refused because a backend was down.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.auth import AuthError, Principal, TokenVerifier


class ChainVerifier:
    def __init__(self, verifiers: Sequence[tuple[str, TokenVerifier]]) -> None:
        self._verifiers = list(verifiers)

    async def verify(self, token: str) -> Principal:
        reasons: list[str] = []
        unavailable = False
        for name, verifier in self._verifiers:
            try:
                return await verifier.verify(token)
            except AuthError as error:
                reasons.append(f"{name}: {error.reason}")
                unavailable = unavailable or error.code == "unavailable"
        raise AuthError("unavailable" if unavailable else "invalid_token", "; ".join(reasons))
