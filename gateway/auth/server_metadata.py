"""The authorization server's RFC 8414 metadata, kept current for the discovery endpoints.

Clients of the 2025-03-26 era look for it on the MCP server's own origin. It is fetched at
startup — the issuer's `oauth-authorization-server` document, else its OpenID configuration,
each within `FETCH_TIMEOUT` and `MAX_METADATA_BYTES` (a larger document is refused, never cut) —
or configured inline, checked to name the configured issuer (RFC 8414 §3.3), and refreshed
hourly in the background, keeping the last good copy when a refresh fails.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp

from gateway import net

log = logging.getLogger("gateway.auth.discovery")

METADATA_REFRESH_SECONDS: Final = 3600.0
FETCH_TIMEOUT: Final = 5.0
MAX_METADATA_BYTES: Final = 256 * 1024


class AuthorizationServerMetadata:
    """RFC 8414 metadata of the configured authorization server, served on this origin for
    clients of the 2025-03-26 era, which look for it here. Fetched at startup (the issuer's
    `oauth-authorization-server` document, else its OpenID configuration) or configured
    inline; refreshed hourly in the background, keeping the last good copy."""

    def __init__(self, http: aiohttp.ClientSession, issuer: str, inline: dict[str, Any] | None) -> None:
        self._http = http
        self._issuer = issuer.rstrip("/")
        self.document: bytes | None = json.dumps(inline).encode() if inline is not None else None
        self.openid = False  # whether the document came from OpenID discovery
        self._inline = inline is not None

    def _candidates(self) -> list[tuple[str, bool]]:
        parts = urlsplit(self._issuer)
        origin, path = f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/")
        candidates = [
            (f"{origin}/.well-known/oauth-authorization-server{path}", False),
            (f"{origin}/.well-known/openid-configuration{path}", True),
            (f"{origin}{path}/.well-known/openid-configuration", True),
        ]
        return list(dict.fromkeys(candidates))  # without an issuer path the last two coincide

    async def load(self) -> None:
        """Fetch the document; `ValueError` naming every URL tried when none answers."""
        if self._inline:
            return
        problems = []
        for url, openid in self._candidates():
            try:
                document = await self._fetch(url)
            except ValueError as exc:
                problems.append(f"{url}: {exc}")
                continue
            self.document, self.openid = json.dumps(document).encode(), openid
            return
        raise ValueError("no authorization server metadata: " + "; ".join(problems))

    async def refresh_forever(self) -> None:
        while not self._inline:
            await asyncio.sleep(METADATA_REFRESH_SECONDS)
            try:
                await self.load()
            except ValueError as exc:
                log.warning("authorization server metadata refresh failed; serving the last copy: %s", exc)

    async def _fetch(self, url: str) -> dict[str, Any]:
        try:
            answer = await net.fetch_json(self._http, "GET", url, limit=MAX_METADATA_BYTES, within=FETCH_TIMEOUT)
        except net.FetchError as exc:
            raise ValueError(exc.detail) from None
        document = answer.document
        if not isinstance(document, dict) or str(document.get("issuer", "")).rstrip("/") != self._issuer:
            raise ValueError("the document's issuer is not the configured one")  # RFC 8414 §3.3
        return document
