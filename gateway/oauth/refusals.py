"""How every endpoint of the authorization server answers what it refuses, written once.

An endpoint's OAuth handler raises what it refuses; `@answers_refusals(endpoint, answer=…)` makes
it the aiohttp handler, which answers:
- `OAuthError`: audited as `oauth.refused` (naming the endpoint, the error and its description;
  at an endpoint that authenticates its client, that client once known), then answered as the
  endpoint's kind answers — an error page for the pages a browser visits (an unverified redirect
  URI must never receive anything), the RFC 6749 JSON error for the endpoints clients call;
- `ReusedToken` (a code or refresh token presented twice; its family is now revoked): audited as
  `oauth.reuse`, answered the same way;
- `StorageError` (the OAuth storage did not answer), wherever the handler was: logged, answered
  503 `temporarily_unavailable` — a storage that is down makes the server unavailable, never an
  internal error.

The gateway's own refusals (`GatewayError`: rate limits) pass through to the middlewares, which
render them as pages or JSON by path (routes.py).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from aiohttp import web

from gateway.oauth.errors import OAuthError, json_response
from gateway.oauth.pages import error_page
from gateway.oauth.server import server_of
from gateway.oauth.storage import StorageError
from gateway.oauth.tokens import ReusedToken

log = logging.getLogger("gateway.oauth")

Endpoint = Literal["authorize", "signin", "consent", "oidc_callback", "token", "revoke", "register"]
# How an endpoint answers a refusal: a page for a person at a browser, JSON for a client.
Answer = Literal["page", "json"]
# What a refusal for want of storage says, by the kind of answer.
UNAVAILABLE: Final[dict[Answer, str]] = {
    "page": "The authorization server cannot answer now; try again",
    "json": "Try again later",
}


@dataclass(slots=True)
class Attempt:
    """What the audit of a refusal names besides the error: the endpoint and, at an endpoint that
    authenticates its client (`names_client`), the client as soon as the handler knows it."""

    endpoint: Endpoint
    names_client: bool = False
    client_id: str | None = None

    def fields(self) -> dict[str, Any]:
        if self.names_client:
            return {"endpoint": self.endpoint, "client_id": self.client_id}
        return {"endpoint": self.endpoint}


OAuthHandler = Callable[[web.Request, Attempt], Awaitable[web.Response]]
Handler = Callable[[web.Request], Awaitable[web.Response]]


def unavailable_page() -> web.Response:
    return error_page("temporarily_unavailable", UNAVAILABLE["page"], status=503)


def _answer(answer: Answer, error: OAuthError) -> web.Response:
    if answer == "page":
        return error_page(error.code, error.description, status=error.status)
    return json_response(error)


def answers_refusals(
    endpoint: Endpoint, *, answer: Answer, names_client: bool = False
) -> Callable[[OAuthHandler], Handler]:
    """Make an OAuth handler the aiohttp handler of `endpoint`, its refusals audited and answered
    as `answer` says (see the module docstring)."""

    def wrap(handler: OAuthHandler) -> Handler:
        @functools.wraps(handler)
        async def handle(request: web.Request) -> web.Response:
            attempt = Attempt(endpoint, names_client)
            try:
                return await handler(request, attempt)
            except ReusedToken as error:
                server_of(request).record(
                    "oauth.reuse", client_id=attempt.client_id, family=error.family, detail=error.description
                )
                return _answer(answer, error)
            except OAuthError as error:
                server_of(request).record(
                    "oauth.refused", **attempt.fields(), error=error.code, detail=error.description
                )
                return _answer(answer, error)
            except StorageError as exc:
                log.error("OAuth storage failed: %s", exc)
                return _answer(answer, OAuthError("temporarily_unavailable", UNAVAILABLE[answer]))

        return handle

    return wrap
