"""Codes and tokens of the built-in authorization server, and the verifier that accepts them.

Invariants:
- an authorization code is single use (`OAuthStore.first_use`), lives `CODE_TTL` seconds and is
  bound to its client, redirect URI, PKCE challenge and resource; a second redemption also
  revokes whatever the first one obtained (RFC 6749 §4.1.2);
- every successful code redemption starts a grant *family*; its refresh tokens rotate on every
  use, and presenting a refresh token that was already used revokes the whole family (a stolen
  token and its legitimate copy cannot both live on);
- access tokens are ES256 JWTs (RFC 9068 `at+jwt`) whose audience is this gateway's MCP URL;
  they name their family (`gid`), and the verifier accepts one only while its family lives, as
  seen at most `FAMILY_CHECK_TTL` seconds ago by this process (a revocation made here is seen at
  once);
- codes and refresh tokens are filed under their SHA-256 digest; the user's service token, kept
  only with the token-to-env opt-in, is encrypted;
- a grant names who signed its user in: this server (a service token) or an upstream OpenID
  provider, whose issuer is then the principal's issuer at the MCP endpoint, so a provider's user
  and a token user of the same name are never one principal.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
import uuid
from dataclasses import asdict, dataclass, replace
from typing import Any, Final

import jwt as pyjwt
from cryptography.fernet import Fernet, InvalidToken

from gateway.auth import AuthError, Principal, TokenVerifier
from gateway.auth.jwt import JwtVerifier
from gateway.oauth.errors import OAuthError
from gateway.oauth.keyset import ALGORITHM, KeySet
from gateway.oauth.storage import OAuthStore, StorageError

CODE_TTL: Final = 60.0
# How long this process believes a family is alive (or gone) before asking the store again.
FAMILY_CHECK_TTL: Final = 5.0
FAMILY_CACHE_ENTRIES: Final = 10_000
_VERIFIER: Final = re.compile(r"[A-Za-z0-9\-._~]{43,128}")


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")


@dataclass(frozen=True, slots=True)
class Grant:
    """What a user granted a client: who, for which client and resource, with which scope."""

    subject: str
    client_id: str
    scope: str
    resource: str
    method: str  # how the user signed in
    credential: str | None = None  # the encrypted service token (token-to-env opt-in only)
    # The OpenID provider that signed the user in; None when this server did (a service token).
    issuer: str | None = None

    @classmethod
    def of(cls, record: dict[str, Any]) -> Grant:
        """The grant a stored code or family record holds (records older than a field lack it)."""
        return cls(**{name: record[name] for name in cls.__dataclass_fields__ if name in record})


@dataclass(frozen=True, slots=True)
class Issued:
    body: dict[str, Any]
    grant: Grant
    family: str


class ReusedToken(OAuthError):
    """A code or refresh token presented a second time: its family has been revoked."""

    def __init__(self, what: str, family: str | None) -> None:
        super().__init__("invalid_grant", f"The {what} was already used; the grant is revoked")
        self.family = family


class Tokens:
    """Issues, rotates and revokes codes and tokens."""

    def __init__(
        self,
        store: OAuthStore,
        keys: KeySet,
        secrets_key: Fernet,
        *,
        issuer: str,
        resource: str,
        access_ttl: int,
        refresh_ttl: int,
    ) -> None:
        self._store = store
        self.keys = keys
        self._secrets = secrets_key
        self.issuer = issuer
        self.resource = resource
        self._access_ttl = access_ttl
        self._refresh_ttl = refresh_ttl
        self._families: dict[str, tuple[float, dict[str, Any] | None]] = {}

    # --- secrets at rest ---------------------------------------------------------------------------

    def seal(self, secret: str) -> str:
        return self._secrets.encrypt(secret.encode()).decode()

    def unseal(self, sealed: str) -> str | None:
        try:
            return self._secrets.decrypt(sealed.encode()).decode()
        except InvalidToken:
            return None

    # --- authorization codes -------------------------------------------------------------------

    async def issue_code(self, grant: Grant, *, redirect_uri: str, challenge: str) -> str:
        code = secrets.token_urlsafe(32)
        record = {**asdict(grant), "redirect_uri": redirect_uri, "challenge": challenge}
        record["family"] = secrets.token_urlsafe(16)
        await self._store.put("code", digest(code), record, CODE_TTL)
        return code

    async def redeem_code(
        self,
        code: str,
        *,
        client_id: str,
        redirect_uri: str | None,
        verifier: str | None,
        resource: str | None,
        refresh: bool,
    ) -> Issued:
        key = digest(code)
        record = await self._store.get("code", key)
        if record is None:
            raise OAuthError("invalid_grant", "The authorization code is unknown or expired")
        if not await self._store.first_use("code", key, CODE_TTL * 2):
            await self.revoke_family(record["family"])
            raise ReusedToken("authorization code", record["family"])
        if record["client_id"] != client_id:
            raise OAuthError("invalid_grant", "The authorization code was issued to another client")
        if redirect_uri != record["redirect_uri"]:
            raise OAuthError("invalid_grant", "redirect_uri differs from the authorization request's")
        if verifier is None or not _VERIFIER.fullmatch(verifier):
            raise OAuthError("invalid_grant", "code_verifier is missing or malformed")
        if not hmac.compare_digest(s256(verifier), record["challenge"]):
            raise OAuthError("invalid_grant", "code_verifier does not match the code challenge")
        if resource is not None and resource != record["resource"]:
            raise OAuthError("invalid_target", "resource differs from the authorization request's")
        grant = Grant.of(record)
        family = record["family"]
        await self._store.put("family", family, {**asdict(grant), "created": time.time()}, self._refresh_ttl)
        return await self._issue(grant, family, refresh=refresh)

    # --- tokens --------------------------------------------------------------------------------

    async def _issue(self, grant: Grant, family: str, *, refresh: bool) -> Issued:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": grant.resource,
            "sub": grant.subject,
            "client_id": grant.client_id,
            "scope": grant.scope,
            "iat": now,
            "exp": now + self._access_ttl,
            "jti": uuid.uuid4().hex,
            "gid": family,
        }
        body: dict[str, Any] = {
            "access_token": self.keys.sign(claims),
            "token_type": "Bearer",
            "expires_in": self._access_ttl,
            "scope": grant.scope,
        }
        if refresh:
            token = secrets.token_urlsafe(32)
            record = {"family": family, "client_id": grant.client_id}
            await self._store.put("refresh", digest(token), record, self._refresh_ttl)
            body["refresh_token"] = token
        return Issued(body, grant, family)

    async def refresh(self, token: str, *, client_id: str, resource: str | None, scope: str | None) -> Issued:
        key = digest(token)
        record = await self._store.get("refresh", key)
        if record is None:
            raise OAuthError("invalid_grant", "The refresh token is unknown or expired")
        if record["client_id"] != client_id:
            raise OAuthError("invalid_grant", "The refresh token was issued to another client")
        family = record["family"]
        if not await self._store.first_use("refresh", key, self._refresh_ttl):
            await self.revoke_family(family)
            raise ReusedToken("refresh token", family)
        state = await self._live(family)
        if state is None:
            raise OAuthError("invalid_grant", "The grant was revoked or has expired")
        grant = Grant.of(state)
        if resource is not None and resource != grant.resource:
            raise OAuthError("invalid_target", "resource differs from the grant's")
        if scope is not None:
            asked = set(scope.split())
            if not asked <= set(grant.scope.split()):
                raise OAuthError("invalid_scope", "A refresh cannot widen the granted scope")
            grant = replace(grant, scope=" ".join(sorted(asked)))
        await self._store.put("family", family, state, self._refresh_ttl)  # the family lives on
        return await self._issue(grant, family, refresh=True)

    async def revoke(self, token: str, *, client_id: str) -> str | None:
        """RFC 7009: revoke the family of a refresh or access token this client holds; the family
        revoked, or None when the token is unknown (which is not an error)."""
        record = await self._store.get("refresh", digest(token))
        family: str | None = None
        if record is not None:
            if record["client_id"] == client_id:
                family = record["family"]
        else:
            claims = self._own_claims(token)
            if claims is not None and claims.get("client_id") == client_id:
                family = claims.get("gid")
        if family is None:
            return None
        await self.revoke_family(family)
        return family

    def _own_claims(self, token: str) -> dict[str, Any] | None:
        """The claims of an access token this server signed (expired or not)."""
        try:
            kid = pyjwt.get_unverified_header(token).get("kid")
            key = next((k for k in self.keys.jwks()["keys"] if k["kid"] == kid), None)
            if key is None:
                return None
            claims: dict[str, Any] = pyjwt.decode(
                token,
                pyjwt.PyJWK(key).key,
                algorithms=[ALGORITHM],
                audience=self.resource,
                issuer=self.issuer,
                options={"verify_exp": False},
            )
        except pyjwt.PyJWTError:
            return None
        return claims

    async def revoke_family(self, family: str) -> None:
        # The tombstone outlives the family: a redemption racing this revocation (its family
        # written just after the delete) is still dead.
        await self._store.put("revoked", family, {"at": time.time()}, self._refresh_ttl)
        await self._store.delete("family", family)
        self._families[family] = (time.monotonic() + FAMILY_CHECK_TTL, None)

    async def _live(self, family: str) -> dict[str, Any] | None:
        state = await self._store.get("family", family)
        if state is not None and await self._store.get("revoked", family) is not None:
            return None
        return state

    async def family(self, family: str) -> dict[str, Any] | None:
        """The family's record while it lives (cached `FAMILY_CHECK_TTL`); raises `StorageError`."""
        cached = self._families.get(family)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        state = await self._live(family)
        if len(self._families) >= FAMILY_CACHE_ENTRIES:
            self._families.clear()
        self._families[family] = (time.monotonic() + FAMILY_CHECK_TTL, state)
        return state


class GrantVerifier:
    """Accepts access tokens this gateway's authorization server issued, for this resource."""

    def __init__(self, tokens: Tokens, *, token_to_env: bool) -> None:
        self._tokens = tokens
        self._jwt = JwtVerifier(tokens.keys, issuer=tokens.issuer, audiences=[tokens.resource], algorithms=[ALGORITHM])
        self._token_to_env = token_to_env

    async def verify(self, token: str) -> Principal:
        try:
            header = pyjwt.get_unverified_header(token)
        except pyjwt.PyJWTError:
            raise AuthError("invalid_token", "not a JWT") from None
        if header.get("typ") != "at+jwt":
            raise AuthError("invalid_token", "not an access token (typ)")
        principal = await self._jwt.verify(token)
        family = principal.claims.get("gid")
        if not isinstance(family, str) or not isinstance(principal.claims.get("client_id"), str):
            raise AuthError("invalid_token", "no grant or client")
        try:
            state = await self._tokens.family(family)
        except StorageError as exc:
            raise AuthError("unavailable", str(exc)) from None
        if state is None:
            raise AuthError("invalid_token", "the grant was revoked or has expired")
        credential = None
        if self._token_to_env and isinstance(sealed := state.get("credential"), str):
            credential = self._tokens.unseal(sealed)
        # A user an OpenID provider signed in is that provider's subject: never the same
        # principal as a service-token user of the same name.
        upstream = state.get("issuer")
        return Principal(
            issuer=upstream if isinstance(upstream, str) else principal.issuer,
            subject=principal.subject,
            scopes=principal.scopes,
            claims=principal.claims,
            delegated=True,
            credential=credential,
        )


class OwnTokensFirst:
    """The MCP endpoint's verifier while the built-in server runs: a token this gateway issued is
    judged by `GrantVerifier` alone (it never reaches another verifier, nor an upstream whoami
    service); any other token goes to the configured verifier, when there is one."""

    def __init__(self, issuer: str, own: GrantVerifier, configured: TokenVerifier | None) -> None:
        self._issuer = issuer
        self._own = own
        self._configured = configured

    async def verify(self, token: str) -> Principal:
        try:
            claims = pyjwt.decode(token, options={"verify_signature": False})
            ours = claims.get("iss") == self._issuer
        except pyjwt.PyJWTError:
            ours = False
        if ours:
            return await self._own.verify(token)
        if self._configured is None:
            raise AuthError("invalid_token", "not a token of this gateway's authorization server")
        return await self._configured.verify(token)
