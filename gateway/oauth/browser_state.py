"""What a browser's encrypted-cookie session holds for the sign-in pages, as typed records.

The cookie is an aiohttp-session `EncryptedCookieStorage` (Fernet, a key derived from
`oauth_session_key`), HttpOnly and SameSite=Lax; with an https public URL it is `__Host-`
prefixed and Secure. Only for a plain-http loopback public URL (development and tests) it is
neither, since a browser does not keep Secure cookies from plain http. It holds:
- `csrf`: the token every form of the pages must carry back, replaced at each sign-in;
- `pending`: the authorization requests waiting for this browser's user, by a random id, at most
  `MAX_PENDING` (the oldest is dropped), each for `PENDING_LIFETIME`; one being signed in with
  the OpenID provider also holds that sign-in's `state`, `nonce` and PKCE verifier, taken out
  (once) by the provider's answer;
- `user`: who signed in, for `SIGNIN_LIFETIME`.

Invariant: the session's JSON is read only through `PendingRequest.parse` and
`SignedInUser.parse`. An entry of any other shape is treated as absent — the request has
expired, nobody is signed in — exactly as an expired one is; the cookie is authenticated, so
only a change of this code or a leaked key can produce one.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from aiohttp_session.cookie_storage import EncryptedCookieStorage

from gateway.oauth.errors import OAuthError
from gateway.oauth.keyset import derive_fernet

if TYPE_CHECKING:
    from aiohttp_session import Session

COOKIE_NAME: Final = "mcp-gateway-oauth"
# The cookie's key, derived from oauth_session_key.
COOKIE_KEY_PURPOSE: Final = "mcp-gateway oauth session cookie"
# A browser sign-in (and the cookie holding it) lasts this long.
SIGNIN_LIFETIME: Final = 3600
# An authorization request waits this long for its user to sign in and decide.
PENDING_LIFETIME: Final = 600
# Pending authorization requests kept per browser (the oldest is dropped).
MAX_PENDING: Final = 4
# Random bytes of a pending request's id, of a CSRF token, and of an OpenID sign-in's `state`
# and `nonce`; its PKCE verifier's 48 bytes make 64 characters (RFC 7636 allows 43 to 128).
REQUEST_ID_BYTES: Final = 12
CSRF_BYTES: Final = 24
OIDC_STATE_BYTES: Final = 32
OIDC_VERIFIER_BYTES: Final = 48

SigninMethod = Literal["token", "oidc"]


def session_cookie(master_key: str, *, secure: bool) -> EncryptedCookieStorage:
    """The encrypted browser-session cookie (see the module docstring for its attributes)."""
    return EncryptedCookieStorage(
        derive_fernet(master_key, COOKIE_KEY_PURPOSE),
        cookie_name=f"__Host-{COOKIE_NAME}" if secure else COOKIE_NAME,
        max_age=SIGNIN_LIFETIME,
        path="/",
        secure=secure,
        httponly=True,
        samesite="Lax",
    )


class _Garbled(Exception):
    """A session entry that is not the shape this module writes."""


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise _Garbled
    return value


def _optional_str(value: object) -> str | None:
    return None if value is None else _str(value)


def _time(value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _Garbled
    return float(value)


def _scopes(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise _Garbled
    return tuple(_str(scope) for scope in value)


def _signin_method(value: object) -> SigninMethod:
    if value == "token":
        return "token"
    if value == "oidc":
        return "oidc"
    raise _Garbled


@dataclass(frozen=True, slots=True)
class OidcFlow:
    """The secrets of one sign-in with the OpenID provider: sent with it, checked on its answer."""

    state: str
    nonce: str
    verifier: str  # the PKCE verifier

    @classmethod
    def start(cls) -> OidcFlow:
        return cls(
            state=secrets.token_urlsafe(OIDC_STATE_BYTES),
            nonce=secrets.token_urlsafe(OIDC_STATE_BYTES),
            verifier=secrets.token_urlsafe(OIDC_VERIFIER_BYTES),
        )

    @classmethod
    def parse(cls, value: object) -> OidcFlow | None:
        if not isinstance(value, dict):
            return None
        try:
            return cls(_str(value.get("state")), _str(value.get("nonce")), _str(value.get("verifier")))
        except _Garbled:
            return None

    def to_json(self) -> dict[str, str]:
        return {"state": self.state, "nonce": self.nonce, "verifier": self.verifier}


@dataclass(frozen=True, slots=True)
class PendingRequest:
    """A checked authorization request waiting for its user: from a verified client and redirect URI."""

    client_id: str
    redirect_uri: str
    state: str
    challenge: str  # the PKCE S256 challenge
    scope: str | None
    at: float  # when it was made
    oidc: OidcFlow | None = None  # a sign-in with the OpenID provider under way for it

    @classmethod
    def parse(cls, value: object) -> PendingRequest | None:
        if not isinstance(value, dict):
            return None
        flow = value.get("oidc")
        oidc = OidcFlow.parse(flow) if flow is not None else None
        if flow is not None and oidc is None:
            return None
        try:
            return cls(
                client_id=_str(value.get("client_id")),
                redirect_uri=_str(value.get("redirect_uri")),
                state=_str(value.get("state")),
                challenge=_str(value.get("challenge")),
                scope=_optional_str(value.get("scope")),
                at=_time(value.get("at")),
                oidc=oidc,
            )
        except _Garbled:
            return None

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "state": self.state,
            "challenge": self.challenge,
            "scope": self.scope,
            "at": self.at,
        }
        if self.oidc is not None:
            entry["oidc"] = self.oidc.to_json()
        return entry

    def expired(self, now: float) -> bool:
        return self.at + PENDING_LIFETIME < now


@dataclass(frozen=True, slots=True)
class SignedInUser:
    """Who signed in at this browser, and how."""

    subject: str
    method: SigninMethod
    at: float  # when
    # The scopes of the user's own token, when it names them (a static token): a grant never exceeds them.
    scopes: tuple[str, ...] | None
    issuer: str | None = None  # the OpenID provider that signed the user in; None for a service token
    label: str | None = None  # how the pages name the user (the provider's verified email)
    credential: str | None = None  # the handle of the stored service token (token-to-env opt-in)

    @classmethod
    def parse(cls, value: object) -> SignedInUser | None:
        if not isinstance(value, dict):
            return None
        try:
            return cls(
                subject=_str(value.get("subject")),
                method=_signin_method(value.get("method")),
                at=_time(value.get("at")),
                scopes=_scopes(value.get("scopes")),
                issuer=_optional_str(value.get("issuer")),
                label=_optional_str(value.get("label")),
                credential=_optional_str(value.get("credential")),
            )
        except _Garbled:
            return None

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "subject": self.subject,
            "method": self.method,
            "at": self.at,
            "scopes": list(self.scopes) if self.scopes is not None else None,
        }
        for name, value in (("issuer", self.issuer), ("label", self.label), ("credential", self.credential)):
            if value is not None:
                entry[name] = value
        return entry


class BrowserState:
    """One browser's cookie session, read and written as typed records."""

    __slots__ = ("_session",)

    def __init__(self, session: Session) -> None:
        self._session = session

    def csrf(self) -> str:
        """The CSRF token the pages' forms carry (made on first use)."""
        token = self._session.get("csrf")
        if not isinstance(token, str):
            token = self._session["csrf"] = secrets.token_urlsafe(CSRF_BYTES)
        return token

    def check_csrf(self, presented: str) -> None:
        expected = self._session.get("csrf")
        if not isinstance(expected, str) or not hmac.compare_digest(expected.encode(), presented.encode()):
            raise OAuthError("access_denied", "This form has expired or did not come from this site; start again")

    def _waiting(self) -> dict[str, Any]:
        pending = self._session.get("pending")
        return pending if isinstance(pending, dict) else {}

    def pending(self, request_id: str | None) -> PendingRequest:
        """The pending request `request_id`, unless it has expired (or never was)."""
        entry = PendingRequest.parse(self._waiting().get(request_id)) if request_id else None
        if entry is None or entry.expired(time.time()):
            raise OAuthError("invalid_request", "This sign-in request has expired; start again from your app")
        return entry

    def add_pending(self, request: PendingRequest) -> str:
        """Keep `request` (dropping expired ones, and the oldest beyond `MAX_PENDING`); its new id."""
        request_id = secrets.token_urlsafe(REQUEST_ID_BYTES)
        now = time.time()
        waiting = {
            key: entry
            for key, value in self._waiting().items()
            if (entry := PendingRequest.parse(value)) is not None and not entry.expired(now)
        }
        waiting[request_id] = request
        kept = sorted(waiting.items(), key=lambda item: item[1].at)[-MAX_PENDING:]
        self._session["pending"] = {key: entry.to_json() for key, entry in kept}
        return request_id

    def take_pending(self, request_id: str) -> PendingRequest:
        """Remove the pending request `request_id` (it is answered) and return it."""
        entry = PendingRequest.parse(self._waiting().pop(request_id, None))
        self._session.changed()
        if entry is None:  # pragma: no cover - the caller has just found it
            raise OAuthError("invalid_request", "This sign-in request has expired; start again from your app")
        return entry

    def start_oidc(self, request_id: str, flow: OidcFlow) -> None:
        """Remember `flow` with the pending request it signs in for (replacing an unfinished one)."""
        self._waiting()[request_id]["oidc"] = flow.to_json()
        self._session.changed()

    def take_oidc_flow(self, state: str) -> tuple[str, OidcFlow] | None:
        """The id of the pending request whose sign-in sent `state`, and that sign-in's secrets,
        removed from the session: a second answer with the same state finds nothing."""
        for request_id, value in self._waiting().items():
            entry = PendingRequest.parse(value)
            if entry is None or entry.oidc is None:
                continue
            if hmac.compare_digest(entry.oidc.state.encode(), state.encode()):
                del value["oidc"]
                self._session.changed()
                return request_id, entry.oidc
        return None

    def user(self) -> SignedInUser | None:
        """Who is signed in, unless that sign-in has expired."""
        user = SignedInUser.parse(self._session.get("user"))
        if user is not None and user.at + SIGNIN_LIFETIME > time.time():
            return user
        return None

    def sign_in(self, user: SignedInUser) -> None:
        self._session["user"] = user.to_json()
        self._session["csrf"] = secrets.token_urlsafe(CSRF_BYTES)  # a new CSRF token with the new sign-in
