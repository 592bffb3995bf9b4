"""The built-in authorization server's state, built once from settings: storage, keys, clients,
tokens, the sign-in methods (the verifier of pasted service tokens, the upstream OpenID provider)
and the browser-session cookie, plus its RFC 8414 metadata.

Endpoints live under `/oauth/` (routes.py); the metadata and JWKS under `/.well-known/`. The
issuer is the configured public URL, and the only resource it issues tokens for is this
gateway's MCP URL.

The browser session is an aiohttp-session encrypted cookie (Fernet, a key derived from
`oauth_session_key`), HttpOnly and SameSite=Lax; with an https public URL it is `__Host-`
prefixed and Secure. Only for a plain-http loopback public URL (development and tests) it is
neither, since a browser does not keep Secure cookies from plain http.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from aiohttp_session.cookie_storage import EncryptedCookieStorage

from gateway.auth import TokenVerifier
from gateway.oauth.clients import AUTH_METHODS, ClientRegistry
from gateway.oauth.keyset import KeySet
from gateway.oauth.oidc import OidcProvider
from gateway.oauth.storage import OAuthStore
from gateway.oauth.tokens import Tokens

PREFIX: Final = "/oauth/"
# Where the upstream OpenID provider sends the browser back (the redirect URI registered there).
OIDC_CALLBACK_PATH: Final = PREFIX + "oidc/callback"
# The pages a browser visits (the other endpoints are for clients, and never see a cookie).
BROWSER_PATHS: Final = frozenset({PREFIX + "authorize", PREFIX + "signin", PREFIX + "consent", OIDC_CALLBACK_PATH})
JWKS_PATH: Final = "/.well-known/jwks.json"
COOKIE_NAME: Final = "mcp-gateway-oauth"
# A browser sign-in (and the cookie holding it) lasts this long.
SIGNIN_LIFETIME: Final = 3600
# An authorization request waits this long for its user to sign in and decide.
PENDING_LIFETIME: Final = 600
# A user's consent to a client is remembered this long.
CONSENT_TTL: Final = 30 * 86400.0


@dataclass(frozen=True, slots=True)
class Endpoints:
    issuer: str

    @property
    def authorize(self) -> str:
        return f"{self.issuer}{PREFIX}authorize"

    @property
    def token(self) -> str:
        return f"{self.issuer}{PREFIX}token"

    @property
    def register(self) -> str:
        return f"{self.issuer}{PREFIX}register"

    @property
    def revoke(self) -> str:
        return f"{self.issuer}{PREFIX}revoke"

    @property
    def jwks(self) -> str:
        return f"{self.issuer}{JWKS_PATH}"

    @property
    def oidc_callback(self) -> str:
        return f"{self.issuer}{OIDC_CALLBACK_PATH}"


def session_cookie(secret: Any, *, secure: bool) -> EncryptedCookieStorage:
    """The encrypted browser-session cookie (see the module docstring for its attributes)."""
    return EncryptedCookieStorage(
        secret,
        cookie_name=f"__Host-{COOKIE_NAME}" if secure else COOKIE_NAME,
        max_age=SIGNIN_LIFETIME,
        path="/",
        secure=secure,
        httponly=True,
        samesite="Lax",
    )


@dataclass(slots=True)
class OAuthServer:
    """Everything the endpoints need."""

    endpoints: Endpoints
    resource: str
    service: str  # how pages name this server
    store: OAuthStore
    keys: KeySet
    tokens: Tokens
    clients: ClientRegistry
    cimd_http: aiohttp.ClientSession
    signin_verifier: TokenVerifier | None
    oidc: OidcProvider | None  # the upstream OpenID provider, when users may sign in with it
    signin_methods: tuple[str, ...]
    offered_scopes: tuple[str, ...]
    token_to_env: bool
    dynamic_registration: bool

    @property
    def issuer(self) -> str:
        return self.endpoints.issuer

    def metadata(self) -> dict[str, Any]:
        """RFC 8414 authorization server metadata."""
        document: dict[str, Any] = {
            "issuer": self.issuer,
            "authorization_endpoint": self.endpoints.authorize,
            "token_endpoint": self.endpoints.token,
            "jwks_uri": self.endpoints.jwks,
            "revocation_endpoint": self.endpoints.revoke,
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
            "revocation_endpoint_auth_methods_supported": list(AUTH_METHODS),
            "code_challenge_methods_supported": ["S256"],
            "client_id_metadata_document_supported": True,
            "authorization_response_iss_parameter_supported": True,
        }
        if self.dynamic_registration:
            document["registration_endpoint"] = self.endpoints.register
        if self.offered_scopes:
            document["scopes_supported"] = list(self.offered_scopes)
        return document

    def grantable_scope(self, requested: str | None, user_scopes: list[str] | None) -> str:
        """The scope a grant gets: what was asked (everything offered when nothing was) among the
        scopes this server offers, never beyond the scopes of the user's own token when it names them."""
        offered = set(self.offered_scopes)
        granted = offered if not requested else set(requested.split()) & offered
        if user_scopes is not None:
            granted &= set(user_scopes)
        return " ".join(sorted(granted))
