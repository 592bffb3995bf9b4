"""The verifier skeleton `new-service --auth plugin` renders: it imports from the rendered folder,
type-checks as a `TokenVerifier` under mypy --strict, passes ruff, is accepted by the gateway's
plugin loader exactly as `.env.example` names it, and refuses every token with a proper 401."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import aiohttp
import pytest
from pytest_aiohttp import AiohttpClient

from gateway import cli, create_app
from gateway.auth import AuthError
from gateway.auth.plugin import load_plugin
from gateway.config import Settings
from tests.support.mcp import ACCEPT_BOTH, LATEST
from tests.support.servers import echo_command
from tests.support.settings import public_host

ROOT: Final = Path(__file__).resolve().parents[2]
# mypy over the skeleton and the gateway's typed package, from a cold cache.
MYPY_TIMEOUT: Final = 120.0
RUFF_TIMEOUT: Final = 30.0
INIT: Final = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": LATEST, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
# A module that uses the skeleton where the gateway does: its factory's result as a TokenVerifier.
PROTOCOL_CHECK: Final = """\
import aiohttp
from gateway.auth import TokenVerifier

from verifier import create


def build(http: aiohttp.ClientSession) -> TokenVerifier:
    return create(http=http)
"""


@pytest.fixture
def service(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    assert cli.main(["new-service", "acme", "--command", "mcp-server-time", "--auth", "plugin", "--out", str(out)]) == 0
    return out / "acme"


@pytest.fixture
def importable(service: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The rendered folder on sys.path, as PYTHONPATH puts it in the image; forgotten afterwards."""
    monkeypatch.syspath_prepend(str(service))
    yield service
    sys.modules.pop("verifier", None)


async def test_the_loader_accepts_the_rendered_plugin_and_every_token_gets_401(
    importable: Path, aiohttp_client: AiohttpClient
) -> None:
    # The settings read from the rendered .env.example, as the gateway reads its .env file.
    settings = Settings(
        _env_file=importable / ".env.example", command=echo_command(), port=0, public_url="https://acme.example.com"
    )
    assert (settings.auth, settings.plugin) == ("plugin", "verifier:create")
    client = await aiohttp_client(create_app(settings), headers=public_host(settings))
    for token in ("anything", "team-alice", "a" * 64):
        headers = {"Accept": ACCEPT_BOTH, "Authorization": f"Bearer {token}"}
        async with client.post("/mcp", json=INIT, headers=headers) as response:
            assert response.status == 401
            challenge = response.headers["WWW-Authenticate"]
            assert challenge.startswith("Bearer ")
            assert 'error="invalid_token"' in challenge


async def test_verify_raises_the_invalid_token_error(importable: Path) -> None:
    async with aiohttp.ClientSession() as http:
        verifier = load_plugin("verifier:create", {}, http)
        with pytest.raises(AuthError) as refused:
            await verifier.verify("some-token")
    assert refused.value.code == "invalid_token"
    assert "some-token" not in refused.value.reason


async def test_an_unknown_option_stops_the_factory(importable: Path) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(TypeError, match="takes no option issuer_url"):
            load_plugin("verifier:create", {"issuer_url": "https://id.example.com"}, http)


@pytest.mark.slow
def test_mypy_strict_sees_a_token_verifier(service: Path, tmp_path: Path) -> None:
    (service / "check_protocol.py").write_text(PROTOCOL_CHECK)
    # MYPYPATH: in this checkout mypy finds the gateway's sources here (an editable install is an
    # import hook mypy cannot follow); where mcp-gateway is installed, site-packages serves.
    result = subprocess.run(
        [
            sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--strict",
            "--cache-dir", str(tmp_path / "mypy-cache"), "verifier.py", "check_protocol.py",
        ],
        cwd=service, env={**os.environ, "MYPYPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=MYPY_TIMEOUT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_finds_nothing(service: Path) -> None:
    ruff = Path(sys.executable).parent / "ruff"
    for check in (["check"], ["format", "--check"]):
        result = subprocess.run(
            [str(ruff), *check, "--config", str(ROOT / "pyproject.toml"), "verifier.py"],
            cwd=service,
            capture_output=True,
            text=True,
            timeout=RUFF_TIMEOUT,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
