"""The rules between settings, in one place: one function per area, run once by `Settings` after
every setting has been read and checked on its own, so that one `ValidationError` reports the
settings' own problems and these together.

A rule sees the settings that passed their own checks (`Values`); one that failed is absent, and
a rule that would read it stays silent, since its problem is already reported. Each problem is
filed under the setting it is about — the one whose value is wrong, the one missing, or the one
asking for another (a startup token asks for a verifier) — and reported once.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, NamedTuple

from cryptography.fernet import Fernet

from gateway.config.auth import SCOPE_TOKEN, p256_problem, read_tokens_file
from gateway.config.oauth import OIDC_SETTINGS
from gateway.config.server import WILDCARD_HOSTS
from gateway.net import https_url_problem, is_loopback_host

# The settings that passed their own checks, by name.
Values = Mapping[str, Any]

# Verifiers for which the user's token is the upstream service's own credential (see Security).
OWN_CREDENTIAL_VERIFIERS: Final = frozenset({"static", "whoami"})
OAUTH_STORAGE_SCHEMES: Final = ("sqlite:///", "redis://", "rediss://")
DOMAIN: Final = re.compile(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
# How the problems of the built-in server's settings begin: they are problems because it is on.
OAUTH_PROBLEM: Final = "oauth_server: "


class Problem(NamedTuple):
    """One problem, filed under the setting it is about."""

    setting: str
    message: str


def problems(values: Values) -> list[Problem]:
    """Every problem between the settings, area by area."""
    return [problem for area in AREAS for problem in area(values)]


def _passed(values: Values, *names: str) -> bool:
    return all(name in values for name in names)


def _uses(values: Values, verifier: str) -> bool:
    """Whether the configured authentication uses `verifier`, alone or in the chain."""
    auth = values.get("auth")
    return auth == verifier or (auth == "chain" and verifier in values.get("auth_chain", ()))


def child(values: Values) -> Iterator[Problem]:
    """The command is found on the child's own PATH, not only on the gateway's."""
    command = values.get("command")
    if not command or not _passed(values, "child_env", "child_env_allow"):
        return
    extra_env = values["child_env"]
    if "PATH" in extra_env:
        path = extra_env["PATH"].get_secret_value()
    else:
        path = os.environ.get("PATH") if "PATH" in values["child_env_allow"] else None
    if shutil.which(command[0], path=path) is None:
        yield Problem("command", f"{command[0]!r} is not an executable on the child's PATH")


def isolation(values: Values) -> Iterator[Problem]:
    """A network of its own needs namespaces; with user IDs, the range holds one for every session."""
    mode = values.get("child_isolation", "none")
    if _passed(values, "child_network") and values["child_network"] == "none" and mode in ("none", "uid"):
        yield Problem("child_network", f"none needs namespaces, and child_isolation is {mode}")
    if mode in ("none", "namespaces") or not _passed(values, "child_uid_range", "max_sessions"):
        return
    first, _, last = values["child_uid_range"].partition("-")
    size = int(last) - int(first) + 1
    if size < values["max_sessions"]:
        yield Problem(
            "child_uid_range",
            f"holds {size} user IDs, fewer than max_sessions ({values['max_sessions']}): one child needs one",
        )


def exposure(values: Values) -> Iterator[Problem]:
    """A bind beyond loopback: with authentication it needs a public URL, without it consent."""
    if not _passed(values, "host", "auth"):
        return
    host, auth = values["host"], values["auth"]
    if auth != "none" and host in WILDCARD_HOSTS and _passed(values, "public_url") and values["public_url"] is None:
        yield Problem(
            "auth",
            f"binding {host!r} with authentication needs public_url: challenges and metadata must name a "
            "URL clients can reach, and are never built from request headers",
        )
    if not _passed(values, "oauth_server", "allow_remote_unauthenticated"):
        return
    # The built-in authorization server authenticates on its own (its tokens), even with auth none.
    unauthenticated = auth == "none" and not values["oauth_server"]
    if not is_loopback_host(host) and unauthenticated and not values["allow_remote_unauthenticated"]:
        yield Problem(
            "allow_remote_unauthenticated",
            f"host {host!r} is not loopback and no authentication is configured; configure a verifier "
            "(auth), bind 127.0.0.1, or set allow_remote_unauthenticated=true to serve everyone",
        )


def verifiers(values: Values) -> Iterator[Problem]:
    """Each configured verifier has what it needs."""
    if _uses(values, "static") and _passed(values, "static_tokens", "static_tokens_file"):
        path = values["static_tokens_file"]
        if not (values["static_tokens"] or (path is not None and read_tokens_file(path))):
            yield Problem("static_tokens", "the static verifier needs static_tokens (or static_tokens_file)")
    if _uses(values, "jwt"):
        for name in ("token_issuer", "token_audience"):
            if not values.get(name):
                yield Problem(name, f"the jwt verifier requires {name}")
        if _passed(values, "jwt_jwks_url", "jwt_public_keys") and (
            (values["jwt_jwks_url"] is None) == (not values["jwt_public_keys"])
        ):
            yield Problem(
                "jwt_public_keys", "the jwt verifier takes its keys from jwt_jwks_url or jwt_public_keys: give one"
            )
    if _uses(values, "introspection"):
        missing = [name for name in ("introspection_url", "introspection_client_id") if not values.get(name)]
        missing += ["introspection_client_secret"] if values.get("introspection_client_secret") is None else []
        for name in missing:
            yield Problem(name, f"the introspection verifier requires {name}")
    if _uses(values, "whoami") and values.get("whoami_url") is None:
        yield Problem("whoami_url", "the whoami verifier requires whoami_url")
    if values.get("auth") == "chain" and not values.get("auth_chain"):
        yield Problem("auth_chain", "auth is chain: list the verifiers to try, e.g. static,jwt")
    if _uses(values, "plugin") and values.get("plugin") is None:
        yield Problem("plugin", "the plugin verifier requires plugin ('module:attribute')")
    if values.get("startup_token") is not None and values.get("auth") == "none":
        yield Problem("startup_token", "a startup token needs a verifier (auth) to check it")


def identity(values: Values) -> Iterator[Problem]:
    """What a child learns of its user needs a user, and the user's token only its own service."""
    if values.get("child_identity") and values.get("auth") == "none":
        yield Problem("child_identity", "child identity needs authentication: with auth none every user is anonymous")
    if values.get("token_env") is not None and _passed(values, "auth", "auth_chain"):
        auth = values["auth"]
        named = set(values["auth_chain"]) if auth == "chain" else {auth}
        if not named or not named <= OWN_CREDENTIAL_VERIFIERS:
            yield Problem(
                "token_env",
                "the user's token may reach the child only with the static or whoami verifiers, where it is the "
                "upstream service's own credential; with any other verifier that would be token passthrough",
            )


def oauth_server(values: Values) -> Iterator[Problem]:
    """The built-in authorization server's settings, once it is on."""
    if not values.get("oauth_server"):
        return
    public_url = values.get("public_url")
    if public_url is None:
        yield Problem(
            "public_url", OAUTH_PROBLEM + "needs public_url: it is the issuer, and its MCP URL the tokens' audience"
        )
    elif public_url.scheme != "https" and not is_loopback_host(public_url.host or ""):
        yield Problem(
            "public_url",
            OAUTH_PROBLEM + "public_url must be https (plain http only on a loopback address, for development)",
        )
    key = values.get("oauth_session_key")
    if key is None:
        yield Problem(
            "oauth_session_key", OAUTH_PROBLEM + "needs oauth_session_key (generate one with `mcp-gateway oauth-key`)"
        )
    else:
        try:
            Fernet(key.get_secret_value())
        except ValueError:
            yield Problem(
                "oauth_session_key", OAUTH_PROBLEM + "oauth_session_key is not a Fernet key (32 bytes, URL-safe base64)"
            )
    if values.get("authorization_servers"):
        yield Problem(
            "authorization_servers",
            OAUTH_PROBLEM + "it is this resource's authorization server: leave authorization_servers empty",
        )
    storage = values.get("oauth_storage")
    if storage is not None and not storage.startswith(OAUTH_STORAGE_SCHEMES):
        yield Problem("oauth_storage", OAUTH_PROBLEM + "oauth_storage is sqlite:///path/file.db or redis://host:6379/0")
    data_dir = values.get("data_dir")
    creatable = data_dir is None or data_dir.is_dir() or data_dir.parent.is_dir()
    if "oauth_storage" in values and storage is None and not creatable:
        yield Problem(
            "data_dir", OAUTH_PROBLEM + f"data_dir {str(data_dir)!r} cannot be created: its parent is not a directory"
        )
    for path in values.get("oauth_signing_key_files", ()):
        if problem := p256_problem(path):
            yield Problem("oauth_signing_key_files", OAUTH_PROBLEM + problem)
    if not _passed(values, "oauth_signin_methods"):
        return
    methods = values["oauth_signin_methods"]
    if not methods:
        yield Problem(
            "oauth_signin_methods", OAUTH_PROBLEM + "needs at least one sign-in method (oauth_signin_methods)"
        )
    checkable = _passed(values, "auth", "auth_chain")
    if "token" in methods and checkable and not (_uses(values, "static") or _uses(values, "whoami")):
        yield Problem(
            "auth", OAUTH_PROBLEM + "token sign-in checks the pasted token with the static or whoami verifier: set auth"
        )
    to_env = values.get("oauth_token_to_env") and _passed(values, "token_env")
    if to_env and not (values["token_env"] and "token" in methods):
        yield Problem(
            "oauth_token_to_env", OAUTH_PROBLEM + "oauth_token_to_env needs token_env and the token sign-in method"
        )
    yield from _oidc_signin(values, offered="oidc" in methods)


def _oidc_signin(values: Values, *, offered: bool) -> Iterator[Problem]:
    """The OpenID sign-in settings: complete when oidc is offered, unset when it is not."""
    if not offered:
        given = [name for name in OIDC_SETTINGS if values.get(name)]
        if given:
            yield Problem(given[0], OAUTH_PROBLEM + f"{', '.join(given)} set, but oidc is not in oauth_signin_methods")
        return
    issuer = values.get("oauth_oidc_issuer")
    if not issuer:
        yield Problem(
            "oauth_oidc_issuer",
            OAUTH_PROBLEM + "oidc sign-in needs oauth_oidc_issuer (the OpenID provider's issuer URL)",
        )
    elif problem := https_url_problem(issuer, "oauth_oidc_issuer"):
        yield Problem("oauth_oidc_issuer", OAUTH_PROBLEM + problem)
    if not values.get("oauth_oidc_client_id"):
        yield Problem(
            "oauth_oidc_client_id",
            OAUTH_PROBLEM + "oidc sign-in needs oauth_oidc_client_id (register this gateway with the provider)",
        )
    scopes = values.get("oauth_oidc_scopes", [])
    if "openid" not in scopes:
        yield Problem("oauth_oidc_scopes", OAUTH_PROBLEM + "oauth_oidc_scopes must include openid")
    if bad := [scope for scope in scopes if not SCOPE_TOKEN.fullmatch(scope)]:
        yield Problem(
            "oauth_oidc_scopes", OAUTH_PROBLEM + f"oauth_oidc_scopes: not scope tokens: {', '.join(map(repr, bad))}"
        )
    domains = values.get("oauth_oidc_allowed_domains", [])
    if bad := [domain for domain in domains if not DOMAIN.fullmatch(domain)]:
        yield Problem(
            "oauth_oidc_allowed_domains",
            OAUTH_PROBLEM + f"oauth_oidc_allowed_domains are domains like example.com, got {', '.join(map(repr, bad))}",
        )
    if (domains or values.get("oauth_oidc_subject_claim") == "email") and "email" not in scopes:
        yield Problem(
            "oauth_oidc_scopes",
            OAUTH_PROBLEM + "email domains and email subjects need the email scope in oauth_oidc_scopes",
        )
    allow_lists = ("oauth_oidc_allowed_domains", "oauth_oidc_allowed_subjects", "oauth_oidc_allow_any_account")
    if _passed(values, *allow_lists) and not any(values[name] for name in allow_lists):
        yield Problem(
            "oauth_oidc_allowed_domains",
            OAUTH_PROBLEM
            + "oidc sign-in needs an allow-list: oauth_oidc_allowed_domains and/or oauth_oidc_allowed_subjects "
            "(or oauth_oidc_allow_any_account, when every account of the provider is on your team)",
        )


def tool_policy(values: Values) -> Iterator[Problem]:
    """A tool scope needs callers that hold scopes: authentication, or the built-in server."""
    if values.get("auth") != "none" or not _passed(values, "oauth_server") or values["oauth_server"]:
        return
    for name in ("tool_scope_write", "tool_scope_destructive"):
        if values.get(name) is not None:
            yield Problem(name, "a tool scope needs authentication: with auth none no caller holds any scope")


def metrics(values: Values) -> Iterator[Problem]:
    """A metrics listener beyond loopback needs a token."""
    host, port = values.get("metrics_host"), values.get("metrics_port")
    if port is None or host is None or is_loopback_host(host) or not _passed(values, "metrics_token"):
        return
    if not values["metrics_token"]:
        yield Problem("metrics_port", f"a metrics listener on {host!r} (beyond loopback) needs metrics_token")


AREAS: Final[tuple[Callable[[Values], Iterator[Problem]], ...]] = (
    child,
    isolation,
    exposure,
    verifiers,
    identity,
    oauth_server,
    tool_policy,
    metrics,
)
