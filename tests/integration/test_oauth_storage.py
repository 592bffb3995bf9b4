"""The authorization server's storage: both backends behave alike (expiry, single use), the
SQLite default survives a restart (keys, grants and refresh tokens), Redis serves a whole flow
with reuse detection, and a storage that stops answering — at a handler's first operation or a
later one — makes an endpoint unavailable (503), never an internal error."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import pytest
from aiohttp.test_utils import TestServer, unused_port
from pytest_aiohttp import AiohttpServer

from gateway import create_app
from gateway.oauth.storage import OAuthStore, SqliteStore, StorageError, open_store
from tests.support.oauth import (
    SERVICE_TOKEN,
    Browser,
    Gateway,
    GatewayFactory,
    Step,
    authorize_url,
    oauth_settings,
    pkce,
)
from tests.support.redis_process import REDIS, RedisServer
from tests.support.waits import WAIT


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    if REDIS is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path)
    server.start()
    yield f"redis://127.0.0.1:{server.port}/0"
    server.stop()


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OAuthStore]:
    url = f"sqlite:///{tmp_path / 'oauth.db'}" if request.param == "sqlite" else request.getfixturevalue("redis_url")
    opened = open_store(url)
    await opened.open()
    yield opened
    await opened.aclose()


async def test_records_expire_and_first_use_is_once(store: OAuthStore) -> None:
    await store.put("kind", "a", {"n": 1}, None)
    await store.put("kind", "b", {"n": 2}, 0.2)
    await store.put("other", "c", {"n": 3}, None)
    assert await store.get("kind", "a") == {"n": 1}
    assert sorted(record["n"] for record in await store.values("kind")) == [1, 2]
    await asyncio.sleep(0.4)
    assert await store.get("kind", "b") is None
    assert [record["n"] for record in await store.values("kind")] == [1]
    assert await store.first_use("kind", "a", 10) is True
    assert await store.first_use("kind", "a", 10) is False
    racing = await asyncio.gather(*(store.first_use("kind", "race", 10) for _ in range(8)))
    assert racing.count(True) == 1
    await store.delete("kind", "a")
    assert await store.get("kind", "a") is None


async def test_sqlite_file_is_private(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state" / "oauth.db")
    await store.open()
    await store.aclose()
    assert (tmp_path / "state" / "oauth.db").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700


async def _gateway(aiohttp_server: AiohttpServer, port: int, **settings: Any) -> tuple[Gateway, TestServer]:
    app = create_app(oauth_settings(port, **settings))
    server: TestServer = await aiohttp_server(app, port=port)
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT))
    return Gateway(f"http://127.0.0.1:{port}", app, http, Browser()), server


async def test_grants_survive_a_restart(aiohttp_server: AiohttpServer, tmp_path: Path) -> None:
    port = unused_port()
    key = "k" * 43 + "="
    settings = {"oauth_session_key": key, "data_dir": tmp_path / "data"}
    gw, server = await _gateway(aiohttp_server, port, **settings)
    client = await gw.register()
    tokens = await gw.tokens(client["client_id"])
    jwks = gw.oauth.keys.jwks()
    await gw.http.close()
    await gw.browser.close()
    await server.close()
    assert (tmp_path / "data" / "oauth.sqlite3").exists()

    again, server = await _gateway(aiohttp_server, port, **settings)
    assert again.oauth.keys.jwks() == jwks  # the same signing key, read back
    assert (await again.mcp_status(tokens["access_token"]))[0] == 200
    status, body = await again.token(
        grant_type="refresh_token", refresh_token=tokens["refresh_token"], client_id=client["client_id"]
    )
    assert status == 200, body
    await again.http.close()
    await again.browser.close()


async def test_a_flow_on_redis(aiohttp_server: AiohttpServer, redis_url: str) -> None:
    gw, _ = await _gateway(aiohttp_server, unused_port(), oauth_storage=redis_url)
    client = await gw.register()
    tokens = await gw.tokens(client["client_id"])
    assert (await gw.mcp_status(tokens["access_token"]))[0] == 200
    refresh = {
        "grant_type": "refresh_token",
        "refresh_token": tokens["refresh_token"],
        "client_id": client["client_id"],
    }
    assert (await gw.token(**refresh))[0] == 200
    assert (await gw.token(**refresh))[0] == 400  # reused: the family is revoked
    assert (await gw.mcp_status(tokens["access_token"]))[0] == 401
    await gw.http.close()
    await gw.browser.close()


async def test_a_storage_that_stops_answering_is_unavailable_as_a_page_or_json(
    oauth_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every endpoint answers a storage failure alike: 503 `temporarily_unavailable`, as a page
    where a browser visits and as JSON where a client calls."""
    gw = await oauth_gateway()
    client = await gw.register()
    _, challenge = pkce()
    signin = await gw.browser.get(authorize_url(gw.base, client["client_id"], challenge))
    assert signin.status == 200, signin.text

    async def gone(*args: object) -> NoReturn:
        raise StorageError("the storage does not answer")

    for method in ("get", "put", "delete", "first_use", "values"):
        monkeypatch.setattr(gw.oauth.store, method, gone)
    for page in (
        await gw.browser.submit(signin, token=SERVICE_TOKEN),
        await gw.browser.get(authorize_url(gw.base, client["client_id"], challenge)),
    ):
        assert (page.status, page.headers["Content-Type"]) == (503, "text/html; charset=utf-8")
        assert "<code>temporarily_unavailable</code>" in page.text
    status, body = await gw.token(grant_type="authorization_code", code="c", client_id=client["client_id"])
    assert (status, body["error"]) == (503, "temporarily_unavailable")
    async with gw.http.post(gw.base + "/oauth/register", json={"redirect_uris": ["https://a.example/cb"]}) as answer:
        assert (answer.status, (await answer.json())["error"]) == (503, "temporarily_unavailable")


# The steps of a browser up to one whose handler reaches the storage after the client and its
# redirect URI are verified (or the user's token accepted); `fail()` breaks the storage just before it.
LaterStep = Callable[[Browser, str, Callable[[], None]], Awaitable[Step]]


async def _sign_in(browser: Browser, url: str, fail: Callable[[], None]) -> Step:
    signin = await browser.get(url)
    assert signin.status == 200, signin.text
    fail()
    return await browser.submit(signin, token=SERVICE_TOKEN)


async def _authorize_signed_in(browser: Browser, url: str, fail: Callable[[], None]) -> Step:
    consent = await browser.submit(await browser.get(url), token=SERVICE_TOKEN)
    assert consent.status == 200, consent.text
    fail()
    return await browser.get(url)


async def _authorize_consent_remembered(browser: Browser, url: str, fail: Callable[[], None]) -> Step:
    assert "code" in await browser.sign_in_and_consent(url)
    fail()
    return await browser.get(url)


@dataclass(frozen=True)
class LateFailure:
    """The storage failing late in a page's handler: the one operation, on one kind of record."""

    steps: LaterStep
    method: str
    kind: str
    settings: dict[str, Any] = field(default_factory=dict)


@pytest.mark.parametrize(
    "late",
    [
        pytest.param(LateFailure(_sign_in, "get", "consent"), id="signin-consent-lookup"),
        pytest.param(
            LateFailure(
                _sign_in,
                "put",
                "credential",
                {"token_env": "UPSTREAM_TOKEN", "oauth_token_to_env": True, "allow_shared_uid_children": True},
            ),
            id="signin-credential",
        ),
        pytest.param(LateFailure(_authorize_signed_in, "get", "consent"), id="authorize-consent-lookup"),
        pytest.param(LateFailure(_authorize_consent_remembered, "put", "code"), id="authorize-code"),
    ],
)
async def test_a_storage_failing_after_the_checks_is_unavailable_not_an_internal_error(
    oauth_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, late: LateFailure
) -> None:
    """The storage failing late in a page's handler — once the client is found, its redirect URI
    verified and the user's token accepted — is the same 503 page as failing first, logged as
    such, never a 500: only the one operation on the one kind of record fails here."""
    gw = await oauth_gateway(**late.settings)
    client = await gw.register()
    _, challenge = pkce()
    store = gw.oauth.store
    real = getattr(store, late.method)

    async def failing(record_kind: str, *args: Any) -> Any:
        if record_kind == late.kind:
            raise StorageError("the storage does not answer")
        return await real(record_kind, *args)

    def fail() -> None:
        monkeypatch.setattr(store, late.method, failing)

    with caplog.at_level(logging.ERROR, logger="gateway.oauth"):
        page = await late.steps(gw.browser, authorize_url(gw.base, client["client_id"], challenge), fail)
    assert (page.status, page.headers["Content-Type"]) == (503, "text/html; charset=utf-8"), page.text
    assert "<code>temporarily_unavailable</code>" in page.text
    assert "OAuth storage failed: the storage does not answer" in caplog.messages
