"""What the gateway tells its operators: the log, the audit trail and the Prometheus metrics.
Field groups of `Settings`; that a metrics listener beyond loopback needs a token is a rule
between settings, in `checks.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator

# Where audit lines may go besides a file.
AUDIT_STREAMS: Final = ("stdout", "stderr", "off")


class LogSettings(BaseModel):
    """The operational log."""

    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["json", "text"] = Field("json", description="Log format: one JSON object per line, or text.")


class AuditSettings(BaseModel):
    """The audit trail: one line per security-relevant event."""

    audit_log: str = Field(
        "stdout", description="Where audit lines go: stdout, stderr, a file path (reopened after rotation), or off."
    )
    audit_tool_arguments: bool = Field(
        False,
        description="Write tool and prompt arguments into audit lines, secrets redacted (default: a digest only).",
    )

    @field_validator("audit_log")
    @classmethod
    def _check_audit_log(cls, value: str) -> str:
        if value in AUDIT_STREAMS:
            return value
        path = Path(value)
        if not path.parent.is_dir():
            raise ValueError(f"the directory of the audit log {value!r} does not exist")
        if path.is_dir():
            raise ValueError(f"{value!r} is a directory; give a file path, stdout, stderr or off")
        return value


class MetricsSettings(BaseModel):
    """Prometheus metrics: on the main listener, or on a listener of their own."""

    metrics_enabled: bool = Field(True, description="Serve Prometheus metrics at /metrics.")
    metrics_token: SecretStr | None = Field(
        None, description="Bearer token /metrics requires (needed to serve it on a non-loopback main listener)."
    )
    metrics_host: str = Field("127.0.0.1", description="Address of the separate metrics listener (with metrics_port).")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Serve /metrics on this port of its own instead of the main listener."
    )
