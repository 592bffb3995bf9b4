"""The README's configuration table is generated from `Settings`, so the documentation cannot drift."""

from __future__ import annotations

from gateway.config.settings import Settings
from tests import readme_table


def test_every_setting_has_a_description() -> None:
    missing = [name for name, field in Settings.model_fields.items() if not field.description]
    assert missing == []


def test_the_configuration_table_is_current() -> None:
    text = readme_table.README.read_text()
    assert readme_table.current(text) == readme_table.table(), "run `python -m tests.readme_table`"
