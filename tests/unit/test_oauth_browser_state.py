"""The browser's cookie session, read through its typed records: a request or sign-in of any
shape but the one written counts as absent, exactly as an expired one does."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiohttp_session import Session

from gateway.oauth.browser_state import (
    PENDING_LIFETIME,
    SIGNIN_LIFETIME,
    BrowserState,
    OidcFlow,
    PendingRequest,
    SignedInUser,
)
from gateway.oauth.errors import OAuthError


def _session(**data: Any) -> Session:
    return Session(None, data={"session": data, "created": int(time.time())}, new=False)


def _pending(**changes: Any) -> dict[str, Any]:
    entry = {
        "client_id": "mcpgw_client",
        "redirect_uri": "http://127.0.0.1:9/cb",
        "state": "s",
        "challenge": "c" * 43,
        "scope": None,
        "at": time.time(),
    }
    return {**entry, **changes}


def _user(**changes: Any) -> dict[str, Any]:
    return {**{"subject": "alice", "method": "token", "at": time.time(), "scopes": None}, **changes}


def test_records_read_back_what_they_wrote() -> None:
    flow = OidcFlow.start()
    pending = PendingRequest("c", "https://app.example/cb", "s", "x" * 43, "read", time.time(), flow)
    assert PendingRequest.parse(pending.to_json()) == pending
    user = SignedInUser("alice", "oidc", time.time(), None, issuer="https://idp.example", label="a@example.com")
    assert SignedInUser.parse(user.to_json()) == user
    token_user = SignedInUser("bob", "token", time.time(), ("read",), credential="handle")
    assert token_user.to_json().keys() == {"subject", "method", "at", "scopes", "credential"}
    assert SignedInUser.parse(token_user.to_json()) == token_user


@pytest.mark.parametrize(
    "entry",
    [
        "not an object",
        _pending(client_id=None),
        _pending(redirect_uri=7),
        _pending(state=["s"]),
        _pending(scope=1),
        _pending(at="now"),
        _pending(at=True),
        _pending(oidc={"state": "s", "nonce": "n"}),
        {key: value for key, value in _pending().items() if key != "at"},
    ],
    ids=["not-object", "client", "redirect", "state", "scope", "at-text", "at-bool", "oidc", "no-at"],
)
def test_a_garbled_pending_request_has_expired(entry: Any) -> None:
    state = BrowserState(_session(pending={"r": entry}))
    with pytest.raises(OAuthError, match="has expired"):
        state.pending("r")


def test_an_old_pending_request_has_expired_and_a_new_one_is_kept() -> None:
    state = BrowserState(_session(pending={"old": _pending(at=time.time() - PENDING_LIFETIME - 1), "bad": 1}))
    with pytest.raises(OAuthError, match="has expired"):
        state.pending("old")
    new = state.add_pending(PendingRequest.parse(_pending()) or pytest.fail("a good entry parses"))
    assert state.pending(new).client_id == "mcpgw_client"
    with pytest.raises(OAuthError, match="has expired"):
        state.pending("bad")  # dropped with the expired one


@pytest.mark.parametrize(
    "user",
    [
        "alice",
        _user(subject=None),
        _user(method="password"),
        _user(at=None),
        _user(scopes="read"),
        _user(scopes=["read", 1]),
        _user(issuer=1),
        _user(at=time.time() - SIGNIN_LIFETIME - 1),
    ],
    ids=["not-object", "subject", "method", "at", "scopes-text", "scopes-mixed", "issuer", "expired"],
)
def test_a_garbled_or_old_sign_in_is_nobody(user: Any) -> None:
    assert BrowserState(_session(user=user)).user() is None


def test_an_oidc_flow_is_taken_once() -> None:
    state = BrowserState(_session())
    request_id = state.add_pending(PendingRequest.parse(_pending()) or pytest.fail("a good entry parses"))
    flow = OidcFlow.start()
    state.start_oidc(request_id, flow)
    assert state.take_oidc_flow("forged") is None
    assert state.take_oidc_flow(flow.state) == (request_id, flow)
    assert state.take_oidc_flow(flow.state) is None
