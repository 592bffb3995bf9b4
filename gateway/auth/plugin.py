"""The `plugin` verifier: a team's own `TokenVerifier`, named as `module:attribute`.

The attribute is a factory called with the configured `plugin_options` as keyword arguments
and `http` (the gateway's outbound `aiohttp.ClientSession`); it returns an object with an
`async verify(token) -> Principal` method that raises `AuthError` to refuse. If the object also
has an `async probe()`, it runs at startup, like the built-in verifiers' backend checks.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

import aiohttp

from gateway.auth import TokenVerifier


class PluginError(ValueError):
    """The plugin cannot be loaded or does not implement the verifier protocol."""


def load_plugin(reference: str, options: Mapping[str, Any], http: aiohttp.ClientSession) -> TokenVerifier:
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise PluginError(f"{reference!r} is not 'module:attribute'")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"cannot load {reference!r}: {exc}") from None
    verifier = factory(http=http, **options)
    if not inspect.iscoroutinefunction(getattr(verifier, "verify", None)):
        raise PluginError(f"{reference!r} made an object without an async verify(token) method")
    result: TokenVerifier = verifier
    return result
