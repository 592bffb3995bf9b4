"""The sign-in, consent and error pages in a real headless browser (Debian's chromium, driven
over the DevTools protocol): they render under their strict CSP without a violation (the
nonce'd stylesheet applies, nothing else loads), the forms work without any script of ours, and
a screenshot of each page is kept in `build/test-artifacts/oauth/`. Signing in with an OpenID
provider (a fake one on another loopback port) goes from the sign-in form to the provider and back
to the consent page: the page's CSP lets its form end in the redirect to the provider.

Skipped, saying why, when chromium is not installed (`apt-get install chromium`)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import unused_port
from pytest_aiohttp import AiohttpServer

from gateway import create_app
from tests.support.oauth import REDIRECT_URI, SERVICE_TOKEN, authorize_url, oauth_settings, pkce
from tests.support.oidc_provider import FakeProvider
from tests.support.waits import WAIT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts" / "oauth"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


class DevTools:
    """One page of a headless chromium, over the DevTools protocol's WebSocket."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self._ids)
        await self._socket.send_json({"id": message_id, "method": method, "params": params})
        async with asyncio.timeout(WAIT):
            while True:
                message = json.loads((await self._socket.receive()).data)
                if message.get("id") == message_id:
                    if "error" in message:
                        raise RuntimeError(message["error"])
                    result: dict[str, Any] = message.get("result", {})
                    return result
                self.events.append(message)

    async def wait_for(self, event: str) -> dict[str, Any]:
        async with asyncio.timeout(WAIT):
            while True:
                for index, seen in enumerate(self.events):
                    if seen.get("method") == event:
                        return self.events.pop(index)
                self.events.append(json.loads((await self._socket.receive()).data))

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    async def load(self, action: str, **params: Any) -> None:
        self.events = [event for event in self.events if event.get("method") != "Page.loadEventFired"]
        if action == "navigate":
            await self.call("Page.navigate", **params)
        else:
            await self.evaluate(params["script"])
        await self.wait_for("Page.loadEventFired")

    async def screenshot(self, name: str) -> Path:
        data = (await self.call("Page.captureScreenshot", format="png"))["data"]
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        path.write_bytes(base64.b64decode(data))
        return path

    def csp_violations(self) -> list[str]:
        texts = [
            str(event["params"]["entry"].get("text", ""))
            for event in self.events
            if event.get("method") == "Log.entryAdded"
        ]
        return [text for text in texts if "Content Security Policy" in text]


@contextlib.asynccontextmanager
async def chromium(tmp_path: Path) -> AsyncIterator[DevTools]:
    assert CHROMIUM is not None
    argv = [
        CHROMIUM,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--window-size=900,900",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        f"--user-data-dir={tmp_path / 'profile'}",
        "about:blank",
    ]
    profile = tmp_path / "profile"
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, start_new_session=True
    )
    try:
        active = profile / "DevToolsActivePort"  # chromium writes its DevTools port here
        async with asyncio.timeout(WAIT * 2):
            while not (active.exists() and active.read_text().strip()):
                assert process.returncode is None, "chromium exited before it listened"
                await asyncio.sleep(0.05)
        port = active.read_text().split()[0]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
                pages = [target for target in await response.json() if target["type"] == "page"]
            async with http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024) as socket:
                tools = DevTools(socket)
                await tools.call("Page.enable")
                await tools.call("Log.enable")
                yield tools
    finally:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), WAIT)
        except TimeoutError:
            process.kill()
            await asyncio.wait_for(process.wait(), WAIT)


async def register_client(base: str) -> str:
    """Register the client the browser signs in for, as a client app would; its client id."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(base + "/oauth/register", json={"redirect_uris": [REDIRECT_URI], "client_name": "Claude"}) as r,
    ):
        assert r.status == 201, await r.text()
        client_id: str = (await r.json())["client_id"]
        return client_id


async def test_pages_in_headless_chromium(aiohttp_server: AiohttpServer, tmp_path: Path) -> None:
    port = unused_port()
    await aiohttp_server(create_app(oauth_settings(port)), port=port)
    base = f"http://127.0.0.1:{port}"
    client_id = await register_client(base)
    _, challenge = pkce()
    async with chromium(tmp_path) as page:
        await page.load("navigate", url=authorize_url(base, client_id, challenge))
        assert await page.evaluate("document.title") == f"Sign in to 127.0.0.1:{port}"
        assert await page.evaluate("!!document.querySelector('input[type=password][name=token]')")
        # The nonce'd stylesheet applies under the CSP: the primary button is blue.
        colour = await page.evaluate("getComputedStyle(document.querySelector('button.primary')).backgroundColor")
        assert colour == "rgb(36, 89, 214)"
        (await page.screenshot("signin")).stat()

        await page.load(
            "submit",
            script=f"document.getElementById('token').value = {json.dumps(SERVICE_TOKEN)};"
            "document.querySelector('form').requestSubmit();",
        )
        assert await page.evaluate("document.title") == "Allow Claude?"
        text = await page.evaluate("document.body.innerText")
        assert REDIRECT_URI in text
        assert "alice" in text
        await page.screenshot("consent")

        await page.load("navigate", url=authorize_url(base, "mcpgw_000000000000000000000000", challenge))
        assert "Unknown client" in await page.evaluate("document.body.innerText")
        await page.screenshot("error")
        assert page.csp_violations() == []
    assert {"consent.png", "error.png", "signin.png"} <= {path.name for path in ARTIFACTS.glob("*.png")}


async def test_oidc_sign_in_in_headless_chromium(aiohttp_server: AiohttpServer, tmp_path: Path) -> None:
    provider = FakeProvider()
    await provider.start(aiohttp_server)
    port = unused_port()
    settings = oauth_settings(
        port,
        oauth_signin_methods="token,oidc",
        oauth_oidc_issuer=provider.issuer,
        oauth_oidc_name="Example ID",
        oauth_oidc_client_id=provider.client_id,
        oauth_oidc_client_secret=provider.client_secret,
        oauth_oidc_allowed_domains="example.com",
    )
    await aiohttp_server(create_app(settings), port=port)
    base = f"http://127.0.0.1:{port}"
    client_id = await register_client(base)
    _, challenge = pkce()
    async with chromium(tmp_path) as page:
        await page.load("navigate", url=authorize_url(base, client_id, challenge))
        buttons = await page.evaluate("[...document.querySelectorAll('button')].map(b => b.textContent)")
        assert buttons == ["Sign in with Example ID", "Sign in"]
        await page.screenshot("signin-oidc")
        await page.load(
            "submit", script="document.querySelector('input[name=method][value=oidc]').form.requestSubmit();"
        )
        assert await page.evaluate("document.title") == "Allow Claude?"
        assert "alice@example.com" in await page.evaluate("document.body.innerText")
        assert len(provider.token_requests) == 1
        await page.screenshot("consent-oidc")
        assert page.csp_violations() == []
