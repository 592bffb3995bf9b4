"""Zero leftovers with uid isolation, the gateway a real subprocess (`python -m gateway serve`).

Each session's child is the spy server run by the system's Python as a user ID of its own; it
reports that user and its private `HOME`, and leaves a sleeper behind in a session of its own, out
of the child's process group, the one a group kill cannot reach. However a session ends (DELETE,
idle TTL, the child killed from outside) and however the gateway stops (SIGTERM, SIGKILL), no
process of any of the children's users may survive, the sleeper included, and no private
directory; after SIGKILL that is the orphan watchdog's job, the whole children's root included.

Each test runs again with `none` isolation as the control: there every child and the sleeper run
as the gateway's own user, the group kill still takes the child, and the sleeper survives,
because only the per-user sweep of `uid` isolation reaches a process that left the group. The
control asserts that, so a leak-free `none` mode would show up here as a changed observation.

A last test gives the child a descendant that keeps changing its pid (fork, then the parent
exits): both the gateway's own cleanup and the orphan watchdog end it with one `kill(-1)` made as
the child's user, which no fork outruns (a sweep of /proc, pid by pid, could be).

Every test SIGKILLs, in its `finally`, every process of the users its children ran as (and, in
`none` mode, the processes it saw by pid), so a failing test never leaks.
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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import anyio
import mcp
import pytest
from aiohttp import ClientSession

from gateway.config.child import ChildIsolationSettings
from gateway.sessions.sandbox import SHELL
from tests.support.gateway_process import GatewayProcess, HttpMcp, running_gateway
from tests.support.isolation import uid_released
from tests.support.processes import descendants, group_members, live_processes
from tests.support.servers import ECHO_SERVER, SERVERS
from tests.support.types import JsonObj
from tests.support.waits import WAIT, eventually

SYSTEM_PYTHON: Final = Path("/usr/bin/python3")  # the venv's lives under /root, which other users cannot enter
SPY_SERVER: Final = SERVERS / "spy_server.py"
FIRST_UID, LAST_UID = ChildIsolationSettings().child_uids()  # the default range

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="uid isolation needs root (or CAP_SETUID, CAP_SETGID, CAP_KILL)"),
    pytest.mark.skipif(not SYSTEM_PYTHON.is_file(), reason=f"the children run under {SYSTEM_PYTHON}, which is missing"),
]

Isolation = Literal["uid", "none"]
ISOLATIONS: Final[tuple[Isolation, ...]] = ("uid", "none")
SESSIONS: Final = 3
SLEEPER_SECONDS: Final = 300  # far longer than any test: only a kill ends it in time
# The orphan watchdog SIGTERMs, waits 2 s, SIGKILLs, then sweeps the users; generous for a loaded machine.
GUARD_CLEANUP_WAIT: Final = 15.0
IDLE_TTL: Final = 2.0  # long enough for the few calls that set two sessions up, on a loaded machine too


@dataclass(frozen=True, slots=True)
class Spied:
    """What one session's child said about itself."""

    uid: int
    pid: int
    home: Path
    sleeper: int  # a grandchild in a session (and process group) of its own


@dataclass(slots=True)
class Seen:
    """Everything a test's children ran as or started, for the checks and the cleanup."""

    isolation: Isolation
    sessions: list[Spied] = field(default_factory=list)
    uids: set[int] = field(default_factory=set)  # with uid isolation, every user a child ran as

    @property
    def children_root(self) -> Path | None:
        """With uid isolation, the directory that holds every child's private one."""
        if self.isolation == "none" or not self.sessions:
            return None
        return self.sessions[0].home.parent.parent


# --- processes by user -------------------------------------------------------------------------


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


def watchdog_of(gateway: GatewayProcess) -> int:
    guards = [pid for pid in descendants(gateway.process.pid) if b"watchdog.py" in cmdline(pid)]
    assert len(guards) == 1, f"expected one orphan watchdog, found {guards}"
    return guards[0]


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


@contextlib.contextmanager
def leftovers_killed(isolation: Isolation) -> Iterator[Seen]:
    """Yield what the test records; afterwards SIGKILL all of it that lives: every process of the
    test's users, and (in `none` mode) the processes seen by pid that still run the spy's code."""
    seen = Seen(isolation)
    try:
        yield seen
    finally:
        if isolation == "uid":
            assert all(FIRST_UID <= uid <= LAST_UID for uid in seen.uids), seen.uids  # never sweep a real user
            for uid in seen.uids:
                kill_every_process_of(uid)
            if (root := seen.children_root) is not None and root.name.startswith("mcp-gateway-children-"):
                shutil.rmtree(root, ignore_errors=True)
        else:
            for spied in seen.sessions:
                for pid in (spied.sleeper, spied.pid):
                    if b"spy_server.py" in cmdline(pid) or b"time.sleep" in cmdline(pid):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)


# --- sessions with the spy ---------------------------------------------------------------------


def settings_for(
    isolation: Isolation, server: Path = SPY_SERVER, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    return {
        "command": json.dumps([str(SYSTEM_PYTHON), str(server)]),
        "child_isolation": isolation,
        "audit_log": "stderr",  # the JSON audit lines join the log the helper keeps
        **(extra or {}),
    }


async def spy(mcp_session: HttpMcp, tool: str, **arguments: Any) -> JsonObj:
    status, messages = await mcp_session.call(mcp_session.tool_call(tool, **arguments))
    assert status == 200, messages
    report: JsonObj = json.loads(messages[-1]["result"]["content"][0]["text"])
    assert report["ok"], report
    return report


async def open_spied(http: ClientSession, gateway: GatewayProcess, seen: Seen) -> tuple[HttpMcp, Spied]:
    """A session whose child said who it is and left a sleeper behind, out of its process group."""
    session = HttpMcp(http, gateway.url)
    await session.initialize()
    me = await spy(session, "whoami")
    if seen.isolation == "uid":
        seen.uids.add(me["uid"])  # before anything else can fail, so the cleanup knows the user
    sleeper = await spy(session, "spawn_sleeper", seconds=SLEEPER_SECONDS)
    spied = Spied(uid=me["uid"], pid=me["pid"], home=Path(me["HOME"]), sleeper=sleeper["pid"])
    seen.sessions.append(spied)
    assert sleeper["pgid"] == sleeper["sid"] == spied.sleeper != spied.pid  # it left the child's group
    assert spied.sleeper not in group_members({spied.pid})
    if seen.isolation == "uid":
        assert FIRST_UID <= spied.uid <= LAST_UID, me
        assert me["NoNewPrivs"] == 1
        assert users_of(spied.sleeper) == {spied.uid}
        assert me["TMPDIR"] == str(spied.home.parent / "tmp")
        written = await spy(session, "write_file", path=str(spied.home / "note"), text="private")
        assert (written["uid"], written["mode"]) == (spied.uid, "0600")
        assert spied.home.parent.stat().st_mode & 0o777 == 0o700
    else:
        assert spied.uid == os.geteuid(), me
    return session, spied


def spawned(gateway: GatewayProcess) -> list[JsonObj]:
    return [entry for entry in gateway.log if entry.get("event") == "child.spawn"]


def check_audit(gateway: GatewayProcess, seen: Seen) -> None:
    """Each `child.spawn` line names the isolation and the user its child ran as."""
    lines = spawned(gateway)
    assert [line["isolation"] for line in lines] == [seen.isolation] * len(seen.sessions)
    expected = [spied.uid for spied in seen.sessions] if seen.isolation == "uid" else [None] * len(seen.sessions)
    assert [line["uid"] for line in lines] == expected


def check_startup(gateway: GatewayProcess, isolation: Isolation) -> None:
    assert any(entry.get("msg") == f"child isolation: {isolation}" for entry in gateway.log)


def gone(spied: Spied, isolation: Isolation) -> bool:
    """Whether nothing of the session's child is left that its isolation must take."""
    if isolation == "uid":
        return not processes_of({spied.uid}) and not spied.home.parent.exists()
    return not group_members({spied.pid})


def report(what: str, **observed: object) -> None:
    """What a test observed, for `pytest -s` (the timings are shown, never asserted)."""
    print(f"\n[isolation-lifecycle] {what}: " + ", ".join(f"{key}={value}" for key, value in observed.items()))


# --- a session ends ----------------------------------------------------------------------------


@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize("ending", ["delete", "idle-ttl", "crash"])
async def test_nothing_of_a_child_survives_the_end_of_its_session(
    ending: str, isolation: Isolation, tmp_path: Path
) -> None:
    """One session ends; with uid isolation every process of its user is gone, its escaped sleeper
    included, its directory removed and its user ID given back, while the other sessions live on
    (the idle TTL ends them all)."""
    extra = {"session_idle_ttl": str(IDLE_TTL)} if ending == "idle-ttl" else {}
    with leftovers_killed(isolation) as seen:
        async with running_gateway(tmp_path, settings_for(isolation, extra=extra)) as gateway, ClientSession() as http:
            check_startup(gateway, isolation)
            sessions = [await open_spied(http, gateway, seen) for _ in range(SESSIONS if ending != "idle-ttl" else 2)]
            check_audit(gateway, seen)
            if isolation == "uid":
                assert len(seen.uids) == len(sessions)  # a user of its own each
                assert len(processes_of(seen.uids)) == 2 * len(sessions)  # the child and its sleeper
            ended = [spied for _, spied in sessions] if ending == "idle-ttl" else [sessions[0][1]]
            survivors = [spied for _, spied in sessions if spied not in ended]

            first, victim = sessions[0]
            started = time.monotonic()
            if ending == "delete":
                async with http.delete(gateway.url, headers=first.headers()) as response:
                    assert response.status == 204
            elif ending == "crash":
                os.kill(victim.pid, signal.SIGKILL)  # from outside: the child dies without a word

            assert await eventually(lambda: all(gone(spied, isolation) for spied in ended)), ended
            took = time.monotonic() - started
            for session, _ in sessions[: len(ended)]:
                status, _ = await session.call(session.request("ping"))
                assert status == 404
            for spied in survivors:  # one user's sweep never reaches another's processes
                assert alive(spied.pid)
                assert alive(spied.sleeper)
            for session, _ in sessions[len(ended) :]:
                assert (await session.call(session.request("ping")))[0] == 200

            if isolation == "uid":
                assert await eventually(lambda: all(uid_released(spied.uid) for spied in ended))
                assert all(not uid_released(spied.uid) for spied in survivors)
                report(ending, isolation=isolation, ended=len(ended), left=0, seconds=f"{took:.2f}")
            else:
                # The control: the group kill took each child; the sleeper that left the group lives.
                escaped = [spied.sleeper for spied in ended if alive(spied.sleeper)]
                assert len(escaped) == len(ended), "a none-mode sleeper outside the group was killed"
                report(ending, isolation=isolation, ended=len(ended), escaped_sleepers=len(escaped))
            assert await eventually(
                lambda: len([e for e in gateway.log if e.get("event") == "child.exit"]) == len(ended)
            )


# --- the gateway stops ---------------------------------------------------------------------------


@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_nothing_of_any_child_survives_the_gateway(
    stop: signal.Signals, isolation: Isolation, tmp_path: Path
) -> None:
    """SIGTERM: the gateway cleans up after every child itself and removes the children's root.
    SIGKILL: the orphan watchdog kills every process of every announced user and removes the root."""
    with leftovers_killed(isolation) as seen:
        async with running_gateway(tmp_path, settings_for(isolation)) as gateway, ClientSession() as http:
            guard = watchdog_of(gateway)
            for _ in range(SESSIONS):
                await open_spied(http, gateway, seen)
            check_audit(gateway, seen)
            root = seen.children_root
            if isolation == "uid":
                assert root is not None
                assert root.is_dir()
                assert len(processes_of(seen.uids)) == 2 * SESSIONS

            started = time.monotonic()
            gateway.process.send_signal(stop)
            async with asyncio.timeout(WAIT):
                code = await gateway.process.wait()
            assert code == (0 if stop == signal.SIGTERM else -signal.SIGKILL)

            wait = WAIT if stop == signal.SIGTERM else GUARD_CLEANUP_WAIT
            assert await eventually(lambda: all(gone(spied, isolation) for spied in seen.sessions), timeout=wait)
            assert await eventually(lambda: not alive(guard), timeout=wait)
            took = time.monotonic() - started
            sleepers = [spied.sleeper for spied in seen.sessions]
            if isolation == "uid":
                assert root is not None
                assert await eventually(lambda: not root.exists(), timeout=wait), sorted(root.rglob("*"))
                assert not processes_of(seen.uids)
                assert all(uid_released(uid) for uid in seen.uids)
                report(stop.name, isolation=isolation, sessions=SESSIONS, left=0, seconds=f"{took:.2f}")
            else:
                escaped = [pid for pid in sleepers if alive(pid)]
                assert len(escaped) == SESSIONS, "a none-mode sleeper outside the group was killed"
                report(stop.name, isolation=isolation, sessions=SESSIONS, escaped_sleepers=len(escaped))
            if stop == signal.SIGTERM:
                closed = [e for e in gateway.log if e.get("msg") == "session closed" and e.get("reason") == "shutdown"]
                assert len(closed) == SESSIONS


# --- the official SDK client -----------------------------------------------------------------------


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_sdk_client_full_session(isolation: Isolation, tmp_path: Path) -> None:
    """initialize, tools/list, tools/call of echo and close, through a gateway whose child is the
    echo server as a user of its own; closing the client ends the session and everything of it."""
    with leftovers_killed(isolation) as seen:
        async with running_gateway(tmp_path, settings_for(isolation, server=ECHO_SERVER)) as gateway:
            check_startup(gateway, isolation)
            with anyio.fail_after(WAIT):
                async with mcp.Client(gateway.url, mode="legacy") as client:
                    tools = {tool.name for tool in (await client.list_tools()).tools}
                    assert "echo" in tools
                    result = await client.call_tool("echo", {"text": "héllo through a sandbox"})
                    assert not result.is_error
                    assert "héllo through a sandbox" in str(result.content[0])
                    [line] = spawned(gateway)
                    assert line["isolation"] == isolation
                    uid = line["uid"]
                    if isolation == "uid":
                        assert FIRST_UID <= uid <= LAST_UID
                        seen.uids.add(uid)
                        assert processes_of({uid})  # the echo server, as its own user
                    else:
                        assert uid is None
            if isolation == "uid":
                assert await eventually(lambda: not processes_of({uid}) and uid_released(uid))
            assert await eventually(lambda: any(e.get("event") == "child.exit" for e in gateway.log))
            report("sdk", isolation=isolation, uid=uid, tools=len(tools))


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


def size_of(path: Path) -> int:
    return path.stat().st_size


async def beating(beats: Path) -> bool:
    """Whether the hopper still runs: its file grows."""
    before = size_of(beats)
    await asyncio.sleep(BEAT_WAIT)
    return size_of(beats) > before


@pytest.mark.parametrize("ending", ["delete", "sigkill"])
async def test_a_pid_hopping_descendant_does_not_survive(ending: str, tmp_path: Path) -> None:
    beats_dir = Path(tempfile.mkdtemp(prefix="isolation-beats-"))
    try:
        os.chmod(beats_dir, 0o755)  # noqa: S103 - the child's user must reach the file inside
        beats = beats_dir / "beats"
        beats.touch()
        os.chmod(beats, 0o666)  # noqa: S103 - the child's user writes its beats here
        command = [str(SYSTEM_PYTHON), "-c", HOPPER, str(beats), str(SPY_SERVER)]
        settings = {**settings_for("uid"), "command": json.dumps(command)}
        with leftovers_killed("uid") as seen:
            async with running_gateway(tmp_path, settings) as gateway, ClientSession() as http:
                guard = watchdog_of(gateway)
                session, spied = await open_spied(http, gateway, seen)
                assert await beating(beats)
                if ending == "delete":
                    async with http.delete(gateway.url, headers=session.headers()) as response:
                        assert response.status == 204
                    assert await eventually(lambda: uid_released(spied.uid))
                else:
                    gateway.process.kill()
                    async with asyncio.timeout(WAIT):
                        await gateway.process.wait()
                    assert await eventually(lambda: not alive(guard), timeout=GUARD_CLEANUP_WAIT)
                survived = await beating(beats)
                report("pid hopper", ending=ending, survived=survived, beats=size_of(beats))
                assert not survived, f"a process of user {spied.uid} outlived the end of its session"
    finally:
        shutil.rmtree(beats_dir, ignore_errors=True)
