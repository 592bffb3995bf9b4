"""Gateway configuration: one validated `Settings` object built from flags, environment and `.env`.

Precedence, highest first: explicit keyword arguments (the CLI's flags), `MCP_GATEWAY_*`
environment variables, the `.env` file, defaults. Every field is validated before anything
serves, and cross-field rules are written as field validators so that one `ValidationError`
reports every problem at once. Nothing here reads a request: the child's command and
environment come from configuration only.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import resource
import shlex
import shutil
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from limits import RateLimitItem, parse_many
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    SecretStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gateway.auth.jwks import public_jwk
from gateway.auth.jwt import ASYMMETRIC_ALGORITHMS
from gateway.net import https_url_problem, is_loopback_host, mask_url_password
from gateway.sessions.policy import glob_problem

MiB = 1024 * 1024
PRM_PATH = "/.well-known/oauth-protected-resource"
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - names, not a bind


class StaticToken(BaseModel):
    """One accepted token, held as its SHA-256 digest (see `mcp-gateway hash-token`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    principal: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: list[str] = Field(default_factory=list)


def _read_tokens_file(path: Path) -> list[StaticToken]:
    try:
        return TypeAdapter(list[StaticToken]).validate_json(path.read_bytes())
    except OSError as exc:
        raise ValueError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    except ValidationError as exc:
        raise ValueError(f"{str(path)!r} is not a JSON list of static tokens: {exc.errors()[0]['msg']}") from None


# What a child inherits from the gateway's environment by default: enough to find programs and
# a home directory, nothing that could carry the gateway's own secrets.
DEFAULT_CHILD_ENV_ALLOW = ("HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "LC_ALL", "TZ")
DEFAULT_ALLOWED_ORIGINS = ("http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*")
RESERVED_PATHS = frozenset({"/health", "/ready"})


VerifierName = Literal["static", "jwt", "introspection", "whoami", "plugin"]


MEMORY_SCHEMES: Final = ("memory://", "async+memory://")
# `limits` async storages with a moving window (memcached has none).
SHARED_SCHEMES: Final = (
    "async+redis",
    "async+rediss",
    "async+redis+sentinel",
    "async+redis+cluster",
    "async+valkey",
    "async+valkeys",
    "async+mongodb",
)


def parse_limit(text: str) -> list[RateLimitItem]:
    """`"10/second;600/minute"` as `limits` items; empty or `off` means no limit."""
    text = text.strip()
    if not text or text == "off":
        return []
    return parse_many(text)


def _uses(info: ValidationInfo, verifier: str) -> bool:
    """Whether the configured authentication uses `verifier`, alone or in the chain."""
    auth = info.data.get("auth")
    return auth == verifier or (auth == "chain" and verifier in info.data.get("auth_chain", ()))


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def _p256_problem(path: Path) -> str | None:
    """Why `path` is not a PEM P-256 (ES256) private key; None when it is one."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        return f"cannot load a private key from {str(path)!r}: {exc}"
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        return f"{str(path)!r} is not a P-256 (ES256) private key"
    return None


_DOMAIN = re.compile(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
OIDC_SETTINGS: Final = (
    "oauth_oidc_issuer",
    "oauth_oidc_client_id",
    "oauth_oidc_client_secret",
    "oauth_oidc_allowed_domains",
    "oauth_oidc_allowed_subjects",
)


def _oidc_problems(data: dict[str, Any], *, offered: bool) -> list[str]:
    """The OpenID sign-in settings' problems (the built-in server is on)."""
    if not offered:
        given = [name for name in OIDC_SETTINGS if data.get(name)]
        return [f"{', '.join(given)} set, but oidc is not in oauth_signin_methods"] if given else []
    problems = []
    issuer = data.get("oauth_oidc_issuer")
    if not issuer:
        problems.append("oidc sign-in needs oauth_oidc_issuer (the OpenID provider's issuer URL)")
    elif problem := https_url_problem(issuer, "oauth_oidc_issuer"):
        problems.append(problem)
    if not data.get("oauth_oidc_client_id"):
        problems.append("oidc sign-in needs oauth_oidc_client_id (register this gateway with the provider)")
    scopes = data.get("oauth_oidc_scopes") or []
    if "openid" not in scopes:
        problems.append("oauth_oidc_scopes must include openid")
    bad = [scope for scope in scopes if not _SCOPE_TOKEN.fullmatch(scope)]
    if bad:
        problems.append(f"oauth_oidc_scopes: not scope tokens: {', '.join(map(repr, bad))}")
    domains = data.get("oauth_oidc_allowed_domains") or []
    bad = [domain for domain in domains if not _DOMAIN.fullmatch(domain)]
    if bad:
        problems.append(f"oauth_oidc_allowed_domains are domains like example.com, got {', '.join(map(repr, bad))}")
    if (domains or data.get("oauth_oidc_subject_claim") == "email") and "email" not in scopes:
        problems.append("email domains and email subjects need the email scope in oauth_oidc_scopes")
    if not (domains or data.get("oauth_oidc_allowed_subjects") or data.get("oauth_oidc_allow_any_account")):
        problems.append(
            "oidc sign-in needs an allow-list: oauth_oidc_allowed_domains and/or oauth_oidc_allowed_subjects "
            "(or oauth_oidc_allow_any_account, when every account of the provider is on your team)"
        )
    return problems


class Settings(BaseSettings):
    """Everything the gateway needs to serve; immutable once built."""

    model_config = SettingsConfigDict(
        env_prefix="MCP_GATEWAY_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    host: str = Field(
        "127.0.0.1", description="Address to bind. Anything but loopback needs authentication, or the override below."
    )
    port: int = Field(8080, ge=0, le=65535, description="TCP port to bind (0 picks a free port).")
    public_url: HttpUrl | None = Field(
        None, description="Public base URL clients use (e.g. https://mcp.example.com); its origin is allowed."
    )
    mcp_path: str = Field("/mcp", description="Path of the MCP endpoint.")
    child_env_allow: Annotated[list[str], NoDecode] = Field(
        list(DEFAULT_CHILD_ENV_ALLOW), description="Names of gateway environment variables a child inherits."
    )
    child_env: dict[str, SecretStr] = Field(
        default_factory=dict, description="Extra environment for every child, as a JSON object (values are secret)."
    )
    child_cwd: Path | None = Field(None, description="Working directory of every child (default: the gateway's).")
    command: Annotated[list[str], NoDecode] = Field(
        description="The stdio MCP server to run per session: a JSON array or a shell-style string (no shell runs).",
    )
    max_message_bytes: int = Field(
        16 * MiB, ge=1024, le=1024 * MiB, description="Largest JSON-RPC message accepted in either direction."
    )
    max_batch_size: int = Field(100, ge=1, description="Most messages in one JSON-RPC batch (2025-03-26 clients only).")
    max_requests_in_flight: int = Field(
        256, ge=1, description="Most requests one session may have waiting for an answer at once."
    )
    session_idle_ttl: float = Field(
        1800.0, gt=0, description="Seconds a session may sit idle (nothing in flight, no open stream) before it ends."
    )
    session_max_lifetime: float | None = Field(
        86400.0,
        gt=0,
        description="Seconds a session may live at most, busy or not (an open stream cannot hold its child longer).",
    )
    session_evict_idle_after: float = Field(
        60.0,
        ge=0,
        description="At a session cap, seconds idle after which another caller's session may end to make room.",
    )
    max_sessions: int = Field(256, ge=1, description="Most concurrent sessions (each is one child process).")
    request_timeout: float = Field(
        300.0, gt=0, description="Seconds a request may go without an answer or progress before it is cancelled."
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Networks (CIDR) of proxies whose X-Real-IP / X-Forwarded-For are believed (e.g. 172.18.0.0/16).",
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        list(DEFAULT_ALLOWED_ORIGINS),
        description="Origins browsers may call from ('scheme://host:port', ':*' for any port, '*' for all).",
    )
    stdout_violation_limit: int = Field(
        20, ge=1, description="Non-JSON or oversized stdout lines tolerated before a session is closed."
    )
    sse_keepalive: float = Field(15.0, gt=0, le=300, description="Seconds between SSE keep-alive comments.")
    shutdown_timeout: float = Field(
        10.0,
        ge=0,
        description="Seconds in-flight requests get to finish on SIGTERM; then they get an error (see Stopping).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["json", "text"] = Field("json", description="Log format: one JSON object per line, or text.")
    auth: Literal["none", "static", "jwt", "introspection", "whoami", "plugin", "chain"] = Field(
        "none", description="Token verifier: none (loopback only), static, jwt, introspection, whoami, plugin or chain."
    )
    auth_chain: Annotated[list[VerifierName], NoDecode] = Field(
        default_factory=list, description="chain: the verifiers to try, in order (the first to accept wins)."
    )
    static_tokens: list[StaticToken] = Field(
        default_factory=list,
        description='Static tokens, as JSON: [{"principal": "alice", "sha256": "<hash-token output>", "scopes": []}].',
    )
    static_tokens_file: Path | None = Field(None, description="A JSON file holding more static tokens, same shape.")
    token_issuer: str | None = Field(None, description="jwt, introspection: the required issuer of every token.")
    token_audience: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="jwt, introspection: accepted audiences (usually this server's resource URL)."
    )
    jwt_jwks_url: HttpUrl | None = Field(None, description="jwt: the issuer's JWKS URL (its signing keys).")
    jwt_public_keys: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="jwt: PEM public key files instead of a JWKS URL (file name = key id)."
    )
    jwt_algorithms: Annotated[list[str], NoDecode] = Field(
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
    required_scopes: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Scopes every token must carry (otherwise 403 insufficient_scope)."
    )
    authorization_servers: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Issuer URLs of the OAuth authorization servers, for resource metadata."
    )
    authorization_server_metadata: dict[str, Any] | None = Field(
        None, description="The authorization server's RFC 8414 metadata as JSON (default: fetched from it)."
    )
    scopes_supported: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Scopes advertised in the protected-resource metadata."
    )
    resource_documentation: HttpUrl | None = Field(None, description="A page about this server, for resource metadata.")
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
    oauth_signing_key_files: Annotated[list[Path], NoDecode] = Field(
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
    oauth_signin_methods: Annotated[list[Literal["token", "oidc"]], NoDecode] = Field(
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
    oauth_oidc_scopes: Annotated[list[str], NoDecode] = Field(
        ["openid", "email", "profile"], description="oidc: scopes asked of the provider (openid is required)."
    )
    oauth_oidc_subject_claim: Literal["sub", "email"] = Field(
        "sub", description="oidc: the ID token claim that names the user: sub, or email (verified emails only)."
    )
    oauth_oidc_allowed_domains: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="oidc: email domains whose users may sign in (exact match; the email must be verified).",
    )
    oauth_oidc_allowed_subjects: Annotated[list[str], NoDecode] = Field(
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
    max_sessions_per_principal: int = Field(32, ge=1, description="Most concurrent sessions one principal may hold.")
    max_sessions_per_ip: int = Field(
        64, ge=1, description="Most concurrent sessions one client address (an IPv6 /64) may hold."
    )
    max_connections: int = Field(
        1024, ge=1, description="Most open HTTP connections; more are refused with 503 at once (see Connection limits)."
    )
    max_connections_per_ip: int = Field(
        128,
        ge=1,
        description="Most open HTTP connections from one TCP peer (an IPv6 /64); trusted_proxies are exempt.",
    )
    http_header_timeout: float = Field(
        10.0, gt=0, description="Seconds a client has to send a complete request head (from connect or its first byte)."
    )
    http_body_timeout: float = Field(
        60.0, gt=0, description="Seconds a client has to send a whole request body, once its head has arrived."
    )
    http_keepalive_timeout: float = Field(
        75.0, gt=0, description="Seconds an idle keep-alive connection stays open (longer than nginx's 60 s upstream)."
    )
    http_write_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a response may go without progress (client not reading) before its socket closes.",
    )
    ratelimit_storage: str = Field(
        "memory://", description="Rate-limit state: memory:// (this process) or async+redis://host:6379/0 (shared)."
    )
    ratelimit_storage_failure: Literal["open", "closed"] = Field(
        "open",
        description="When the rate-limit storage fails: serve without limits (open) or refuse with 503 (closed).",
    )
    ratelimit_requests_ip: str = Field("600/minute", description="MCP requests per client address ('' turns it off).")
    ratelimit_requests_principal: str = Field("1200/minute", description="MCP requests per authenticated principal.")
    ratelimit_auth_failures_ip: str = Field(
        "10/minute", description="Refused credentials per client address before its requests are refused unverified."
    )
    ratelimit_sessions_ip: str = Field("60/minute", description="Sessions started per client address.")
    ratelimit_sessions_principal: str = Field("60/minute", description="Sessions started per authenticated principal.")
    ratelimit_public_ip: str = Field(
        "300/minute", description="Discovery, health and metrics requests per client address."
    )
    ratelimit_oauth_ip: str = Field(
        "120/minute", description="Requests to the built-in authorization server's endpoints per client address."
    )
    ratelimit_spawn: str = Field("20/second", description="Child processes started per second, gateway-wide.")
    child_rlimit_as_mb: int | None = Field(None, ge=16, description="Address-space limit of each child, MiB.")
    child_rlimit_cpu_seconds: int | None = Field(None, ge=1, description="CPU-time limit of each child, seconds.")
    child_rlimit_nofile: int | None = Field(None, ge=8, description="Open-file limit of each child.")
    child_rlimit_nproc: int | None = Field(
        None, ge=1, description="Process limit of each child (counted per user ID, not per session)."
    )
    tool_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Tool names clients may see and call, as globs (fnmatch, case-sensitive); empty allows every tool.",
    )
    tool_deny: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Tool names no client may see or call, as globs; wins over tool_allow."
    )
    tool_scope_write: str | None = Field(
        None, description="Scope a token needs to see and call tools not annotated readOnlyHint: true."
    )
    tool_scope_destructive: str | None = Field(
        None,
        description="Scope a token needs, beside tool_scope_write, for tools whose destructiveHint is true (default).",
    )
    allow_remote_unauthenticated: bool = Field(
        False, description="Permit a non-loopback bind without authentication. Never do this on a shared network."
    )
    audit_log: str = Field(
        "stdout", description="Where audit lines go: stdout, stderr, a file path (reopened after rotation), or off."
    )
    audit_tool_arguments: bool = Field(
        False,
        description="Write tool and prompt arguments into audit lines, secrets redacted (default: a digest only).",
    )
    metrics_enabled: bool = Field(True, description="Serve Prometheus metrics at /metrics.")
    metrics_token: SecretStr | None = Field(
        None, description="Bearer token /metrics requires (needed to serve it on a non-loopback main listener)."
    )
    metrics_host: str = Field("127.0.0.1", description="Address of the separate metrics listener (with metrics_port).")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Serve /metrics on this port of its own instead of the main listener."
    )

    @field_validator("command", mode="before")
    @classmethod
    def _parse_command(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text.startswith("[") else shlex.split(text)
        return value

    @field_validator(
        "child_env_allow",
        "trusted_proxies",
        "allowed_origins",
        "required_scopes",
        "authorization_servers",
        "scopes_supported",
        "token_audience",
        "jwt_algorithms",
        "jwt_public_keys",
        "auth_chain",
        "tool_allow",
        "tool_deny",
        "oauth_signing_key_files",
        "oauth_signin_methods",
        "oauth_oidc_allowed_domains",
        "oauth_oidc_allowed_subjects",
        mode="before",
    )
    @classmethod
    def _parse_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

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

    @field_validator("mcp_path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        if not value.startswith("/") or value.endswith("/") or "//" in value or "?" in value or "#" in value:
            raise ValueError("must start with '/', not end with '/', and hold no '//', '?' or '#'")
        if value in RESERVED_PATHS or value.startswith(("/.well-known/", "/oauth/")):
            raise ValueError(f"{value!r} is reserved by the gateway")
        return value

    @field_validator("child_env")
    @classmethod
    def _check_child_env(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        bad = [name for name in value if not name or "=" in name or "\0" in name]
        if bad:
            raise ValueError(f"invalid variable names: {', '.join(map(repr, bad))}")
        return value

    @field_validator("child_cwd")
    @classmethod
    def _check_cwd(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"{str(value)!r} is not a directory")
        return value

    @field_validator("command")
    @classmethod
    def _check_command(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if not value or not value[0]:
            raise ValueError("no server command: pass it after '--' or set MCP_GATEWAY_COMMAND")
        extra_env = info.data.get("child_env", {})
        if "PATH" in extra_env:
            path = extra_env["PATH"].get_secret_value()
        else:
            path = os.environ.get("PATH") if "PATH" in info.data.get("child_env_allow", ()) else None
        if shutil.which(value[0], path=path) is None:
            raise ValueError(f"{value[0]!r} is not an executable on the child's PATH")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        bad = []
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                bad.append(network)
        if bad:
            raise ValueError(f"not networks (like 172.18.0.0/16 or 10.0.0.5): {', '.join(map(repr, bad))}")
        return value

    def proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(network, strict=False) for network in self.trusted_proxies]

    @field_validator("allowed_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        bad = [o for o in value if o != "*" and ("://" not in o or o.endswith("/"))]
        if bad:
            raise ValueError(f"origins look like 'https://app.example.com', got {', '.join(map(repr, bad))}")
        return value

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: HttpUrl | None) -> HttpUrl | None:
        if value is not None and (value.path not in (None, "", "/") or value.query or value.fragment):
            raise ValueError("give the origin only (scheme://host[:port]); the MCP path is mcp_path")
        return value

    @field_validator("static_tokens_file")
    @classmethod
    def _check_static_tokens(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        # Every problem in the file is reported now, not at the first request.
        from_file = _read_tokens_file(value) if value is not None else []
        if _uses(info, "static") and not (from_file or info.data.get("static_tokens")):
            raise ValueError("the static verifier needs static_tokens (or static_tokens_file)")
        return value

    @field_validator("jwt_public_keys")
    @classmethod
    def _check_jwt(cls, value: list[Path], info: ValidationInfo) -> list[Path]:
        for path in value:
            try:
                public_jwk(path.read_bytes(), kid=path.stem)
            except (OSError, ValueError, TypeError) as exc:
                raise ValueError(f"cannot load a public key from {str(path)!r}: {exc}") from None
        if _uses(info, "jwt"):
            missing = [name for name in ("token_issuer", "token_audience") if not info.data.get(name)]
            if missing:
                raise ValueError(f"the jwt verifier requires {', '.join(missing)}")
            if (info.data.get("jwt_jwks_url") is None) == (not value):
                raise ValueError("the jwt verifier takes its keys from jwt_jwks_url or jwt_public_keys: give one")
        return value

    @field_validator("introspection_client_secret")
    @classmethod
    def _check_introspection(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if _uses(info, "introspection"):
            names = ("introspection_url", "introspection_client_id")
            missing = [name for name in names if not info.data.get(name)]
            missing += ["introspection_client_secret"] if value is None else []
            if missing:
                raise ValueError(f"the introspection verifier requires {', '.join(missing)}")
        return value

    @field_validator("whoami_url")
    @classmethod
    def _check_whoami(cls, value: HttpUrl | None, info: ValidationInfo) -> HttpUrl | None:
        if _uses(info, "whoami") and value is None:
            raise ValueError("the whoami verifier requires whoami_url")
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

    @field_validator("auth_chain")
    @classmethod
    def _check_chain(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if info.data.get("auth") == "chain" and not value:
            raise ValueError("auth is chain: list the verifiers to try, e.g. static,jwt")
        return value

    @field_validator("plugin")
    @classmethod
    def _check_plugin(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not re.fullmatch(r"[\w.]+:[\w.]+", value):
            raise ValueError(f"{value!r} is not 'module:attribute'")
        if _uses(info, "plugin") and value is None:
            raise ValueError("the plugin verifier requires plugin ('module:attribute')")
        return value

    @field_validator("identity_key_file")
    @classmethod
    def _check_identity_key(cls, value: Path | None) -> Path | None:
        if value is not None and (problem := _p256_problem(value)):
            raise ValueError(problem)
        return value

    @field_validator("child_env_claims")
    @classmethod
    def _check_claims_env(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [name for name in value if not _ENV_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"invalid variable names: {', '.join(map(repr, bad))}")
        return value

    @field_validator("token_env")
    @classmethod
    def _check_token_env(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if not _ENV_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a variable name")
        auth = info.data.get("auth")
        verifiers = set(info.data.get("auth_chain", ())) if auth == "chain" else {auth}
        if not verifiers or not verifiers <= {"static", "whoami"}:
            raise ValueError(
                "the user's token may reach the child only with the static or whoami verifiers, where it is the "
                "upstream service's own credential; with any other verifier that would be token passthrough"
            )
        return value

    @field_validator("startup_token")
    @classmethod
    def _check_startup_token(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is not None and info.data.get("auth") == "none":
            raise ValueError("a startup token needs a verifier (auth) to check it")
        return value

    @field_validator("child_identity")
    @classmethod
    def _check_identity(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("auth") == "none":
            raise ValueError("child identity needs authentication: with auth none every user is anonymous")
        return value

    @field_validator("authorization_servers")
    @classmethod
    def _check_authorization_servers(cls, value: list[str]) -> list[str]:
        bad = [url for url in value if not url.startswith(("https://", "http://"))]
        if bad:
            raise ValueError(f"issuer URLs look like 'https://auth.example.com', got {', '.join(map(repr, bad))}")
        return value

    @field_validator("oauth_token_to_env")
    @classmethod
    def _check_oauth_server(cls, value: bool, info: ValidationInfo) -> bool:
        """The built-in authorization server's settings, checked together (every problem at once)."""
        data = info.data
        if not data.get("oauth_server"):
            return value
        problems = []
        public_url = data.get("public_url")
        if public_url is None:
            problems.append("needs public_url: it is the issuer, and its MCP URL the tokens' audience")
        elif public_url.scheme != "https" and not is_loopback_host(public_url.host or ""):
            problems.append("public_url must be https (plain http only on a loopback address, for development)")
        key = data.get("oauth_session_key")
        if key is None:
            problems.append("needs oauth_session_key (generate one with `mcp-gateway oauth-key`)")
        else:
            try:
                Fernet(key.get_secret_value())
            except ValueError:
                problems.append("oauth_session_key is not a Fernet key (32 bytes, URL-safe base64)")
        if data.get("authorization_servers"):
            problems.append("it is this resource's authorization server: leave authorization_servers empty")
        methods = data.get("oauth_signin_methods") or []
        if not methods:
            problems.append("needs at least one sign-in method (oauth_signin_methods)")
        if "token" in methods and not (_uses(info, "static") or _uses(info, "whoami")):
            problems.append("token sign-in checks the pasted token with the static or whoami verifier: set auth")
        storage = data.get("oauth_storage")
        if storage is not None and not storage.startswith(("sqlite:///", "redis://", "rediss://")):
            problems.append("oauth_storage is sqlite:///path/file.db or redis://host:6379/0")
        if storage is None:
            data_dir = data.get("data_dir")
            if data_dir is not None and not (data_dir.is_dir() or data_dir.parent.is_dir()):
                problems.append(f"data_dir {str(data_dir)!r} cannot be created: its parent is not a directory")
        for path in data.get("oauth_signing_key_files") or []:
            problem = _p256_problem(path)
            if problem:
                problems.append(problem)
        if value and not (data.get("token_env") and "token" in methods):
            problems.append("oauth_token_to_env needs token_env and the token sign-in method")
        problems += _oidc_problems(data, offered="oidc" in methods)
        if problems:
            raise ValueError("oauth_server: " + "; ".join(problems))
        return value

    @field_validator("tool_allow", "tool_deny")
    @classmethod
    def _check_tool_globs(cls, value: list[str]) -> list[str]:
        problems = [f"{pattern!r} {problem}" for pattern in value if (problem := glob_problem(pattern))]
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("tool_scope_write", "tool_scope_destructive")
    @classmethod
    def _check_tool_scope(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if not _SCOPE_TOKEN.fullmatch(value):
            raise ValueError(
                f"{value!r} is not one OAuth scope token (RFC 6749: visible ASCII but no quote or backslash)"
            )
        if info.data.get("auth") == "none" and not info.data.get("oauth_server"):
            raise ValueError("a tool scope needs authentication: with auth none no caller holds any scope")
        return value

    @field_validator("auth")
    @classmethod
    def _check_auth(cls, value: str, info: ValidationInfo) -> str:
        host = info.data.get("host")
        if value != "none" and host in WILDCARD_HOSTS and info.data.get("public_url") is None:
            raise ValueError(
                f"binding {host!r} with authentication needs public_url: challenges and metadata must name a "
                "URL clients can reach, and are never built from request headers"
            )
        return value

    @field_validator("allow_remote_unauthenticated")
    @classmethod
    def _check_bind(cls, value: bool, info: ValidationInfo) -> bool:
        host = info.data.get("host")
        # The built-in authorization server authenticates on its own (its tokens), even with auth none.
        auth = "oauth" if info.data.get("oauth_server") else info.data.get("auth", "none")
        if host is not None and not is_loopback_host(host) and auth == "none" and not value:
            raise ValueError(
                f"host {host!r} is not loopback and no authentication is configured; configure a verifier "
                "(auth), bind 127.0.0.1, or set allow_remote_unauthenticated=true to serve everyone"
            )
        return value

    @field_validator(
        "ratelimit_requests_ip",
        "ratelimit_requests_principal",
        "ratelimit_auth_failures_ip",
        "ratelimit_sessions_ip",
        "ratelimit_sessions_principal",
        "ratelimit_public_ip",
        "ratelimit_oauth_ip",
        "ratelimit_spawn",
    )
    @classmethod
    def _check_rate(cls, value: str) -> str:
        try:
            parse_limit(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a rate like '600/minute' or '10/second;600/hour'") from None
        return value

    @field_validator("ratelimit_storage")
    @classmethod
    def _check_ratelimit_storage(cls, value: str) -> str:
        scheme = value.partition("://")[0]
        if value in MEMORY_SCHEMES:
            return value
        if scheme not in SHARED_SCHEMES:
            raise ValueError(f"use memory:// or one of {', '.join(s + '://' for s in SHARED_SCHEMES)}; got {scheme!r}")
        return value

    @field_validator("audit_log")
    @classmethod
    def _check_audit_log(cls, value: str) -> str:
        if value in ("stdout", "stderr", "off"):
            return value
        path = Path(value)
        if not path.parent.is_dir():
            raise ValueError(f"the directory of the audit log {value!r} does not exist")
        if path.is_dir():
            raise ValueError(f"{value!r} is a directory; give a file path, stdout, stderr or off")
        return value

    @field_validator("metrics_port")
    @classmethod
    def _check_metrics_listener(cls, value: int | None, info: ValidationInfo) -> int | None:
        host = info.data.get("metrics_host")
        if value is not None and host is not None and not is_loopback_host(host) and not info.data.get("metrics_token"):
            raise ValueError(f"a metrics listener on {host!r} (beyond loopback) needs metrics_token")
        return value

    def child_rlimits(self) -> tuple[tuple[int, int], ...]:
        """The configured (resource, limit) pairs each child gets at spawn."""
        pairs = [
            (resource.RLIMIT_AS, self.child_rlimit_as_mb * 1024 * 1024 if self.child_rlimit_as_mb else None),
            (resource.RLIMIT_CPU, self.child_rlimit_cpu_seconds),
            (resource.RLIMIT_NOFILE, self.child_rlimit_nofile),
            (resource.RLIMIT_NPROC, self.child_rlimit_nproc),
        ]
        return tuple((which, limit) for which, limit in pairs if limit is not None)

    @property
    def metrics_on_main_listener(self) -> bool:
        """Whether /metrics is served by the main listener: never beyond loopback without a token."""
        if not self.metrics_enabled or self.metrics_port is not None:
            return False
        return self.metrics_token is not None or is_loopback_host(self.host)

    @property
    def base_url(self) -> str:
        """Where clients reach this gateway: `public_url`, else the bind address."""
        if self.public_url is not None:
            return str(self.public_url).rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def resource_url(self) -> str:
        """The MCP endpoint's canonical URL: the OAuth resource this gateway protects."""
        return self.base_url + self.mcp_path

    @property
    def resource_metadata_url(self) -> str:
        """RFC 9728 metadata URL, in its path-inserted form."""
        return f"{self.base_url}{PRM_PATH}{self.mcp_path}"

    @property
    def advertised_authorization_servers(self) -> list[str]:
        """The issuers the protected-resource metadata names: this gateway's, when it is one."""
        return [self.base_url] if self.oauth_server else self.authorization_servers

    @property
    def oauth_storage_url(self) -> str:
        """Where the built-in authorization server keeps its state."""
        if self.oauth_storage is not None:
            return self.oauth_storage
        return f"sqlite:///{(self.data_dir / 'oauth.sqlite3').resolve()}"

    def all_static_tokens(self) -> list[StaticToken]:
        from_file = _read_tokens_file(self.static_tokens_file) if self.static_tokens_file is not None else []
        return [*self.static_tokens, *from_file]

    def child_environment(self) -> dict[str, str]:
        """The exact environment of every child: the allow-listed inherited values plus extras."""
        env = {name: os.environ[name] for name in self.child_env_allow if name in os.environ}
        env.update({name: secret.get_secret_value() for name, secret in self.child_env.items()})
        return env

    def redacted(self) -> dict[str, Any]:
        """The effective configuration as JSON-ready data, secrets masked."""
        data = self.model_dump(mode="json")
        # A plugin's options are free-form and may hold its credentials: show only their names.
        data["plugin_options"] = dict.fromkeys(self.plugin_options, "**********")
        # Storage URLs carry their passwords in the user-info part (redis://:secret@host/0).
        for name, value in data.items():
            if isinstance(value, str) and "://" in value:
                data[name] = mask_url_password(value)
        return data


def describe_errors(error: ValidationError) -> list[str]:
    """One readable line per problem, naming the setting as the CLI and environment spell it."""
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "settings"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{field}: {message}")
    return lines
