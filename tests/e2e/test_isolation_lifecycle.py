"""Zero leftovers in every isolation mode, the gateway a real subprocess (`python -m gateway serve`).

Each session's child is the spy server run by the system's Python; it reports who it is, its
private `HOME` and its PID namespace, and leaves a sleeper behind in a session of its own, out of
the child's process group, the one a group kill cannot reach. However a session ends (DELETE, idle
TTL, the server killed from outside, with namespaces bubblewrap killed from outside) and however
the gateway stops (SIGTERM, SIGKILL: then it is the orphan watchdog's job, and bubblewrap's
`--die-with-parent`), nothing that its isolation must take may survive:

- `uid`: no process of the child's user, the sleeper included; its private directory removed and
  its user ID given back.
- `namespaces`: no process of the child's PID namespace, whatever group or session it moved to
  (the end of bubblewrap's init there ends them all), none of the group the gateway started, and
  its private directory removed.
- `uid+namespaces`: both.
- `none` is the control: there the group kill takes the child, and the sleeper survives, because
  only a user or a PID namespace of its own reaches a process that left the group. The control
  asserts that, so a leak-free `none` mode would show up here as a changed observation.
After the gateway stops, the directory of every child's private one is gone as well.

The gateway runs as this test's user, except for `namespaces` alone while that is the host's root
(as in CI), which may not give its children that mode: then the gateway runs as `nobody`, with no
capability (tests/support/unprivileged.py), and its children as `nobody` in namespaces of their own.

Processes are named from the host's side. The gateway's child is the pid of its `child.spawn`
audit line; with namespaces that is the outer bubblewrap, whose one child is bubblewrap's init
(pid 1 of the child's PID namespace) and whose grandchild is the server. The spy's pids are those
of its namespace; each is matched to the host's through `NSpid` in /proc/<pid>/status, and checked
against what the spy said. The test holds a descriptor of each child's PID namespace, so that its
inode number is not given to another namespace while the test looks for leftovers in it (any
process whose /proc/<pid>/ns/pid is that namespace).

A last test gives the child a descendant that keeps changing its pid (fork, then the parent
exits): one `kill(-1)` made as the child's user and the end of the child's PID namespace each end
it, which no fork outruns (a sweep of /proc, pid by pid, could be).

Every test SIGKILLs, in its `finally`, every process of the users its children ran as and of the
namespaces it holds, and, in `none` mode, the processes it saw by pid, so a failing test never
leaks; an unprivileged gateway's launcher kills what it started by pid, group and namespace, never
by user.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import anyio
import mcp
import pytest
from aiohttp import ClientSession

from gateway.config.child import ChildIsolationSettings
from gateway.sessions.bubblewrap import is_host_root
from gateway.sessions.sandbox import SHELL, IsolationRequest, IsolationUnavailable, decide
from tests.support.gateway_process import GatewayProcess, HttpMcp, running_gateway
from tests.support.isolation import bubblewrap_problem, uid_released
from tests.support.processes import (
    children_of,
    descendants,
    group_members,
    live_processes,
    namespace_pids,
    pid_namespace,
    pid_namespace_members,
)
from tests.support.servers import ECHO_SERVER, SERVERS
from tests.support.types import JsonObj
from tests.support.unprivileged import NOBODY, unprivileged_gateway
from tests.support.unprivileged import WHY_NOT as UNPRIVILEGED_PROBLEM
from tests.support.waits import POLL, WAIT, eventually

SYSTEM_PYTHON: Final = Path("/usr/bin/python3")  # the venv's lives under /root, which other users cannot enter
SPY_SERVER: Final = SERVERS / "spy_server.py"
FIRST_UID, LAST_UID = ChildIsolationSettings().child_uids()  # the default range

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SYSTEM_PYTHON.is_file(), reason=f"the children run under {SYSTEM_PYTHON}, which is missing"),
]

Isolation = Literal["none", "uid", "namespaces", "uid+namespaces"]
ISOLATIONS: Final[tuple[Isolation, ...]] = ("none", "uid", "namespaces", "uid+namespaces")
SESSIONS: Final = 3
SLEEPER_SECONDS: Final = 300  # far longer than any test: only a kill ends it in time
# The orphan watchdog SIGTERMs, waits 2 s, SIGKILLs, then sweeps the users; generous for a loaded machine.
GUARD_CLEANUP_WAIT: Final = 15.0
IDLE_TTL: Final = 2.0  # long enough for the few calls that set two sessions up, on a loaded machine too


def uses_uid(isolation: Isolation) -> bool:
    return isolation in ("uid", "uid+namespaces")


def uses_namespaces(isolation: Isolation) -> bool:
    return isolation in ("namespaces", "uid+namespaces")


def unprivileged(isolation: Isolation) -> bool:
    """Whether the gateway runs as `nobody` for `isolation`: namespaces alone, which the host's
    root may not give its children."""
    return isolation == "namespaces" and is_host_root()


def why_not(isolation: Isolation) -> str | None:
    """Why the spy cannot run with `isolation` on this host (None: it can), as the gateway decides
    it at startup: by running the spy's program the way children run it (as `nobody` behind
    bubblewrap, for an unprivileged gateway, which then decides the same)."""
    if isolation == "none" or not SYSTEM_PYTHON.is_file():
        return None
    if unprivileged(isolation):
        return UNPRIVILEGED_PROBLEM or bubblewrap_problem(NOBODY)
    try:
        asyncio.run(decide(IsolationRequest(isolation, str(SYSTEM_PYTHON), (FIRST_UID, LAST_UID))))
    except IsolationUnavailable as exc:
        return str(exc)
    return None


UNAVAILABLE: Final = {isolation: why_not(isolation) for isolation in ISOLATIONS}


def isolated(isolation: Isolation, *values: object) -> pytest.ParameterSet:
    """One case of a table: `values`, then `isolation`; skipped when the host cannot have it."""
    problem = UNAVAILABLE[isolation]
    return pytest.param(
        *values,
        isolation,
        id="-".join([*map(str, values), isolation]),
        marks=pytest.mark.skipif(problem is not None, reason=str(problem)),
    )


@dataclass(frozen=True, slots=True)
class HeldNamespace:
    """A child's PID namespace, held by an open descriptor of it: while it is held, its inode number
    is not given to any other namespace, so a process found in it belongs to the child."""

    fd: int
    key: tuple[int, int]  # (device, inode), as `pid_namespace` gives it
    init: int  # bubblewrap's init, pid 1 in there, as the host numbers it

    @classmethod
    def of(cls, init: int) -> HeldNamespace:
        fd = os.open(f"/proc/{init}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        info = os.fstat(fd)
        return cls(fd, (info.st_dev, info.st_ino), init)

    @property
    def inode(self) -> int:
        return self.key[1]

    def members(self) -> set[int]:
        return pid_namespace_members(self.key)

    def host_pid(self, pid: int) -> int:
        """The host's pid of the process that is `pid` in this namespace."""
        found = [member for member in self.members() if namespace_pids(member)[-1:] == [pid]]
        assert len(found) == 1, f"no single process is {pid} in PID namespace {self.inode}: {found}"
        return found[0]


@dataclass(frozen=True, slots=True)
class Spied:
    """One session's child, as it described itself and as the host sees it (host pids)."""

    uid: int
    leader: int  # the gateway's child, its `child.spawn` pid: the server, or with namespaces the outer bubblewrap
    server: int  # the MCP server itself
    home: Path
    namespace: HeldNamespace | None  # with namespaces
    sleeper: int | None = None  # a grandchild in a session (and process group) of its own

    @property
    def directory(self) -> Path:
        """The child's private directory on the host (inside namespaces, bound at the same path)."""
        return self.home.parent

    def processes(self) -> set[int]:
        """Every process the test knows of it."""
        known = {self.leader, self.server} | ({self.sleeper} if self.sleeper is not None else set())
        return known | ({self.namespace.init} if self.namespace is not None else set())


@dataclass(slots=True)
class Seen:
    """Everything a test's children ran as or started, for the checks and the cleanup."""

    isolation: Isolation
    sessions: list[Spied] = field(default_factory=list)
    uids: set[int] = field(default_factory=set)  # with user IDs, every user a child ran as
    namespaces: list[HeldNamespace] = field(default_factory=list)  # with namespaces, each child's

    @property
    def children_root(self) -> Path | None:
        """With isolation, the directory that holds every child's private one."""
        if self.isolation == "none" or not self.sessions:
            return None
        return self.sessions[0].directory.parent


# --- processes by user and by namespace ---------------------------------------------------------


def users_of(pid: int) -> set[int]:
    """Real, effective, saved and filesystem user IDs of `pid` (empty once it is gone). Read from
    /proc/<pid>/status: the owner of /proc/<pid> is root for a process that is not dumpable."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return {int(uid) for uid in line.split()[1:]}
    return set()


def processes_of(uids: set[int]) -> set[int]:
    """Live (non-zombie) processes running as any of `uids`."""
    return {pid for pid, _, _ in live_processes() if users_of(pid) & uids}


def alive(pid: int) -> bool:
    return any(live == pid for live, _, _ in live_processes())


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def environment_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (entry.split(b"=", 1) for entry in raw.split(b"\0") if b"=" in entry)
    return {os.fsdecode(name): os.fsdecode(value) for name, value in pairs}


def watchdog_of(gateway: GatewayProcess) -> int:
    guards = [pid for pid in descendants(gateway.process.pid) if b"watchdog.py" in cmdline(pid)]
    assert len(guards) == 1, f"expected one orphan watchdog, found {guards}"
    return guards[0]


def leftovers(spied: Spied, isolation: Isolation) -> set[int]:
    """The live processes of a child that its isolation must end: its process group; with a user of
    its own every process of that user; with namespaces every process of its PID namespace."""
    left = group_members({spied.leader})
    if uses_uid(isolation):
        left |= processes_of({spied.uid})
    if spied.namespace is not None:
        left |= spied.namespace.members()
    return left


def gone(spied: Spied, isolation: Isolation) -> bool:
    """Whether nothing of the child is left that its isolation must take (its directory included)."""
    return not leftovers(spied, isolation) and (isolation == "none" or not spied.directory.exists())


def remains(seen: Seen, spied: list[Spied]) -> list[tuple[int, list[int], bool]]:
    """For a failed check: each child's leader, the processes left of it, whether its directory is."""
    isolation = seen.isolation
    return [(one.leader, sorted(leftovers(one, isolation)), one.directory.exists()) for one in spied]


def kill_every_process_of(uid: int) -> None:
    """`kill -KILL -1` as `uid`: one system call that reaches every process of the user, even one
    that keeps changing its pid (which a sweep of /proc can miss)."""
    subprocess.run(
        [SHELL, "-c", "kill -KILL -1"],
        user=uid,
        group=uid,
        extra_groups=[],
        env={},
        cwd="/",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=WAIT,
        check=False,
    )


def kill_namespace(namespace: HeldNamespace) -> None:
    """SIGKILL every process of a held namespace until none is left (its init's end ends the rest)."""
    deadline = time.monotonic() + WAIT
    while (members := namespace.members()) and time.monotonic() < deadline:
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(POLL)


@contextlib.contextmanager
def leftovers_killed(isolation: Isolation) -> Iterator[Seen]:
    """Yield what the test records; afterwards SIGKILL all of it that lives: every process of the
    test's users and of its namespaces, and (in `none` mode) the processes seen by pid that still
    run the spy's code."""
    seen = Seen(isolation)
    try:
        yield seen
    finally:
        for namespace in seen.namespaces:
            kill_namespace(namespace)
            os.close(namespace.fd)
        assert all(FIRST_UID <= uid <= LAST_UID for uid in seen.uids), seen.uids  # never sweep a real user
        for uid in seen.uids:
            if uid_released(uid):  # the test's gateway has exited: a user held now is another gateway's child
                kill_every_process_of(uid)
        if isolation == "none":
            for spied in seen.sessions:
                for pid in (spied.sleeper, spied.server):
                    if pid is not None and (b"spy_server.py" in cmdline(pid) or b"time.sleep" in cmdline(pid)):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
        if (root := seen.children_root) is not None and root.name.startswith("mcp-gateway-children-"):
            shutil.rmtree(root, ignore_errors=True)


# --- sessions with the spy ---------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(isolation: Isolation, workdir: Path, settings: Mapping[str, str]) -> AsyncIterator[GatewayProcess]:
    """A gateway with `settings` whose children get `isolation`: run as this test's user in
    `workdir`, or as `nobody` in a working directory of its own (`unprivileged`)."""
    if unprivileged(isolation):
        async with unprivileged_gateway(settings) as gateway:
            assert user_of(gateway) == NOBODY
            yield gateway
    else:
        async with running_gateway(workdir, settings) as gateway:
            yield gateway


def user_of(gateway: GatewayProcess) -> int:
    """The user the gateway runs as (every one of its IDs)."""
    [uid] = users_of(gateway.process.pid)
    return uid


def settings_for(
    isolation: Isolation, server: Path = SPY_SERVER, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    return {
        "command": json.dumps([str(SYSTEM_PYTHON), str(server)]),
        "child_isolation": isolation,
        "child_readable_paths": str(SERVERS),  # in the children's view even from a checkout under /tmp
        "audit_log": "stderr",  # the JSON audit lines join the log the helper keeps
        **(extra or {}),
    }


async def spy(mcp_session: HttpMcp, tool: str, **arguments: Any) -> JsonObj:
    status, messages = await mcp_session.call(mcp_session.tool_call(tool, **arguments))
    assert status == 200, messages
    report: JsonObj = json.loads(messages[-1]["result"]["content"][0]["text"])
    assert report["ok"], report
    return report


def spawned(gateway: GatewayProcess) -> list[JsonObj]:
    return [entry for entry in gateway.log if entry.get("event") == "child.spawn"]


async def locate(gateway: GatewayProcess, seen: Seen) -> tuple[JsonObj, HeldNamespace | None]:
    """The next child's audit line and, with namespaces, its PID namespace, found from the line's pid
    down (held, and recorded in `seen` with the child's user before anything else can fail)."""
    index = len(seen.sessions)
    assert await eventually(lambda: len(spawned(gateway)) > index), spawned(gateway)
    line = spawned(gateway)[index]
    if line["uid"] is not None:
        seen.uids.add(line["uid"])
    leader: int = line["pid"]
    assert leader in descendants(gateway.process.pid), line
    if not uses_namespaces(seen.isolation):
        return line, None
    host = pid_namespace(os.getpid())
    assert pid_namespace(leader) == host  # the outer bubblewrap is the host's
    inits = children_of(leader)
    assert len(inits) == 1, f"the outer bubblewrap {leader} has children {inits}"
    namespace = HeldNamespace.of(inits.pop())
    seen.namespaces.append(namespace)
    assert namespace.key != host
    assert namespace_pids(namespace.init)[1:] == [1]  # one level down, its init
    return line, namespace


def server_of(line: JsonObj, namespace: HeldNamespace | None, inner: int | None = None) -> int:
    """The host pid of the MCP server: the gateway's child itself, or in namespaces the child of
    bubblewrap's init that is `inner` there (without `inner`: its only child)."""
    if namespace is None:
        return int(line["pid"])
    if inner is not None:
        server = namespace.host_pid(inner)
        assert server in children_of(namespace.init), (server, namespace)
        return server
    servers = children_of(namespace.init)
    assert len(servers) == 1, f"bubblewrap's init {namespace.init} has children {servers}"
    return servers.pop()


async def open_spied(http: ClientSession, gateway: GatewayProcess, seen: Seen) -> tuple[HttpMcp, Spied]:
    """A session whose child said who it is and left a sleeper behind, out of its process group."""
    session = HttpMcp(http, gateway.url)
    await session.initialize()
    line, namespace = await locate(gateway, seen)
    me = await spy(session, "whoami")
    server = server_of(line, namespace, me["pid"])
    sleeper = await spy(session, "spawn_sleeper", seconds=SLEEPER_SECONDS)
    assert sleeper["pgid"] == sleeper["sid"] == sleeper["pid"] != me["pid"]  # it left the child's group
    if namespace is None:
        assert me["pid"] == server == line["pid"], (me, line)
        sleeper_pid = sleeper["pid"]
    else:  # the spy's pids are its namespace's
        assert me["pid_ns"] == f"pid:[{namespace.inode}]", me
        assert me["pids"]["first"][:2] == [1, me["pid"]]  # its /proc starts at its init, then itself
        sleeper_pid = namespace.host_pid(sleeper["pid"])
    spied = Spied(me["uid"], line["pid"], server, Path(me["HOME"]), namespace, sleeper_pid)
    seen.sessions.append(spied)
    assert spied.uid == (line["uid"] if uses_uid(seen.isolation) else user_of(gateway)), (me, line)
    assert sleeper_pid not in group_members({spied.leader})
    assert users_of(spied.leader) == users_of(sleeper_pid) == {spied.uid}
    if seen.isolation == "none":
        assert group_members({spied.leader}) == {spied.server}
        return session, spied
    if uses_uid(seen.isolation):
        assert FIRST_UID <= spied.uid <= LAST_UID, me
    assert me["NoNewPrivs"] == 1
    assert me["TMPDIR"] == str(spied.directory / "tmp")
    written = await spy(session, "write_file", path=str(spied.home / "note"), text="private")
    assert (written["uid"], written["mode"]) == (spied.uid, "0600")
    assert (spied.home / "note").read_text() == "private"  # on the host, at the same path
    assert spied.directory.stat().st_mode & 0o777 == 0o700
    assert spied.processes() <= leftovers(spied, seen.isolation)  # the check sees all of it
    return session, spied


def check_audit(gateway: GatewayProcess, seen: Seen) -> None:
    """Each `child.spawn` line names the isolation, the user its child ran as and its leader."""
    lines = spawned(gateway)
    assert [line["isolation"] for line in lines] == [seen.isolation] * len(seen.sessions)
    expected = [spied.uid if uses_uid(seen.isolation) else None for spied in seen.sessions]
    assert [line["uid"] for line in lines] == expected
    assert [line["pid"] for line in lines] == [spied.leader for spied in seen.sessions]


def check_startup(gateway: GatewayProcess, isolation: Isolation) -> None:
    assert any(entry.get("msg") == f"child isolation: {isolation}" for entry in gateway.log)


def report(what: str, **observed: object) -> None:
    """What a test observed, for `pytest -s` (the timings are shown, never asserted)."""
    print(f"\n[isolation-lifecycle] {what}: " + ", ".join(f"{key}={value}" for key, value in observed.items()))


# --- a session ends ----------------------------------------------------------------------------

# How a session ends: its client deletes it; it stays idle past the TTL; its MCP server is killed
# from outside; with namespaces, the gateway's own child, the outer bubblewrap, is.
SESSION_ENDINGS: Final = [
    isolated(isolation, ending)
    for ending in ("delete", "idle-ttl", "crash", "bwrap-killed")
    for isolation in ISOLATIONS
    if ending != "bwrap-killed" or uses_namespaces(isolation)
]


@pytest.mark.parametrize(("ending", "isolation"), SESSION_ENDINGS)
async def test_nothing_of_a_child_survives_the_end_of_its_session(
    ending: str, isolation: Isolation, tmp_path: Path
) -> None:
    """One session ends; nothing its isolation must take is left of its child, its escaped sleeper
    included, its directory removed and its user ID given back, while the other sessions live on
    (the idle TTL ends them all)."""
    extra = {"session_idle_ttl": str(IDLE_TTL)} if ending == "idle-ttl" else {}
    with leftovers_killed(isolation) as seen:
        async with (
            serving(isolation, tmp_path, settings_for(isolation, extra=extra)) as gateway,
            ClientSession() as http,
        ):
            check_startup(gateway, isolation)
            sessions = [await open_spied(http, gateway, seen) for _ in range(SESSIONS if ending != "idle-ttl" else 2)]
            check_audit(gateway, seen)
            for _, spied in sessions:  # nothing of a child the test does not know of
                assert leftovers(spied, isolation) == (spied.processes() if isolation != "none" else {spied.server})
            if uses_uid(isolation):
                assert len(seen.uids) == len(sessions)  # a user of its own each
            if uses_namespaces(isolation):
                assert len({namespace.key for namespace in seen.namespaces}) == len(sessions)  # a namespace each
            ended = [spied for _, spied in sessions] if ending == "idle-ttl" else [sessions[0][1]]
            survivors = [spied for _, spied in sessions if spied not in ended]

            first, victim = sessions[0]
            started = time.monotonic()
            if ending == "delete":
                async with http.delete(gateway.url, headers=first.headers()) as response:
                    assert response.status == 204
            elif ending == "crash":
                os.kill(victim.server, signal.SIGKILL)  # from outside: the server dies without a word
            elif ending == "bwrap-killed":
                os.kill(victim.leader, signal.SIGKILL)

            assert await eventually(lambda: all(gone(spied, isolation) for spied in ended)), remains(seen, ended)
            took = time.monotonic() - started
            for session, _ in sessions[: len(ended)]:
                status, _ = await session.call(session.request("ping"))
                assert status == 404
            for spied in survivors:  # one child's end never reaches another's processes
                assert all(alive(pid) for pid in spied.processes()), spied
            for session, _ in sessions[len(ended) :]:
                assert (await session.call(session.request("ping")))[0] == 200

            if uses_uid(isolation):
                assert await eventually(lambda: all(uid_released(spied.uid) for spied in ended))
                assert all(not uid_released(spied.uid) for spied in survivors)
            if isolation == "none":
                # The control: the group kill took each child; the sleeper that left the group lives.
                escaped = [spied.sleeper for spied in ended if spied.sleeper is not None and alive(spied.sleeper)]
                assert len(escaped) == len(ended), "a none-mode sleeper outside the group was killed"
                report(ending, isolation=isolation, ended=len(ended), escaped_sleepers=len(escaped))
            else:
                report(ending, isolation=isolation, ended=len(ended), left=0, seconds=f"{took:.2f}")
            assert await eventually(
                lambda: len([e for e in gateway.log if e.get("event") == "child.exit"]) == len(ended)
            )


# --- the gateway stops ---------------------------------------------------------------------------

STOP_SIGNALS: Final = {"sigterm": signal.SIGTERM, "sigkill": signal.SIGKILL}
GATEWAY_STOPS: Final = [isolated(isolation, stop) for stop in STOP_SIGNALS for isolation in ISOLATIONS]


@pytest.mark.parametrize(("stop_name", "isolation"), GATEWAY_STOPS)
async def test_nothing_of_any_child_survives_the_gateway(stop_name: str, isolation: Isolation, tmp_path: Path) -> None:
    """SIGTERM: the gateway cleans up after every child itself and removes the children's root.
    SIGKILL: the orphan watchdog kills every announced group and every process of every announced
    user and removes the root; with namespaces each bubblewrap dies with its parent."""
    stop = STOP_SIGNALS[stop_name]
    with leftovers_killed(isolation) as seen:
        async with serving(isolation, tmp_path, settings_for(isolation)) as gateway, ClientSession() as http:
            guard = watchdog_of(gateway)
            for _ in range(SESSIONS):
                await open_spied(http, gateway, seen)
            check_audit(gateway, seen)
            root = seen.children_root
            if isolation != "none":
                assert root is not None
                assert root.is_dir()

            started = time.monotonic()
            gateway.process.send_signal(stop)
            async with asyncio.timeout(WAIT):
                code = await gateway.process.wait()
            assert code == (0 if stop == signal.SIGTERM else -signal.SIGKILL)

            wait = WAIT if stop == signal.SIGTERM else GUARD_CLEANUP_WAIT
            everyone = seen.sessions
            assert await eventually(lambda: all(gone(spied, isolation) for spied in everyone), timeout=wait), remains(
                seen, everyone
            )
            assert await eventually(lambda: not alive(guard), timeout=wait)
            took = time.monotonic() - started
            if isolation == "none":
                escaped = [spied.sleeper for spied in everyone if spied.sleeper is not None and alive(spied.sleeper)]
                assert len(escaped) == SESSIONS, "a none-mode sleeper outside the group was killed"
                report(stop.name, isolation=isolation, sessions=SESSIONS, escaped_sleepers=len(escaped))
            else:
                assert root is not None
                assert await eventually(lambda: not root.exists(), timeout=wait), sorted(root.rglob("*"))
                assert all(uid_released(uid) for uid in seen.uids)
                report(stop.name, isolation=isolation, sessions=SESSIONS, left=0, seconds=f"{took:.2f}")
            if stop == signal.SIGTERM:
                closed = [e for e in gateway.log if e.get("msg") == "session closed" and e.get("reason") == "shutdown"]
                assert len(closed) == SESSIONS


# --- the official SDK client -----------------------------------------------------------------------


@pytest.mark.parametrize("isolation", [isolated(isolation) for isolation in ISOLATIONS])
async def test_sdk_client_full_session(isolation: Isolation, tmp_path: Path) -> None:
    """initialize, tools/list, tools/call of echo and close, through a gateway whose child is the
    echo server in the isolation asked for; closing the client ends the session and all of it."""
    with leftovers_killed(isolation) as seen:
        async with serving(isolation, tmp_path, settings_for(isolation, server=ECHO_SERVER)) as gateway:
            check_startup(gateway, isolation)
            with anyio.fail_after(WAIT):
                async with mcp.Client(gateway.url, mode="legacy") as client:
                    tools = {tool.name for tool in (await client.list_tools()).tools}
                    assert "echo" in tools
                    result = await client.call_tool("echo", {"text": "héllo through a sandbox"})
                    assert not result.is_error
                    assert "héllo through a sandbox" in str(result.content[0])
                    line, namespace = await locate(gateway, seen)
                    server = server_of(line, namespace)
                    assert line["isolation"] == isolation
                    home = Path(environment_of(server)["HOME"])
                    spied = Spied(next(iter(users_of(server))), line["pid"], server, home, namespace)
                    seen.sessions.append(spied)
                    assert b"echo_server.py" in cmdline(server)
                    if uses_uid(isolation):
                        assert FIRST_UID <= line["uid"] <= LAST_UID
                        assert users_of(server) == {line["uid"]}  # the echo server, as its own user
                    else:
                        assert line["uid"] is None
                        assert users_of(server) == {user_of(gateway)}
                    if isolation != "none":
                        assert spied.directory.is_dir()
                    assert leftovers(spied, isolation) == spied.processes()
            assert await eventually(lambda: gone(spied, isolation)), remains(seen, [spied])
            if uses_uid(isolation):
                assert await eventually(lambda: uid_released(spied.uid))
            assert await eventually(lambda: any(e.get("event") == "child.exit" for e in gateway.log))
            report("sdk", isolation=isolation, uid=line["uid"], tools=len(tools), left=0)


# --- a descendant that keeps changing its pid --------------------------------------------------

# Run as the child's command: fork a "hopper" (in a session of its own, stdio on /dev/null) that
# forks and lets its parent exit over and over, so no pid of it lives long, writing a byte to
# argv[1] every HOPS_PER_BEAT hops (for at most HOPPER_SECONDS); then become the spy server, argv[2].
HOPPER_SECONDS: Final = 30
HOPS_PER_BEAT: Final = 10
HOPPER: Final = f"""
import os, sys, time
if os.fork() == 0:
    os.setsid()
    beats = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
    null = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(null, std)
    deadline = time.monotonic() + {HOPPER_SECONDS}
    hops = 0
    while time.monotonic() < deadline:
        if os.fork():
            os._exit(0)
        hops += 1
        if hops % {HOPS_PER_BEAT} == 0:
            os.write(beats, b".")
    os._exit(0)
os.execv(sys.executable, [sys.executable, sys.argv[2]])
"""
BEAT_WAIT: Final = 0.5  # the hopper writes hundreds of beats in this long

# `none` has nothing that could end a hopper: that is what isolation is for.
HOPPER_ENDINGS: Final = [
    isolated(isolation, ending) for ending in ("delete", "sigkill") for isolation in ISOLATIONS if isolation != "none"
]


def size_of(path: Path) -> int:
    return path.stat().st_size


async def beating(beats: Path) -> bool:
    """Whether the hopper still runs: its file grows."""
    before = size_of(beats)
    await asyncio.sleep(BEAT_WAIT)
    return size_of(beats) > before


@pytest.mark.parametrize(("ending", "isolation"), HOPPER_ENDINGS)
async def test_a_pid_hopping_descendant_does_not_survive(ending: str, isolation: Isolation, tmp_path: Path) -> None:
    beats_dir = Path(tempfile.mkdtemp(prefix="isolation-beats-"))
    try:
        os.chmod(beats_dir, 0o755)  # noqa: S103 - the child's user must reach the file inside
        beats = beats_dir / "beats"
        beats.touch()
        os.chmod(beats, 0o666)  # noqa: S103 - the child's user writes its beats here
        command = [str(SYSTEM_PYTHON), "-c", HOPPER, str(beats), str(SPY_SERVER)]
        writable = {"child_writable_paths": str(beats_dir)} if uses_namespaces(isolation) else {}
        settings = {**settings_for(isolation, extra=writable), "command": json.dumps(command)}
        with leftovers_killed(isolation) as seen:
            async with serving(isolation, tmp_path, settings) as gateway, ClientSession() as http:
                guard = watchdog_of(gateway)
                session, spied = await open_spied(http, gateway, seen)
                assert await beating(beats)
                if ending == "delete":
                    async with http.delete(gateway.url, headers=session.headers()) as response:
                        assert response.status == 204
                    if uses_uid(isolation):
                        assert await eventually(lambda: uid_released(spied.uid))
                else:
                    gateway.process.kill()
                    async with asyncio.timeout(WAIT):
                        await gateway.process.wait()
                    assert await eventually(lambda: not alive(guard), timeout=GUARD_CLEANUP_WAIT)
                assert await eventually(lambda: gone(spied, isolation), timeout=GUARD_CLEANUP_WAIT), remains(
                    seen, [spied]
                )
                survived = await beating(beats)
                report("pid hopper", isolation=isolation, ending=ending, survived=survived, beats=size_of(beats))
                assert not survived, f"a descendant of the child {spied.leader} outlived the end of its session"
    finally:
        shutil.rmtree(beats_dir, ignore_errors=True)
