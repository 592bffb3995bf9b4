"""The README's configuration table, generated from `Settings`.

`python -m tests.readme_table` rewrites the table in place; `tests/unit/test_readme.py` fails when
the README and the settings disagree.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic_core import PydanticUndefined

from gateway.config import Settings

README = Path(__file__).resolve().parents[1] / "README.md"
TABLE_START = "| Setting | Environment variable |"
TABLE_END = "\nHealth: `GET /health`"


def _default(name: str) -> str:
    field = Settings.model_fields[name]
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None or value in ([], {}):
        return "—"
    return "`" + (value if isinstance(value, str) else json.dumps(value, default=str)) + "`"


def table() -> str:
    rows = ["| Setting | Environment variable | Default | Meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        flag = "after `--`" if name == "command" else f"`--{name.replace('_', '-')}`"
        rows.append(f"| {flag} | `MCP_GATEWAY_{name.upper()}` | {_default(name)} | {field.description} |")
    return "\n".join(rows) + "\n"


def current(text: str) -> str:
    start = text.index(TABLE_START)
    return text[start : text.index(TABLE_END, start)]


def main() -> None:
    text = README.read_text()
    start = text.index(TABLE_START)
    end = text.index(TABLE_END, start)
    README.write_text(text[:start] + table() + text[end:])


if __name__ == "__main__":
    main()
