"""Identity for the child: what a session's MCP server may learn about its user (opt-in).

Per-session children make it possible to tell each server process who its user is, through its
environment, fixed when the child starts:
- `MCP_GATEWAY_PRINCIPAL`: the subject;
- `MCP_GATEWAY_IDENTITY`: a short-lived ES256 JWT signed by the gateway (issuer = the gateway's
  public URL, audience = the configured server audience), and `MCP_GATEWAY_IDENTITY_JWKS`: the
  public key to check it, so a server (or the backend it calls) can trust who the user is
  without ever seeing the user's token;
- configured claims copied into named variables (e.g. `GITHUB_LOGIN` from `preferred_username`);
- the bearer token itself, only where it is the upstream service's own credential (the static
  and whoami verifiers) — settings refuse it otherwise: that would be token passthrough.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import jwt as pyjwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.auth import Principal

PRINCIPAL_ENV: Final = "MCP_GATEWAY_PRINCIPAL"
ASSERTION_ENV: Final = "MCP_GATEWAY_IDENTITY"
JWKS_ENV: Final = "MCP_GATEWAY_IDENTITY_JWKS"
ALGORITHM: Final = "ES256"


class IdentityIssuer:
    """Builds the identity part of a child's environment for one principal."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        lifetime: float,
        key_file: Path | None,
        claims_env: Mapping[str, str],
        token_env: str | None,
        signed: bool,
    ) -> None:
        if key_file is not None:
            loaded = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
            if not isinstance(loaded, ec.EllipticCurvePrivateKey) or loaded.curve.name != "secp256r1":
                raise ValueError(f"{key_file} is not a P-256 (ES256) private key")
            self._key = loaded
        else:  # a key for this process only: assertions are checked with the JWKS passed alongside
            self._key = ec.generate_private_key(ec.SECP256R1())
        public = json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(self._key.public_key()))
        self._kid = public.get("kid") or secrets.token_urlsafe(8)
        self._jwks = json.dumps({"keys": [{**public, "kid": self._kid, "alg": ALGORITHM, "use": "sig"}]})
        self._issuer = issuer
        self._audience = audience
        self._lifetime = lifetime
        self._claims_env = dict(claims_env)
        self._token_env = token_env
        self._signed = signed

    def environment(self, principal: Principal, token: str | None) -> dict[str, str]:
        env = self._signed_identity(principal) if self._signed else {}
        for name, claim in self._claims_env.items():
            value = principal.claims.get(claim)
            if isinstance(value, str | int) and not isinstance(value, bool):
                env[name] = str(value)
        if self._token_env is not None and token is not None:
            env[self._token_env] = token
        return env

    def _signed_identity(self, principal: Principal) -> dict[str, str]:
        now = int(time.time())
        assertion = pyjwt.encode(
            {
                "iss": self._issuer,
                "aud": self._audience,
                "sub": principal.subject,
                "principal_issuer": principal.issuer,
                "scope": " ".join(sorted(principal.scopes)),
                "iat": now,
                "exp": now + int(self._lifetime),
                "jti": uuid.uuid4().hex,
            },
            self._key,
            algorithm=ALGORITHM,
            headers={"kid": self._kid},
        )
        return {PRINCIPAL_ENV: principal.subject, ASSERTION_ENV: assertion, JWKS_ENV: self._jwks}
