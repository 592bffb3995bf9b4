"""Readers for the files in deploy/: the Compose file and its `.env`, Dockerfiles, `.dockerignore`
and nginx snippets, each parsed the way its real consumer reads it (as far as these files use)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

ROOT: Final = Path(__file__).resolve().parents[2]
DEPLOY: Final = ROOT / "deploy"
COMPOSE_FILE: Final = DEPLOY / "compose.yaml"
ENV_EXAMPLE: Final = DEPLOY / ".env.example"
VHOST_DIR: Final = DEPLOY / "vhost.d"
BASE_DOCKERFILE: Final = DEPLOY / "Dockerfile"
EXAMPLE_DOCKERFILE: Final = DEPLOY / "mcp-time" / "Dockerfile"
DOCKERIGNORE: Final = ROOT / ".dockerignore"
SCHEMA_FILE: Final = ROOT / "tests" / "deploy" / "data" / "compose-spec.json"


# --- Compose ----------------------------------------------------------------------------------

# Compose's interpolation: $$ (a literal $), ${NAME}, ${NAME:-default}, ${NAME-default},
# ${NAME:?error}, ${NAME?error}, ${NAME:+alternative}, ${NAME+alternative}, and bare $NAME.
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(ValueError):
    """A `${NAME:?message}` whose variable is unset (or empty)."""


def variables_in(text: str) -> set[str]:
    """Every variable name a Compose file's text interpolates."""
    return {match["name"] or match["bare"] for match in _VARIABLE.finditer(text) if not match["escaped"]}


def bare_variables_in(text: str) -> set[str]:
    return {match["bare"] for match in _VARIABLE.finditer(text) if match["bare"]}


def interpolate(value: str, env: Mapping[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["name"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        present = name in env
        set_and_nonempty = present and env[name] != ""
        usable = set_and_nonempty if op is not None and op.startswith(":") else present
        if op in ("?", ":?"):
            if not usable:
                raise MissingVariable(f"{name}: {arg}")
            return env[name]
        if op in ("-", ":-"):
            return env[name] if usable else arg
        if op in ("+", ":+"):
            return arg if usable else ""
        return env.get(name, "")

    return _VARIABLE.sub(substitute, value)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    """The parsed Compose file with every string interpolated, as Compose does before validating."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_tree(item, env) for key, item in node.items()}
    return node


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (comments and blanks skipped); a value in quotes is taken literally."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {raw!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name.strip()] = value
    return values


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """deploy/compose.yaml, interpolated with `env` (default: the values in .env.example)."""
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    result = interpolate_tree(document, read_dotenv(ENV_EXAMPLE) if env is None else env)
    assert isinstance(result, dict)
    return result


def environment_of(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's `environment`, in either of its two shapes, as a mapping."""
    environment = service.get("environment", {})
    if isinstance(environment, list):
        pairs = (item.partition("=") for item in environment)
        return {name: value for name, _, value in pairs}
    return {name: "" if value is None else str(value) for name, value in environment.items()}


def image_tag(image: str) -> str:
    """The tag of an image reference (`name:tag`), or "" (a colon before a slash is a registry port)."""
    name, _, tag = image.rpartition(":")
    return tag if name and "/" not in tag else ""


def duration_seconds(text: str) -> float:
    """A Compose duration such as `1m30s`, `30s` or `500ms`, in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    assert "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


# --- nginx --------------------------------------------------------------------------------------


def nginx_directives(path: Path) -> dict[str, list[str]]:
    """The simple directives of an nginx snippet: name → its arguments (each may appear once)."""
    text = re.sub(r"#[^\n]*", "", path.read_text())
    directives: dict[str, list[str]] = {}
    for statement in text.split(";"):
        words = statement.split()
        if words:
            assert "{" not in statement, f"{path.name}: blocks are not expected in a vhost.d snippet"
            assert words[0] not in directives, f"{path.name}: {words[0]} twice (nginx refuses duplicates)"
            directives[words[0]] = words[1:]
    return directives


def nginx_size(text: str) -> int:
    """An nginx size (`16m`, `512k`, `1048576`) in bytes."""
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", text)
    assert match, f"not an nginx size: {text!r}"
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match[2].lower()]
    return int(match[1]) * scale


def nginx_time(text: str) -> float:
    """An nginx time (`1h`, `90s`, `1m30s`, `60`) in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "M": 2592000, "y": 31536000}
    if text.isdigit():
        return float(text)
    parts = re.findall(r"(\d+)(ms|[smhdwMy])", text)
    assert "".join(n + u for n, u in parts) == text, f"not an nginx time: {text!r}"
    return float(sum(int(number) * units[unit] for number, unit in parts))


# --- Dockerfiles ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    arguments: str  # the rest of the logical line, continuations joined
    line: int  # where it starts (1-based)

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction, else None."""
        text = self.arguments.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list)
        assert all(isinstance(item, str) for item in value)
        return value


@dataclass
class Stage:
    base: str  # after ARG substitution
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse_dockerfile(path: Path) -> Dockerfile:
    """Logical instructions grouped by stage; the ARGs before the first FROM substituted into FROM.

    As in Docker: a line ending in a backslash continues; comment lines are dropped, also inside
    a continuation (parser directives such as `# syntax=` are comments here).
    """
    logical: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        logical.append((start, " ".join(part for part in pending if part)))
        pending = []
    assert not pending, f"{path}: the file ends inside a continuation"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, text in logical:
        keyword, _, arguments = text.partition(" ")
        instruction = Instruction(keyword.upper(), arguments.strip(), number)
        if instruction.keyword == "FROM":
            words = instruction.arguments.split()
            base = interpolate(words[0], global_args)
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name))
        elif not stages:
            assert instruction.keyword == "ARG", f"{path}:{number}: only ARG may come before FROM"
            arg_name, _, default = instruction.arguments.partition("=")
            global_args[arg_name] = default.strip("\"'")
        else:
            stages[-1].instructions.append(instruction)
    return Dockerfile(global_args=global_args, stages=stages)


def arg_defaults(stage: Stage) -> dict[str, str]:
    defaults = {}
    for instruction in stage.all("ARG"):
        name, _, default = instruction.arguments.partition("=")
        defaults[name] = default.strip("\"'")
    return defaults


def env_values(stage: Stage) -> dict[str, str]:
    """The ENV KEY=VALUE pairs of a stage (quotes removed as Docker does)."""
    values: dict[str, str] = {}
    for instruction in stage.all("ENV"):
        for match in re.finditer(r"([A-Za-z_][A-Za-z0-9_]*)=('[^']*'|\"[^\"]*\"|\S+)", instruction.arguments):
            value = match[2]
            values[match[1]] = value[1:-1] if value[0] in "'\"" else value
    return values


def healthcheck(stage: Stage) -> tuple[dict[str, str], list[str]]:
    """The options (`--interval` …) and exec-form command of the stage's HEALTHCHECK."""
    instruction = stage.last("HEALTHCHECK")
    assert instruction is not None, "no HEALTHCHECK"
    options: dict[str, str] = {}
    rest = instruction.arguments
    while rest.startswith("--"):
        option, _, rest = rest.partition(" ")
        name, _, value = option[2:].partition("=")
        options[name] = value
        rest = rest.lstrip()
    kind, _, command = rest.partition(" ")
    assert kind == "CMD", f"HEALTHCHECK {kind}: the probe must be a CMD"
    argv = json.loads(command)
    assert isinstance(argv, list), "the probe must be in exec form (no shell in the image's PATH lookup)"
    return options, [str(item) for item in argv]


# --- .dockerignore ----------------------------------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex over slash paths."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out.append("[" + pattern[i + 1 : end].replace("!", "^", 1) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def dockerignore_rules(path: Path = DOCKERIGNORE) -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception, pattern) per line, in order; patterns cleaned as Docker cleans them."""
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line.removeprefix("!").strip().strip("/")
        rules.append((exception, _glob_regex(pattern)))
    return rules


def dockerignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker leaves `relative` out of the context: the last rule matching the path, or
    any directory above it, decides."""
    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for exception, regex in rules:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not exception
    return excluded
