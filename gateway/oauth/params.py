"""Parameters of OAuth requests, read the way RFC 6749 says: each at most once (§3.1), a form
only as `application/x-www-form-urlencoded` UTF-8 of at most `MAX_FORM_BYTES`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final
from urllib.parse import parse_qsl

from aiohttp import web

from gateway.net import read_at_most
from gateway.oauth.errors import OAuthError

MAX_FORM_BYTES: Final = 16 * 1024
FORM_TYPE: Final = "application/x-www-form-urlencoded"


def single(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Parameters as a dict; a repeated parameter is an error (RFC 6749 §3.1)."""
    values: dict[str, str] = {}
    for name, value in pairs:
        if name in values:
            raise OAuthError("invalid_request", f"The parameter {name!r} is repeated")
        values[name] = value
    return values


async def read_form(request: web.Request) -> dict[str, str]:
    """The request's form body, each parameter once."""
    if request.content_type != FORM_TYPE:
        raise OAuthError("invalid_request", f"The body must be {FORM_TYPE}")
    body = await read_at_most(request.content, MAX_FORM_BYTES + 1)
    if len(body) > MAX_FORM_BYTES:
        raise OAuthError("invalid_request", "The form is too large")
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise OAuthError("invalid_request", "The form is not UTF-8") from None
    return single(parse_qsl(text, keep_blank_values=True))
