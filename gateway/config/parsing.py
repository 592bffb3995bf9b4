"""How a list setting reads from text (an environment variable, the `.env` file, a flag given
once): a JSON array, or comma-separated values. `NoDecode` keeps pydantic-settings from insisting
on JSON, so both spellings reach `split_list`; a list given as a list passes unchanged.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, TypeVar

from pydantic import BeforeValidator
from pydantic_settings import NoDecode

Item = TypeVar("Item")


def split_list(value: Any) -> Any:
    """`'["a", "b"]'` or `"a, b"` as `["a", "b"]`; anything but text unchanged."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


# A list setting that also reads from text: `TextList[str]`, `TextList[Path]`, …
TextList = Annotated[list[Item], NoDecode, BeforeValidator(split_list)]
