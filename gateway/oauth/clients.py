"""OAuth clients: registered dynamically (RFC 7591) or named by a metadata document (CIMD).

A client is what the consent page names and what the authorization and token endpoints check
against: its redirect URIs (matched exactly, except that a loopback redirect may use any port,
RFC 8252 §7.3), its grant types and how it authenticates at the token endpoint.

Client ID Metadata Documents: a `client_id` that is an https URL is fetched — no redirects,
`CIMD_FETCH_TIMEOUT`, at most `MAX_CIMD_BYTES` — and must name itself as `client_id`. The
fetch never reaches a loopback, private, link-local or otherwise non-public address: literal
addresses are refused before connecting, and host names are resolved by `PublicResolver`, which
drops non-public answers at connection time (so a DNS answer cannot change between the check and
the connection). Tests can allow private addresses (and plain http to loopback) by setting.
Documents are cached for their `Cache-Control: max-age`, within bounds.

Dynamically registered clients are public (`none`) unless they ask for a client secret, which
is returned once and stored only as its SHA-256 digest.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from gateway import net
from gateway.oauth.errors import OAuthError
from gateway.oauth.storage import OAuthStore

AuthMethod = Literal["none", "client_secret_post", "client_secret_basic"]
AUTH_METHODS: Final[tuple[AuthMethod, ...]] = ("none", "client_secret_post", "client_secret_basic")
GRANT_TYPES: Final = frozenset({"authorization_code", "refresh_token"})
KIND: Final = "client"
CLIENT_ID_PREFIX: Final = "mcpgw_"
# A registered client unused for this long is forgotten (each grant renews it).
REGISTRATION_TTL: Final = 180 * 86400.0
MAX_REGISTRATION_BYTES: Final = 16 * 1024
MAX_REDIRECT_URIS: Final = 16
MAX_NAME_CHARS: Final = 120
# CIMD fetch limits: a client document is a few hundred bytes; a slow or huge one is refused.
CIMD_FETCH_TIMEOUT: Final = 5.0
MAX_CIMD_BYTES: Final = 10 * 1024
# CIMD cache: the document's max-age, clamped to these bounds; the default without one.
CIMD_CACHE_MIN: Final = 60.0
CIMD_CACHE_MAX: Final = 86400.0
CIMD_CACHE_DEFAULT: Final = 300.0
CIMD_CACHE_ENTRIES: Final = 1000
LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "[::1]", "localhost"})
# Schemes a redirect URI can never use (they run code or read files in the browser).
FORBIDDEN_SCHEMES: Final = frozenset({"javascript", "data", "vbscript", "file", "about", "blob"})
_MAX_AGE: Final = re.compile(r"(?:^|,)\s*max-age\s*=\s*(\d+)", re.IGNORECASE)
# Why a client metadata document was refused, by how its fetch failed ({} is the status).
_CIMD_FAILURES: Final[dict[net.FetchProblem, str]] = {
    "status": "The client metadata document answered HTTP {}",
    "too_large": f"The client metadata document is larger than {MAX_CIMD_BYTES} bytes",
    "not_json": "The client metadata document is not JSON",
    "unreachable": "The client metadata document could not be fetched",
    "timeout": "The client metadata document could not be fetched",
}


@dataclass(frozen=True, slots=True)
class Client:
    client_id: str
    name: str
    redirect_uris: tuple[str, ...]
    grant_types: frozenset[str]
    auth_method: AuthMethod
    secret_digest: str | None = None
    metadata_document: bool = False

    def redirect_allowed(self, uri: str) -> bool:
        """Exact match; a loopback http redirect may differ only in its port (RFC 8252 §7.3)."""
        if uri in self.redirect_uris:
            return True
        loose = _without_loopback_port(uri)
        return loose is not None and any(_without_loopback_port(known) == loose for known in self.redirect_uris)

    def secret_matches(self, presented: str) -> bool:
        if self.secret_digest is None:
            return False
        return hmac.compare_digest(hashlib.sha256(presented.encode()).hexdigest(), self.secret_digest)


def _without_loopback_port(uri: str) -> str | None:
    parts = urlsplit(uri)
    if parts.scheme != "http" or parts.hostname is None:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if host not in LOOPBACK_HOSTS:
        return None
    return parts._replace(netloc=host).geturl()


def redirect_uri_problem(uri: Any) -> str | None:
    """Why `uri` cannot be a redirect URI; None when it can."""
    if not isinstance(uri, str) or not uri or len(uri) > 2000:
        return "a redirect URI is a non-empty string"
    parts = urlsplit(uri)
    if not parts.scheme or parts.fragment or "#" in uri:
        return "a redirect URI is absolute and has no fragment"
    if parts.scheme in FORBIDDEN_SCHEMES:
        return f"{parts.scheme}: cannot be a redirect URI"
    if parts.scheme == "http":
        host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
        if host not in LOOPBACK_HOSTS:
            return "plain http redirect URIs are for loopback addresses only (RFC 8252)"
    if parts.scheme in ("http", "https") and not parts.hostname:
        return "an http(s) redirect URI names a host"
    return None


def public_address(host: str) -> bool:
    address = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


class PublicResolver(AbstractResolver):
    """DNS resolution that keeps public addresses only (every answer, not just the first)."""

    def __init__(self) -> None:
        self._resolver = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._resolver.resolve(host, port, family)
        public = [answer for answer in answers if public_address(answer["host"])]
        if not public:
            raise OSError(f"{host} resolves to no public address")
        return public

    async def close(self) -> None:
        await self._resolver.close()


def cimd_session(*, allow_private: bool) -> aiohttp.ClientSession:
    """The HTTP client that fetches client metadata documents: public addresses only (unless
    allowed), and never through a proxy named by the environment."""
    connector = aiohttp.TCPConnector(resolver=None if allow_private else PublicResolver(), limit=16)
    return net.client_session(connector=connector, trust_env=False)


class ClientRegistry:
    """Finds clients (stored registrations and metadata documents) and registers new ones."""

    def __init__(self, store: OAuthStore, http: aiohttp.ClientSession, *, allow_private: bool) -> None:
        self._store = store
        self._http = http
        self._allow_private = allow_private
        self._documents: OrderedDict[str, tuple[float, Client]] = OrderedDict()

    @staticmethod
    def is_metadata_url(client_id: str) -> bool:
        return client_id.startswith(("https://", "http://"))

    async def find(self, client_id: str) -> Client:
        """The client named `client_id`; `OAuthError` when there is none or its document is refused."""
        if self.is_metadata_url(client_id):
            return await self._document(client_id)
        record = await self._store.get(KIND, client_id) if client_id.startswith(CLIENT_ID_PREFIX) else None
        if record is None:
            raise OAuthError("invalid_client", "Unknown client")
        return Client(
            client_id=client_id,
            name=str(record["client_name"]),
            redirect_uris=tuple(record["redirect_uris"]),
            grant_types=frozenset(record["grant_types"]),
            auth_method=record["token_endpoint_auth_method"],
            secret_digest=record.get("secret_sha256"),
        )

    async def touch(self, client: Client) -> None:
        """Renew a registration that is in use."""
        if not client.metadata_document:
            record = await self._store.get(KIND, client.client_id)
            if record is not None:
                await self._store.put(KIND, client.client_id, record, REGISTRATION_TTL)

    # --- RFC 7591 -------------------------------------------------------------------------------

    async def register(self, metadata: Any) -> tuple[Client, dict[str, Any]]:
        """Register a client from its metadata; the RFC 7591 response body (with any secret, once)."""
        if not isinstance(metadata, dict):
            raise OAuthError("invalid_client_metadata", "The registration body is a JSON object")
        uris = metadata.get("redirect_uris")
        if not isinstance(uris, list) or not uris or len(uris) > MAX_REDIRECT_URIS:
            raise OAuthError("invalid_redirect_uri", f"redirect_uris lists 1 to {MAX_REDIRECT_URIS} URIs")
        for uri in uris:
            if problem := redirect_uri_problem(uri):
                raise OAuthError("invalid_redirect_uri", problem)
        grant_types = metadata.get("grant_types", ["authorization_code", "refresh_token"])
        if (
            not isinstance(grant_types, list)
            or not all(isinstance(grant, str) for grant in grant_types)
            or not set(grant_types) <= GRANT_TYPES
            or "authorization_code" not in grant_types
        ):
            raise OAuthError("invalid_client_metadata", "grant_types: authorization_code, optionally refresh_token")
        response_types = metadata.get("response_types", ["code"])
        if response_types != ["code"]:
            raise OAuthError("invalid_client_metadata", "response_types: only code")
        method = metadata.get("token_endpoint_auth_method", "none")
        if method not in AUTH_METHODS:
            raise OAuthError("invalid_client_metadata", f"token_endpoint_auth_method: one of {', '.join(AUTH_METHODS)}")
        name = metadata.get("client_name")
        name = name.strip()[:MAX_NAME_CHARS] if isinstance(name, str) and name.strip() else None
        client_id = CLIENT_ID_PREFIX + secrets.token_hex(12)
        secret = secrets.token_urlsafe(32) if method != "none" else None
        record: dict[str, Any] = {
            "client_name": name or "Unnamed client",
            "redirect_uris": uris,
            "grant_types": grant_types,
            "token_endpoint_auth_method": method,
            "issued_at": int(time.time()),
        }
        if secret is not None:
            record["secret_sha256"] = hashlib.sha256(secret.encode()).hexdigest()
        await self._store.put(KIND, client_id, record, REGISTRATION_TTL)
        response: dict[str, Any] = {
            "client_id": client_id,
            "client_id_issued_at": record["issued_at"],
            "redirect_uris": uris,
            "grant_types": grant_types,
            "response_types": ["code"],
            "token_endpoint_auth_method": method,
        }
        if name is not None:
            response["client_name"] = name
        if secret is not None:
            response["client_secret"] = secret
            response["client_secret_expires_at"] = 0
        client = Client(client_id, record["client_name"], tuple(uris), frozenset(grant_types), method)
        return client, response

    # --- Client ID Metadata Documents -------------------------------------------------------------

    def _check_metadata_url(self, url: str) -> None:
        parts = urlsplit(url)
        loopback = parts.hostname is not None and (
            parts.hostname == "localhost" or _is_loopback_literal(parts.hostname)
        )
        if parts.scheme != "https" and not (parts.scheme == "http" and self._allow_private and loopback):
            raise OAuthError("invalid_client", "A client ID URL must use https")
        if not parts.hostname or parts.username is not None or parts.password is not None or parts.fragment:
            raise OAuthError("invalid_client", "A client ID URL names a host, and has no user info or fragment")
        segments = parts.path.split("/")
        if parts.path in ("", "/") or "." in segments or ".." in segments:
            raise OAuthError("invalid_client", "A client ID URL has a path without dot segments")
        if self._allow_private:
            return
        if parts.hostname == "localhost" or parts.hostname.endswith(".localhost"):
            raise OAuthError("invalid_client", "Client ID URLs on loopback addresses are refused")
        try:
            public = public_address(parts.hostname)
        except ValueError:
            return  # a host name: the resolver keeps only public answers
        if not public:
            raise OAuthError(
                "invalid_client", "Client ID URLs on private, loopback or link-local addresses are refused"
            )

    async def _document(self, url: str) -> Client:
        cached = self._documents.get(url)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        self._check_metadata_url(url)
        try:
            answer = await net.fetch_json(
                self._http,
                "GET",
                url,
                limit=MAX_CIMD_BYTES,
                within=CIMD_FETCH_TIMEOUT,
                headers={"Accept": "application/json"},
            )
        except net.FetchError as exc:
            raise OAuthError("invalid_client", _CIMD_FAILURES[exc.problem].format(exc.status)) from None
        cache_control = answer.headers.get("Cache-Control", "")
        client = self._parse_document(url, answer.document)
        ttl = CIMD_CACHE_DEFAULT
        if match := _MAX_AGE.search(cache_control):
            ttl = min(max(float(match.group(1)), CIMD_CACHE_MIN), CIMD_CACHE_MAX)
        if "no-store" not in cache_control:
            self._documents[url] = (time.monotonic() + ttl, client)
            self._documents.move_to_end(url)
            while len(self._documents) > CIMD_CACHE_ENTRIES:
                self._documents.popitem(last=False)
        return client

    @staticmethod
    def _parse_document(url: str, document: Any) -> Client:
        if not isinstance(document, dict) or document.get("client_id") != url:
            raise OAuthError("invalid_client", "The client metadata document does not name its own URL as client_id")
        if "client_secret" in document or "client_secret_expires_at" in document:
            raise OAuthError("invalid_client", "A client metadata document cannot hold a client secret")
        if document.get("token_endpoint_auth_method", "none") != "none":
            raise OAuthError("invalid_client", "Only public clients (token_endpoint_auth_method none) are supported")
        uris = document.get("redirect_uris")
        if not isinstance(uris, list) or not uris or len(uris) > MAX_REDIRECT_URIS:
            raise OAuthError("invalid_client", "The client metadata document lists no redirect_uris")
        for uri in uris:
            if problem := redirect_uri_problem(uri):
                raise OAuthError("invalid_client", f"The client metadata document: {problem}")
        grant_types = document.get("grant_types", ["authorization_code", "refresh_token"])
        if not isinstance(grant_types, list) or "authorization_code" not in grant_types:
            raise OAuthError("invalid_client", "The client metadata document does not allow authorization_code")
        name = document.get("client_name")
        name = name.strip()[:MAX_NAME_CHARS] if isinstance(name, str) and name.strip() else urlsplit(url).netloc
        return Client(
            client_id=url,
            name=name,
            redirect_uris=tuple(uris),
            grant_types=frozenset(grant_types) & GRANT_TYPES,
            auth_method="none",
            metadata_document=True,
        )


def _is_loopback_literal(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
