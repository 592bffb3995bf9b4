"""Tool policy rules without I/O: globs, deny winning, annotation classes with the spec's
defaults, scopes per class, configuration validation reporting every problem at once, and where
a session's catalog lives."""

from __future__ import annotations

import gc
import sys
import weakref
from typing import Any

import pytest
from pydantic import ValidationError

from gateway import jsonrpc
from gateway.auth import ANONYMOUS
from gateway.auth.static import digest_of
from gateway.config import Settings, describe_errors
from gateway.config.tools import glob_problem
from gateway.observe.audit import Audit
from gateway.sessions.policy import ToolCatalog, ToolClass, ToolFilter, ToolPolicy, shown, tool_class
from gateway.sessions.router import Router

PY = sys.executable
STATIC: dict[str, Any] = {"auth": "static", "static_tokens": [{"principal": "p", "sha256": digest_of("t" * 20)}]}


@pytest.mark.parametrize(
    ("allow", "deny", "name", "permitted"),
    [
        ((), (), "anything", True),
        (("read_*",), (), "read_file", True),
        (("read_*",), (), "write_file", False),
        (("read_*",), (), "Read_file", False),  # case-sensitive, on every platform
        ((), ("*delete*",), "bulk_delete_rows", False),
        ((), ("*delete*",), "bulk_remove", True),
        (("*",), ("rm",), "rm", False),  # deny wins over allow
        (("*",), ("rm",), "rmdir", True),  # a glob matches the whole name
        (("tool_[abc]",), (), "tool_b", True),
        (("tool_[!abc]",), (), "tool_b", False),
        (("tool_?",), (), "tool_xy", False),
        (("a.b",), (), "aXb", False),  # regex metacharacters are literal
    ],
)
def test_names(allow: tuple[str, ...], deny: tuple[str, ...], name: str, permitted: bool) -> None:
    assert ToolPolicy(allow=allow, deny=deny).permits(name) is permitted


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        (None, ToolClass.DESTRUCTIVE),
        ({}, ToolClass.DESTRUCTIVE),
        ({"readOnlyHint": True}, ToolClass.READ_ONLY),
        ({"readOnlyHint": True, "destructiveHint": True}, ToolClass.READ_ONLY),  # destructive only matters if writing
        ({"readOnlyHint": False}, ToolClass.DESTRUCTIVE),
        ({"destructiveHint": False}, ToolClass.WRITE),
        ({"readOnlyHint": False, "destructiveHint": False}, ToolClass.WRITE),
        ({"destructiveHint": True}, ToolClass.DESTRUCTIVE),
        ({"readOnlyHint": "true"}, ToolClass.DESTRUCTIVE),  # not a boolean: the default
        ({"destructiveHint": 0}, ToolClass.DESTRUCTIVE),
        ({"idempotentHint": True, "openWorldHint": False}, ToolClass.DESTRUCTIVE),
        ("readOnly", ToolClass.DESTRUCTIVE),
    ],
)
def test_annotation_classes_follow_the_spec_defaults(annotations: Any, expected: ToolClass) -> None:
    assert tool_class(annotations) is expected


def test_scopes_per_class() -> None:
    both = ToolPolicy(write_scope="w", destructive_scope="d")
    assert both.scopes_for(ToolClass.READ_ONLY) == frozenset()
    assert both.scopes_for(ToolClass.WRITE) == {"w"}
    assert both.scopes_for(ToolClass.DESTRUCTIVE) == {"w", "d"}
    only_destructive = ToolPolicy(destructive_scope="d")
    assert only_destructive.scopes_for(ToolClass.WRITE) == frozenset()
    assert only_destructive.scopes_for(ToolClass.DESTRUCTIVE) == {"d"}


def test_visibility() -> None:
    policy = ToolPolicy(deny=["secret*"], write_scope="w")
    read_only = {"name": "look", "annotations": {"readOnlyHint": True}}
    writes = {"name": "poke", "annotations": {"destructiveHint": False}}
    assert policy.visible(read_only, frozenset())
    assert not policy.visible(writes, frozenset())
    assert policy.visible(writes, frozenset({"w"}))
    assert not policy.visible({"name": "secret_look", "annotations": {"readOnlyHint": True}}, frozenset({"w"}))
    assert not policy.visible({"annotations": {"readOnlyHint": True}}, frozenset({"w"}))  # no name
    assert not policy.visible("look", frozenset({"w"}))


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("read_*", None),
        ("[]]x", None),  # a leading ']' is a member of the set
        ("[!]]x", None),
        ("a]b", None),  # a lone ']' is literal
        ("", "is empty"),
        ("  ", "is empty"),
        ("tool_[abc", "has an unclosed '[' at position 5"),
        ("[", "has an unclosed '[' at position 0"),
        ("[]", "has an unclosed '[' at position 0"),
        ("ok[a]then[", "has an unclosed '[' at position 9"),
    ],
)
def test_glob_syntax(pattern: str, problem: str | None) -> None:
    assert glob_problem(pattern) == problem


def test_shown_names_are_bounded_and_printable() -> None:
    assert shown("plain_name") == "plain_name"
    assert shown("a\nb\x1bc") == "a?b?c"
    long = shown("x" * 1000)
    assert long == "x" * 128 + "…"


def test_no_policy_configured_means_none() -> None:
    assert ToolPolicy.from_settings(Settings(command=[PY])) is None
    policy = ToolPolicy.from_settings(Settings(command=[PY], tool_deny=["rm"]))
    assert policy is not None
    assert not policy.permits("rm")


def test_every_policy_problem_is_reported_at_once() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(
            command=[PY],
            tool_allow=["read_*", "tool_[abc"],
            tool_deny=["", "[x"],
            tool_scope_write="tools write",
            tool_scope_destructive="tools:destructive",
        )
    problems = describe_errors(caught.value)
    assert problems == [
        "tool_allow: 'tool_[abc' has an unclosed '[' at position 5",
        "tool_deny: '' is empty; '[x' has an unclosed '[' at position 0",
        "tool_scope_write: 'tools write' is not one OAuth scope token "
        "(RFC 6749: visible ASCII but no quote or backslash)",
        "tool_scope_destructive: a tool scope needs authentication: with auth none no caller holds any scope",
    ]


@pytest.mark.parametrize("scope", ['quo"te', "back\\slash", "tab\there", "ünï", ""])
def test_scopes_must_be_scope_tokens(scope: str) -> None:
    with pytest.raises(ValidationError, match="not one OAuth scope token"):
        Settings(command=[PY], tool_scope_write=scope, **STATIC)


def test_policy_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_GATEWAY_TOOL_DENY", "delete_*, drop_*")
    monkeypatch.setenv("MCP_GATEWAY_TOOL_ALLOW", '["read_*", "delete_*"]')
    monkeypatch.setenv("MCP_GATEWAY_TOOL_SCOPE_WRITE", "mcp:write")
    settings = Settings(command=[PY], **STATIC)
    assert settings.tool_deny == ["delete_*", "drop_*"]
    assert settings.tool_allow == ["read_*", "delete_*"]
    assert settings.tool_scope_write == "mcp:write"


async def test_a_sessions_catalog_is_the_policys_and_ends_with_its_router() -> None:
    """The policy keeps each session's catalog, plugged into the router's one interceptor slot;
    it holds the router only weakly, so the catalog goes when the session's router goes."""
    tool_filter = ToolFilter(ToolPolicy(write_scope="tools:write"), list_timeout=1.0, audit=Audit(None))
    router = Router(label="test", request_timeout=1.0, violation_limit=1, on_close=lambda _: None)
    listing = jsonrpc.classify({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    screening = await tool_filter.screen(router, [listing], ANONYMOUS)
    assert screening is not None
    assert list(screening.intercepted) == [0]
    assert isinstance(router.interceptor, ToolCatalog)
    router.interceptor.classes["peek"] = ToolClass.READ_ONLY
    changed = jsonrpc.classify({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
    assert router.interceptor.intercept(changed) is False  # seen, forwarded unchanged
    assert router.interceptor.classes == {}
    session_router = weakref.ref(router)
    del router, screening
    gc.collect()
    assert session_router() is None  # the policy's catalogs keep no session alive
