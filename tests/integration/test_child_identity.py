"""What a child learns about its user: nothing by default; with `child_identity`, its principal
and a gateway-signed assertion; the token itself only where it is the upstream's own credential."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from gateway.auth.static import digest_of
from gateway.config import Settings
from tests.support.mcp import Mcp, text_of
from tests.support.types import Gateway

PUBLIC = "https://mcp.example.com"
ALICE, BOB = "alice-token-1234", "bob-token-5678"


def static(**extra: Any) -> dict[str, Any]:
    tokens = [
        {"principal": "alice", "sha256": digest_of(ALICE), "scopes": ["tools"]},
        {"principal": "bob", "sha256": digest_of(BOB)},
    ]
    # The echo child runs from the virtualenv, which no other user may run: children share the
    # gateway's user here, a risk these tests accept (the isolation tests refuse it).
    return {"auth": "static", "static_tokens": tokens, "public_url": PUBLIC, "allow_shared_uid_children": True, **extra}


async def child_env(mcp: Mcp, token: str) -> dict[str, str]:
    """Open a session as the holder of `token`; return its child's environment."""
    mcp.session_id = mcp.version = None
    headers = {"Authorization": f"Bearer {token}"}
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-11-25"}}
    async with mcp.http.post("/mcp", json=init, headers=mcp.headers(headers)) as response:
        assert response.status == 200
        mcp.session_id = response.headers["Mcp-Session-Id"]
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "env", "arguments": {}}}
    status, messages = await mcp.post(call, headers)
    assert status == 200
    env: dict[str, str] = json.loads(text_of(messages[-1]))
    return env


async def test_nothing_about_the_user_by_default(gateway: Gateway) -> None:
    env = await child_env(await gateway(**static()), ALICE)
    assert not any(name.startswith("MCP_GATEWAY_") for name in env)
    assert ALICE not in json.dumps(env)  # the client's token never reaches the child


async def test_signed_identity_per_session(gateway: Gateway) -> None:
    mcp = await gateway(**static(child_identity=True))
    for token, user in ((ALICE, "alice"), (BOB, "bob")):
        env = await child_env(mcp, token)
        assert env["MCP_GATEWAY_PRINCIPAL"] == user
        keys = jwt.PyJWKSet.from_json(env["MCP_GATEWAY_IDENTITY_JWKS"])
        header = jwt.get_unverified_header(env["MCP_GATEWAY_IDENTITY"])
        claims = jwt.decode(
            env["MCP_GATEWAY_IDENTITY"],
            keys[header["kid"]].key,
            algorithms=["ES256"],
            audience=f"{PUBLIC}/mcp",
            issuer=PUBLIC,
        )
        assert (claims["sub"], claims["principal_issuer"]) == (user, "static")
        assert claims["exp"] - claims["iat"] == 900
        assert token not in json.dumps(env)


async def test_configured_signing_key(gateway: Gateway, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    key_file = tmp_path / "identity.pem"
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    mcp = await gateway(**static(child_identity=True, identity_key_file=key_file, identity_audience="my-server"))
    env = await child_env(mcp, ALICE)
    claims = jwt.decode(env["MCP_GATEWAY_IDENTITY"], key.public_key(), algorithms=["ES256"], audience="my-server")
    assert claims["sub"] == "alice"


async def test_token_to_environment_for_upstream_credentials(gateway: Gateway) -> None:
    mcp = await gateway(**static(token_env="UPSTREAM_TOKEN"))
    assert (await child_env(mcp, ALICE))["UPSTREAM_TOKEN"] == ALICE
    assert (await child_env(mcp, BOB))["UPSTREAM_TOKEN"] == BOB  # each session its own user's credential


@pytest.mark.parametrize(
    "auth",
    [
        {"auth": "jwt", "token_issuer": "https://i", "token_audience": ["a"], "jwt_jwks_url": "https://i/jwks"},
        {
            "auth": "introspection",
            "introspection_url": "https://i/x",
            "introspection_client_id": "c",
            "introspection_client_secret": "s",
        },
        {"auth": "none"},
    ],
    ids=["jwt", "introspection", "none"],
)
def test_token_passthrough_is_refused(auth: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="token passthrough"):
        Settings(command=["true"], token_env="UPSTREAM_TOKEN", **auth)


def test_identity_needs_authentication() -> None:
    with pytest.raises(ValidationError, match="needs authentication"):
        Settings(command=["true"], child_identity=True)
