"""The README's configuration table is generated from `Settings`, so the documentation cannot drift."""

from __future__ import annotations

from gateway.config import Settings
from tests import readme_table


def test_every_setting_has_a_description() -> None:
    missing = [name for name, field in Settings.model_fields.items() if not field.description]
    assert missing == []


def test_the_configuration_table_is_current() -> None:
    text = readme_table.README.read_text()
    assert readme_table.current(text) == readme_table.table(), "run `python -m tests.readme_table`"


def _how_it_is_built() -> str:
    text = readme_table.README.read_text()
    section = text.split("## How it is built", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1]


def test_the_tree_in_how_it_is_built_names_every_room_and_only_rooms_that_exist() -> None:
    """Each package and module the README's tree names exists, and every one at the top is named."""
    package = readme_table.README.parent / "gateway"
    named: set[str] = set()
    for line in _how_it_is_built().splitlines()[1:]:
        if not line.startswith("  ") or line.startswith("   "):
            continue  # a room's description continued
        words = line.split()
        names = words if all(word.endswith(".py") for word in words[:2]) else words[:1]
        named.update(name for name in names if name.endswith((".py", "/")))
    rooms = {f"{path.name}/" for path in package.iterdir() if (path / "__init__.py").exists()}
    rooms |= {path.name for path in package.glob("*.py")} - {"__init__.py", "__main__.py"}
    assert rooms <= named, f"rooms the README does not name: {sorted(rooms - named)}"
    missing = [name for name in sorted(named) if not (package / name.rstrip("/")).exists()]
    assert missing == [], f"the README names rooms that do not exist: {missing}"
