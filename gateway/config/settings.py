"""Gateway configuration: one validated, immutable `Settings` built from flags, environment and
`.env`, composed of the field groups of this package (one module per area).

Precedence, highest first: explicit keyword arguments (the CLI's flags), `MCP_GATEWAY_*`
environment variables, the `.env` file, defaults. Every setting is checked on its own first (its
group's validators); then the rules between settings (`checks.py`) run once, on the settings that
passed. One `ValidationError` reports every problem of both kinds at once, each under the setting
it is about, in the order of the settings.
"""

from __future__ import annotations

import glob
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Final

from pydantic import (
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.config import checks
from gateway.config.auth import AuthorizationSettings, IdentitySettings, VerifierSettings
from gateway.config.child import (
    ChildEraSettings,
    ChildIsolationSettings,
    ChildLimitSettings,
    ChildOutputSettings,
    ChildSettings,
)
from gateway.config.limits import (
    ConnectionSettings,
    MessageSettings,
    RateLimitSettings,
    SessionCapSettings,
    SessionSettings,
)
from gateway.config.oauth import OAuthSettings
from gateway.config.observe import AUDIT_STREAMS, AuditSettings, LogSettings, MetricsSettings
from gateway.config.server import CallerSettings, ExposureSettings, ListenerSettings, StreamSettings
from gateway.config.tools import ToolPolicySettings
from gateway.net import is_loopback_host, mask_url_password

MASK: Final = "**********"
# The file of settings read from the working directory.
ENV_FILE: Final = ".env"
# How oauth_storage names an SQLite file, and the files SQLite keeps beside it.
SQLITE_PREFIX: Final = "sqlite:///"
SQLITE_SIDE_FILES: Final = ("-wal", "-shm", "-journal")
# The settings that passed their own checks so far, while one `Settings` is being validated:
# pydantic keeps no partial result of a validation that fails, so each setting notes its own.
_passed: ContextVar[dict[str, Any]] = ContextVar("settings_passed")


# pydantic lists the fields of the last base first: read from the bottom up, the groups below are
# in the order of the settings (the README's configuration table, `mcp-gateway check`, the flags).
class Settings(
    ChildIsolationSettings,
    MetricsSettings,
    AuditSettings,
    ExposureSettings,
    ToolPolicySettings,
    ChildLimitSettings,
    RateLimitSettings,
    ConnectionSettings,
    SessionCapSettings,
    OAuthSettings,
    AuthorizationSettings,
    IdentitySettings,
    VerifierSettings,
    LogSettings,
    StreamSettings,
    ChildOutputSettings,
    ChildEraSettings,
    CallerSettings,
    SessionSettings,
    MessageSettings,
    ChildSettings,
    ListenerSettings,
    BaseSettings,
):
    """Everything the gateway needs to serve; immutable once built."""

    model_config = SettingsConfigDict(
        env_prefix="MCP_GATEWAY_",
        env_file=ENV_FILE,
        env_file_encoding="utf-8",
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    # The settings file read (`--env-file`), hidden from children with the gateway's other secrets.
    _env_file_read: str = PrivateAttr(ENV_FILE)

    def read_from(self, env_file: str) -> None:
        """Record that these settings were read from `env_file` instead of `./.env`."""
        self._env_file_read = env_file

    @field_validator("*")
    @classmethod
    def _note_passed(cls, value: Any, info: ValidationInfo) -> Any:
        """Runs after each setting's own validators, so only for a setting that passed them."""
        if info.field_name is not None:
            _passed.get()[info.field_name] = value
        return value

    @model_validator(mode="wrap")
    @classmethod
    def _check_together(cls, data: Any, handler: ModelWrapValidatorHandler[Settings]) -> Settings:
        """The settings' own problems and those between them, in one `ValidationError`."""
        passed: dict[str, Any] = {}
        token = _passed.set(passed)
        try:
            settings = handler(data)
        except ValidationError as error:
            own = error.errors()
            failed = {item["loc"][0] for item in own if item["loc"]}
            between = [problem for problem in checks.problems(passed) if problem.setting not in failed]
            if not between:
                raise
            raise _one_error(cls, own, between, passed) from None
        finally:
            _passed.reset(token)
        if between := checks.problems(passed):
            raise _one_error(cls, [], between, passed)
        return settings

    @property
    def advertised_authorization_servers(self) -> list[str]:
        """The issuers the protected-resource metadata names: this gateway's, when it is one."""
        return [self.base_url] if self.oauth_server else self.authorization_servers

    @property
    def per_user_child_values(self) -> list[str]:
        """The settings that put values of the session's user into its child's environment."""
        given = {
            "token_env": self.token_env is not None,
            "child_identity": self.child_identity,
            "child_env_claims": bool(self.child_env_claims),
            "oauth_token_to_env": self.oauth_token_to_env,
        }
        return [name for name, on in given.items() if on]

    @property
    def gateway_secret_paths(self) -> list[str]:
        """The gateway's own files that hold secrets or records, as glob patterns of absolute paths
        (what they match may not exist yet): no child has any business reading them, and children
        in namespaces never see them."""
        found: list[str | Path] = [self.data_dir, self._env_file_read, *self.oauth_signing_key_files]
        found += [path for path in (self.identity_key_file, self.static_tokens_file) if path is not None]
        if self.audit_log not in AUDIT_STREAMS:
            found.append(self.audit_log)
        if self.oauth_storage is not None and self.oauth_storage.startswith(SQLITE_PREFIX):
            found.append(self.oauth_storage.removeprefix("sqlite://"))
        patterns = [glob.escape(os.path.abspath(path)) for path in found]
        if self.audit_log not in AUDIT_STREAMS:  # and its rotated copies, whenever rotated
            patterns.append(glob.escape(os.path.abspath(self.audit_log)) + ".*")
        if self.oauth_storage is not None and self.oauth_storage.startswith(SQLITE_PREFIX):
            database = glob.escape(os.path.abspath(self.oauth_storage.removeprefix("sqlite://")))
            patterns += [database + suffix for suffix in SQLITE_SIDE_FILES]
        return patterns

    @property
    def metrics_on_main_listener(self) -> bool:
        """Whether /metrics is served by the main listener: never beyond loopback without a token."""
        if not self.metrics_enabled or self.metrics_port is not None:
            return False
        return self.metrics_token is not None or is_loopback_host(self.host)

    def redacted(self) -> dict[str, Any]:
        """The effective configuration as JSON-ready data, secrets masked."""
        data = self.model_dump(mode="json")
        # A plugin's options are free-form and may hold its credentials: show only their names.
        data["plugin_options"] = dict.fromkeys(self.plugin_options, MASK)
        # Storage URLs carry their passwords in the user-info part (redis://:secret@host/0).
        for name, value in data.items():
            if isinstance(value, str) and "://" in value:
                data[name] = mask_url_password(value)
        return data


def _one_error(
    model: type[Settings], own: list[ErrorDetails], between: list[checks.Problem], passed: dict[str, Any]
) -> ValidationError:
    """The settings' own problems (unchanged) and those between them, in the settings' order."""
    details: list[InitErrorDetails] = []
    for item in own:
        detail: InitErrorDetails = {"type": item["type"], "loc": item["loc"], "input": item["input"]}
        if "ctx" in item:
            detail["ctx"] = item["ctx"]
        details.append(detail)
    details += [
        {
            "type": "value_error",
            "loc": (problem.setting,),
            "input": passed.get(problem.setting),
            "ctx": {"error": ValueError(problem.message)},
        }
        for problem in between
    ]
    order = {name: index for index, name in enumerate(model.model_fields)}
    details.sort(key=lambda detail: order.get(str(detail["loc"][0]) if detail["loc"] else "", len(order)))
    return ValidationError.from_exception_data(model.__name__, details)


def describe_errors(error: ValidationError) -> list[str]:
    """One readable line per problem, naming the setting as the CLI and environment spell it."""
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "settings"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{field}: {message}")
    return lines
