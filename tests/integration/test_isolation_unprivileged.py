"""A gateway run as an unprivileged user (`nobody`): it cannot give children users of their own,
so `auto` takes namespaces, and the children are still isolated from each other — every attack of
one child on another is refused, and nothing of a child is left after its session ends or after
the gateway is SIGKILLed.

The gateway is a real `python -m gateway serve` process. The virtualenv's interpreter lies under
/root (mode 0700), which no other user may enter, so the gateway starts in a mount namespace of its
own (`unshare`) in which /root is a directory holding only the interpreters (/root/.pyenv), then
drops to `nobody` with no capability left (`setpriv`). Its working directory and TMPDIR are a
directory of `nobody`'s outside /tmp, so the private directories of its children are found there.

Whatever the test started is killed on the way out by pid or process group — the gateway, each
child's bubblewrap, every process of each child's PID namespace, the orphan watchdog — never by
user: other processes may run as `nobody`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
from aiohttp import ClientSession, ClientTimeout

from gateway.auth.static import digest_of
from tests.support.gateway_process import HttpMcp
from tests.support.isolation import bubblewrap_problem, host_pid, namespace_members
from tests.support.mcp import text_of
from tests.support.processes import children_of, descendants, drain_log, live_processes, startup_log
from tests.support.servers import SERVERS
from tests.support.types import JsonObj
from tests.support.waits import WAIT, eventually

NOBODY: Final = 65534  # `nobody` and `nogroup` on Debian
PYTHON: Final = Path("/usr/bin/python3")  # the children's interpreter: every user may run it
SPY: Final = [str(PYTHON), str(SERVERS / "spy_server.py")]
PROJECT: Final = Path(__file__).resolve().parents[2]
GATEWAY_PYTHON: Final = PROJECT / ".venv" / "bin" / "python"
PYENV: Final = Path("/root/.pyenv")  # where the virtualenv's interpreter is installed
OUTSIDE: Final = Path("/var/tmp")  # noqa: S108 - a directory of nobody's is made inside, not in each child's /tmp
ALICE, BOB = "alice-unprivileged-token-1234", "bob-unprivileged-token-5678"
SECRET_VAR: Final = "UPSTREAM_TOKEN"
UNSHARE, SETPRIV = shutil.which("unshare"), shutil.which("setpriv")
# In the gateway's mount namespace: /root becomes $0, a directory others may enter holding only the
# interpreters ($1), then the rest of the command line runs.
ENTER: Final = 'mkdir "$0/.pyenv" && mount --bind "$1" "$0/.pyenv" && mount --rbind "$0" /root && shift && exec "$@"'
# As nobody, with no capability and none to gain.
AS_NOBODY: Final = (
    f"--reuid={NOBODY}",
    f"--regid={NOBODY}",
    "--clear-groups",
    "--inh-caps=-all",
    "--bounding-set=-all",
)


def _why_not() -> str | None:
    """Why an unprivileged gateway cannot be started here, or None."""
    if os.geteuid() != 0:
        return "starting a gateway as another user needs root"
    if UNSHARE is None or SETPRIV is None:
        return "unshare and setpriv (util-linux) are needed"
    if not PYTHON.exists() or not GATEWAY_PYTHON.exists():
        return f"{PYTHON} or {GATEWAY_PYTHON} is missing"
    interpreter = GATEWAY_PYTHON.resolve()
    # /root itself is replaced in the gateway's view; the rest of the way must be open to others.
    if not _others_may_reach(interpreter, PYENV if interpreter.is_relative_to(PYENV) else Path("/"), stat.S_IXOTH):
        return f"{interpreter} is not runnable by every user, even with {PYENV} reachable"
    if not _others_may_reach(PROJECT / "gateway" / "__init__.py"):
        return f"{PROJECT} is not readable by every user"
    return bubblewrap_problem(NOBODY)


def _others_may_reach(path: Path, below: Path = Path("/"), need: int = stat.S_IROTH) -> bool:
    """Whether every user may enter each directory from `below` down to `path`, and `need` it
    (read it, by default)."""
    directories = [part for part in path.parents if part.is_relative_to(below)]
    return all(part.stat().st_mode & stat.S_IXOTH for part in directories) and bool(path.stat().st_mode & need)


WHY_NOT: Final = _why_not()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=str(WHY_NOT))


def report(test: str, observed: object) -> None:
    """One row of the matrix, for whoever reads the output (`pytest -s` or `-rP`)."""
    print(f"isolation {test} [unprivileged namespaces]: {json.dumps(observed, sort_keys=True)}")


@dataclass
class Started:
    """What the test started and must end: process groups, single processes, PID namespaces (held
    open by a descriptor, so their inode numbers name no other namespace meanwhile)."""

    groups: set[int] = field(default_factory=set)
    pids: dict[int, str] = field(default_factory=dict)  # pid → its start time: a reused pid is not ours
    namespaces: dict[str, int] = field(default_factory=dict)  # /proc/<pid>/ns/pid's link → descriptor

    def add(self, pids: set[int]) -> None:
        for pid in pids:
            if (started := _start_time(pid)) is not None:
                self.pids.setdefault(pid, started)

    def hold_namespace(self, pid_ns: str, pid: int) -> None:
        if pid_ns not in self.namespaces:
            self.namespaces[pid_ns] = os.open(f"/proc/{pid}/ns/pid", os.O_RDONLY)

    def alive(self) -> set[int]:
        """Every live process the test started, however it was found."""
        found = {
            pid
            for pid, _, pgid in live_processes()
            if pgid in self.groups or (pid in self.pids and _start_time(pid) == self.pids[pid])
        }
        for pid_ns in self.namespaces:
            found |= set(namespace_members(pid_ns))
        return found

    def end(self) -> None:
        for pgid in self.groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        for pid in self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for descriptor in self.namespaces.values():
            os.close(descriptor)
        self.namespaces.clear()


@dataclass
class Gateway:
    """An unprivileged gateway process: its URL, its log, its working directory."""

    process: asyncio.subprocess.Process
    url: str
    workdir: Path
    started: Started
    log: list[JsonObj]

    def children(self) -> set[int]:
        """The gateway's live descendants (each child's bubblewrap leads a group of its own)."""
        found = descendants(self.process.pid)
        self.started.add(found)
        return found

    def cells_roots(self) -> list[Path]:
        """The directories of the children's private ones: the gateway's TMPDIR holds them."""
        return sorted(self.workdir.glob("mcp-gateway-children-*"))


def _start_time(pid: int) -> str | None:
    """When `pid` started, in clock ticks since boot (None: gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()[19]


def _environment(workdir: Path, mode: str) -> dict[str, str]:
    tokens = [{"principal": "alice", "sha256": digest_of(ALICE)}, {"principal": "bob", "sha256": digest_of(BOB)}]
    return {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "PYTHONPATH": str(PROJECT),
        "MCP_GATEWAY_HOST": "127.0.0.1",
        "MCP_GATEWAY_PORT": "0",
        "MCP_GATEWAY_LOG_FORMAT": "json",
        "MCP_GATEWAY_AUDIT_LOG": str(workdir / "audit.jsonl"),
        "MCP_GATEWAY_COMMAND": json.dumps(SPY),
        "MCP_GATEWAY_CHILD_ENV_ALLOW": "PATH,LANG",
        "MCP_GATEWAY_CHILD_ISOLATION": mode,
        "MCP_GATEWAY_AUTH": "static",
        "MCP_GATEWAY_STATIC_TOKENS": json.dumps(tokens),
        "MCP_GATEWAY_TOKEN_ENV": SECRET_VAR,
    }


@contextlib.contextmanager
def _directories() -> Iterator[tuple[Path, Path]]:
    """The gateway's working directory (nobody's, outside /tmp) and the directory that becomes
    /root in its mount namespace (root's, mode 0711); both removed on the way out."""
    workdir = Path(tempfile.mkdtemp(prefix="isolation-nobody-", dir=OUTSIDE))
    new_root = Path(tempfile.mkdtemp(prefix="isolation-root-"))
    try:
        os.chown(workdir, NOBODY, NOBODY)
        new_root.chmod(0o711)
        yield workdir, new_root
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(new_root, ignore_errors=True)


async def _start(workdir: Path, new_root: Path, mode: str, started: Started) -> asyncio.subprocess.Process:
    assert UNSHARE is not None
    assert SETPRIV is not None
    argv = [UNSHARE, "--mount", "--propagation", "private", "/bin/sh", "-c", ENTER, str(new_root), str(PYENV)]
    argv += [SETPRIV, *AS_NOBODY, "--", str(GATEWAY_PYTHON), "-m", "gateway", "serve"]
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=workdir,
        env=_environment(workdir, mode),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # every exec keeps this pid: the gateway leads its own group
    )
    started.groups.add(process.pid)
    return process


@contextlib.asynccontextmanager
async def unprivileged_gateway(mode: str = "auto") -> AsyncIterator[Gateway]:
    """A gateway serving the spy as `nobody`; on the way out everything it started is killed and
    its directories removed, however the test went."""
    started = Started()
    with _directories() as (workdir, new_root):
        process = await _start(workdir, new_root, mode, started)
        assert process.stderr is not None
        drain: asyncio.Task[None] | None = None
        try:
            startup = await startup_log(process.stderr)
            gateway = Gateway(process, startup[-1]["url"], workdir, started, list(startup))
            drain = asyncio.get_running_loop().create_task(drain_log(process.stderr, gateway.log))
            yield gateway
        finally:
            started.add(descendants(process.pid))  # its children lead groups of their own
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)  # the graceful way: it stops its children
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WAIT):
                    await process.wait()
            started.end()
            async with asyncio.timeout(WAIT):
                await process.wait()
                if drain is not None:
                    await drain


class Caller:
    """One user's session with the gateway, over real HTTP."""

    def __init__(self, http: ClientSession, gateway: Gateway, token: str) -> None:
        self.mcp = HttpMcp(http, gateway.url)
        self.mcp.extra_headers = {"Authorization": f"Bearer {token}"}
        self.gateway = gateway

    async def open(self) -> Caller:
        await self.mcp.initialize()
        return self

    async def tool(self, name: str, **arguments: Any) -> JsonObj:
        status, messages = await self.mcp.call(self.mcp.tool_call(name, **arguments))
        assert status == 200, messages
        result: JsonObj = json.loads(text_of(messages[-1]))
        return result

    async def whoami(self) -> JsonObj:
        """Its child's report, the child's PID namespace held by the test from now on."""
        me = await self.tool("whoami", env=SECRET_VAR)
        self.gateway.started.hold_namespace(me["pid_ns"], host_pid(me["pid_ns"], me["pid"]))
        self.gateway.children()
        return me

    async def delete(self) -> int:
        async with self.mcp.http.delete(self.mcp.url, headers=self.mcp.headers()) as response:
            return response.status


def _audit(gateway: Gateway) -> list[JsonObj]:
    """Every line of the gateway's audit log so far."""
    return [json.loads(line) for line in (gateway.workdir / "audit.jsonl").read_text().splitlines()]


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def _uids(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(uid) for uid in line.split()[1:]]
    raise AssertionError(f"no Uid: line for {pid}")


def _capabilities(pid: int) -> dict[str, int]:
    fields = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {line.split(":")[0]: int(line.split()[1], 16) for line in fields if line.startswith("Cap")}


def _outcome(report: JsonObj) -> str:
    return "ok" if report["ok"] else str(report["errno"])


def _exists(path: Path) -> bool:
    return path.exists()


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def http() -> ClientSession:
    return ClientSession(timeout=ClientTimeout(total=WAIT))


async def test_auto_takes_namespaces_and_every_attack_is_refused() -> None:
    async with unprivileged_gateway() as gateway, http() as client:
        assert _uids(gateway.process.pid) == [NOBODY] * 4
        assert _capabilities(gateway.process.pid)["CapEff"] == 0
        [decided] = [record for record in gateway.log if record.get("msg") == "child isolation: namespaces"]
        assert decided["reason"] == "uid isolation is not possible: the gateway does not run as root", decided
        async with client.get(gateway.url.rsplit("/", 1)[0] + "/health") as response:
            assert (await response.json())["isolation"] == "namespaces"

        alice = await Caller(client, gateway, ALICE).open()
        bob = await Caller(client, gateway, BOB).open()
        a, b = await alice.whoami(), await bob.whoami()
        assert (a["env"]["value"], b["env"]["value"]) == (ALICE, BOB)
        assert a["uid"] == b["uid"] == NOBODY  # one user: the namespaces alone keep them apart
        assert a["pid_ns"] != b["pid_ns"]
        alice_pid = host_pid(a["pid_ns"], a["pid"])
        # The audit line names the outer bubblewrap: the server is its grandchild on the host.
        [spawned] = [
            line for line in _audit(gateway) if line["event"] == "child.spawn" and line["principal"] == "alice"
        ]
        assert spawned["isolation"] == "namespaces"
        assert alice_pid in descendants(spawned["pid"])
        assert alice_pid not in children_of(spawned["pid"])
        tmpdir = Path(a["TMPDIR"])
        assert tmpdir.is_relative_to(gateway.cells_roots()[0])
        shared_tmp = Path("/tmp", f"isolation-{secrets.token_hex(8)}.txt")  # noqa: S108 - the point of the attack
        try:
            for path in (tmpdir / "notes.txt", shared_tmp):
                assert (await alice.tool("write_file", path=str(path), text="alice's private notes"))["ok"]
            listing = await bob.tool("processes")
            reports = {
                "environ": await bob.tool("read_environ", pid=alice_pid, show=SECRET_VAR),
                "signal": await bob.tool("signal", pid=alice_pid, signal=0),
                "ptrace": await bob.tool("ptrace", pid=alice_pid),
                "tmpdir_read": await bob.tool("read_file", path=str(tmpdir / "notes.txt")),
                "tmpdir_list": await bob.tool("list_dir", path=str(tmpdir)),
                "tmp_read": await bob.tool("read_file", path=str(shared_tmp)),
                # nobody's own directory: only the read-only view stops the write
                "write_outside": await bob.tool("write_file", path=str(gateway.workdir / "bob.txt"), text="x"),
            }
            in_host_tmp = _exists(shared_tmp)
            assert (await alice.tool("whoami", env=SECRET_VAR))["env"]["value"] == ALICE
        finally:
            _remove(shared_tmp)
        own = set(namespace_members(b["pid_ns"]).values())
        seen = {entry["pid"] for entry in listing["processes"]}
        observed = {"processes": "only its own" if seen == own and b["pid"] in seen else f"sees {sorted(seen)}"}
        observed |= {attack: _outcome(attempt) for attack, attempt in reports.items()}
        report("attacks", observed)
        assert observed == {
            "processes": "only its own",
            "environ": "ENOENT",
            "signal": "ESRCH",
            "ptrace": "ESRCH",
            "tmpdir_read": "ENOENT",
            "tmpdir_list": "ENOENT",
            "tmp_read": "ENOENT",
            "write_outside": "EROFS",
        }, reports
        assert not in_host_tmp  # Alice's /tmp was her own
        assert not _exists(gateway.workdir / "bob.txt")


@pytest.mark.parametrize("mode", ["uid", "uid+namespaces"])
async def test_users_of_their_own_are_impossible_and_stop_startup(mode: str) -> None:
    started = Started()
    with _directories() as (workdir, new_root):
        process = await _start(workdir, new_root, mode, started)
        try:
            async with asyncio.timeout(WAIT):
                _, stderr = await process.communicate()
        finally:
            started.end()
    said = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    messages = [record.get("msg", "") for record in said]
    report("startup", {mode: [process.returncode, messages[-1:]]})
    assert process.returncode != 0
    expected = f"child_isolation={mode} is not possible: the gateway does not run as root"
    assert any(expected in message for message in messages), said


async def test_nothing_is_left_after_delete_nor_after_the_gateway_is_killed() -> None:
    async with unprivileged_gateway() as gateway, http() as client:
        sessions = [await Caller(client, gateway, token).open() for token in (ALICE, BOB)]
        children: list[tuple[JsonObj, int]] = []
        for caller in sessions:
            me = await caller.whoami()
            sleeper = await caller.tool("spawn_sleeper", seconds=300)  # a session and group of its own
            assert sleeper["ok"], sleeper
            assert host_pid(me["pid_ns"], sleeper["pid"]) in gateway.children()
            children.append((me, len(namespace_members(me["pid_ns"]))))
        [root] = gateway.cells_roots()
        watchdogs = [pid for pid in gateway.children() if "watchdog" in _cmdline(pid)]
        assert len(watchdogs) == 1, watchdogs
        assert all(count == 3 for _, count in children), children  # bubblewrap's init, the spy, its sleeper

        # DELETE: the session's namespace, sleeper included, and its private directory go.
        (alice, _), (bob, _) = children
        assert await sessions[0].delete() == 204
        alice_cell = Path(alice["HOME"]).parent
        assert await eventually(lambda: not namespace_members(alice["pid_ns"]) and not alice_cell.exists())
        assert namespace_members(bob["pid_ns"])  # the other session is untouched

        # SIGKILL: bubblewrap dies with its parent, the watchdog removes the private directories.
        gateway.process.kill()
        assert await eventually(lambda: not namespace_members(bob["pid_ns"]))
        assert await eventually(lambda: not gateway.started.alive())
        assert await eventually(lambda: not _exists(root))
        report("leftovers", {"after delete": "none", "after SIGKILL": "none", "cells root": "removed"})
        assert sorted(path.name for path in gateway.workdir.iterdir()) == ["audit.jsonl"]
