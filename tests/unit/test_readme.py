"""The README's configuration table lists every setting, so the documentation cannot drift."""

from __future__ import annotations

from pathlib import Path

from gateway.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_documented() -> None:
    text = README.read_text()
    for name, field in Settings.model_fields.items():
        assert f"`MCP_GATEWAY_{name.upper()}`" in text, name
        assert field.description, f"{name} has no description"
        assert field.description in text, f"README describes {name} differently"
