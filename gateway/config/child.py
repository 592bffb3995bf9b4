"""The child: the stdio server every session runs, the environment it gets, how much bad output it may
write, the resource limits it starts under, and how children are isolated from each other. Nothing
here reads a request: a child's command and environment come from configuration only. Field groups
of `Settings`; the rules between settings (the command found on the child's own PATH) are in
`checks.py`.
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import shutil
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import NoDecode

from gateway.config.limits import MiB
from gateway.config.parsing import TextList

# What a child inherits from the gateway's environment by default: enough to find programs and
# a home directory, nothing that could carry the gateway's own secrets.
DEFAULT_CHILD_ENV_ALLOW: Final = ("HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "LC_ALL", "TZ")
# User IDs below this are the system's and its people's: never a child's.
LOWEST_CHILD_UID: Final = 1000
# The default range of children's user IDs: far above the ranges distributions hand out to people
# (from 1000) and to rootless containers (/etc/subuid, from 100000), so no child shares its user
# ID with anything else on the host.
DEFAULT_CHILD_UIDS: Final = "1000000000-1000065535"
HIGHEST_UID: Final = 2**32 - 2  # (uid_t)-1 means "no change"


class ChildSettings(BaseModel):
    """The command every session runs, and the environment and directory it runs in."""

    child_env_allow: TextList[str] = Field(
        list(DEFAULT_CHILD_ENV_ALLOW), description="Names of gateway environment variables a child inherits."
    )
    child_env: dict[str, SecretStr] = Field(
        default_factory=dict, description="Extra environment for every child, as a JSON object (values are secret)."
    )
    child_cwd: Path | None = Field(None, description="Working directory of every child (default: the gateway's).")
    # Not a comma-separated list: a command reads as a JSON array or as shell words.
    command: Annotated[list[str], NoDecode] = Field(
        description="The stdio MCP server to run per session: a JSON array or a shell-style string (no shell runs).",
    )

    @field_validator("command", mode="before")
    @classmethod
    def _parse_command(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text.startswith("[") else shlex.split(text)
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
        """An existing directory, made absolute: a child may start elsewhere (its own view of the files)."""
        if value is not None and not value.is_dir():
            raise ValueError(f"{str(value)!r} is not a directory")
        return Path(os.path.abspath(value)) if value is not None else None

    @field_validator("command")
    @classmethod
    def _check_command(cls, value: list[str]) -> list[str]:
        if not value or not value[0]:
            raise ValueError("no server command: pass it after '--' or set MCP_GATEWAY_COMMAND")
        return value

    def child_environment(self) -> dict[str, str]:
        """The exact environment of every child: the allow-listed inherited values plus extras."""
        env = {name: os.environ[name] for name in self.child_env_allow if name in os.environ}
        env.update({name: secret.get_secret_value() for name, secret in self.child_env.items()})
        return env

    def child_program(self) -> str | None:
        """The file the command runs, found on the child's own PATH, or a path from the gateway's
        working directory (None when it is not found)."""
        found = shutil.which(self.command[0], path=self.child_environment().get("PATH"))
        return os.path.abspath(found) if found is not None else None

    def child_files(self) -> tuple[str, ...]:
        """The files the command names by absolute path (a script, a configuration), which every
        child must be able to read."""
        return tuple(argument for argument in self.command[1:] if os.path.isabs(argument) and os.path.isfile(argument))

    def child_argv(self) -> tuple[str, ...]:
        """The command as children run it: a program named by a path, made absolute (a child may
        start in another directory: its working directory, its home, its own view of the files)."""
        first, *rest = self.command
        program = self.child_program() if os.sep in first else None
        return (program or first, *rest)


class ChildOutputSettings(BaseModel):
    """How much a child may break the stdout protocol before its session closes."""

    stdout_violation_limit: int = Field(
        20, ge=1, description="Non-JSON or oversized stdout lines tolerated before a session is closed."
    )


class ChildLimitSettings(BaseModel):
    """The resource limits (`setrlimit`) every child starts under; unset means inherited."""

    child_rlimit_as_mb: int | None = Field(None, ge=16, description="Address-space limit of each child, MiB.")
    child_rlimit_cpu_seconds: int | None = Field(None, ge=1, description="CPU-time limit of each child, seconds.")
    child_rlimit_nofile: int | None = Field(None, ge=8, description="Open-file limit of each child.")
    child_rlimit_nproc: int | None = Field(
        None, ge=1, description="Process limit of each child (counted per user ID, not per session)."
    )

    def child_rlimits(self) -> tuple[tuple[int, int], ...]:
        """The configured (resource, limit) pairs each child gets at spawn."""
        pairs = [
            (resource.RLIMIT_AS, self.child_rlimit_as_mb * MiB if self.child_rlimit_as_mb else None),
            (resource.RLIMIT_CPU, self.child_rlimit_cpu_seconds),
            (resource.RLIMIT_NOFILE, self.child_rlimit_nofile),
            (resource.RLIMIT_NPROC, self.child_rlimit_nproc),
        ]
        return tuple((which, limit) for which, limit in pairs if limit is not None)


class ChildIsolationSettings(BaseModel):
    """How each session's child is kept from every other's processes, environment and files."""

    child_isolation: Literal["auto", "none", "uid", "namespaces", "uid+namespaces"] = Field(
        "auto",
        description="Isolation between children: uid (each runs as a user ID of its own, with a private HOME and "
        "TMPDIR), namespaces (each in its own PID, IPC and mount namespaces: it sees only its own processes, a "
        "private /tmp and a read-only view of the rest), uid+namespaces (both), none (all run as the gateway's "
        "user and see each other), or auto (the strongest the host allows).",
    )
    child_network: Literal["host", "none"] = Field(
        "host",
        description="The network children reach: host (the gateway's), or none (with namespaces, each child has "
        "a network of its own with only loopback in it).",
    )
    child_writable_paths: TextList[Path] = Field(
        default_factory=list,
        description="Directories children may write with namespaces (the rest of the file system is read-only "
        "to them); file permissions still apply.",
    )
    child_readable_paths: TextList[Path] = Field(
        default_factory=list,
        description="Files and directories under /tmp children may read with namespaces, where each has a private "
        "/tmp (a server kept there); file permissions still apply.",
    )
    child_hidden_paths: TextList[Path] = Field(
        default_factory=list,
        description="Files and directories children never see with namespaces, besides the gateway's own secrets "
        "(its data directory, key, token and audit files, settings file) and the system's password hashes.",
    )
    child_uid_range: str = Field(
        DEFAULT_CHILD_UIDS, description="The user IDs children run as with uid isolation, FIRST-LAST (one per child)."
    )
    allow_shared_uid_children: bool = Field(
        False,
        description="Start even though children are not isolated from each other (child_isolation none) while "
        "their environments hold per-user values (token_env, child_identity, child_env_claims, "
        "oauth_token_to_env): each child can then read the others'.",
    )

    @field_validator("child_writable_paths", "child_readable_paths")
    @classmethod
    def _check_view_paths(cls, value: list[Path], info: ValidationInfo) -> list[Path]:
        """Absolute, existing: directories to write, anything to read."""
        writable = info.field_name == "child_writable_paths"
        bad = [
            str(path) for path in value if not path.is_absolute() or not (path.is_dir() if writable else path.exists())
        ]
        if bad:
            kind = "directories" if writable else "files or directories"
            raise ValueError(f"are absolute paths of existing {kind}, got {', '.join(map(repr, bad))}")
        return value

    @field_validator("child_uid_range")
    @classmethod
    def _check_uid_range(cls, value: str) -> str:
        first, sep, last = value.strip().partition("-")
        if not sep or not first.strip().isdigit() or not last.strip().isdigit():
            raise ValueError(f"is FIRST-LAST, two user IDs, got {value!r}")
        low, high = int(first), int(last)
        if not LOWEST_CHILD_UID <= low <= high <= HIGHEST_UID:
            raise ValueError(f"is a range of user IDs from {LOWEST_CHILD_UID} to {HIGHEST_UID}, got {value!r}")
        return f"{low}-{high}"

    def child_uids(self) -> tuple[int, int]:
        """The first and last user ID of the children's range."""
        first, _, last = self.child_uid_range.partition("-")
        return int(first), int(last)


class ChildEraSettings(BaseModel):
    """Which protocol era the child speaks, and how clients of 2026-07-28 share children."""

    child_era: Literal["auto", "legacy", "modern"] = Field(
        "auto",
        description="The child's protocol era: auto (learned once, by a server/discover probe as the first child's "
        "first message), legacy (sessions: initialize), or modern (2026-07-28: server/discover).",
    )
    era_probe_timeout: float = Field(
        10.0, gt=0, description="Seconds the era probe waits for an answer before the child is taken as legacy."
    )
    input_request_timeout: float = Field(
        300.0,
        gt=0,
        description="Seconds a 2026-07-28 call waits for the client's retry after the server asked it for input "
        "(input_required) before it is cancelled.",
    )
    children_per_principal: int = Field(
        1,
        ge=1,
        description="Children one principal's 2026-07-28 requests may spread over (the least busy is used; each "
        "counts against the session caps).",
    )
