"""The settings as command-line flags: one flag per setting, named after it (`--max-sessions`,
`--child-env KEY=VALUE`, …). Flags override `MCP_GATEWAY_*` variables, which override the `.env`
file. A flag takes what its variable takes: a list flag given once a JSON array or comma-separated
values (repeated, one value each), a list of objects (`--static-tokens`) a JSON array or one JSON
object per flag, a mapping (`--child-env`, `--plugin-options`, …) a JSON object or `KEY=VALUE` per
flag. Every problem, the flags' own included, is reported at once in one `ValidationError`.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import NoDecode

from gateway.config.settings import Settings


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shape(field: FieldInfo) -> type | None:
    """`list` or `dict` for a field holding one (optional or not), else None."""
    annotation = field.annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [member for member in typing.get_args(annotation) if member is not type(None)]
        annotation = members[0] if len(members) == 1 else annotation
    origin = typing.get_origin(annotation) or annotation
    return origin if origin in (list, dict) else None


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env-file", help="Read settings from this file instead of ./.env.")
    for name, field in Settings.model_fields.items():
        if name == "command":
            continue
        shape = _shape(field)
        help_text = field.description
        if field.annotation is bool:
            parser.add_argument(_flag(name), action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif shape is list:
            parser.add_argument(_flag(name), action="append", metavar="VALUE", help=f"{help_text} (repeatable)")
        elif shape is dict:
            parser.add_argument(
                _flag(name), action="append", metavar="KEY=VALUE|JSON", help=f"{help_text} (repeatable)"
            )
        else:
            parser.add_argument(_flag(name), metavar="VALUE", help=help_text)


def _mapping_flag(items: list[str]) -> dict[str, Any]:
    """A mapping flag: each one a JSON object or `KEY=VALUE`, later ones winning."""
    mapping: dict[str, Any] = {}
    for item in items:
        if item.lstrip().startswith("{"):
            value = json.loads(item)
            if not isinstance(value, dict):  # pragma: no cover - a JSON text starting with { is an object
                raise ValueError("not a JSON object")
            mapping.update(value)
            continue
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r} is neither KEY=VALUE nor a JSON object")
        mapping[key] = text
    return mapping


def _list_flag(items: list[str], field: FieldInfo) -> str | list[Any]:
    """A list flag. Objects (a field the environment gives as JSON): a JSON array, or one JSON
    object, per flag. Other lists: given once, the text the field parses from its environment
    variable (a JSON array or comma-separated values); repeated, one value per flag."""
    if NoDecode in field.metadata:
        return items[0] if len(items) == 1 else items
    values: list[Any] = []
    for item in items:
        value = json.loads(item)
        if isinstance(value, list):
            values.extend(value)
        elif isinstance(value, dict):
            values.append(value)
        else:
            raise ValueError("expected a JSON array, or a JSON object")
    return values


def _overrides(args: argparse.Namespace, command: list[str], problems: list[InitErrorDetails]) -> dict[str, Any]:
    """Settings given as flags; a flag that cannot be read is added to `problems`."""
    values: dict[str, Any] = {}
    for name, field in Settings.model_fields.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        shape = _shape(field)
        try:
            if shape is dict:
                values[name] = _mapping_flag(value)
            elif shape is list:
                values[name] = _list_flag(value, field)
            else:
                values[name] = value
        except ValueError as exc:  # json.JSONDecodeError included
            problems.append({"type": PydanticCustomError("flag", str(exc)), "loc": (name,), "input": value})
    if command:
        values["command"] = command
    return values


def load_settings(args: argparse.Namespace, command: list[str]) -> Settings:
    """The settings from flags, environment and `.env`; every problem, flags' included, is
    reported at once in one `ValidationError`."""
    problems: list[InitErrorDetails] = []
    overrides = _overrides(args, command, problems)
    try:
        if args.env_file is not None:
            settings = Settings(_env_file=args.env_file, **overrides)
            settings.read_from(args.env_file)
        else:
            settings = Settings(**overrides)
    except ValidationError as error:
        if not problems:
            raise
        # Each problem keeps its message verbatim (a template without context is not formatted).
        problems += [
            {"type": PydanticCustomError(item["type"], item["msg"]), "loc": item["loc"], "input": item["input"]}
            for item in error.errors()
        ]
    if problems:
        raise ValidationError.from_exception_data(Settings.__name__, problems)
    return settings
