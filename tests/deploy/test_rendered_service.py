"""A service rendered by `new-service` fits the shipped stack: added to deploy/compose.yaml as a
second compose file, the whole still follows the Compose Specification, and the new gateway is
configured and hardened exactly like the stack's own example gateway, apart from what names it
(its host, build folder and settings file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

import jsonschema
import pytest
import yaml

from gateway.tools.new_service import make_service, write_service
from tests.support.deploy_files import (
    ENV_EXAMPLE,
    SCHEMA_FILE,
    environment_of,
    interpolate_tree,
    load_compose,
    read_dotenv,
)

EXAMPLE: Final = "mcp-time"
DOMAIN: Final = "notes.example.org"
# What differs by design between two gateway services of the stack: what names and configures
# each (compared below, variable by variable), and the healthcheck, which a rendered service takes
# from its base image while the example repeats it in compose.
PER_SERVICE_KEYS: Final = {"build", "env_file", "environment", "healthcheck"}
NAMING_VARIABLES: Final = {"VIRTUAL_HOST", "ACME_HOST", "LETSENCRYPT_HOST", "MCP_GATEWAY_PUBLIC_URL"}
# The example configures its static tokens inline; a rendered service reads them from its .env.
AUTH_VARIABLES: Final = {"MCP_GATEWAY_AUTH", "MCP_GATEWAY_STATIC_TOKENS"}


@pytest.fixture(scope="module")
def merged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """deploy/compose.yaml with the rendered service added, as `docker compose -f … -f …` merges
    two files that define different services."""
    out: Path = tmp_path_factory.mktemp("deploy")
    folder = write_service(make_service("notes", "mcp-server-time", domain=DOMAIN), out)
    rendered = yaml.safe_load((folder / "compose.service.yaml").read_text())
    stack = load_compose()
    assert not set(rendered["services"]) & set(stack["services"])
    interpolated = interpolate_tree(rendered, read_dotenv(ENV_EXAMPLE))
    return {**stack, "services": {**stack["services"], **interpolated["services"]}}


def test_the_stack_with_the_rendered_service_follows_the_specification(merged: dict[str, Any]) -> None:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA_FILE.read_text()))
    problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(merged)]
    assert problems == []


def test_the_rendered_service_joins_only_networks_the_stack_defines(merged: dict[str, Any]) -> None:
    assert set(merged["services"]["notes"]["networks"]) <= set(merged["networks"])


def test_the_rendered_gateway_is_set_up_like_the_example(merged: dict[str, Any]) -> None:
    example, rendered = merged["services"][EXAMPLE], merged["services"]["notes"]
    shared = {key: value for key, value in example.items() if key not in PER_SERVICE_KEYS}
    assert {key: rendered.get(key) for key in shared} == shared

    example_env, rendered_env = environment_of(example), environment_of(rendered)
    assert {name: rendered_env.get(name) for name in NAMING_VARIABLES} == {
        "VIRTUAL_HOST": DOMAIN,
        "ACME_HOST": DOMAIN,
        "LETSENCRYPT_HOST": DOMAIN,
        "MCP_GATEWAY_PUBLIC_URL": f"https://{DOMAIN}",
    }
    common = set(example_env) - NAMING_VARIABLES - AUTH_VARIABLES
    assert {name: rendered_env.get(name) for name in common} == {name: example_env[name] for name in common}
