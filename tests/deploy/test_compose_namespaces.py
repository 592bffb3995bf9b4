"""deploy/compose.namespaces.yaml: the override that adds namespaces to uid isolation.

It is validated against the Compose Specification on its own and merged onto compose.yaml as
`docker compose -f compose.yaml -f compose.namespaces.yaml` merges (mappings merged key by key,
sequences appended). The merged gateway keeps every grant of compose.yaml, no more capabilities,
and gains exactly the three security options bubblewrap needs in a container; the mode it pins
is one the gateway accepts, and the children's user IDs fit a user-namespaced container.
"""

from __future__ import annotations

import json
from typing import Any, Final

import jsonschema
import pytest
import yaml

from gateway.config import Settings
from gateway.config.child import LOWEST_CHILD_UID
from tests.support.deploy_files import (
    DEPLOY,
    ENV_EXAMPLE,
    SCHEMA_FILE,
    environment_of,
    interpolate_tree,
    load_compose,
    read_dotenv,
    variables_in,
)
from tests.support.servers import echo_command

OVERRIDE_FILE: Final = DEPLOY / "compose.namespaces.yaml"
GATEWAY: Final = "mcp-time"
# What bubblewrap needs of a container, beyond what compose.yaml grants: a seccomp profile that
# lets it create namespaces and mount, no AppArmor confinement (Docker's profile forbids mount),
# and a /proc without masked paths (else the kernel refuses it a fresh one).
NAMESPACE_OPTIONS: Final = ("seccomp=./seccomp-namespaces.json", "apparmor=unconfined", "systempaths=unconfined")
# The user IDs a user-namespaced container has (0 to 65535): Docker's userns-remap and rootless
# Docker map that many by default, and Kubernetes' hostUsers: false exactly that many.
REMAPPED_IDS: Final = 65536
# Compose replaces these sequences rather than appending to them.
REPLACED: Final = {"command", "entrypoint"}


def merge(base: Any, override: Any, key: str = "") -> Any:
    """Compose's merge of two files: mappings by key, sequences appended, scalars replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for name, value in override.items():
            merged[name] = merge(base[name], value, name) if name in base else value
        return merged
    if isinstance(base, list) and isinstance(override, list) and key not in REPLACED:
        return [*base, *override]
    return override


@pytest.fixture(scope="module")
def override() -> dict[str, Any]:
    document = interpolate_tree(yaml.safe_load(OVERRIDE_FILE.read_text()), read_dotenv(ENV_EXAMPLE))
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def merged(override: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = merge(load_compose(), override)
    return value


@pytest.mark.parametrize("which", ["override", "merged"])
def test_follows_the_compose_specification(which: str, override: dict[str, Any], merged: dict[str, Any]) -> None:
    document = override if which == "override" else merged
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA_FILE.read_text()))
    problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]
    assert problems == []


def test_the_override_touches_only_the_gateway_s_isolation(override: dict[str, Any]) -> None:
    assert list(override) == ["services"]
    assert list(override["services"]) == [GATEWAY]
    service = override["services"][GATEWAY]
    assert set(service) == {"environment", "security_opt"}
    assert list(environment_of(service)) == ["MCP_GATEWAY_CHILD_ISOLATION", "MCP_GATEWAY_CHILD_UID_RANGE"]
    assert variables_in(OVERRIDE_FILE.read_text()) == set()


def test_the_merged_gateway_gains_exactly_what_bubblewrap_needs(
    override: dict[str, Any], merged: dict[str, Any]
) -> None:
    base = load_compose()["services"][GATEWAY]
    service = merged["services"][GATEWAY]
    assert service["security_opt"] == [*base["security_opt"], *NAMESPACE_OPTIONS]
    assert "no-new-privileges:true" in service["security_opt"]
    for key in ("cap_drop", "cap_add", "read_only", "tmpfs", "init", "networks", "expose"):
        assert service[key] == base[key], key
    assert "user" not in service
    assert environment_of(service)["MCP_GATEWAY_CHILD_ISOLATION"] == "uid+namespaces"
    unchanged = set(environment_of(base)) - set(environment_of(override["services"][GATEWAY]))
    assert unchanged == set(environment_of(base)) - {"MCP_GATEWAY_CHILD_ISOLATION"}
    assert {name: environment_of(service)[name] for name in unchanged} == {
        name: environment_of(base)[name] for name in unchanged
    }


def test_the_seccomp_profile_named_is_the_one_in_deploy(merged: dict[str, Any]) -> None:
    """Compose reads the profile relative to the first file's folder, deploy/."""
    (option,) = [opt for opt in merged["services"][GATEWAY]["security_opt"] if opt.startswith("seccomp=")]
    path = DEPLOY / option.removeprefix("seccomp=")
    assert path.is_file()
    json.loads(path.read_text())


def test_the_settings_are_valid_and_the_children_fit_a_remapped_container(
    override: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pinned mode, and children's user IDs inside the 65536 a user-namespaced container maps
    (Docker's userns-remap, rootless Docker), above the system's."""
    for name, value in environment_of(override["services"][GATEWAY]).items():
        monkeypatch.setenv(name, value)
    settings = Settings(command=echo_command())
    assert settings.child_isolation == "uid+namespaces"
    first, last = settings.child_uids()
    assert LOWEST_CHILD_UID <= first <= last < REMAPPED_IDS
