"""Errors of the built-in authorization server: RFC 6749 codes, each with its one status.

Endpoints raise `OAuthError`; `json_response` renders it for the token, registration and
revocation endpoints, and refusals.py audits and answers it for every endpoint. The
authorization endpoint renders the same error two ways (browser.py): as a redirect to the client
once its redirect URI is known to be registered, else as a page, since an unverified redirect URI
must never receive anything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final, Literal

from aiohttp import web

OAuthErrorCode = Literal[
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "unsupported_response_type",
    "invalid_scope",
    "invalid_target",
    "access_denied",
    "invalid_redirect_uri",
    "invalid_client_metadata",
    "temporarily_unavailable",
    "server_error",
]

STATUS: Final[dict[OAuthErrorCode, int]] = {
    "invalid_request": 400,
    "invalid_client": 401,
    "invalid_grant": 400,
    "unauthorized_client": 400,
    "unsupported_grant_type": 400,
    "unsupported_response_type": 400,
    "invalid_scope": 400,
    "invalid_target": 400,
    "access_denied": 403,
    "invalid_redirect_uri": 400,
    "invalid_client_metadata": 400,
    "temporarily_unavailable": 503,
    "server_error": 500,
}
# Responses carrying tokens, codes or errors about them are never cached (RFC 6749 §5.1).
NO_STORE: Final = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthError(Exception):
    """A refusal with an RFC 6749 code; `description` is fixed text, never a peer's input echoed
    unescaped (pages escape it; JSON carries it as data)."""

    def __init__(self, code: OAuthErrorCode, description: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(description)
        self.code: OAuthErrorCode = code
        self.description = description
        self.headers = dict(headers or {})

    @property
    def status(self) -> int:
        return STATUS[self.code]


def json_response(error: OAuthError, *, cors: bool = True) -> web.Response:
    headers = {**NO_STORE, **error.headers}
    if cors:
        headers["Access-Control-Allow-Origin"] = "*"
    body = {"error": error.code, "error_description": error.description}
    return web.Response(status=error.status, text=json.dumps(body), content_type="application/json", headers=headers)
