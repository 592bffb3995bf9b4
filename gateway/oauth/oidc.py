"""Sign-in with an upstream OpenID provider: the gateway is a relying party of one configured
provider (OpenID Connect Core 1.0, authorization code flow, with PKCE).

The provider's discovery document (`<issuer>/.well-known/openid-configuration`) is read at
startup within `FETCH_TIMEOUT` — a provider that does not answer stops the gateway, as the other
authentication backends do — and refreshed every `DISCOVERY_REFRESH_SECONDS`, keeping the last
good copy. Its `issuer` must equal the configured one exactly; its keys come from its JWKS through
the shared `JwksCache` (prefetched, refreshed, a forced refresh at most once per cooldown).

Invariants:
- each sign-in sends its own `state`, `nonce` and PKCE S256 challenge; the routes keep them in the
  encrypted browser session beside the pending authorization request they serve, and use them once;
- the code is exchanged at the token endpoint only, within `TOKEN_TIMEOUT` and
  `MAX_TOKEN_RESPONSE_BYTES`, never following a redirect;
- an ID token is accepted only when it is signed by one of the provider's keys with an asymmetric
  algorithm the provider announces, `iss` is the issuer, `aud` is this client alone (and `azp`, when
  present, too), it has not expired and was issued at most `ID_TOKEN_MAX_AGE` ago (clocks may
  differ by `LEEWAY_SECONDS`), and its `nonce` is the one this sign-in sent;
- a user gets in only through the allow-list: a listed subject, a verified email in a listed
  domain, or the explicit every-account setting; an email is a subject only when it is verified.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import aiohttp

from gateway import net
from gateway.auth import AuthError
from gateway.auth.jwks import JwksCache
from gateway.auth.jwt import LEEWAY_SECONDS, JwtVerifier
from gateway.jose import ASYMMETRIC_ALGORITHMS
from gateway.net import https_url_problem

log = logging.getLogger("gateway.oauth.oidc")

DISCOVERY_PATH: Final = "/.well-known/openid-configuration"
# One request for the discovery document, at startup and on each refresh.
FETCH_TIMEOUT: Final = 5.0
MAX_DISCOVERY_BYTES: Final = 256 * 1024
# Endpoints and keys change rarely; a failed refresh keeps the last good document.
DISCOVERY_REFRESH_SECONDS: Final = 3600.0
# The provider's key set: used this long before a refresh; an unknown key id forces a refresh at
# most once per cooldown.
JWKS_TTL: Final = 600.0
JWKS_KID_MISS_COOLDOWN: Final = 30.0
# The code exchange: a person is waiting for the answer, so it is bounded, and so is its size.
TOKEN_TIMEOUT: Final = 10.0
MAX_TOKEN_RESPONSE_BYTES: Final = 64 * 1024
# An ID token is fresh from the token endpoint: one issued longer ago than this is refused.
ID_TOKEN_MAX_AGE: Final = 600
# Without `id_token_signing_alg_values_supported` a provider signs with RS256 (OpenID Discovery).
DEFAULT_ALGORITHMS: Final = ("RS256",)
_ERROR_CODE: Final = re.compile(r"[a-z_]{1,64}")

OidcErrorCode = Literal[
    "unknown_state",
    "wrong_issuer",
    "provider_refused",
    "token_refused",
    "invalid_id_token",
    "not_allowed",
    "unavailable",
]
# Status and page text of each refusal (the detail goes to the audit log only).
REFUSALS: Final[dict[OidcErrorCode, tuple[int, str]]] = {
    "unknown_state": (400, "This sign-in has expired or was already used. Start again from your app."),
    "wrong_issuer": (400, "The answer did not come from the expected sign-in provider. Start again from your app."),
    "provider_refused": (401, "The sign-in provider did not sign you in. Start again from your app."),
    "token_refused": (401, "The sign-in provider would not complete the sign-in. Start again from your app."),
    "invalid_id_token": (401, "The sign-in provider's answer could not be verified. Start again from your app."),
    "not_allowed": (403, "Your account is not allowed to use this server. Ask its operator for access."),
    "unavailable": (503, "The sign-in provider is not answering. Try again in a moment."),
}


class OidcError(Exception):
    """A sign-in with the provider that did not succeed; `detail` is for the audit log only."""

    def __init__(self, code: OidcErrorCode, detail: str) -> None:
        super().__init__(detail)
        self.code: OidcErrorCode = code
        self.detail = detail

    @property
    def status(self) -> int:
        return REFUSALS[self.code][0]

    @property
    def text(self) -> str:
        return REFUSALS[self.code][1]


@dataclass(frozen=True, slots=True)
class ProviderEndpoints:
    """What the gateway uses of the provider's discovery document."""

    issuer: str
    authorization: str
    token: str
    jwks_uri: str
    algorithms: frozenset[str]

    @classmethod
    def of(cls, document: Any, issuer: str) -> ProviderEndpoints:
        """The endpoints of a discovery document for `issuer`; `ValueError` naming every problem."""
        if not isinstance(document, dict):
            raise ValueError("the discovery document is not a JSON object")
        problems = []
        if document.get("issuer") != issuer:
            problems.append(f"it names the issuer {document.get('issuer')!r}, not {issuer!r}")
        urls = {}
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            url = document.get(name)
            problem = https_url_problem(url, name) if isinstance(url, str) else f"{name} is missing"
            if problem:
                problems.append(problem)
            urls[name] = url if isinstance(url, str) else ""
        announced = document.get("id_token_signing_alg_values_supported", DEFAULT_ALGORITHMS)
        algorithms = frozenset(announced if isinstance(announced, list) else ()) & ASYMMETRIC_ALGORITHMS
        if not algorithms:
            problems.append(f"it signs ID tokens with no asymmetric algorithm ({announced!r})")
        if problems:
            raise ValueError("the provider's discovery document: " + "; ".join(problems))
        return cls(issuer, urls["authorization_endpoint"], urls["token_endpoint"], urls["jwks_uri"], algorithms)


@dataclass(frozen=True, slots=True)
class AllowList:
    """Who may sign in: listed subjects, verified emails of listed domains, or every account."""

    subjects: frozenset[str]
    domains: frozenset[str]
    any_account: bool = False

    @classmethod
    def of(cls, subjects: Iterable[str], domains: Iterable[str], *, any_account: bool, emails: bool) -> AllowList:
        listed = frozenset(subject.lower() if emails else subject for subject in subjects)
        return cls(listed, frozenset(domain.lower() for domain in domains), any_account)


@dataclass(frozen=True, slots=True)
class UpstreamUser:
    """A user the provider signed in and the allow-list admits."""

    issuer: str
    subject: str
    label: str  # how the pages name the user: the verified email when there is one


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    """This gateway at the provider: its client ID, and its secret with how it is sent (if any)."""

    client_id: str
    secret: str | None = None
    method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"


class OidcProvider:
    """The configured OpenID provider: discovery, the authorization URL, the code exchange, ID
    token validation and the allow-list."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        issuer: str,
        client: ClientCredentials,
        redirect_uri: str,
        scopes: Iterable[str],
        subject_claim: Literal["sub", "email"],
        allow: AllowList,
        name: str | None,
    ) -> None:
        self._http = http
        self.issuer = issuer
        self._client = client
        self.redirect_uri = redirect_uri
        self._scope = " ".join(scopes)
        self._subject_claim = subject_claim
        self._allow = allow
        self.name = name or urlsplit(issuer).hostname or issuer
        self._endpoints: ProviderEndpoints | None = None
        self._keys: JwksCache | None = None
        self._verifier: JwtVerifier | None = None

    @property
    def endpoints(self) -> ProviderEndpoints:
        if self._endpoints is None:  # pragma: no cover - load() runs before serving
            raise RuntimeError("the provider's discovery document is not loaded")
        return self._endpoints

    async def load(self) -> None:
        """Read the discovery document (and the key set it names, when new). Raises `ValueError`
        when the provider does not answer or its document or keys cannot be used."""
        url = self.issuer.rstrip("/") + DISCOVERY_PATH
        try:
            answer = await net.fetch_json(self._http, "GET", url, limit=MAX_DISCOVERY_BYTES, within=FETCH_TIMEOUT)
        except net.FetchError as exc:
            raise ValueError(f"{url}: {exc}") from None
        endpoints = ProviderEndpoints.of(answer.document, self.issuer)
        keys = self._keys
        if keys is None or endpoints.jwks_uri != self.endpoints.jwks_uri:
            keys = JwksCache(self._http, endpoints.jwks_uri, ttl=JWKS_TTL, cooldown=JWKS_KID_MISS_COOLDOWN)
            try:
                await keys.prefetch()
            except AuthError as exc:
                raise ValueError(f"the provider's keys at {endpoints.jwks_uri}: {exc.reason}") from None
        self._keys = keys
        self._verifier = JwtVerifier(
            keys, issuer=self.issuer, audiences=[self._client.client_id], algorithms=endpoints.algorithms
        )
        self._endpoints = endpoints

    async def refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(DISCOVERY_REFRESH_SECONDS)
            try:
                await self.load()
            except ValueError as exc:
                log.warning("OpenID provider discovery refresh failed; keeping the last document: %s", exc)

    def authorization_url(self, *, state: str, nonce: str, challenge: str) -> str:
        params = {
            "response_type": "code",
            "client_id": self._client.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": self._scope,
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        parts = urlsplit(self.endpoints.authorization)
        query = f"{parts.query}&{urlencode(params)}" if parts.query else urlencode(params)
        return urlunsplit(parts._replace(query=query))

    async def sign_in(self, *, code: str, verifier: str, nonce: str) -> UpstreamUser:
        """Redeem the code the provider sent back; the user its ID token names, if allowed.
        Raises `OidcError`."""
        id_token = await self._exchange(code, verifier)
        claims = await self._validate(id_token, nonce)
        return self._admit(claims)

    async def _exchange(self, code: str, verifier: str) -> str:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": verifier,
        }
        headers = {"Accept": "application/json"}
        client = self._client
        if client.secret is None:
            form["client_id"] = client.client_id
        elif client.method == "client_secret_post":
            form.update(client_id=client.client_id, client_secret=client.secret)
        else:  # RFC 6749 §2.3.1: both parts form-encoded, then Basic
            pair = f"{quote(client.client_id, safe='')}:{quote(client.secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        try:
            answer = await net.fetch_json(
                self._http,
                "POST",
                self.endpoints.token,
                limit=MAX_TOKEN_RESPONSE_BYTES,
                within=TOKEN_TIMEOUT,
                expect=None,  # a refusal's body names the error
                headers=headers,
                data=form,
            )
            status, document = answer.status, answer.document
        except net.FetchError as exc:
            if exc.problem == "too_large":
                raise OidcError("unavailable", "token endpoint: the answer is too large") from None
            if exc.problem != "not_json" or exc.status is None:
                raise OidcError("unavailable", f"token endpoint: {exc}") from None
            status, document = exc.status, None  # judged by its status alone
        if status in (400, 401):
            error = document.get("error") if isinstance(document, dict) else None
            named = error if isinstance(error, str) and _ERROR_CODE.fullmatch(error) else "?"
            raise OidcError("token_refused", f"token endpoint: HTTP {status} {named}")
        if status != 200 or not isinstance(document, dict):
            raise OidcError("unavailable", f"token endpoint: HTTP {status}")
        id_token = document.get("id_token")
        if not isinstance(id_token, str):
            raise OidcError("invalid_id_token", "the token response holds no id_token")
        return id_token

    async def _validate(self, id_token: str, nonce: str) -> dict[str, Any]:
        if self._verifier is None:  # pragma: no cover - load() runs before serving
            raise OidcError("unavailable", "the provider's keys are not loaded")
        try:
            principal = await self._verifier.verify(id_token)
        except AuthError as error:
            code: OidcErrorCode = "unavailable" if error.code == "unavailable" else "invalid_id_token"
            raise OidcError(code, error.reason) from None
        claims = dict(principal.claims)
        audience = claims["aud"]
        if (audience if isinstance(audience, list) else [audience]) != [self._client.client_id]:
            raise OidcError("invalid_id_token", "the ID token is for other audiences too")
        if claims.get("azp", self._client.client_id) != self._client.client_id:
            raise OidcError("invalid_id_token", "the ID token's azp is another client")
        issued = claims.get("iat")
        if not isinstance(issued, int | float) or isinstance(issued, bool):
            raise OidcError("invalid_id_token", "the ID token has no iat")
        if issued < time.time() - ID_TOKEN_MAX_AGE - LEEWAY_SECONDS:
            raise OidcError("invalid_id_token", "the ID token was issued too long ago")
        presented = claims.get("nonce")
        if not isinstance(presented, str) or not hmac.compare_digest(presented.encode(), nonce.encode()):
            raise OidcError("invalid_id_token", "the ID token's nonce is not this sign-in's")
        return claims

    def _admit(self, claims: dict[str, Any]) -> UpstreamUser:
        email = claims.get("email")
        # Some providers send the flag as a string.
        verified = isinstance(email, str) and "@" in email and claims.get("email_verified") in (True, "true")
        verified_email = email.lower() if verified and isinstance(email, str) else None
        if self._subject_claim == "email":
            if verified_email is None:
                raise OidcError("not_allowed", "no verified email to name the user")
            subject = verified_email
        else:
            subject = str(claims["sub"])
        allow = self._allow
        if not (
            allow.any_account
            or subject in allow.subjects
            or (verified_email is not None and verified_email.rpartition("@")[2] in allow.domains)
        ):
            if allow.domains and verified_email is None:
                raise OidcError("not_allowed", "the email is missing or not verified")
            raise OidcError("not_allowed", "the account is not on the allow-list")
        return UpstreamUser(self.issuer, subject, verified_email or subject)
