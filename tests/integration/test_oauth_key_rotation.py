"""Signing-key rotation of the built-in authorization server, on a clock the test moves: a new key
signs from the rotation on, the retired one stays in the published JWK Set — and its tokens stay
valid — for the overlap window, and after the window it is gone and its tokens are refused."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from gateway.oauth import keyset
from tests.support.oauth import Gateway, GatewayFactory

ROTATION = 3600.0


class Clock:
    """Stands in for the `time` module the key set reads; starts at the real time."""

    def __init__(self) -> None:
        self.now = time.time()

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(keyset, "time", fake)
    return fake


async def _published(gw: Gateway) -> list[str]:
    async with gw.http.get(gw.base + "/.well-known/jwks.json") as response:
        document: dict[str, Any] = await response.json()
    return [key["kid"] for key in document["keys"]]


def _kid(token: str) -> str:
    kid = jwt.get_unverified_header(token)["kid"]
    assert isinstance(kid, str)
    return kid


async def test_a_rotated_key_is_published_through_the_overlap_then_dropped(
    oauth_gateway: GatewayFactory, clock: Clock
) -> None:
    gw = await oauth_gateway(oauth_signing_key_rotation=ROTATION)
    keys = gw.oauth.keys
    client = await gw.register()
    old = (await gw.tokens(client["client_id"]))["access_token"]
    old_kid = _kid(old)
    assert await _published(gw) == [old_kid]

    clock.now += ROTATION  # the key has signed for its whole period: the next reload rotates
    await keys.load()
    new = (await gw.tokens(client["client_id"]))["access_token"]
    new_kid = _kid(new)
    assert new_kid != old_kid
    assert await _published(gw) == [new_kid, old_kid]
    assert (await gw.mcp_status(old))[0] == 200  # the old key still verifies what it signed

    clock.now += keys.overlap - 1  # the last second of the overlap window
    await keys.load()
    assert await _published(gw) == [new_kid, old_kid]
    assert (await gw.mcp_status(old))[0] == 200

    clock.now += 2  # the window is over
    await keys.load()
    assert await _published(gw) == [new_kid]
    status, challenge = await gw.mcp_status(old)  # not yet expired, but its key is gone
    assert status == 401
    assert 'error="invalid_token"' in challenge
    assert (await gw.mcp_status(new))[0] == 200
    assert _kid((await gw.tokens(client["client_id"]))["access_token"]) == new_kid


async def test_the_overlap_outlives_every_token_and_a_cached_key_set(oauth_gateway: GatewayFactory) -> None:
    gw = await oauth_gateway(oauth_access_token_ttl=600)
    async with gw.http.get(gw.base + "/.well-known/jwks.json") as response:
        cached = int(response.headers["Cache-Control"].rpartition("max-age=")[2])
    assert gw.oauth.keys.overlap > 600 + cached


async def test_a_key_not_due_is_kept_across_reloads(oauth_gateway: GatewayFactory, clock: Clock) -> None:
    gw = await oauth_gateway(oauth_signing_key_rotation=ROTATION)
    first = await _published(gw)
    clock.now += ROTATION - 1
    await gw.oauth.keys.load()
    assert await _published(gw) == first
