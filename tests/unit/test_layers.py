"""The package's layers, read from its source: imports point down, never round in a cycle, and
the client-side program (`gateway.client`) and the server meet only in the shared leaves.

The graph holds every import that runs: module level and function level (a lazy import still
loads its module), but not what sits under `if TYPE_CHECKING:` (mypy alone reads it).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "gateway"

# Modules that import nothing of the gateway but one another: what the server and the client may share.
SHARED_LEAVES = frozenset(
    {
        "gateway._version",
        "gateway.jsonrpc",
        "gateway.framing",
        "gateway.logline",
        # The protocol eras: the envelope's checks and the translation, used by server and bridge alike.
        "gateway.eras",
        "gateway.eras.envelope",
        "gateway.eras.translate",
        "gateway.eras.facade",
    }
)
# Leaves the server's rooms stand on; each imports only leaves.
LEAVES = SHARED_LEAVES | {
    "gateway.keys",
    "gateway.net",
    "gateway.errors",
    # What configuration checks and runtime uses alike, defined once: the JOSE algorithms and PEM
    # keys (config and the jwt verifier), the paths the gateway serves (config, discovery, rate limits, health).
    "gateway.jose",
    "gateway.paths",
    # The request being handled: read by authentication, the audit log, the logs and the HTTP edge.
    "gateway.request_context",
}
# The server's rooms from the bottom up: a room imports only rooms below it (and leaves).
ROOMS = (
    ("config", "client", "tools"),
    ("auth",),
    ("observe",),
    ("http",),
    ("sessions",),
    ("transport",),
    ("oauth",),
    ("app",),
    ("serve",),
)
RANK = {room: rank for rank, rooms in enumerate(ROOMS, start=1) for room in rooms}
# Entry points: they parse the command line and hand over to a room, so they may import any.
ENTRY_POINTS = frozenset({"gateway", "gateway.__main__", "gateway.cli"})


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(nodes: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Every statement that can run, at any depth, skipping `if TYPE_CHECKING:` bodies."""
    for node in nodes:
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from _statements(node.orelse)
            continue
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            children = getattr(node, field, None)
            if isinstance(children, list):
                yield from _statements([child for child in children if isinstance(child, ast.stmt)])
                for child in children:
                    if isinstance(child, ast.ExceptHandler | ast.match_case):
                        yield from _statements(child.body)


def imports_of(name: str) -> set[str]:
    """The gateway modules `name` imports when it runs."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _statements(tree.body):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            submodules = {f"{base}.{alias.name}" for alias in node.names} & MODULES.keys()
            # `from gateway import keys` loads gateway.keys; `from gateway import create_app`, the package.
            found.update(submodules or {base})
    return {module for module in found if module in MODULES and module != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def test_the_graph_sees_the_package() -> None:
    assert {"gateway.app", "gateway.cli", "gateway.keys", "gateway.client.connect"} <= GRAPH.keys()
    assert "gateway.sessions.router" in GRAPH["gateway.transport.legacy"]


def test_no_runtime_import_cycle() -> None:
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                cycle = [*path[path.index(target) :], target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def room_of(module: str) -> str:
    """`gateway.sessions.router` is in `sessions`; a top-level module is a room of its own."""
    return module.split(".")[1] if "." in module else module


def test_every_room_has_a_place() -> None:
    rooms = {room_of(module) for module in MODULES if module not in LEAVES | ENTRY_POINTS}
    assert rooms == RANK.keys()


def test_imports_point_down() -> None:
    upward = [
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if module not in LEAVES | ENTRY_POINTS
        for target in targets
        if target not in LEAVES and room_of(target) != room_of(module)
        if RANK[room_of(target)] >= RANK[room_of(module)]
    ]
    assert upward == []


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_a_leaf_imports_only_leaves(leaf: str) -> None:
    allowed = SHARED_LEAVES if leaf in SHARED_LEAVES else LEAVES
    assert GRAPH[leaf] <= allowed, f"{leaf} imports {sorted(GRAPH[leaf] - allowed)}"


def test_the_client_imports_only_itself_and_the_shared_leaves() -> None:
    for module, targets in GRAPH.items():
        if module.startswith("gateway.client"):
            foreign = {target for target in targets if not target.startswith("gateway.client")} - SHARED_LEAVES
            assert not foreign, f"{module} imports {sorted(foreign)}"


def test_the_server_never_imports_the_client() -> None:
    for module, targets in GRAPH.items():
        if module.startswith("gateway.client") or module in ENTRY_POINTS:
            continue
        assert not {target for target in targets if target.startswith("gateway.client")}, module


def test_configuration_imports_no_runtime_module() -> None:
    for module, targets in GRAPH.items():
        if module.startswith("gateway.config"):
            runtime = {target for target in targets if not target.startswith("gateway.config")} - LEAVES
            assert not runtime, f"{module} imports {sorted(runtime)}"


def test_runtime_modules_import_no_configuration() -> None:
    """The settings reach a room as an argument; its type is named under TYPE_CHECKING."""
    for module, targets in GRAPH.items():
        if module.startswith("gateway.config") or module in ENTRY_POINTS:
            continue
        assert not {target for target in targets if target.startswith("gateway.config")}, module
