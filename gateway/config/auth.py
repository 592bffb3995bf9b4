"""Authentication: which verifier checks a token and what each needs, what a child learns of
its user, and what a token must carry and where clients learn to get one. Field groups of
`Settings`; a verifier's requirements (the jwt verifier needs an issuer, …) are rules between
settings, in `checks.py`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, SecretStr, TypeAdapter, ValidationError, field_validator

from gateway.config.parsing import TextList
from gateway.jose import ASYMMETRIC_ALGORITHMS, public_jwk

VerifierName = Literal["static", "jwt", "introspection", "whoami", "plugin"]

ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
SCOPE_TOKEN: Final = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
_FACTORY = re.compile(r"[\w.]+:[\w.]+")


class StaticToken(BaseModel):
    """One accepted token, held as its SHA-256 digest (see `mcp-gateway hash-token`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    principal: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: list[str] = Field(default_factory=list)


def read_tokens_file(path: Path) -> list[StaticToken]:
    """The static tokens a file holds; `ValueError` saying why when it cannot be read as such."""
    try:
        return TypeAdapter(list[StaticToken]).validate_json(path.read_bytes())
    except OSError as exc:
        raise ValueError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    except ValidationError as exc:
        raise ValueError(f"{str(path)!r} is not a JSON list of static tokens: {exc.errors()[0]['msg']}") from None


def p256_problem(path: Path) -> str | None:
    """Why `path` is not a PEM P-256 (ES256) private key; None when it is one."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        return f"cannot load a private key from {str(path)!r}: {exc}"
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        return f"{str(path)!r} is not a P-256 (ES256) private key"
    return None


class VerifierSettings(BaseModel):
    """Which verifier checks a token, and what each verifier is given."""

    auth: Literal["none", "static", "jwt", "introspection", "whoami", "plugin", "chain"] = Field(
        "none", description="Token verifier: none (loopback only), static, jwt, introspection, whoami, plugin or chain."
    )
    auth_chain: TextList[VerifierName] = Field(
        default_factory=list, description="chain: the verifiers to try, in order (the first to accept wins)."
    )
    static_tokens: list[StaticToken] = Field(
        default_factory=list,
        description='Static tokens, as JSON: [{"principal": "alice", "sha256": "<hash-token output>", "scopes": []}].',
    )
    static_tokens_file: Path | None = Field(None, description="A JSON file holding more static tokens, same shape.")
    token_issuer: str | None = Field(None, description="jwt, introspection: the required issuer of every token.")
    token_audience: TextList[str] = Field(
        default_factory=list, description="jwt, introspection: accepted audiences (usually this server's resource URL)."
    )
    jwt_jwks_url: HttpUrl | None = Field(None, description="jwt: the issuer's JWKS URL (its signing keys).")
    jwt_public_keys: TextList[Path] = Field(
        default_factory=list, description="jwt: PEM public key files instead of a JWKS URL (file name = key id)."
    )
    jwt_algorithms: TextList[str] = Field(
        ["RS256", "ES256"], description="jwt: accepted signature algorithms (asymmetric only)."
    )
    jwt_jwks_ttl: float = Field(600.0, ge=0.1, description="jwt: seconds a fetched key set is used before a refresh.")
    introspection_url: HttpUrl | None = Field(None, description="introspection: the RFC 7662 endpoint.")
    introspection_client_id: str | None = Field(None, description="introspection: this gateway's client id there.")
    introspection_client_secret: SecretStr | None = Field(
        None, description="introspection: this gateway's client secret there."
    )
    whoami_url: HttpUrl | None = Field(
        None,
        description="whoami: an upstream URL that answers 2xx for a valid token (e.g. https://api.github.com/user).",
    )
    whoami_principal_field: str = Field(
        "login", description="whoami: the field of its JSON answer naming the user (a dotted path)."
    )
    whoami_cache_ttl: float = Field(60.0, gt=0, description="whoami: seconds an accepted token is remembered.")
    plugin: str | None = Field(None, description="plugin: your verifier factory, as 'module:attribute'.")
    plugin_options: dict[str, Any] = Field(
        default_factory=dict, description="plugin: keyword arguments for the factory, as a JSON object."
    )
    startup_token: SecretStr | None = Field(
        None, description="A token (e.g. a service account's) verified at startup: refused, the gateway does not start."
    )

    @field_validator("static_tokens_file")
    @classmethod
    def _check_static_tokens_file(cls, value: Path | None) -> Path | None:
        # Every problem in the file is reported now, not at the first request.
        if value is not None:
            read_tokens_file(value)
        return value

    @field_validator("jwt_public_keys")
    @classmethod
    def _check_public_keys(cls, value: list[Path]) -> list[Path]:
        for path in value:
            try:
                public_jwk(path.read_bytes(), kid=path.stem)
            except (OSError, ValueError, TypeError) as exc:
                raise ValueError(f"cannot load a public key from {str(path)!r}: {exc}") from None
        return value

    @field_validator("jwt_algorithms")
    @classmethod
    def _check_algorithms(cls, value: list[str]) -> list[str]:
        refused = [alg for alg in value if alg not in ASYMMETRIC_ALGORITHMS]
        if refused or not value:
            raise ValueError(
                f"allowed: {', '.join(sorted(ASYMMETRIC_ALGORITHMS))}; 'none' and HMAC algorithms never are"
                + (f" (got {', '.join(map(repr, refused))})" if refused else "")
            )
        return value

    @field_validator("plugin")
    @classmethod
    def _check_plugin(cls, value: str | None) -> str | None:
        if value is not None and not _FACTORY.fullmatch(value):
            raise ValueError(f"{value!r} is not 'module:attribute'")
        return value

    def all_static_tokens(self) -> list[StaticToken]:
        """The static tokens given inline, then those of `static_tokens_file`."""
        from_file = read_tokens_file(self.static_tokens_file) if self.static_tokens_file is not None else []
        return [*self.static_tokens, *from_file]


class IdentitySettings(BaseModel):
    """What a child learns of the user its session serves."""

    child_identity: bool = Field(
        False, description="Tell each child its user: MCP_GATEWAY_PRINCIPAL and a signed MCP_GATEWAY_IDENTITY."
    )
    identity_key_file: Path | None = Field(
        None, description="PEM P-256 private key signing identity assertions (default: a key per process)."
    )
    identity_audience: str | None = Field(None, description="Audience of identity assertions (default: resource URL).")
    identity_lifetime: float = Field(900.0, gt=0, description="Seconds an identity assertion stays valid.")
    child_env_claims: dict[str, str] = Field(
        default_factory=dict, description='Token claims copied into the child environment: {"GITHUB_LOGIN": "login"}.'
    )
    token_env: str | None = Field(
        None, description="A child variable receiving the user's token: static and whoami only (see Security)."
    )

    @field_validator("identity_key_file")
    @classmethod
    def _check_identity_key(cls, value: Path | None) -> Path | None:
        if value is not None and (problem := p256_problem(value)):
            raise ValueError(problem)
        return value

    @field_validator("child_env_claims")
    @classmethod
    def _check_claims_env(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [name for name in value if not ENV_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"invalid variable names: {', '.join(map(repr, bad))}")
        return value

    @field_validator("token_env")
    @classmethod
    def _check_token_env(cls, value: str | None) -> str | None:
        if value is not None and not ENV_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a variable name")
        return value


class AuthorizationSettings(BaseModel):
    """What every token must carry, and the protected-resource metadata clients discover."""

    required_scopes: TextList[str] = Field(
        default_factory=list, description="Scopes every token must carry (otherwise 403 insufficient_scope)."
    )
    authorization_servers: TextList[str] = Field(
        default_factory=list, description="Issuer URLs of the OAuth authorization servers, for resource metadata."
    )
    authorization_server_metadata: dict[str, Any] | None = Field(
        None, description="The authorization server's RFC 8414 metadata as JSON (default: fetched from it)."
    )
    scopes_supported: TextList[str] = Field(
        default_factory=list, description="Scopes advertised in the protected-resource metadata."
    )
    resource_documentation: HttpUrl | None = Field(None, description="A page about this server, for resource metadata.")

    @field_validator("authorization_servers")
    @classmethod
    def _check_authorization_servers(cls, value: list[str]) -> list[str]:
        bad = [url for url in value if not url.startswith(("https://", "http://"))]
        if bad:
            raise ValueError(f"issuer URLs look like 'https://auth.example.com', got {', '.join(map(repr, bad))}")
        return value
