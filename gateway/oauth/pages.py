"""Server-rendered pages of the sign-in flow: sign-in, consent, error. No JavaScript.

Templates are package data (`templates/*.html`) filled with `string.Template`; every value is
HTML-escaped unless it is `Markup` made here. Every page is sent with `X-Frame-Options: DENY`, a
CSP that allows nothing but its own nonce'd stylesheet and form posts to this origin (plus the
client's redirect origin, where a form post may end in a redirect to it), no referrer, no cache.
"""

from __future__ import annotations

import functools
import html
import secrets
from collections.abc import Iterable, Mapping
from importlib import resources
from string import Template
from typing import Final
from urllib.parse import urlsplit

from aiohttp import web


class Markup(str):
    """HTML made by this module: inserted as is."""


def _escape(value: object) -> str:
    return value if isinstance(value, Markup) else html.escape(str(value), quote=True)


@functools.cache
def _template(name: str) -> Template:
    return Template(resources.files("gateway.oauth").joinpath("templates").joinpath(name).read_text(encoding="utf-8"))


def fragment(name: str, **values: object) -> Markup:
    return Markup(_template(name).substitute({key: _escape(value) for key, value in values.items()}))


SECURITY_HEADERS: Final = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
}


def origin_of(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.netloc:
        return f"{parts.scheme}://{parts.netloc}"
    if parts.scheme:
        return f"{parts.scheme}:"  # a native app's private-use scheme
    return None


def page(
    template: str,
    *,
    title: str,
    status: int = 200,
    form_targets: Iterable[str] = (),
    headers: Mapping[str, str] | None = None,
    **values: object,
) -> web.Response:
    """A complete page: `template` inside the layout, with the security headers (and `headers`)."""
    nonce = secrets.token_urlsafe(16)
    body = fragment(template, **values)
    document = _template("layout.html").substitute(title=html.escape(title), nonce=nonce, body=body)
    targets = " ".join(sorted({origin for url in form_targets if (origin := origin_of(url))}))
    csp = (
        f"default-src 'none'; style-src 'nonce-{nonce}'; img-src 'self'; "
        f"form-action 'self'{' ' + targets if targets else ''}; frame-ancestors 'none'; base-uri 'none'"
    )
    sent = {**(headers or {}), **SECURITY_HEADERS, "Content-Security-Policy": csp}
    return web.Response(status=status, text=document, content_type="text/html", charset="utf-8", headers=sent)


ERROR_HEADINGS: Final = {
    400: "This request cannot be completed",
    401: "Sign-in failed",
    403: "Not allowed",
    404: "Not found",
    429: "Too many attempts",
    503: "Temporarily unavailable",
}


def error_page(code: str, description: str, *, status: int, headers: Mapping[str, str] | None = None) -> web.Response:
    heading = ERROR_HEADINGS.get(status, "Something went wrong")
    return page(
        "error.html", title=heading, status=status, headers=headers, heading=heading, description=description, code=code
    )
