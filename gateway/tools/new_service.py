"""`mcp-gateway new-service NAME --command "…"`: a folder that deploys one stdio MCP server.

This module owns turning a server command into an installable image plan (`plan_install`), and
rendering the per-service templates (`templates/service/`, shipped in the package as
`gateway.templates.service`) into `DIR/NAME`: Dockerfile, compose service, `.env.example`, nginx
snippets, README, client configs, and with `--auth plugin` a verifier skeleton.

How a command maps to what the image installs (`--package` always overrides the package):
- python (the default): `PROG ARGS` installs the package `PROG` (MCP servers are usually named
  like their program, e.g. `mcp-server-time`) into `/opt/mcp-server` and runs
  `/opt/mcp-server/bin/PROG ARGS`. `uvx [--from SPEC] PROG[@VERSION] ARGS` and
  `pipx run [--spec SPEC] PROG ARGS` unwrap to the same. `python -m MODULE ARGS` runs the
  server venv's python and needs `--package`.
- node (inferred from `npx`): `npx [-y] PACKAGE[@VERSION] ARGS` installs PACKAGE and runs the
  bin npx would choose (its only bin, else the one named after the package without its scope),
  resolved when the image is built; `npx -p PACKAGE BIN ARGS` runs BIN. A plain `PROG ARGS`
  with `--runtime node` installs the package `PROG` and runs its bin `PROG`.
- Paths (`./server.py`, `node dist/index.js`) and anything else are refused with a message asking
  for `--package` and the installed program's name: a local file is not something to install.

Invariants: nothing is written unless every input is valid; the folder appears whole or not at
all (rendered in a sibling temporary folder, then renamed); an existing folder is never touched;
templates name only values that exist (a missing one is an error, never an empty string).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.resources
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final, Literal, get_args

from gateway.tools import client_config

Runtime = Literal["python", "node"]
AuthKind = Literal["static", "whoami", "jwt", "plugin"]
RUNTIMES: Final[tuple[Runtime, ...]] = get_args(Runtime)
AUTH_KINDS: Final[tuple[AuthKind, ...]] = get_args(AuthKind)

EXIT_OK: Final = 0
EXIT_USAGE: Final = 2

TEMPLATE_PACKAGE: Final = "gateway.templates.service"
SERVER_PREFIX: Final = "/opt/mcp-server"
# The node image links the program to run here at build time (see Dockerfile.node.tmpl).
NODE_SERVER: Final = f"{SERVER_PREFIX}/server"
MCP_PATH: Final = "/mcp"

# DNS-label friendly: it names a compose service, a container, a host label and an image.
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
MAX_HOSTNAME: Final = 253
_PROGRAM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
# PEP 508 name, optional extras, optional version specifiers; no URL, marker or space.
_PYTHON_SPEC = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
    r"(?:\[[A-Za-z0-9._-]+(?:,[A-Za-z0-9._-]+)*\])?"
    r"(?:(?:===|==|~=|!=|<=|>=|<|>)[A-Za-z0-9.*+!_-]+(?:,(?:===|==|~=|!=|<=|>=|<|>)[A-Za-z0-9.*+!_-]+)*)?$"
)
# npm: optional @scope/, a name, optional @version-or-range (no spaces).
_NODE_SPEC = re.compile(
    r"^(?P<name>(?:@[a-z0-9][a-z0-9._~-]*/)?[a-z0-9][a-z0-9._~-]*)(?:@(?P<version>[A-Za-z0-9._~^<>=*|+-]+))?$"
)
_PYTHON_PINNED = re.compile(r"===?[A-Za-z0-9.+!_-]+$")
_NODE_EXACT = re.compile(r"^\d+\.\d+\.\d+(?:[-+][A-Za-z0-9.+-]+)?$")
_PYTHON_PROGRAMS = re.compile(r"^python(?:3(?:\.\d+)?)?$")
_NODE_RUNNERS = frozenset({"npx", "node", "nodejs", "npm"})
_NPX_YES = frozenset({"-y", "--yes", "-q", "--quiet"})


class ScaffoldError(ValueError):
    """The inputs cannot make a service folder; `problems` lists every reason."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


class TemplateError(RuntimeError):
    """A template names a value nobody provides, or holds a malformed placeholder."""


@dataclasses.dataclass(frozen=True)
class InstallPlan:
    """What the image installs and the argv the gateway runs (MCP_GATEWAY_COMMAND)."""

    runtime: Runtime
    package: str
    argv: tuple[str, ...]
    node_bin: str = ""  # node: the bin to link; "" lets the build choose as npx would
    node_unscoped: str = ""  # node: the package's name without scope or version

    @property
    def pinned(self) -> bool:
        """Whether the package names one exact version (a range still floats)."""
        if self.runtime == "python":
            return bool(_PYTHON_PINNED.search(self.package))
        match = _NODE_SPEC.match(self.package)
        return bool(match and match["version"] and _NODE_EXACT.match(match["version"]))

    @property
    def package_name(self) -> str:
        if self.runtime == "python":
            return re.split(r"[\[=~!<>]", self.package, maxsplit=1)[0]
        match = _NODE_SPEC.match(self.package)
        return match["name"] if match else self.package


@dataclasses.dataclass(frozen=True)
class Service:
    name: str
    domain: str
    auth: AuthKind
    command: tuple[str, ...]  # as the user gave it
    plan: InstallPlan

    @property
    def url(self) -> str:
        return f"https://{self.domain}{MCP_PATH}"


# --- validation and the install plan --------------------------------------------------------------


def name_problems(name: str) -> list[str]:
    if _NAME.match(name):
        return []
    return [
        f"NAME {name!r}: use lowercase letters, digits and '-', starting with a letter, at most 63 "
        "characters (it names the compose service, the container and a DNS label)"
    ]


def domain_problems(domain: str) -> list[str]:
    labels = domain.split(".")
    try:
        ipaddress.ip_address(domain)
    except ValueError:
        pass
    else:
        return [f"--domain {domain!r} is an IP address: give the host name clients use (TLS certificates name it)"]
    if (
        len(domain) > MAX_HOSTNAME
        or len(labels) < 2
        or not all(_LABEL.match(label) for label in labels)
        or labels[-1].isdigit()
    ):
        return [
            f"--domain {domain!r} is not a host name like mcp.example.com (lowercase labels of letters, digits "
            "and '-', at least two, no trailing dot)"
        ]
    return []


def _python_spec_problems(spec: str) -> list[str]:
    if _PYTHON_SPEC.match(spec):
        return []
    return [f"--package {spec!r} is not a Python requirement like mcp-server-time or mcp-server-time==2026.10.19"]


def _node_spec_problems(spec: str) -> list[str]:
    if _NODE_SPEC.match(spec):
        return []
    return [f"--package {spec!r} is not an npm package like @scope/server or @scope/server@1.2.3"]


def _python_package_of(program: str) -> str:
    """`uvx`'s `tool@1.2` form is the requirement `tool==1.2`; `tool@latest` is just `tool`."""
    name, at, version = program.partition("@")
    return f"{name}=={version}" if at and version != "latest" else name


def _without_latest(spec: str) -> str:
    """npm's `pkg@latest` means what an unversioned `pkg` means: the newest release at build time."""
    return spec.removesuffix("@latest")


def _unwrap_python_runner(argv: list[str]) -> tuple[str | None, list[str]]:
    """`uvx [--from SPEC] PROG ARGS` / `pipx run [--spec SPEC] PROG ARGS` → (SPEC or None, [PROG, *ARGS])."""
    if argv[0] == "pipx":
        if argv[1:2] != ["run"]:
            raise ScaffoldError([f"cannot map {shlex.join(argv)!r}: only `pipx run` is understood; pass --package"])
        rest, option = argv[2:], "--spec"
    else:
        rest, option = argv[1:], "--from"
    spec = None
    if rest[:1] == [option] and len(rest) >= 2:
        spec, rest = rest[1], rest[2:]
    elif rest[:1] and rest[0].startswith(f"{option}="):
        spec, rest = rest[0].partition("=")[2], rest[1:]
    if not rest or rest[0].startswith("-"):
        raise ScaffoldError(
            [
                f"cannot map {shlex.join(argv)!r}: only `{argv[0]}{' run' if argv[0] == 'pipx' else ''} "
                f"[{option} SPEC] PROGRAM ARGS` is understood; give the command as `PROGRAM ARGS` with --package SPEC"
            ]
        )
    return spec, rest


def _plan_python(argv: list[str], package: str | None) -> InstallPlan:
    program = argv[0]
    if program in _NODE_RUNNERS:
        raise ScaffoldError([f"{program!r} runs Node.js programs: use --runtime node"])
    if program in ("uvx", "pipx"):
        spec, argv = _unwrap_python_runner(argv)
        if package is None:
            package = spec if spec is not None else _python_package_of(argv[0])
        argv = [argv[0].partition("@")[0], *argv[1:]]
        program = argv[0]
    if _PYTHON_PROGRAMS.match(program):
        if package is None:
            raise ScaffoldError(
                [f"cannot tell which package provides {shlex.join(argv)!r}: pass --package (e.g. --package my-server)"]
            )
        return InstallPlan("python", package, (f"{SERVER_PREFIX}/bin/python", *argv[1:]))
    if not _PROGRAM.match(program):
        raise ScaffoldError(
            [
                f"cannot install {program!r}: a path or a local file is not a package. Give the command as the "
                "program the package installs (e.g. `my-server --flag`) and pass --package"
            ]
        )
    return InstallPlan("python", package or program, (f"{SERVER_PREFIX}/bin/{program}", *argv[1:]))


def _plan_node(argv: list[str], package: str | None) -> InstallPlan:
    program = argv[0]
    if program in ("uvx", "pipx") or _PYTHON_PROGRAMS.match(program):
        raise ScaffoldError([f"{program!r} runs Python programs: use --runtime python"])
    bin_name = ""
    if program == "npx":
        rest = argv[1:]
        npx_package = None
        while rest and rest[0].startswith("-"):
            flag = rest.pop(0)
            if flag in _NPX_YES:
                continue
            if flag in ("-p", "--package") and rest:
                npx_package = rest.pop(0)
            elif flag.startswith("--package="):
                npx_package = flag.partition("=")[2]
            else:
                raise ScaffoldError(
                    [f"cannot map {shlex.join(argv)!r}: npx option {flag!r} is not understood; pass --package"]
                )
        if not rest:
            raise ScaffoldError([f"cannot map {shlex.join(argv)!r}: npx names no package"])
        if npx_package is not None:
            bin_name, args = rest[0], rest[1:]
            package = package or npx_package
        else:
            package, args = package or rest[0], rest[1:]
    elif program in _NODE_RUNNERS or not _PROGRAM.match(program):
        raise ScaffoldError(
            [
                f"cannot install {shlex.join(argv)!r}: a local script is not a package. Give the command as "
                "`npx -y PACKAGE ARGS`, or as the program the package installs with --package"
            ]
        )
    else:
        bin_name, args = program, argv[1:]
        package = package or program
    package = _without_latest(package)
    if bin_name and not _PROGRAM.match(bin_name):
        raise ScaffoldError([f"{bin_name!r} is not a program name"])
    match = _NODE_SPEC.match(package)
    unscoped = match["name"].rpartition("/")[2] if match else ""
    return InstallPlan("node", package, (NODE_SERVER, *args), node_bin=bin_name, node_unscoped=unscoped)


def infer_runtime(argv: Sequence[str]) -> Runtime:
    return "node" if argv and argv[0] in _NODE_RUNNERS else "python"


def plan_install(command: str, runtime: Runtime | None = None, package: str | None = None) -> InstallPlan:
    """How the image installs and runs `command`; `ScaffoldError` says why it cannot."""
    try:
        argv = shlex.split(command)
    except ValueError as error:
        raise ScaffoldError([f"--command {command!r} cannot be parsed: {error}"]) from None
    if not argv or not argv[0]:
        raise ScaffoldError(["--command is empty: give the server's command line, e.g. --command mcp-server-time"])
    runtime = runtime or infer_runtime(argv)
    plan = _plan_python(argv, package) if runtime == "python" else _plan_node(argv, package)
    problems = _python_spec_problems(plan.package) if runtime == "python" else _node_spec_problems(plan.package)
    if problems:
        raise ScaffoldError(problems)
    return plan


def make_service(
    name: str,
    command: str,
    *,
    runtime: Runtime | None = None,
    package: str | None = None,
    domain: str | None = None,
    auth: AuthKind = "static",
) -> Service:
    """Validate every input at once; `ScaffoldError` lists all problems."""
    problems = name_problems(name)
    domain = (domain if domain is not None else f"{name}.example.com").lower()
    problems += domain_problems(domain)
    plan = None
    try:
        plan = plan_install(command, runtime, package)
    except ScaffoldError as error:
        problems += error.problems
    if problems or plan is None:
        raise ScaffoldError(problems)
    return Service(name=name, domain=domain, auth=auth, command=tuple(shlex.split(command)), plan=plan)


# --- templates -------------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{\{\s*([a-z][a-z0-9_]*)\s*\}\}")


def render_template(text: str, values: Mapping[str, str], *, source: str) -> str:
    """`{{name}}` replaced by `values[name]`. A line holding only a placeholder is a block: replaced by
    the value's lines, or dropped when the value is empty. A placeholder without a value, or a stray
    `{{`/`}}`, is a `TemplateError`."""
    missing = sorted({key for key in _PLACEHOLDER.findall(text) if key not in values})
    if missing:
        raise TemplateError(f"{source}: no value for {', '.join(missing)}")
    if "{{" in _PLACEHOLDER.sub("", text) or "}}" in _PLACEHOLDER.sub("", text):
        raise TemplateError(f"{source}: malformed placeholder (use {{{{name}}}} with a lowercase name)")
    lines = []
    for line in text.splitlines(keepends=True):
        whole = _PLACEHOLDER.fullmatch(line.strip())
        if whole is not None:  # a block: inserted as whole lines, or no line at all
            block = values[whole.group(1)]
            if block:
                lines.append(block if block.endswith("\n") else block + line[len(line.rstrip("\r\n")) :])
            continue
        lines.append(_PLACEHOLDER.sub(lambda match: values[match.group(1)], line))
    return "".join(lines)


def read_template(name: str) -> str:
    return importlib.resources.files(TEMPLATE_PACKAGE).joinpath(name).read_text(encoding="utf-8")


def _render(name: str, values: Mapping[str, str]) -> str:
    return render_template(read_template(name), values, source=name)


def command_env_value(argv: Sequence[str]) -> str:
    """argv as JSON that fits between single quotes in a Dockerfile ENV: a quote is written `\\u0027`."""
    return json.dumps(list(argv)).replace("'", "\\u0027")


def _client_sections(items: Sequence[client_config.Snippet]) -> str:
    blocks = []
    for item in items:
        notes = "".join(f"{note}\n" for note in item.notes)
        fence = "json" if item.format == "json" else "sh"
        blocks.append(f"### {item.title}\n\n{notes}{chr(10) if notes else ''}```{fence}\n{item.text}\n```\n")
    return "\n".join(blocks)


def render_files(service: Service) -> dict[str, str]:
    """Every file of the service folder: relative path → content."""
    plan = service.plan
    target = client_config.make_target(service.url, name=service.name)
    client_snippets = client_config.all_snippets(target)
    plugin = service.auth == "plugin"
    values: dict[str, str] = {
        "name": service.name,
        "domain": service.domain,
        "url": service.url,
        "auth": service.auth,
        "runtime": plan.runtime,
        "package": plan.package,
        "package_sh": shlex.quote(plan.package),
        "program_sh": shlex.quote(plan.argv[0]),
        "bin_sh": shlex.quote(plan.node_bin),
        "unscoped_sh": shlex.quote(plan.node_unscoped),
        "command_env": command_env_value(plan.argv),
        "command_display": shlex.join(plan.argv),
        "token_env": target.token_env or "",
        "plugin_copy": _render("Dockerfile.plugin.tmpl", {}) if plugin else "",
        "dockerignore_allow": "!verifier.py" if plugin else "",
        "plugin_row": "| `verifier.py` | Your token verifier: refuses every token until you write it. |"
        if plugin
        else "",
        "client_sections": _client_sections(client_snippets),
    }
    values["pin_note"] = (
        ""
        if plan.pinned
        else _render(
            "pin-note.tmpl",
            {
                "pin_example": f"{plan.package_name}{'==' if plan.runtime == 'python' else '@'}VERSION",
                "pin_rule": "DL3013" if plan.runtime == "python" else "DL3016",
            },
        )
    )
    values["auth_settings"] = _render(f"env.{service.auth}.tmpl", values)
    values["auth_readme"] = _render(f"README.auth-{service.auth}.tmpl", values)
    files = {
        "Dockerfile": _render(f"Dockerfile.{plan.runtime}.tmpl", values),
        ".dockerignore": _render("dockerignore.tmpl", values),
        "compose.service.yaml": _render("compose.service.yaml.tmpl", values),
        ".env.example": _render("env.example.tmpl", values),
        f"vhost.d/{service.domain}": _render("vhost.tmpl", values),
        f"vhost.d/{service.domain}_location": _render("vhost_location.tmpl", values),
        "README.md": _render("README.md.tmpl", values),
    }
    if plugin:
        files["verifier.py"] = _render("verifier.py.tmpl", values)
    for snippet in client_snippets:
        files[f"clients/{snippet.filename}"] = snippet.text + "\n"
    return files


# --- writing ---------------------------------------------------------------------------------------


def write_service(service: Service, out: Path) -> Path:
    """Render into a fresh sibling folder and rename it to `out/NAME`: whole, or nothing at all.
    `FileExistsError` if `out/NAME` exists, `FileNotFoundError` if `out` does not."""
    if not out.is_dir():
        raise FileNotFoundError(f"the output folder {str(out)!r} does not exist")
    final = out / service.name
    if final.exists() or final.is_symlink():
        raise FileExistsError(f"{str(final)!r} already exists: nothing was written (choose another --out or NAME)")
    files = render_files(service)  # before anything touches the disk: a template error writes nothing
    staging = out / f".{service.name}.new-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        for relative, content in files.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")
        if final.exists() or final.is_symlink():  # created while we rendered: still never replaced
            raise FileExistsError(f"{str(final)!r} appeared while rendering: nothing was written")
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


# --- command line ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="The service's name: lowercase letters, digits, '-'.")
    parser.add_argument(
        "--command",
        required=True,
        help="The stdio MCP server's command line, e.g. 'mcp-server-time' or 'npx -y @scope/server /data'.",
    )
    parser.add_argument("--runtime", choices=RUNTIMES, help="python or node (default: node for npx, else python).")
    parser.add_argument(
        "--package",
        metavar="SPEC",
        help="What to install (pip requirement or npm package, a version pins it; default: from the command).",
    )
    parser.add_argument("--domain", metavar="HOST", help="The public host name (default: NAME.example.com).")
    parser.add_argument(
        "--auth", choices=AUTH_KINDS, default="static", help="How tokens are verified (default: static)."
    )
    parser.add_argument(
        "--out", metavar="DIR", type=Path, default=Path(), help="Where the folder NAME is created (default: .)."
    )


def main(args: argparse.Namespace) -> int:
    try:
        service = make_service(
            args.name, args.command, runtime=args.runtime, package=args.package, domain=args.domain, auth=args.auth
        )
        folder = write_service(service, args.out)
    except ScaffoldError as error:
        print("mcp-gateway new-service: cannot create the service:", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    except (FileExistsError, FileNotFoundError) as error:
        print(f"mcp-gateway new-service: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(f"created {folder}/ for {service.url}")
    for relative in sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()):
        print(f"  {relative}")
    print(f"next: see {folder / 'README.md'} (build, deploy, connect)")
    return EXIT_OK
