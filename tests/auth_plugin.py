"""An example `plugin` verifier, as a team would write one: tokens of the form `team-<name>`
are accepted for principal <name>. Loaded by the gateway as `tests.auth_plugin:make_verifier`."""

from __future__ import annotations

from typing import Any

import aiohttp

from gateway.auth import AuthError, Principal

PREFIX = "team-"


class TeamTokens:
    def __init__(self, issuer: str, healthy: bool) -> None:
        self._issuer = issuer
        self._healthy = healthy

    async def probe(self) -> None:
        if not self._healthy:
            raise AuthError("unavailable", "the team directory is down")

    async def verify(self, token: str) -> Principal:
        if not token.startswith(PREFIX) or len(token) == len(PREFIX):
            raise AuthError("invalid_token", "not a team token")
        return Principal(issuer=self._issuer, subject=token.removeprefix(PREFIX), scopes=frozenset({"tools"}))


def make_verifier(*, http: aiohttp.ClientSession, issuer: str = "team", healthy: bool = True, **_: Any) -> TeamTokens:
    return TeamTokens(issuer, healthy)


def not_a_verifier(*, http: aiohttp.ClientSession) -> object:
    return object()
