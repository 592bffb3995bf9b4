"""Tool policy: which tools a caller may see and call, by name and by MCP tool annotations.

Owns the allow and deny globs, the scope class of a tool (from its `readOnlyHint` and
`destructiveHint`, with the spec's defaults: not read-only, destructive), what each session has
learned of its child's tools (a `ToolCatalog` per router, kept here, never on the router), and
every refusal of a tool call. It reaches a session's traffic through what the router offers any
policy, its `Interceptor` (and asks the child for its tool list with `Router.ask`): the `Screening`
of a POST refuses calls and gives each `tools/list` an interceptor that filters the child's answer;
the session's catalog, in the router's interceptor slot, watches for
`notifications/tools/list_changed`.

Invariants:
- With no policy configured nothing here runs: the app holds no filter, so no message is
  inspected and no response re-encoded on its account.
- A tool denied by name is listed to no one and never reaches the child: a call to it is
  answered with -32602 by the gateway. A tool whose class needs a scope the caller's token lacks
  is not listed to that caller, and a call to it is refused with 403 `insufficient_scope`
  (`InsufficientScope`, whose challenge the bearer middleware renders) before anything of that
  POST reaches the child.
- Annotations come from the child's own `tools/list` answers, never from a client. A call naming
  a tool the session has not seen listed since the child's last `notifications/tools/list_changed`
  makes the gateway list the child's tools itself (every page, within the request timeout)
  before deciding.
- The policy fails closed: a tool whose class the gateway could not learn — the child does not
  list it, or its listing did not come back as a list of tools — counts as destructive (as a tool
  without annotations does), so a call to it needs every scope.
- Every refusal passes through `ToolFilter.record_denial`.
"""

from __future__ import annotations

import asyncio
import enum
import fnmatch
import logging
import re
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from gateway import jsonrpc
from gateway.errors import GatewayError, InsufficientScope
from gateway.jsonrpc import Kind, Message
from gateway.observe.audit import Audit
from gateway.sessions import failures
from gateway.sessions.child import ChildGone, StdinStalled
from gateway.sessions.router import Router, Screening

if TYPE_CHECKING:
    from gateway.auth import Principal
    from gateway.config import Settings

log = logging.getLogger("gateway.policy")

# A child that keeps answering with a `nextCursor` is not followed past this many pages.
MAX_LIST_PAGES: Final = 100
# Tool names are the client's own input: this much of one is echoed in an error or a log record.
MAX_SHOWN_NAME: Final = 128
# The child's word that what it listed of its tools no longer holds.
TOOLS_CHANGED: Final = "notifications/tools/list_changed"

DenialReason = Literal["denied", "scope"]


class ToolClass(enum.Enum):
    """What a tool may do, as its annotations describe it."""

    READ_ONLY = "read_only"
    WRITE = "write"  # not read-only, and explicitly not destructive
    DESTRUCTIVE = "destructive"


def tool_class(annotations: object) -> ToolClass:
    """The class of a tool from its `annotations`; anything absent or not a boolean takes the
    spec's default (`readOnlyHint` false, `destructiveHint` true), so unknown means destructive."""
    if not isinstance(annotations, dict):
        return ToolClass.DESTRUCTIVE
    if annotations.get("readOnlyHint") is True:
        return ToolClass.READ_ONLY
    if annotations.get("destructiveHint") is False:
        return ToolClass.WRITE
    return ToolClass.DESTRUCTIVE


def _compile(patterns: Sequence[str]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(pattern)})" for pattern in patterns))


def shown(name: str) -> str:
    """A tool name as it may appear in an error message or a log record: bounded, printable."""
    text = "".join(char if char.isprintable() else "?" for char in name[:MAX_SHOWN_NAME])
    return text + "…" if len(name) > MAX_SHOWN_NAME else text


class ToolPolicy:
    """The configured rules: name globs (deny wins) and the scopes of the two write classes."""

    __slots__ = ("_allow", "_deny", "destructive_scope", "write_scope")

    def __init__(
        self,
        *,
        allow: Sequence[str] = (),
        deny: Sequence[str] = (),
        write_scope: str | None = None,
        destructive_scope: str | None = None,
    ) -> None:
        self._allow = _compile(allow)
        self._deny = _compile(deny)
        self.write_scope = write_scope
        self.destructive_scope = destructive_scope

    @classmethod
    def from_settings(cls, settings: Settings) -> ToolPolicy | None:
        """The policy, or None when none is configured (then nothing is checked at all)."""
        scopes = (settings.tool_scope_write, settings.tool_scope_destructive)
        if not (settings.tool_allow or settings.tool_deny) and scopes == (None, None):
            return None
        return cls(
            allow=settings.tool_allow,
            deny=settings.tool_deny,
            write_scope=settings.tool_scope_write,
            destructive_scope=settings.tool_scope_destructive,
        )

    @property
    def uses_annotations(self) -> bool:
        return self.write_scope is not None or self.destructive_scope is not None

    def permits(self, name: str) -> bool:
        """Whether the name may be used at all: not denied, and allowed (an empty allow list allows all)."""
        if self._deny is not None and self._deny.match(name):
            return False
        return self._allow is None or self._allow.match(name) is not None

    def scopes_for(self, kind: ToolClass) -> frozenset[str]:
        """Every scope a token needs for a tool of this class."""
        if kind is ToolClass.READ_ONLY:
            return frozenset()
        scopes = {self.write_scope} if self.write_scope is not None else set()
        if kind is ToolClass.DESTRUCTIVE and self.destructive_scope is not None:
            scopes.add(self.destructive_scope)
        return frozenset(scopes)

    def visible(self, tool: object, scopes: frozenset[str]) -> bool:
        """Whether a `tools/list` entry is shown to a caller holding `scopes` (malformed entries never are)."""
        if not isinstance(tool, dict):
            return False
        name = tool.get("name")
        if not isinstance(name, str) or not self.permits(name):
            return False
        return not self.uses_annotations or self.scopes_for(tool_class(tool.get("annotations"))) <= scopes


class ToolCatalog:
    """What one session's child has listed about its tools since its last `list_changed`.

    The session's `Interceptor`: it forgets everything when the child says its tools changed.
    """

    __slots__ = ("classes", "complete", "generation", "lock")

    def __init__(self) -> None:
        self.classes: dict[str, ToolClass] = {}
        self.complete = False  # the gateway itself listed every page since the last change
        self.generation = 0
        self.lock = asyncio.Lock()  # one gateway-originated listing at a time

    def learn(self, tools: Iterable[object]) -> None:
        for tool in tools:
            if isinstance(tool, dict) and isinstance(name := tool.get("name"), str):
                self.classes[name] = tool_class(tool.get("annotations"))

    def forget(self) -> None:
        """The child's tools changed: nothing known about them holds any more."""
        self.classes.clear()
        self.complete = False
        self.generation += 1

    def intercept(self, message: Message) -> bool:
        if message.method == TOOLS_CHANGED:
            self.forget()
        return False  # seen, never changed


class ToolListFilter:
    """The `Interceptor` of one `tools/list`: learns every tool the child lists, and shows the
    caller only those its scopes allow (the child's bytes go on unchanged when it may see all)."""

    __slots__ = ("_catalog", "_policy", "_scopes")

    def __init__(self, policy: ToolPolicy, scopes: frozenset[str], catalog: ToolCatalog | None) -> None:
        self._policy = policy
        self._scopes = scopes
        self._catalog = catalog  # None when the policy does not use annotations

    def intercept(self, message: Message) -> bool:
        result = message.body.get("result")
        tools = result.get("tools") if isinstance(result, dict) else None
        if not isinstance(result, dict) or not isinstance(tools, list):
            return False
        if self._catalog is not None:
            self._catalog.learn(tools)
        kept = [tool for tool in tools if self._policy.visible(tool, self._scopes)]
        if len(kept) == len(tools):
            return False  # unchanged: the child's bytes are forwarded as they are
        result["tools"] = kept  # `nextCursor` and everything else stay as the child wrote them
        return True


@dataclass(frozen=True, slots=True)
class Denial:
    """One refused tool call, as data: what the log (and later audit and metrics) record."""

    tool: str  # already bounded and printable
    reason: DenialReason
    principal: Principal
    session: str
    scope: str | None = None  # the scopes the call needed, for reason "scope"


class ToolFilter:
    """Applies a `ToolPolicy` to the messages of each POST, for its principal and its session.

    Each session's catalog is kept here, by router, weakly: it lives exactly as long as its
    session's router, and nothing of the session store need know that a policy exists.
    """

    def __init__(self, policy: ToolPolicy, list_timeout: float, audit: Audit) -> None:
        self.policy = policy
        self._list_timeout = list_timeout
        self._audit = audit
        self._catalogs: weakref.WeakKeyDictionary[Router, ToolCatalog] = weakref.WeakKeyDictionary()

    async def screen(self, router: Router, messages: Sequence[Message], principal: Principal) -> Screening | None:
        """Decide on every `tools/list` and `tools/call` of a POST; None when none is in it.

        Raises `InsufficientScope` when a call needs a scope the principal lacks: then nothing of
        the POST is forwarded.
        """
        screening: Screening | None = None
        for index, message in enumerate(messages):
            if message.kind is not Kind.REQUEST:
                continue
            if message.method == "tools/list":
                screening = screening or Screening()
                catalog = self._catalog(router) if self.policy.uses_annotations else None
                screening.intercepted[index] = ToolListFilter(self.policy, principal.scopes, catalog)
            elif message.method == "tools/call":
                name = message.params.get("name")
                if not isinstance(name, str):
                    # No tool has such a name, but a child may turn it into one (["x"] → "x"):
                    # refused here, never forwarded past the policy.
                    self.record_denial(Denial("?", "denied", principal, router.label))
                    screening = screening or Screening()
                    screening.refused[index] = (jsonrpc.INVALID_PARAMS, "Invalid params: a tool name is a string")
                    continue
                if not self.policy.permits(name):
                    self.record_denial(Denial(shown(name), "denied", principal, router.label))
                    screening = screening or Screening()
                    screening.refused[index] = (jsonrpc.INVALID_PARAMS, f"Tool not allowed: {shown(name)}")
                elif self.policy.uses_annotations:
                    await self._check_scopes(router, name, principal)
        return screening

    def record_denial(self, denial: Denial) -> None:
        """The one place every refusal of a tool call passes through.

        A missing scope is audited as the authorization failure it is; a denied name is audited
        with its request, as outcome `denied`, once the router has answered it.
        """
        if denial.reason == "scope":
            self._audit.record(
                "auth.fail",
                principal=denial.principal,
                reason="insufficient_scope",
                tool=denial.tool,
                scope=denial.scope,
            )
        log.info(
            "tool call refused",
            extra={
                "tool": denial.tool,
                "reason": denial.reason,
                "scope": denial.scope,
                "subject": denial.principal.subject,
                "session": denial.session,
            },
        )

    async def _check_scopes(self, router: Router, name: str, principal: Principal) -> None:
        kind = await self._class_of(router, name)
        if kind is None:
            kind = ToolClass.DESTRUCTIVE  # not listed: nothing says what it does, so it needs every scope
        needed = self.policy.scopes_for(kind)
        if needed <= principal.scopes:
            return
        self.record_denial(Denial(shown(name), "scope", principal, router.label, scope=" ".join(sorted(needed))))
        raise InsufficientScope(needed)

    def _catalog(self, router: Router) -> ToolCatalog:
        """The session's catalog, made (and plugged into its router) the first time it is needed."""
        catalog = self._catalogs.get(router)
        if catalog is None:
            catalog = self._catalogs[router] = ToolCatalog()
            router.interceptor = catalog
        return catalog

    async def _class_of(self, router: Router, name: str) -> ToolClass | None:
        catalog = self._catalog(router)
        kind = catalog.classes.get(name)
        if kind is not None or catalog.complete:
            return kind
        try:
            async with asyncio.timeout(self._list_timeout), catalog.lock:
                if name not in catalog.classes and not catalog.complete:  # another call may have listed them
                    await self._list_tools(router, catalog)
        except TimeoutError:
            raise GatewayError("upstream_stalled", "The MCP server did not list its tools in time") from None
        return catalog.classes.get(name)

    async def _list_tools(self, router: Router, catalog: ToolCatalog) -> None:
        """List every page of the child's tools into `catalog`, as the gateway's own requests."""
        generation = catalog.generation
        cursor: str | None = None
        try:
            for _ in range(MAX_LIST_PAGES):
                response = await router.ask("tools/list", {} if cursor is None else {"cursor": cursor})
                result = response.get("result")
                tools = result.get("tools") if isinstance(result, dict) else None
                if not isinstance(result, dict) or not isinstance(tools, list):
                    # An error, or not a tool list: nothing is learned, so the tool counts as destructive.
                    log.warning("the MCP server did not list its tools", extra={"session": router.label})
                    return
                catalog.learn(tools)
                cursor = result.get("nextCursor")
                if not isinstance(cursor, str) or not cursor:
                    catalog.complete = generation == catalog.generation
                    return
        except (ChildGone, StdinStalled) as failure:
            raise failures.refusal(failure) from None
        log.warning("the MCP server lists more than %d pages of tools", MAX_LIST_PAGES, extra={"session": router.label})
