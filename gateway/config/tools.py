"""The tool policy: which tools clients may see and call, and the scopes writing and destructive
tools need. A field group of `Settings` (`gateway.sessions.policy` enforces it); that a tool
scope needs authentication is a rule between settings, in `checks.py`.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from gateway.config.auth import SCOPE_TOKEN
from gateway.config.parsing import TextList


def glob_problem(pattern: str) -> str | None:
    """What is wrong with a tool-name glob, or None. `fnmatch` itself takes an unclosed `[`
    literally; a configuration that writes one almost certainly meant something else."""
    if not pattern.strip():
        return "is empty"
    index = 0
    while index < len(pattern):
        if pattern[index] == "[":
            end = index + 1
            if end < len(pattern) and pattern[end] == "!":
                end += 1
            if end < len(pattern) and pattern[end] == "]":
                end += 1  # a leading ']' is a member of the set, as in fnmatch
            close = pattern.find("]", end)
            if close < 0:
                return f"has an unclosed '[' at position {index}"
            index = close
        index += 1
    return None


class ToolPolicySettings(BaseModel):
    """Tool names allowed and denied (globs), and the scopes tools with side effects need."""

    tool_allow: TextList[str] = Field(
        default_factory=list,
        description="Tool names clients may see and call, as globs (fnmatch, case-sensitive); empty allows every tool.",
    )
    tool_deny: TextList[str] = Field(
        default_factory=list, description="Tool names no client may see or call, as globs; wins over tool_allow."
    )
    tool_scope_write: str | None = Field(
        None, description="Scope a token needs to see and call tools not annotated readOnlyHint: true."
    )
    tool_scope_destructive: str | None = Field(
        None,
        description="Scope a token needs, beside tool_scope_write, for tools whose destructiveHint is true (default).",
    )

    @field_validator("tool_allow", "tool_deny")
    @classmethod
    def _check_tool_globs(cls, value: list[str]) -> list[str]:
        problems = [f"{pattern!r} {problem}" for pattern in value if (problem := glob_problem(pattern))]
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("tool_scope_write", "tool_scope_destructive")
    @classmethod
    def _check_tool_scope(cls, value: str | None) -> str | None:
        if value is not None and not SCOPE_TOKEN.fullmatch(value):
            raise ValueError(
                f"{value!r} is not one OAuth scope token (RFC 6749: visible ASCII but no quote or backslash)"
            )
        return value
