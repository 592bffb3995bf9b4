"""The authorization server's signing keys: ES256 (P-256), published as a JWK Set.

Two sources. Configured PEM files: the first signs, the others are only published, so an
operator rotates by adding the new key second, waiting out the overlap, then swapping and later
removing the old one. Or (the default) keys generated here and kept in the OAuth storage with
their private half encrypted: the newest signs; when it has signed for `rotation` seconds a new
one is made. A key stops signing when its successor is made and stays published — and accepted —
for `overlap` seconds after that, longer than any token it signed can live; then it is dropped
from the set (and from the store), and a token it signed is refused. Replicas sharing a store
converge on the newest key when they reload (`maintain`, every `KEY_RELOAD_INTERVAL`).

Key ids are RFC 7638 thumbprints, so the same key always has the same id.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jwt as pyjwt
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.auth import AuthError
from gateway.oauth.storage import OAuthStore, StorageError

log = logging.getLogger("gateway.oauth.keys")

ALGORITHM: Final = "ES256"
KIND: Final = "signing_key"
# How often a replica re-reads the stored keys (to pick up another replica's rotation) and
# rotates when its key is due.
KEY_RELOAD_INTERVAL: Final = 300.0


def derive_fernet(master: str, purpose: str) -> Fernet:
    """A Fernet key for one purpose, derived from the configured key (HKDF-SHA256), so the
    cookie and the stored secrets never share a key."""
    raw = base64.urlsafe_b64decode(master.encode())
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode()).derive(raw)
    return Fernet(base64.urlsafe_b64encode(derived))


def thumbprint(public: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint of an EC public key."""
    canonical = json.dumps({name: public[name] for name in ("crv", "kty", "x", "y")}, separators=(",", ":"))
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).decode().rstrip("=")


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private: ec.EllipticCurvePrivateKey
    public: pyjwt.PyJWK
    document: dict[str, Any]
    created: float

    @classmethod
    def of(cls, private: ec.EllipticCurvePrivateKey, created: float) -> SigningKey:
        public = json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
        kid = thumbprint(public)
        document = {**public, "kid": kid, "alg": ALGORITHM, "use": "sig"}
        return cls(kid, private, pyjwt.PyJWK(document), document, created)


def load_private_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError("not a P-256 (ES256) private key")
    return key


class KeySet:
    """The signing key and every published key; also the `KeySource` of the gateway's own verifier."""

    def __init__(
        self, store: OAuthStore, secrets: Fernet, *, files: Iterable[Path], rotation: float, overlap: float
    ) -> None:
        self._store = store
        self._secrets = secrets
        self._files = list(files)
        self._rotation = rotation
        self._overlap = overlap
        self._keys: list[SigningKey] = []  # newest first; the first signs

    @property
    def signing(self) -> SigningKey:
        return self._keys[0]

    @property
    def overlap(self) -> float:
        """Seconds a generated key stays published after its successor starts signing."""
        return self._overlap

    async def load(self) -> None:
        """Read the keys; generate (and store) one when none is current. Raises `StorageError`."""
        if self._files:
            now = time.time()
            self._keys = [SigningKey.of(load_private_key(path.read_bytes()), now) for path in self._files]
            return
        keys = []
        for record in await self._store.values(KIND):
            try:
                pem = self._secrets.decrypt(record["pem"].encode())
                keys.append(SigningKey.of(load_private_key(pem), float(record["created"])))
            except (InvalidToken, KeyError, ValueError, TypeError):
                log.warning("skipping a stored signing key that cannot be read (was oauth_session_key changed?)")
        keys.sort(key=lambda key: key.created, reverse=True)
        now = time.time()
        if not keys or now - keys[0].created >= self._rotation:
            fresh = await self._generate()
            log.info("new OAuth signing key", extra={"kid": fresh.kid})
            if keys:  # the retired key stays stored exactly as long as it stays published
                await self._store_key(keys[0], self._overlap)
            keys.insert(0, fresh)
        # A key is published from its creation until `overlap` after its successor's.
        self._keys = [
            key for index, key in enumerate(keys) if index == 0 or now < keys[index - 1].created + self._overlap
        ]

    async def _generate(self) -> SigningKey:
        key = SigningKey.of(ec.generate_private_key(ec.SECP256R1()), time.time())
        await self._store_key(key, self._rotation + self._overlap)
        return key

    async def _store_key(self, key: SigningKey, ttl: float) -> None:
        pem = key.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        record = {"pem": self._secrets.encrypt(pem).decode(), "created": key.created}
        await self._store.put(KIND, key.kid, record, ttl)

    async def maintain(self) -> None:
        """Reload and rotate periodically, for as long as the gateway serves."""
        while True:
            await asyncio.sleep(KEY_RELOAD_INTERVAL)
            try:
                await self.load()
            except StorageError as exc:
                log.warning("cannot reload OAuth signing keys; keeping the current ones: %s", exc)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.document for key in self._keys]}

    async def key(self, kid: str | None) -> pyjwt.PyJWK:
        for key in self._keys:
            if key.kid == kid:
                return key.public
        raise AuthError("invalid_token", f"unknown key id {kid!r}")

    def sign(self, claims: dict[str, Any]) -> str:
        key = self.signing
        return pyjwt.encode(claims, key.private, algorithm=ALGORITHM, headers={"kid": key.kid, "typ": "at+jwt"})
