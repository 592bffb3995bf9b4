"""The built-in authorization server's state, built once from settings and open for the app's
lifetime: storage, keys, clients, tokens, the sign-in methods (the verifier of pasted service
tokens, the upstream OpenID provider), its outbound HTTP clients and background tasks, plus its
RFC 8414 metadata.

Endpoints live under `/oauth/` (routes.py); the metadata and JWKS under `/.well-known/`. The
issuer is the configured public URL, and the only resource it issues tokens for is this
gateway's MCP URL.

`OAuthServer.running(settings, …)` opens everything in order and closes it in reverse: the
storage and the signing keys (a store that cannot be used stops startup), the HTTP client that
fetches client metadata documents, the OpenID provider with a client of its own (its discovery
document read, or startup stops), then the background tasks — key rotation (unless the keys are
configured files) and the provider's discovery refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from gateway import keys
from gateway.auth import AuthStartupError, Principal, TokenVerifier
from gateway.auth.jwt import LEEWAY_SECONDS
from gateway.errors import GatewayError
from gateway.net import client_session
from gateway.oauth.clients import AUTH_METHODS, ClientRegistry, cimd_session
from gateway.oauth.keyset import KeySet, derive_fernet
from gateway.oauth.oidc import AllowList, ClientCredentials, OidcProvider
from gateway.oauth.storage import OAuthStore, StorageError, open_store
from gateway.oauth.tokens import Tokens
from gateway.paths import OAUTH_PREFIX, WELL_KNOWN_PREFIX

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.observe.audit import Audit, EventName

# Where the upstream OpenID provider sends the browser back (the redirect URI registered there).
OIDC_CALLBACK_PATH: Final = OAUTH_PREFIX + "oidc/callback"
# The pages a browser visits (the other endpoints are for clients, and never see a cookie).
BROWSER_PATHS: Final = frozenset(
    {OAUTH_PREFIX + "authorize", OAUTH_PREFIX + "signin", OAUTH_PREFIX + "consent", OIDC_CALLBACK_PATH}
)
JWKS_PATH: Final = WELL_KNOWN_PREFIX + "jwks.json"
# The key of the secrets this server stores encrypted, derived from oauth_session_key.
SECRETS_KEY_PURPOSE: Final = "mcp-gateway oauth stored secrets"
# A generated signing key stays published this long after it stops signing: longer than any
# access token it signed can live (plus the clock leeway), and than a JWKS cache keeps a set.
JWKS_CACHE_SECONDS: Final = 300


@dataclass(frozen=True, slots=True)
class Endpoints:
    issuer: str

    @property
    def authorize(self) -> str:
        return f"{self.issuer}{OAUTH_PREFIX}authorize"

    @property
    def token(self) -> str:
        return f"{self.issuer}{OAUTH_PREFIX}token"

    @property
    def register(self) -> str:
        return f"{self.issuer}{OAUTH_PREFIX}register"

    @property
    def revoke(self) -> str:
        return f"{self.issuer}{OAUTH_PREFIX}revoke"

    @property
    def jwks(self) -> str:
        return f"{self.issuer}{JWKS_PATH}"

    @property
    def oidc_callback(self) -> str:
        return f"{self.issuer}{OIDC_CALLBACK_PATH}"


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
    audit: Audit

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls, settings: Settings, *, signin_verifier: TokenVerifier | None, audit: Audit
    ) -> AsyncIterator[OAuthServer]:
        """The server `settings` describe, open until the block ends (see the module docstring);
        `signin_verifier` checks the service tokens users paste."""
        if settings.oauth_session_key is None:  # pragma: no cover - Settings ensure it
            raise AuthStartupError("oauth_server needs oauth_session_key")
        secrets_key = derive_fernet(settings.oauth_session_key.get_secret_value(), SECRETS_KEY_PURPOSE)
        async with contextlib.AsyncExitStack() as stack:
            store = open_store(settings.oauth_storage_url)
            stack.push_async_callback(store.aclose)
            allow_private = settings.oauth_cimd_allow_private
            http = await stack.enter_async_context(cimd_session(allow_private=allow_private))
            keyset = KeySet(
                store,
                secrets_key,
                files=settings.oauth_signing_key_files,
                rotation=settings.oauth_signing_key_rotation,
                overlap=settings.oauth_access_token_ttl + LEEWAY_SECONDS + JWKS_CACHE_SECONDS,
            )
            try:
                await store.open()
                await keyset.load()
            except StorageError as exc:
                raise AuthStartupError(f"the OAuth storage cannot be used: {exc}") from None
            oidc = None
            if "oidc" in settings.oauth_signin_methods:
                # The OpenID provider is configured, not named by a request: an ordinary client reaches it.
                oidc = await _oidc_provider(settings, await stack.enter_async_context(client_session()))
            tokens = Tokens(
                store,
                keyset,
                secrets_key,
                issuer=settings.base_url,
                resource=settings.resource_url,
                access_ttl=settings.oauth_access_token_ttl,
                refresh_ttl=settings.oauth_refresh_token_ttl,
            )
            server = cls(
                endpoints=Endpoints(settings.base_url),
                resource=settings.resource_url,
                service=urlsplit(settings.base_url).netloc,
                store=store,
                keys=keyset,
                tokens=tokens,
                clients=ClientRegistry(store, http, allow_private=allow_private),
                cimd_http=http,
                signin_verifier=signin_verifier,
                oidc=oidc,
                signin_methods=tuple(settings.oauth_signin_methods),
                offered_scopes=offered_scopes(settings),
                token_to_env=settings.oauth_token_to_env,
                dynamic_registration=settings.oauth_dynamic_registration,
                audit=audit,
            )
            tasks: list[asyncio.Task[None]] = []
            stack.push_async_callback(_cancel, tasks)
            if not settings.oauth_signing_key_files:
                tasks.append(asyncio.create_task(keyset.maintain()))
            if oidc is not None:
                tasks.append(asyncio.create_task(oidc.refresh_forever()))
            yield server

    @property
    def issuer(self) -> str:
        return self.endpoints.issuer

    def record(self, event: EventName, *, subject: str | None = None, issuer: str | None = None, **fields: Any) -> None:
        """Audit `event`; the user is `subject` of `issuer` (an OpenID provider), else of this server."""
        principal = Principal(issuer=issuer or self.issuer, subject=subject) if subject is not None else None
        self.audit.record(event, principal=principal, **fields)

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

    def grantable_scope(self, requested: str | None, user_scopes: Collection[str] | None) -> str:
        """The scope a grant gets: what was asked (everything offered when nothing was) among the
        scopes this server offers, never beyond the scopes of the user's own token when it names them."""
        offered = set(self.offered_scopes)
        granted = offered if not requested else set(requested.split()) & offered
        if user_scopes is not None:
            granted &= set(user_scopes)
        return " ".join(sorted(granted))


def server_of(request: web.Request) -> OAuthServer:
    """The authorization server of the app `request` reached (its routes exist only when it runs)."""
    server = request.app[keys.OAUTH]
    if server is None:  # pragma: no cover - routes exist only with the server
        raise GatewayError("not_found", "No authorization server here")
    return server


def offered_scopes(settings: Settings) -> tuple[str, ...]:
    """Scopes the built-in server can grant: the advertised ones and every scope the gateway checks."""
    scopes = [*settings.scopes_supported, *settings.required_scopes]
    scopes += [scope for scope in (settings.tool_scope_write, settings.tool_scope_destructive) if scope]
    return tuple(sorted(set(scopes)))


async def _oidc_provider(settings: Settings, http: aiohttp.ClientSession) -> OidcProvider:
    """The upstream OpenID provider users may sign in with, its discovery document and keys read
    (a provider that does not answer stops startup)."""
    if settings.oauth_oidc_issuer is None or settings.oauth_oidc_client_id is None:  # pragma: no cover
        raise AuthStartupError("oidc sign-in needs oauth_oidc_issuer and oauth_oidc_client_id")  # Settings ensure it
    secret = settings.oauth_oidc_client_secret
    emails = settings.oauth_oidc_subject_claim == "email"
    provider = OidcProvider(
        http,
        issuer=settings.oauth_oidc_issuer,
        client=ClientCredentials(
            settings.oauth_oidc_client_id,
            secret.get_secret_value() if secret is not None else None,
            settings.oauth_oidc_client_auth,
        ),
        redirect_uri=Endpoints(settings.base_url).oidc_callback,
        scopes=settings.oauth_oidc_scopes,
        subject_claim=settings.oauth_oidc_subject_claim,
        allow=AllowList.of(
            settings.oauth_oidc_allowed_subjects,
            settings.oauth_oidc_allowed_domains,
            any_account=settings.oauth_oidc_allow_any_account,
            emails=emails,
        ),
        name=settings.oauth_oidc_name,
    )
    try:
        await provider.load()
    except ValueError as exc:
        raise AuthStartupError(f"the OpenID provider {settings.oauth_oidc_issuer} cannot be used: {exc}") from None
    return provider


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
