"""The verifier registry: settings name a verifier, this builds it with explicit arguments."""

from __future__ import annotations

from gateway.auth import TokenVerifier
from gateway.auth.static import StaticVerifier
from gateway.settings import Settings


def build_verifier(settings: Settings) -> TokenVerifier | None:
    """The configured verifier; None when authentication is off."""
    if settings.auth == "static":
        tokens = settings.all_static_tokens()
        return StaticVerifier((token.sha256, token.principal, token.scopes) for token in tokens)
    return None
