"""JOSE facts the configuration and the token verifiers share: the signature algorithms a token
may use, and a PEM public key read as a JWK. A leaf: it imports nothing of the gateway.

Only asymmetric algorithms are ever accepted — never `none`, never HMAC — so a public key can
never serve as an HMAC secret.
"""

from __future__ import annotations

import json
from typing import Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

ASYMMETRIC_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


def public_jwk(pem: bytes, *, kid: str) -> jwt.PyJWK:
    """A PEM public key (RSA, EC or Ed25519) as a JWK; `ValueError` for anything else."""
    key = serialization.load_pem_public_key(pem)
    if isinstance(key, rsa.RSAPublicKey):
        document = jwt.algorithms.RSAAlgorithm.to_jwk(key)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        document = jwt.algorithms.ECAlgorithm.to_jwk(key)
    elif isinstance(key, ed25519.Ed25519PublicKey):
        document = jwt.algorithms.OKPAlgorithm.to_jwk(key)
    else:
        raise ValueError("not an RSA, EC or Ed25519 public key")
    return jwt.PyJWK({**json.loads(document), "kid": kid, "use": "sig"})
