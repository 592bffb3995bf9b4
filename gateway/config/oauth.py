"""The built-in OAuth 2.1 authorization server: its keys and storage, token lifetimes, how users
sign in (a pasted service token, or an OpenID provider) and which clients it admits. A field
group of `Settings`; what the server needs once it is on is checked together in
`checks.oauth_server`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from gateway.config.parsing import TextList

# The OpenID sign-in settings, which mean something only when oidc is a sign-in method.
OIDC_SETTINGS: Final = (
    "oauth_oidc_issuer",
    "oauth_oidc_client_id",
    "oauth_oidc_client_secret",
    "oauth_oidc_allowed_domains",
    "oauth_oidc_allowed_subjects",
)


class OAuthSettings(BaseModel):
    """The built-in authorization server, off unless `oauth_server` is set."""

    oauth_server: bool = Field(
        False, description="Run the built-in OAuth 2.1 authorization server (see 'Built-in authorization server')."
    )
    oauth_session_key: SecretStr | None = Field(
        None,
        description="oauth_server: a Fernet key (`mcp-gateway oauth-key`) encrypting its cookie and stored secrets.",
    )
    data_dir: Path = Field(Path("data"), description="Directory for the gateway's state (created when needed).")
    oauth_storage: str | None = Field(
        None,
        description="oauth_server: sqlite:///path/to/file.db (default: <data_dir>/oauth.sqlite3) or redis://host/0.",
    )
    oauth_signing_key_files: TextList[Path] = Field(
        default_factory=list,
        description="oauth_server: PEM P-256 private keys; the first signs, the others are published only "
        "(default: keys generated, kept encrypted in the storage, rotated).",
    )
    oauth_signing_key_rotation: float = Field(
        30 * 86400.0, ge=3600, description="oauth_server: seconds a generated signing key signs before a new one does."
    )
    oauth_access_token_ttl: int = Field(
        900, ge=300, le=3600, description="oauth_server: access token lifetime, seconds (5 to 60 minutes)."
    )
    oauth_refresh_token_ttl: int = Field(
        14 * 86400, ge=3600, description="oauth_server: seconds a refresh token stays usable (each use rotates it)."
    )
    oauth_signin_methods: TextList[Literal["token", "oidc"]] = Field(
        ["token"],
        description="oauth_server: how users sign in: token (paste the service token the verifier checks) and/or "
        "oidc (with an OpenID provider).",
    )
    oauth_oidc_issuer: str | None = Field(
        None,
        description="oidc: the OpenID provider's issuer URL, exactly as its discovery document names it "
        "(https; plain http only on a loopback address, for development).",
    )
    oauth_oidc_name: str | None = Field(
        None, description="oidc: the provider's name on the sign-in button (default: the issuer's host)."
    )
    oauth_oidc_client_id: str | None = Field(
        None,
        description="oidc: this gateway's client ID at the provider, whose redirect URI is "
        "<public_url>/oauth/oidc/callback.",
    )
    oauth_oidc_client_secret: SecretStr | None = Field(
        None, description="oidc: its client secret (leave unset for a public client: PKCE alone)."
    )
    oauth_oidc_client_auth: Literal["client_secret_basic", "client_secret_post"] = Field(
        "client_secret_basic", description="oidc: how the client secret reaches the provider's token endpoint."
    )
    # Not a comma-separated list alone: scopes are also separated by spaces (`_parse_scopes`).
    oauth_oidc_scopes: Annotated[list[str], NoDecode] = Field(
        ["openid", "email", "profile"], description="oidc: scopes asked of the provider (openid is required)."
    )
    oauth_oidc_subject_claim: Literal["sub", "email"] = Field(
        "sub", description="oidc: the ID token claim that names the user: sub, or email (verified emails only)."
    )
    oauth_oidc_allowed_domains: TextList[str] = Field(
        default_factory=list,
        description="oidc: email domains whose users may sign in (exact match; the email must be verified).",
    )
    oauth_oidc_allowed_subjects: TextList[str] = Field(
        default_factory=list, description="oidc: users who may sign in, as values of the subject claim."
    )
    oauth_oidc_allow_any_account: bool = Field(
        False,
        description="oidc: every account the provider signs in may sign in here (only for a provider that holds "
        "your team alone).",
    )
    oauth_dynamic_registration: bool = Field(
        True, description="oauth_server: accept RFC 7591 dynamic client registration (deprecated, still common)."
    )
    oauth_cimd_allow_private: bool = Field(
        False,
        description="oauth_server, tests only: fetch client metadata documents from loopback and private addresses "
        "(and over http from loopback).",
    )
    oauth_token_to_env: bool = Field(
        False,
        description="oauth_server: with token_env, a child of an OAuth client gets the service token its user pasted.",
    )

    @field_validator("oauth_oidc_scopes", mode="before")
    @classmethod
    def _parse_scopes(cls, value: Any) -> Any:
        """Scopes as a JSON array, or separated by spaces or commas (`openid email profile`), also
        within each repeated flag."""
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else [text]
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return [scope for item in value for scope in item.replace(",", " ").split()]
        return value

    @property
    def oauth_storage_url(self) -> str:
        """Where the built-in authorization server keeps its state."""
        if self.oauth_storage is not None:
            return self.oauth_storage
        return f"sqlite:///{(self.data_dir / 'oauth.sqlite3').resolve()}"
