"""Configuration: the settings, as field groups (one module per area) composed into one
`Settings`, and the rules between them (`checks.py`). Imports no runtime module of the gateway:
runtime receives a `Settings` and names its type under `TYPE_CHECKING` only.
"""

from gateway.config.settings import Settings, describe_errors

__all__ = ["Settings", "describe_errors"]
