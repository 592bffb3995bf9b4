"""deploy/compose.yaml: valid Compose, and every rule the deployment depends on.

The file is validated against the Compose Specification's own JSON schema (vendored in data/),
after interpolation with the values of .env.example, as Compose itself validates it. The rest
are the product's rules, each a property someone could break by editing the file: the gateway
is unreachable except through nginx-proxy, believes forwarded headers from exactly the proxy
network, is granted exactly what its isolation mode needs, gets time to shut down cleanly, and
agrees with the nginx snippets in vhost.d on body size and timeouts.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from typing import Any, Final

import jsonschema
import pytest

from gateway.auth.static import digest_of
from gateway.config import Settings
from gateway.config.child import DEFAULT_CHILD_UIDS
from gateway.sessions import sandbox
from gateway.sessions.child import SIGKILL_CONFIRM, SIGTERM_GRACE, STDIN_CLOSE_GRACE
from gateway.sessions.watchdog import LOCK_DIR
from tests.support.deploy_files import (
    BASE_DOCKERFILE,
    COMPOSE_FILE,
    ENV_EXAMPLE,
    EXAMPLE_DOCKERFILE,
    ROOT,
    SCHEMA_FILE,
    VHOST_DIR,
    MissingVariable,
    bare_variables_in,
    duration_seconds,
    env_values,
    environment_of,
    healthcheck,
    image_tag,
    load_compose,
    nginx_directives,
    nginx_size,
    nginx_time,
    parse_dockerfile,
    read_dotenv,
    variables_in,
)
from tests.support.servers import echo_command
from tests.support.waits import WAIT

GATEWAY: Final = "mcp-time"
PROXY: Final = "nginx-proxy"
REDIS: Final = "redis"
# Variables a .env file may hold for Compose itself rather than for interpolation.
COMPOSE_OWN: Final = ("COMPOSE_",)
# Variables whose absence must stop `docker compose` (`${NAME:?message}`), not start something
# half-configured: the host (certificates, routing, the public URL), the ACME contact, the tokens.
REQUIRED: Final = ("MCP_HOST", "ACME_EMAIL", "MCP_STATIC_TOKENS")
# The gateway's whole stop sequence after SIGTERM: in-flight requests get shutdown_timeout, then
# each child (in parallel) is given stdin EOF, then SIGTERM, then SIGKILL.
CHILD_STOP_SECONDS: Final = STDIN_CLOSE_GRACE + SIGTERM_GRACE + SIGKILL_CONFIRM
# What child_isolation=uid needs of root's capabilities: switching to a child's user and group,
# and signalling every process of that user when its session ends.
UID_ISOLATION_CAPABILITIES: Final = ("SETUID", "SETGID", "KILL")
SETPRIV: Final = shutil.which("setpriv")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    value: dict[str, dict[str, Any]] = compose["services"]
    return value


def gateway_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run mcp-gateway: those configured with MCP_GATEWAY_* settings."""
    found = {
        name: service
        for name, service in services(compose).items()
        if any(key.startswith("MCP_GATEWAY_") for key in environment_of(service))
    }
    assert GATEWAY in found
    return found


def proxy_subnet(compose: dict[str, Any]) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The address range of the network nginx-proxy is on (it must be on exactly one)."""
    networks = services(compose)[PROXY]["networks"]
    assert len(networks) == 1, "nginx-proxy is on one network, whose range the gateways trust"
    (network,) = networks
    configs = compose["networks"][network]["ipam"]["config"]
    assert len(configs) == 1
    return ipaddress.ip_network(configs[0]["subnet"])


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    validator = jsonschema.Draft7Validator(schema)
    problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert problems == []


def test_the_schema_check_catches_a_misspelt_key(compose: dict[str, Any]) -> None:
    """The vendored schema really is strict: a typo in a service key is refused."""
    broken = json.loads(json.dumps(compose))
    broken["services"][GATEWAY]["read-only"] = broken["services"][GATEWAY].pop("read_only")
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA_FILE.read_text()))
    assert [e.message for e in validator.iter_errors(broken)] == [
        "'read-only' does not match any of the regexes: '^x-'"
    ]


def test_every_interpolated_variable_is_in_env_example() -> None:
    text = COMPOSE_FILE.read_text()
    used = variables_in(text)
    documented = set(read_dotenv(ENV_EXAMPLE))
    assert bare_variables_in(text) == set(), "write ${NAME}: a bare $NAME is easy to misread"
    assert used - documented == set(), "used in compose.yaml but missing from .env.example"
    unused = {name for name in documented - used if not name.startswith(COMPOSE_OWN)}
    assert unused == set(), "in .env.example but used nowhere"


@pytest.mark.parametrize("missing", REQUIRED)
def test_a_missing_required_variable_stops_compose(missing: str) -> None:
    env = {name: value for name, value in read_dotenv(ENV_EXAMPLE).items() if name != missing}
    with pytest.raises(MissingVariable, match=f"^{missing}: set {missing} in deploy/.env"):
        load_compose(env)
    with pytest.raises(MissingVariable, match=f"^{missing}: "):
        load_compose({**env, missing: ""})  # an empty value counts as missing (`:?`)


def test_the_gateway_publishes_no_port_and_listens_where_nginx_proxy_looks(compose: dict[str, Any]) -> None:
    port = env_values(parse_dockerfile(BASE_DOCKERFILE).final)["MCP_GATEWAY_PORT"]
    for name, service in gateway_services(compose).items():
        env = environment_of(service)
        assert "ports" not in service, f"{name} must be reachable through nginx-proxy only"
        assert service["expose"] == [port]
        assert env.get("MCP_GATEWAY_PORT", port) == env["VIRTUAL_PORT"] == port
        assert env["ACME_HOST"] == env["LETSENCRYPT_HOST"] == env["VIRTUAL_HOST"]
        assert env["MCP_GATEWAY_PUBLIC_URL"] == f"https://{env['VIRTUAL_HOST']}"
        assert PROXY in services(compose)
        assert set(service["networks"]) >= set(services(compose)[PROXY]["networks"])


def test_the_gateway_is_hardened_for_uid_isolation(compose: dict[str, Any]) -> None:
    """Root (the image's user) with exactly the capabilities uid isolation checks for, the mode
    pinned so that a container without them stops instead of degrading, nothing else granted."""
    for name, service in gateway_services(compose).items():
        assert service["init"] is True, name
        assert service["read_only"] is True, name
        assert "user" not in service, f"{name}: the image's root, which switching to a child's user takes"
        assert service["security_opt"] == ["no-new-privileges:true"], name
        assert service["cap_drop"] == ["ALL"], name
        assert sorted(service["cap_add"]) == sorted(UID_ISOLATION_CAPABILITIES), name
        assert environment_of(service)["MCP_GATEWAY_CHILD_ISOLATION"] == "uid", name
        mounts = {entry.partition(":")[0]: entry.partition(":")[2] for entry in service["tmpfs"]}
        assert mounts == {"/tmp": "", str(LOCK_DIR.parent): "mode=0755"}, name  # noqa: S108 - a path in the container


def test_the_capabilities_granted_are_those_the_gateway_checks_for() -> None:
    """The names in cap_add are the bits `why_no_user_switching` looks for, no more."""
    checked = {name.removeprefix("CAP_") for name in vars(sandbox) if re.fullmatch(r"CAP_[A-Z_]+", name)}
    assert checked == set(UID_ISOLATION_CAPABILITIES)


def decide_as_the_container_would(capabilities: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """`decide` for child_isolation=uid in a root process holding `capabilities` alone, with
    no_new_privs: what the compose file leaves the gateway (setpriv sets it up as Docker does)."""
    bounding = ",".join(["-all", *(f"+{name.lower()}" for name in capabilities)])
    script = (
        "import asyncio, sys; from gateway.sessions.sandbox import IsolationRequest, IsolationUnavailable, decide\n"
        "try: print(asyncio.run(decide(IsolationRequest('uid', '/bin/true', tuple(map(int, sys.argv[1:]))))).mode)\n"
        "except IsolationUnavailable as exc: print(exc)"
    )
    assert SETPRIV is not None
    setup = [SETPRIV, "--no-new-privs", "--bounding-set", bounding, "--inh-caps", "-all", "--ambient-caps", "-all"]
    return subprocess.run(
        [*setup, "--", sys.executable, "-c", script, *DEFAULT_CHILD_UIDS.split("-")],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
        cwd=ROOT,
    )


@pytest.mark.skipif(os.geteuid() != 0 or SETPRIV is None, reason="needs root and setpriv (util-linux)")
@pytest.mark.parametrize(
    "missing",
    [None, *UID_ISOLATION_CAPABILITIES],
    ids=["all-granted", *(f"without-{name}" for name in UID_ISOLATION_CAPABILITIES)],
)
def test_exactly_the_granted_capabilities_give_uid_isolation(missing: str | None) -> None:
    result = decide_as_the_container_would([name for name in UID_ISOLATION_CAPABILITIES if name != missing])
    assert result.returncode == 0, result.stderr
    if missing is None:
        assert result.stdout.strip() == "uid"
    else:
        assert f"the gateway lacks CAP_{missing}" in result.stdout


def test_stop_grace_period_covers_the_gateway_shutdown_budget(compose: dict[str, Any]) -> None:
    for name, service in gateway_services(compose).items():
        shutdown = Settings.model_fields["shutdown_timeout"].default
        shutdown = float(environment_of(service).get("MCP_GATEWAY_SHUTDOWN_TIMEOUT", shutdown))
        budget = shutdown + CHILD_STOP_SECONDS
        assert duration_seconds(service["stop_grace_period"]) >= budget, f"{name}: SIGKILL before {budget} s"


def test_nginx_proxy_overwrites_forwarded_headers_and_the_gateway_trusts_only_it(compose: dict[str, Any]) -> None:
    proxy = services(compose)[PROXY]
    assert environment_of(proxy)["TRUST_DOWNSTREAM_PROXY"] == "false"
    subnet = proxy_subnet(compose)
    for name, service in gateway_services(compose).items():
        trusted = environment_of(service)["MCP_GATEWAY_TRUSTED_PROXIES"].split(",")
        assert [ipaddress.ip_network(network) for network in trusted] == [subnet], name


def test_vhost_d_is_mounted_as_a_read_only_directory(compose: dict[str, Any]) -> None:
    volumes = services(compose)[PROXY]["volumes"]
    assert "./vhost.d:/etc/nginx/vhost.d:ro" in volumes
    assert "/var/run/docker.sock:/tmp/docker.sock:ro" in volumes


def test_every_image_is_pinned_to_a_tag(compose: dict[str, Any]) -> None:
    images = [service["image"] for service in services(compose).values() if "image" in service]
    images += [service["build"]["args"]["GATEWAY_IMAGE"] for service in gateway_services(compose).values()]
    for image in images:
        tag = image_tag(image)
        assert tag, f"{image}: no tag"
        assert tag != "latest", image
    # Every service that does not build runs a pinned image.
    assert all("image" in s or "build" in s for s in services(compose).values())


def test_redis_is_optional_private_and_what_the_example_storage_url_names(compose: dict[str, Any]) -> None:
    redis = services(compose)[REDIS]
    assert redis["profiles"] == ["redis"]
    assert "ports" not in redis
    assert not set(redis["networks"]) & set(services(compose)[PROXY]["networks"])
    assert all(service.get("profiles") is None for name, service in services(compose).items() if name != REDIS)
    for service in gateway_services(compose).values():
        assert environment_of(service)["MCP_GATEWAY_RATELIMIT_STORAGE"] == "memory://"
        assert set(service["networks"]) >= set(redis["networks"])
    # The switch the comments and .env.example describe names this service and validates.
    shared = "async+redis://redis:6379/0"
    assert shared in COMPOSE_FILE.read_text()
    assert shared in ENV_EXAMPLE.read_text()
    assert Settings(command=echo_command(), ratelimit_storage=shared).ratelimit_storage == shared


def test_the_gateway_environment_is_a_valid_configuration(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the container would start with: the image's ENV, then the service's environment
    (with a real token digest in place of the placeholder); the server command is the echo
    server, since the example's own is installed only in its image."""
    example = parse_dockerfile(EXAMPLE_DOCKERFILE).final
    assert json.loads(env_values(example)["MCP_GATEWAY_COMMAND"])[0] == "/opt/mcp-server/bin/mcp-server-time"
    env = {**read_dotenv(ENV_EXAMPLE), "MCP_STATIC_TOKENS": json.dumps([{"principal": "a", "sha256": digest_of("t")}])}
    service = load_compose(env)["services"][GATEWAY]
    settings_env = {
        **{k: v for k, v in env_values(parse_dockerfile(BASE_DOCKERFILE).final).items() if k.startswith("MCP_")},
        **{k: v for k, v in environment_of(service).items() if k.startswith("MCP_GATEWAY_")},
        "MCP_GATEWAY_COMMAND": json.dumps(echo_command()),
    }
    unknown = [k for k in settings_env if k.removeprefix("MCP_GATEWAY_").lower() not in Settings.model_fields]
    assert unknown == [], "not settings (the gateway would silently ignore them)"
    for name, value in settings_env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.host == "0.0.0.0"  # noqa: S104 - the container's bind, read back
    assert settings.auth == "static"
    assert str(settings.public_url) == "https://mcp.example.com/"
    assert settings.proxy_networks() == [ipaddress.ip_network("172.30.0.0/24")]
    assert settings.child_isolation == "uid"


def test_the_placeholder_token_is_refused_until_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """Copying .env.example unchanged must not start a gateway that accepts some token."""
    placeholder = read_dotenv(ENV_EXAMPLE)["MCP_STATIC_TOKENS"]
    monkeypatch.setenv("MCP_GATEWAY_STATIC_TOKENS", placeholder)
    with pytest.raises(ValueError, match="static_tokens"):
        Settings(command=echo_command(), auth="static")


def test_the_healthcheck_is_the_image_s_own_probe(compose: dict[str, Any]) -> None:
    options, argv = healthcheck(parse_dockerfile(BASE_DOCKERFILE).final)
    for name, service in gateway_services(compose).items():
        check = service["healthcheck"]
        assert check["test"] == ["CMD", *argv], name
        for option in ("interval", "timeout", "start_period", "retries"):
            assert str(check[option]) == options[option.replace("_", "-")], (name, option)


# --- vhost.d ------------------------------------------------------------------------------------


def test_vhost_files_are_named_after_the_example_host() -> None:
    host = read_dotenv(ENV_EXAMPLE)["MCP_HOST"]
    assert sorted(path.name for path in VHOST_DIR.iterdir()) == [host, f"{host}_location"]


def test_nginx_accepts_exactly_the_bodies_the_gateway_accepts(compose: dict[str, Any]) -> None:
    host = environment_of(services(compose)[GATEWAY])["VIRTUAL_HOST"]
    server = nginx_directives(VHOST_DIR / host)
    limit = nginx_size(server["client_max_body_size"][0])
    for name, service in gateway_services(compose).items():
        assert int(environment_of(service)["MCP_GATEWAY_MAX_MESSAGE_BYTES"]) == limit, name


def test_nginx_streams_and_outwaits_the_gateway_keepalive(compose: dict[str, Any]) -> None:
    host = environment_of(services(compose)[GATEWAY])["VIRTUAL_HOST"]
    location = nginx_directives(VHOST_DIR / f"{host}_location")
    assert location["proxy_buffering"] == ["off"]
    assert location["proxy_cache"] == ["off"]
    assert location["proxy_request_buffering"] == ["off"]
    # A proxy_set_header here would replace every header nginx-proxy sets (X-Real-IP included).
    assert not any(name.startswith("proxy_set_header") for name in location)
    read_timeout = nginx_time(location["proxy_read_timeout"][0])
    send_timeout = nginx_time(location["proxy_send_timeout"][0])
    for name, service in gateway_services(compose).items():
        keepalive = Settings.model_fields["sse_keepalive"].default
        keepalive = float(environment_of(service).get("MCP_GATEWAY_SSE_KEEPALIVE", keepalive))
        # Several keep-alives fit in one timeout, so one delayed comment never cuts a stream.
        assert read_timeout > 2 * keepalive, name
        assert send_timeout > 2 * keepalive, name
