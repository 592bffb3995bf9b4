"""Bearer authentication with the static verifier: the header matrix, scopes, principals owning
sessions, the per-principal cap, discovery metadata, and tokens kept out of the logs."""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any

import pytest
from aiohttp import ClientResponse

from gateway.auth.static import digest_of
from tests.support.mcp import ACCEPT_BOTH, LATEST, Mcp, text_of
from tests.support.types import Gateway

ALICE = "alice-token-0123456789"
BOB = "bob-token-9876543210"
PUBLIC = "https://mcp.example.com"
METADATA = f"{PUBLIC}/.well-known/oauth-protected-resource/mcp"
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": LATEST}}


def static_auth(**extra: Any) -> dict[str, Any]:
    tokens = [
        {"principal": "alice", "sha256": digest_of(ALICE), "scopes": ["tools"]},
        {"principal": "bob", "sha256": digest_of(BOB)},
    ]
    return {"auth": "static", "static_tokens": tokens, "public_url": PUBLIC, **extra}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def initialize_as(mcp: Mcp, token: str) -> None:
    mcp.session_id = mcp.version = None
    headers = mcp.headers(bearer(token))
    async with mcp.http.post("/mcp", json=INIT, headers=headers) as response:
        assert response.status == 200, await response.text()
        mcp.session_id = response.headers["Mcp-Session-Id"]
        mcp.version = (await response.json())["result"]["protocolVersion"]


def challenge_params(response: ClientResponse) -> dict[str, str]:
    scheme, _, rest = response.headers["WWW-Authenticate"].partition(" ")
    assert scheme == "Bearer"
    params = {}
    for part in rest.split(", "):
        key, _, value = part.partition("=")
        params[key] = value.strip('"')
    return params


@pytest.mark.parametrize(
    ("authorization", "status", "error"),
    [
        (None, 401, None),
        ("Bearer", 400, "invalid_request"),
        ("Bearer    ", 400, "invalid_request"),
        ("Bearer a b", 400, "invalid_request"),
        ("Bearer tok€n", 400, "invalid_request"),
        ("Basic YWxpY2U6c2VjcmV0", 401, None),
        ("Bearer not-a-known-token", 401, "invalid_token"),
        (f"bearer {ALICE}", 200, None),
        (f"BEARER  {ALICE} ", 200, None),
        (f"Bearer {ALICE}", 200, None),
    ],
    ids=[
        "missing",
        "empty",
        "whitespace",
        "two-tokens",
        "non-token-chars",
        "basic",
        "unknown",
        "lowercase",
        "upper-spaced",
        "valid",
    ],
)
async def test_authorization_header_matrix(
    gateway: Gateway, authorization: str | None, status: int, error: str | None
) -> None:
    mcp = await gateway(**static_auth())
    headers = {"Accept": ACCEPT_BOTH, "Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    async with mcp.http.post("/mcp", json=INIT, headers=headers) as response:
        assert response.status == status
        if status == 200:
            assert "Mcp-Session-Id" in response.headers
            return
        params = challenge_params(response)
        body = await response.json()
    assert params["resource_metadata"] == METADATA
    assert params["realm"] == "mcp-gateway"
    assert params.get("error") == error
    assert ("error_description" in params) == (error is not None)
    assert body["error"]["code"] == -32600
    assert "Mcp-Session-Id" not in response.headers


async def test_two_authorization_headers_are_malformed(gateway: Gateway) -> None:
    mcp = await gateway(**static_auth())
    headers = [("Authorization", f"Bearer {ALICE}"), ("Authorization", f"Bearer {BOB}"), ("Accept", ACCEPT_BOTH)]
    async with mcp.http.post("/mcp", json=INIT, headers=headers) as response:
        assert response.status == 400
        assert challenge_params(response)["error"] == "invalid_request"


async def test_every_request_is_authenticated(gateway: Gateway) -> None:
    """A session id is never a credential: without the token, the session's requests get 401."""
    mcp = await gateway(**static_auth())
    await initialize_as(mcp, ALICE)
    status, _ = await mcp.post({"jsonrpc": "2.0", "id": 2, "method": "ping"})
    assert status == 401
    status, messages = await mcp.post({"jsonrpc": "2.0", "id": 3, "method": "ping"}, bearer(ALICE))
    assert (status, messages[0]["id"]) == (200, 3)
    async with mcp.http.get("/mcp", headers=mcp.headers()) as response:
        assert response.status == 401
    async with mcp.http.delete("/mcp", headers=mcp.headers()) as response:
        assert response.status == 401


async def test_missing_scope_is_403_naming_the_scope(gateway: Gateway) -> None:
    mcp = await gateway(**static_auth(required_scopes=["tools"]))
    async with mcp.http.post("/mcp", json=INIT, headers={"Accept": ACCEPT_BOTH, **bearer(BOB)}) as response:
        assert response.status == 403
        params = challenge_params(response)
    assert (params["error"], params["scope"]) == ("insufficient_scope", "tools")
    await initialize_as(mcp, ALICE)  # alice holds the scope


async def test_a_session_belongs_to_its_principal(gateway: Gateway) -> None:
    mcp = await gateway(**static_auth())
    await initialize_as(mcp, ALICE)
    call = {"jsonrpc": "2.0", "id": "b", "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"}}}
    status, messages = await mcp.post(call, bearer(BOB))
    assert status == 404  # bob holds a valid token, but this is not his session
    assert messages[0]["error"]["message"] == "Session not found"
    async with mcp.http.delete("/mcp", headers=mcp.headers(bearer(BOB))) as response:
        assert response.status == 404
    status, messages = await mcp.post(call, bearer(ALICE))
    assert status == 200
    assert text_of(messages[-1]) == "x"


async def test_per_principal_session_cap(gateway: Gateway) -> None:
    mcp = await gateway(**static_auth(max_sessions_per_principal=1))
    await initialize_as(mcp, ALICE)
    # Busy with its stream open (an idle session would give way: see test_session_caps.py).
    async with mcp.http.get("/mcp", headers=mcp.headers(bearer(ALICE))) as stream:
        assert stream.status == 200
        async with mcp.http.post("/mcp", json=INIT, headers={"Accept": ACCEPT_BOTH, **bearer(ALICE)}) as response:
            assert response.status == 429
            assert int(response.headers["Retry-After"]) > 0
    other = Mcp(mcp.http)
    await initialize_as(other, BOB)  # the cap is per principal
    assert await mcp.delete() == 401  # (no token) …
    async with mcp.http.delete("/mcp", headers=mcp.headers(bearer(ALICE))) as response:
        assert response.status == 204
    await initialize_as(Mcp(mcp.http), ALICE)  # the slot is free again


async def test_public_paths_need_no_token(gateway: Gateway) -> None:
    mcp = await gateway(**static_auth(allowed_origins=["https://app.example"]))
    async with mcp.http.get("/health") as response:
        assert response.status == 200
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    async with mcp.http.options("/mcp", headers=preflight) as response:
        assert response.status == 204
    # Exact paths only: a look-alike path is not public, it is simply not found.
    async with mcp.http.post("/mcp/", json=INIT, headers=bearer(ALICE)) as response:
        assert response.status == 404


async def test_no_resource_metadata_without_an_authorization_server(gateway: Gateway) -> None:
    mcp = await gateway(**static_auth())
    for path in ("/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"):
        async with mcp.http.get(path) as response:
            assert response.status == 404


async def test_resource_metadata(gateway: Gateway) -> None:
    mcp = await gateway(
        **static_auth(
            authorization_servers=["https://auth.example.com"],
            authorization_server_metadata={"issuer": "https://auth.example.com"},
            scopes_supported=["tools"],
            resource_documentation="https://docs.example.com/mcp",
        )
    )
    for path in ("/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"):
        # Spoofed forwarding headers change nothing: the document comes from settings only.
        headers = {"Host": "evil.example", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "http"}
        async with mcp.http.get(path, headers=headers) as response:
            assert response.status == 200
            assert response.headers["Cache-Control"] == "public, max-age=3600"
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            document = await response.json()
        assert document == {
            "resource": f"{PUBLIC}/mcp",
            "authorization_servers": ["https://auth.example.com"],
            "bearer_methods_supported": ["header"],
            "scopes_supported": ["tools"],
            "resource_documentation": "https://docs.example.com/mcp",
        }


async def test_tokens_never_reach_the_log(gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    mcp = await gateway(**static_auth())
    await initialize_as(mcp, ALICE)
    await mcp.post({"jsonrpc": "2.0", "id": 1, "method": "ping"}, bearer(ALICE))
    await mcp.post({"jsonrpc": "2.0", "id": 2, "method": "ping"}, bearer("wrong-" + BOB))
    logged = "\n".join(f"{record.getMessage()} {vars(record)}" for record in caplog.records)
    for token in (ALICE, BOB, "wrong-" + BOB):
        assert token not in logged
    assert hashlib.sha256(("wrong-" + BOB).encode()).hexdigest()[:12] in logged  # the fingerprint is


async def test_static_comparison_visits_every_entry(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: a match on the first entry costs as many comparisons as no match at all."""
    compared: list[bytes] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(a)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    mcp = await gateway(**static_auth())
    for token in (ALICE, "unknown"):
        compared.clear()
        async with mcp.http.post("/mcp", json=INIT, headers={"Accept": ACCEPT_BOTH, **bearer(token)}):
            pass
        assert len(compared) >= 2
        assert {bytes.fromhex(digest_of(ALICE)), bytes.fromhex(digest_of(BOB))} <= set(compared)


async def test_without_authentication_only_the_global_cap_counts(gateway: Gateway) -> None:
    """Every client is 'anonymous' when authentication is off: the per-principal cap must not
    turn into a tiny global one."""
    mcp = await gateway(max_sessions_per_principal=1, max_sessions=3)
    for _ in range(3):
        await Mcp(mcp.http).initialize()
    async with mcp.http.post("/mcp", json=INIT, headers={"Accept": ACCEPT_BOTH}) as response:
        assert response.status == 503  # the global cap, not 429
