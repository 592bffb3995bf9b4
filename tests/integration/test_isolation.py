"""Isolation between children, through the real gateway. In each mode (`none`, the control: every
attack succeeds; `uid`; `uid+namespaces`) the spy server in one session attacks the child of
another: its environment (where the other user's upstream token is), signals, ptrace, its private
files and `/tmp`, the rest of the file system, and, with namespaces, whether it can see the other
child at all. Also: the user IDs, the private directories and their removal, the network and
writable directories namespaces allow, what the gateway reports, and when it refuses to start.

The gateway here runs in this process. As the host's root (as in CI) it may not give its children
`namespaces` alone (they would be the host's root too): that is tested as refused here, and as it
runs, by an unprivileged gateway process, in test_isolation_unprivileged.py.

Each mode needs what it needs, probed here independently of the gateway: user IDs the power to
switch users (root, as in CI) and a Python another user may run; namespaces a bubblewrap that
works. Every test prints what it observed (`report`), the matrix of mode × attack → errno.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError
from pytest_aiohttp import AiohttpClient

from gateway import create_app, keys
from gateway.auth.static import digest_of
from gateway.config import Settings
from gateway.sessions.bubblewrap import is_host_root
from gateway.sessions.sandbox import IsolationUnavailable, live_users, why_no_user_switching
from tests.support.isolation import (
    NO_BUBBLEWRAP,
    REFUSED_BY_NAMESPACES,
    bubblewrap_problem,
    exists,
    host_interfaces,
    host_pid,
    namespace_members,
    outcome,
    remove,
    uid_released,
)
from tests.support.mcp import LATEST, Mcp, text_of
from tests.support.processes import descendants
from tests.support.servers import SERVERS
from tests.support.settings import make_settings, public_host
from tests.support.types import JsonObj
from tests.support.waits import WAIT, eventually

PYTHON: Final = Path("/usr/bin/python3")  # the virtualenv's lives under /root, which other users cannot enter
SPY: Final = [str(PYTHON), str(SERVERS / "spy_server.py")]
ALICE, BOB = "alice-upstream-token-1234", "bob-upstream-token-5678"
SECRET_VAR: Final = "UPSTREAM_TOKEN"
# A range of our own, far from the default one other tests use, so no test here waits for another's.
FIRST_UID: Final = 1_000_300_000
# Where a test makes the directories children may or may not write: not /tmp, which is each
# namespaced child's own.
OUTSIDE: Final = Path("/var/tmp")  # noqa: S108 - a directory of the test's own is made inside

UID_PROBLEM: Final = why_no_user_switching() or (None if PYTHON.exists() else f"{PYTHON} is missing")
HOST_ROOT: Final = is_host_root()
NAMESPACE_PROBLEM: Final = bubblewrap_problem()
BOTH_PROBLEM: Final = UID_PROBLEM or bubblewrap_problem(FIRST_UID)
# Why the host's root may not give its children namespaces alone.
ROOT_PROBLEM: Final = (
    "the gateway runs as the host's root, and its children would too (uid+namespaces gives each a user)"
)

needs_uid = pytest.mark.skipif(UID_PROBLEM is not None, reason=f"uid isolation is not possible: {UID_PROBLEM}")
needs_host_root = pytest.mark.skipif(not HOST_ROOT, reason="the gateway does not run as the host's root here")
needs_both = pytest.mark.skipif(BOTH_PROBLEM is not None, reason=f"uid+namespaces are not possible: {BOTH_PROBLEM}")
needs_unshare = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="hiding a file needs root and unshare (util-linux)"
)

pytestmark = pytest.mark.skipif(not PYTHON.exists(), reason=f"{PYTHON} is missing: the spy runs under it")

MODES: Final = [
    pytest.param("none", id="none"),
    pytest.param("uid", marks=needs_uid, id="uid"),
    pytest.param("uid+namespaces", marks=needs_both, id="uid+namespaces"),
]
NAMESPACE_MODES: Final = MODES[2:]


def report(test: str, mode: str, observed: object) -> None:
    """One row of the matrix, for whoever reads the output (`pytest -s` or `-rP`)."""
    print(f"isolation {test} [{mode}]: {json.dumps(observed, sort_keys=True)}")


def isolated(mode: str, **extra: Any) -> dict[str, Any]:
    """Alice and Bob with static tokens, each token handed to the user's own child (`token_env`)."""
    tokens = [{"principal": "alice", "sha256": digest_of(ALICE)}, {"principal": "bob", "sha256": digest_of(BOB)}]
    values: dict[str, Any] = {
        "command": SPY,
        "child_env_allow": ["PATH", "LANG"],
        "auth": "static",
        "static_tokens": tokens,
        "public_url": "https://mcp.example.com",
        "token_env": SECRET_VAR,
        "child_isolation": mode,
        "child_readable_paths": [SERVERS],  # in the children's view even from a checkout under /tmp
        "child_uid_range": f"{FIRST_UID}-{FIRST_UID + 999}",
        # The control runs the same attacks with shared users, a risk the gateway refuses unless told.
        "allow_shared_uid_children": mode == "none",
    }
    return values | extra


class Caller:
    """One user's session, on the test client all of them share."""

    def __init__(self, http: Mcp, token: str) -> None:
        self.mcp = Mcp(http.http)
        self.auth = {"Authorization": f"Bearer {token}"}

    async def open(self) -> Caller:
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": LATEST}}
        async with self.mcp.http.post("/mcp", json=init, headers=self.mcp.headers(self.auth)) as response:
            assert response.status == 200, await response.text()
            self.mcp.session_id = response.headers["Mcp-Session-Id"]
        self.mcp.version = LATEST
        return self

    async def tool(self, name: str, **arguments: Any) -> JsonObj:
        call = {"jsonrpc": "2.0", "id": self.mcp.next_id(), "method": "tools/call"}
        call["params"] = {"name": name, "arguments": arguments}
        status, messages = await self.mcp.post(call, self.auth)
        assert status == 200, messages
        report: JsonObj = json.loads(text_of(messages[-1]))
        return report

    async def delete(self) -> int:
        async with self.mcp.http.delete("/mcp", headers=self.mcp.headers(self.auth)) as response:
            return response.status


async def refusal(settings: Settings) -> str:
    """Why a gateway with `settings` refuses to start (it must)."""
    runner = web.AppRunner(create_app(settings))
    try:
        with pytest.raises(IsolationUnavailable) as refused:
            await runner.setup()
    finally:
        await runner.cleanup()
    return str(refused.value)


async def serve(aiohttp_client: AiohttpClient, **settings: Any) -> Mcp:
    config = make_settings(**settings)
    return Mcp(await aiohttp_client(create_app(config), headers=public_host(config)))


def yama_allows_ptrace_of_a_sibling() -> bool:
    """Whether one process may trace another of its own user that is not its descendant."""
    try:
        return Path("/proc/sys/kernel/yama/ptrace_scope").read_text().strip() == "0"
    except OSError:
        return True  # no Yama: classic ptrace rules


@pytest.fixture
def outside() -> Iterator[Path]:
    """A directory of the gateway's user (mode 0755) outside every child's private one."""
    path = Path(tempfile.mkdtemp(prefix="isolation-outside-", dir=OUTSIDE))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path)


# What Bob's child gets attacking Alice's: her environment, a signal and ptrace (by her host pid),
# a file in her TMPDIR and its listing, a file she wrote in /tmp; writing outside its own directory.
REFUSED_BY_UID: Final = {
    "processes": "sees alice",
    "environ": "EACCES",
    "signal": "EPERM",
    "ptrace": "EPERM",
    "tmpdir_read": "EACCES",
    "tmpdir_list": "EACCES",
    "tmp_read": "EACCES",
    "write_outside": "EACCES",
}
EXPECTED: Final = {
    "none": {attack: "ok" for attack in REFUSED_BY_UID} | {"processes": "sees alice"},
    "uid": REFUSED_BY_UID,
    "uid+namespaces": REFUSED_BY_NAMESPACES,
}


def _what_bob_sees(listing: JsonObj, alice: int, bob: JsonObj) -> str:
    """Whether Bob's process list shows Alice's child, or only Bob's own PID namespace (as the
    host sees it: bubblewrap and his child), or something else."""
    pids = {entry["pid"] for entry in listing["processes"]}
    if alice in pids:
        return "sees alice"
    own = set(namespace_members(bob["pid_ns"]).values())
    return "only its own" if pids == own and bob["pid"] in pids else f"other: {sorted(pids)} (own: {sorted(own)})"


@pytest.mark.parametrize("mode", MODES)
async def test_one_child_cannot_reach_another(
    aiohttp_client: AiohttpClient, mode: str, tmp_path: Path, outside: Path
) -> None:
    gateway = await serve(aiohttp_client, **isolated(mode))
    alice = await Caller(gateway, ALICE).open()
    bob = await Caller(gateway, BOB).open()
    a, b = await alice.tool("whoami", env=SECRET_VAR), await bob.tool("whoami", env=SECRET_VAR)
    # Per-user secrets reach their own child, in every mode.
    assert (a["env"]["value"], b["env"]["value"]) == (ALICE, BOB)
    # Alice's child as the host knows it: a descendant of the gateway (this process).
    alice_pid = host_pid(a["pid_ns"], a["pid"])
    assert alice_pid in descendants(os.getpid())
    # Without isolation there is no private directory: the test's own stands in for it.
    tmpdir = Path(a["TMPDIR"]) if a["TMPDIR"] is not None else tmp_path
    shared_tmp = Path("/tmp", f"isolation-{secrets.token_hex(8)}.txt")  # noqa: S108 - the point of the attack
    try:
        for path in (tmpdir / "notes.txt", shared_tmp):
            written = await alice.tool("write_file", path=str(path), text="alice's private notes")
            assert written["ok"], written
        listing = await bob.tool("processes")
        reports = {
            "environ": await bob.tool("read_environ", pid=alice_pid, show=SECRET_VAR),
            "signal": await bob.tool("signal", pid=alice_pid, signal=0),
            "ptrace": await bob.tool("ptrace", pid=alice_pid),
            "tmpdir_read": await bob.tool("read_file", path=str(tmpdir / "notes.txt")),
            "tmpdir_list": await bob.tool("list_dir", path=str(tmpdir)),
            "tmp_read": await bob.tool("read_file", path=str(shared_tmp)),
            "write_outside": await bob.tool("write_file", path=str(outside / "bob.txt"), text="bob was here"),
        }
        in_host_tmp = exists(shared_tmp)
        # Alice still serves (a stray signal or a tracer left attached would show) with her secret.
        assert (await alice.tool("whoami", env=SECRET_VAR))["env"]["value"] == ALICE
        assert _tracer(alice_pid) == 0
    finally:
        remove(shared_tmp)
    observed = {"processes": _what_bob_sees(listing, alice_pid, b)}
    observed |= {attack: outcome(attempt) for attack, attempt in reports.items()}
    report("attacks", mode, observed)
    expected = dict(EXPECTED[mode])
    if mode == "none" and not yama_allows_ptrace_of_a_sibling():
        expected["ptrace"] = "EPERM"
    assert observed == expected, reports
    assert in_host_tmp == (mode in ("none", "uid")), "namespaced children have a /tmp of their own"
    if mode == "none":  # the control: everything of Alice's is Bob's to take
        assert reports["environ"]["value"] == ALICE
        assert reports["tmp_read"]["content"] == reports["tmpdir_read"]["content"] == "alice's private notes"
        assert reports["tmpdir_list"]["names"] == ["notes.txt"]
        return
    assert "value" not in reports["environ"]
    assert a["uid"] != b["uid"]
    if mode.startswith("uid"):
        assert FIRST_UID <= a["uid"] < FIRST_UID + 1000
        assert FIRST_UID <= b["uid"] < FIRST_UID + 1000
    if mode.endswith("namespaces"):
        assert a["pid_ns"] != b["pid_ns"]
        # Of the directory of every child's private one, Bob's child sees only its own.
        cells = await bob.tool("list_dir", path=str(Path(b["HOME"]).parent.parent))
        assert cells["names"] == [Path(b["HOME"]).parent.name], cells


@needs_uid
async def test_each_child_runs_as_its_own_user_with_private_directories(aiohttp_client: AiohttpClient) -> None:
    gateway = await serve(aiohttp_client, **isolated("uid"))
    alice = await Caller(gateway, ALICE).open()
    me = await alice.tool("whoami")
    assert me["uid"] == me["euid"] == me["gid"] == me["egid"]
    assert me["groups"] == []
    assert me["NoNewPrivs"] == 1
    assert int(me["CapEff"], 16) == 0
    assert int(me["CapPrm"], 16) == 0
    home, tmp = Path(me["HOME"]), Path(me["TMPDIR"])
    assert home.parent == tmp.parent
    assert me["cwd"] == str(home)
    for directory in (home.parent, home, tmp):
        info = directory.stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (me["uid"], me["uid"], 0o700)
    # Their parent: anyone may enter, no one else may list (the children's names stay unknown).
    assert stat.S_IMODE(home.parent.parent.stat().st_mode) == 0o1733
    assert home.parent.parent.stat().st_uid == os.geteuid()


@needs_uid
async def test_the_private_directory_and_every_process_go_with_the_session(aiohttp_client: AiohttpClient) -> None:
    gateway = await serve(aiohttp_client, **isolated("uid"))
    alice = await Caller(gateway, ALICE).open()
    me = await alice.tool("whoami")
    await alice.tool("write_file", path=f"{me['HOME']}/cache.db", text="x" * 1000)
    sleeper = await alice.tool("spawn_sleeper", seconds=60)  # left its process group: only the uid finds it
    assert await alice.delete() == 204
    directory = Path(me["HOME"]).parent
    assert await eventually(lambda: not directory.exists())
    assert await eventually(lambda: not _alive(sleeper["pid"]))
    assert me["uid"] not in live_users()


@needs_uid
async def test_a_user_id_is_not_reused_while_a_process_of_it_lives(aiohttp_client: AiohttpClient) -> None:
    busy = FIRST_UID + 500
    with _process_of(busy) as squatter:
        gateway = await serve(aiohttp_client, **isolated("uid", child_uid_range=f"{busy}-{busy + 1}", max_sessions=2))
        alice = await Caller(gateway, ALICE).open()
        first = await alice.tool("whoami")
        assert first["uid"] == busy + 1  # the range's other user ID: one of `busy` still runs
        assert await alice.delete() == 204
        assert await eventually(lambda: busy + 1 not in live_users())
        again = await (await Caller(gateway, ALICE).open()).tool("whoami")
        assert again["uid"] == busy + 1
        assert squatter.poll() is None  # never touched: it is not the gateway's


@needs_uid
async def test_two_gateways_never_hand_out_the_same_user(aiohttp_client: AiohttpClient) -> None:
    settings = isolated("uid", child_uid_range=f"{FIRST_UID + 600}-{FIRST_UID + 601}", max_sessions=2)
    one, two = await serve(aiohttp_client, **settings), await serve(aiohttp_client, **settings)
    a = await (await Caller(one, ALICE).open()).tool("whoami")
    b = await (await Caller(two, BOB).open()).tool("whoami")
    assert {a["uid"], b["uid"]} == {FIRST_UID + 600, FIRST_UID + 601}


@needs_uid
async def test_the_isolation_in_force_is_reported(aiohttp_client: AiohttpClient) -> None:
    gateway = await serve(aiohttp_client, **isolated("uid"))
    async with gateway.http.get("/health") as response:
        assert (await response.json())["isolation"] == "uid"
    alice = await Caller(gateway, ALICE).open()
    me = await alice.tool("whoami")
    sandbox = gateway.http.app[keys.SANDBOX]
    assert (sandbox.mode, sandbox.decision.reason) == ("uid", "configured")
    assert me["uid"] >= FIRST_UID


@needs_uid
async def test_auto_chooses_the_strongest_isolation_the_host_allows(aiohttp_client: AiohttpClient) -> None:
    gateway = await serve(aiohttp_client, **isolated("auto"))
    sandbox = gateway.http.app[keys.SANDBOX]
    report("auto", "auto", [sandbox.mode, sandbox.decision.reason])
    if BOTH_PROBLEM is None:
        assert (sandbox.mode, sandbox.decision.reason) == ("uid+namespaces", "the host allows it")
    else:
        assert sandbox.mode == "uid"
        assert sandbox.decision.reason.startswith("namespaces are not possible")


@needs_uid
async def test_auto_refuses_root_children_when_no_other_user_may_run_the_server() -> None:
    """The virtualenv's interpreter lies under /root (mode 0700): no child user could start it.
    The gateway's own user could, but that is the host's root, whom namespaces alone do not
    contain, and whose children would be root too: the gateway refuses to start, naming both
    problems and the setting that would accept root children."""
    if os.access(sys.executable, os.X_OK) and _others_may_run(sys.executable):
        pytest.skip(f"{sys.executable} is runnable by every user here")
    if not HOST_ROOT:
        pytest.skip("the gateway does not run as the host's root here: auto may take namespaces")
    command = [sys.executable, str(SERVERS / "echo_server.py")]
    settings = make_settings(child_isolation="auto", command=command, child_uid_range=f"{FIRST_UID}-{FIRST_UID + 999}")
    refused = await refusal(settings)
    said = refused
    report("auto-unrunnable", "auto", said)
    assert said.startswith("child_isolation=auto found no isolation (uid isolation is not possible: user "), said
    assert f"namespaces are not possible: {ROOT_PROBLEM}" in said
    assert said.endswith("or accept root children with child_isolation=none")


@needs_uid
async def test_uid_asked_for_and_impossible_stops_startup() -> None:
    if _others_may_run(sys.executable):
        pytest.skip(f"{sys.executable} is runnable by every user here")
    settings = make_settings(child_isolation="uid", child_uid_range=f"{FIRST_UID}-{FIRST_UID + 999}")
    said = await refusal(settings)
    assert re.search("may not execute", said), said


@needs_uid
def test_check_names_the_isolation_and_refuses_the_impossible(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway import cli

    argv = ["check", "--child-isolation", "uid", "--child-uid-range", f"{FIRST_UID}-{FIRST_UID + 999}"]
    assert cli.main([*argv, "--", *SPY]) == 0
    assert "child isolation: uid (configured)" in capsys.readouterr().err
    if not _others_may_run(sys.executable):
        assert cli.main([*argv, "--", sys.executable, "-c", "pass"]) == 1
        assert "child_isolation=uid is not possible" in capsys.readouterr().err


def _others_may_run(program: str) -> bool:
    """Whether a user with no relation to the file's owner may execute `program` (every directory
    on the way searchable by others, the file executable by them)."""
    path = Path(program).resolve()
    return all(part.stat().st_mode & stat.S_IXOTH for part in [*path.parents, path])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] not in "ZX"
    return False


@contextlib.contextmanager
def _process_of(uid: int) -> Iterator[subprocess.Popen[bytes]]:
    """A process of `uid` that is not the gateway's, for as long as the block runs."""
    process = subprocess.Popen(["/bin/sleep", "60"], user=uid, group=uid, extra_groups=[], start_new_session=True)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.mark.parametrize(
    ("mode", "command"),
    [
        pytest.param("none", SPY, id="none"),
        pytest.param(
            "auto",
            [sys.executable, str(SERVERS / "echo_server.py")],
            marks=pytest.mark.skipif(
                NAMESPACE_PROBLEM is None and not HOST_ROOT, reason="auto finds namespaces here, and starts"
            ),
            id="auto-without-a-runnable-server-or-namespaces",
        ),
    ],
)
async def test_per_user_values_and_shared_users_refuse_to_start(mode: str, command: list[str]) -> None:
    """(As the host's root, `auto` without isolation refuses before that: its children would be root.)"""
    if mode == "auto" and _others_may_run(sys.executable):
        pytest.skip(f"{sys.executable} is runnable by every user here")
    settings = make_settings(**isolated(mode, command=command, allow_shared_uid_children=False))
    refused = await refusal(settings)
    if mode == "auto" and HOST_ROOT:
        assert "would run as the host's root" in refused
    else:
        assert "token_env puts each user's values" in refused
        assert "allow_shared_uid_children=true" in refused


@needs_uid
async def test_per_user_values_start_when_the_children_are_isolated(aiohttp_client: AiohttpClient) -> None:
    """With users of their own (with namespaces alone, as an unprivileged gateway gives them:
    test_isolation_unprivileged.py)."""
    gateway = await serve(aiohttp_client, **isolated("auto", allow_shared_uid_children=False))
    assert gateway.http.app[keys.SANDBOX].mode == ("uid+namespaces" if BOTH_PROBLEM is None else "uid")
    me = await (await Caller(gateway, ALICE).open()).tool("whoami", env=SECRET_VAR)
    assert me["env"]["value"] == ALICE


def test_check_refuses_per_user_values_with_shared_users(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway import cli

    argv = [
        "check",
        "--child-isolation",
        "none",
        "--auth",
        "static",
        "--static-tokens",
        '{"principal": "a", "sha256": "' + digest_of(ALICE) + '"}',
        "--public-url",
        "https://mcp.example.com",
        "--token-env",
        SECRET_VAR,
    ]
    assert cli.main([*argv, "--", *SPY]) == 1
    err = capsys.readouterr().err
    assert "cannot start: children would not be isolated from each other while token_env" in err
    assert cli.main([*argv, "--allow-shared-uid-children", "--", *SPY]) == 0


@needs_uid
async def test_a_child_that_cannot_start_as_its_user_is_a_502_and_gives_its_user_back(
    aiohttp_client: AiohttpClient,
) -> None:
    """Its pre-exec fails (a working directory its user may enter at startup, when the gateway
    checks, and no longer when the child starts): the client gets 502, the gateway keeps serving,
    and the user ID is free again. Closed from the start, the directory stops the gateway."""
    workdir = Path(tempfile.mkdtemp(prefix="isolation-cwd-", dir=OUTSIDE))
    try:
        only = FIRST_UID + 700
        settings = isolated("uid", child_cwd=workdir, child_uid_range=f"{only}-{only}", max_sessions=1)
        said = await refusal(make_settings(**settings))
        assert re.search(f"may not execute {PYTHON} with .* in {workdir}", said), said
        os.chmod(workdir, 0o755)  # noqa: S103 - the child's user may enter it: the probe passes
        gateway = await serve(aiohttp_client, **settings)
        os.chmod(workdir, 0o700)
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": LATEST}}
        headers = gateway.headers({"Authorization": f"Bearer {ALICE}"})
        for _ in range(2):  # the second gets the same (released) user ID, and fails the same way
            async with gateway.http.post("/mcp", json=init, headers=headers) as response:
                assert response.status == 502, await response.text()
            assert await eventually(lambda: uid_released(only))
    finally:
        shutil.rmtree(workdir)


@needs_uid
async def test_a_range_holding_existing_users_is_refused(aiohttp_client: AiohttpClient) -> None:
    nobody = 65534  # `nobody` (and `nogroup`) on Debian
    settings = make_settings(**isolated("uid", child_uid_range=f"{nobody}-{nobody}", max_sessions=1))
    said = await refusal(settings)
    assert re.search("holds IDs of existing users or groups", said), said


def _tracer(pid: int) -> int:
    """The TracerPid of `pid` (0: nobody traces it)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no TracerPid for {pid}")


# --- what namespaces give a child -----------------------------------------------------------------


@pytest.mark.parametrize("mode", NAMESPACE_MODES)
async def test_namespaces_in_force_are_reported_and_the_child_is_in_them(
    aiohttp_client: AiohttpClient, mode: str
) -> None:
    gateway = await serve(aiohttp_client, **isolated(mode))
    async with gateway.http.get("/health") as response:
        assert (await response.json())["isolation"] == mode
    decision = gateway.http.app[keys.SANDBOX].decision
    assert (decision.mode, decision.reason) == (mode, "configured")
    assert decision.bwrap is not None
    assert Path(decision.bwrap).name == "bwrap"
    me = await (await Caller(gateway, ALICE).open()).tool("whoami")
    mine = {name: os.readlink(f"/proc/self/ns/{name}") for name in me["namespaces"]}
    own = sorted(name for name, link in me["namespaces"].items() if link != mine[name])
    report("namespaces", mode, {"own": own, "uid": me["uid"], "CapEff": me["CapEff"], "NoNewPrivs": me["NoNewPrivs"]})
    assert {"ipc", "mnt", "pid", "user", "uts"} <= set(own), own
    assert "net" not in own  # child_network=host
    assert me["pid"] != host_pid(me["pid_ns"], me["pid"])
    assert (me["NoNewPrivs"], int(me["CapEff"], 16), int(me["CapPrm"], 16)) == (1, 0, 0)
    assert (me["uid"] >= FIRST_UID) == (mode == "uid+namespaces"), me["uid"]
    assert me["cwd"] == me["HOME"]


@needs_host_root
async def test_namespaces_alone_are_refused_to_the_hosts_root() -> None:
    """Its children would be the host's root in namespaces of their own, which keep them neither
    from the kernel's settings in /proc/sys nor from root's Unix sockets: startup stops, with a
    server every user may run, whether bubblewrap works here or not."""
    refused = await refusal(make_settings(**isolated("namespaces")))
    report("root-startup", "namespaces", refused)
    assert refused == f"child_isolation=namespaces is not possible: {ROOT_PROBLEM}"


@needs_host_root
def test_check_refuses_namespaces_alone_to_the_hosts_root(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway import cli

    code = cli.main(["check", "--child-isolation", "namespaces", "--", *SPY])
    said = capsys.readouterr().err.strip().splitlines()[-1:]
    report("root-check", "namespaces", [code, said])
    assert (code, said) == (1, [f"mcp-gateway: child_isolation=namespaces is not possible: {ROOT_PROBLEM}"])


@pytest.mark.parametrize("mode", NAMESPACE_MODES)
def test_check_names_the_namespaces(mode: str, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway import cli

    argv = ["check", "--child-isolation", mode, "--child-uid-range", f"{FIRST_UID}-{FIRST_UID + 999}"]
    argv += ["--child-readable-paths", str(SERVERS)]  # in the children's view even from a checkout under /tmp
    assert cli.main([*argv, "--", *SPY]) == 0
    assert f"child isolation: {mode} (configured)" in capsys.readouterr().err
    assert cli.main([*argv, "--child-network", "none", "--", *SPY]) == 0


@pytest.mark.parametrize("mode", NAMESPACE_MODES)
async def test_child_network_none_leaves_only_loopback(aiohttp_client: AiohttpClient, mode: str) -> None:
    """A listener on the host's loopback is out of reach: the child's loopback is its own."""
    observed: dict[str, Any] = {}
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        for network in ("none", "host"):
            gateway = await serve(aiohttp_client, **isolated(mode, child_network=network))
            alice = await Caller(gateway, ALICE).open()
            interfaces = await alice.tool("net_interfaces")
            connected = await alice.tool("net_probe", host="127.0.0.1", port=port)
            observed[network] = {"interfaces": interfaces["interfaces"], "connect": outcome(connected)}
    report("network", mode, observed)
    assert observed["none"] == {"interfaces": ["lo"], "connect": "ECONNREFUSED"}
    assert observed["host"]["connect"] == "ok"  # the control: the same child, the host's network
    assert observed["host"]["interfaces"] == host_interfaces()


@pytest.mark.parametrize("mode", ["none", "uid"])
def test_child_network_none_without_namespaces_is_refused(mode: str) -> None:
    with pytest.raises(ValidationError, match=f"none needs namespaces, and child_isolation is {mode}"):
        make_settings(**isolated(mode, child_network="none"))


@pytest.fixture
def shared_directories() -> Iterator[tuple[Path, Path]]:
    """Two directories every user may write (sticky, like /tmp), outside /tmp."""
    made = [Path(tempfile.mkdtemp(prefix="isolation-shared-", dir=OUTSIDE)) for _ in range(2)]
    try:
        for path in made:
            path.chmod(0o1777)  # children of other users write here: the point of the test
        yield made[0], made[1]
    finally:
        for path in made:
            shutil.rmtree(path)


@pytest.mark.parametrize("mode", NAMESPACE_MODES)
async def test_child_writable_paths_are_the_only_directories_a_child_writes(
    aiohttp_client: AiohttpClient, mode: str, shared_directories: tuple[Path, Path]
) -> None:
    writable, other = shared_directories
    gateway = await serve(aiohttp_client, **isolated(mode, child_writable_paths=[writable]))
    alice = await Caller(gateway, ALICE).open()
    inside = await alice.tool("write_file", path=str(writable / "alice.txt"), text="kept")
    beside = await alice.tool("write_file", path=str(other / "alice.txt"), text="lost")
    report("writable", mode, {"configured": outcome(inside), "other": outcome(beside)})
    assert (outcome(inside), outcome(beside)) == ("ok", "EROFS"), (inside, beside)
    assert (writable / "alice.txt").read_text() == "kept"  # on the host, where it was written
    assert not (other / "alice.txt").exists()


@pytest.mark.parametrize("mode", MODES)
async def test_the_gateways_own_secrets_are_hidden_from_children_in_namespaces(
    aiohttp_client: AiohttpClient, mode: str, shared_directories: tuple[Path, Path]
) -> None:
    """Its data directory, key and token files, `.env` and the configured hidden paths: readable
    to a child that shares the gateway's user (`none`), hidden with namespaces; with a user of its
    own (`uid`) the files' modes keep it out."""
    place, _ = shared_directories
    data, key, extra = place / "data", place / "identity.pem", place / "private"
    data.mkdir(mode=0o700)
    (data / "oauth.sqlite3").write_text("the authorization server's state")
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key.write_bytes(pem)
    key.chmod(0o600)
    extra.write_text("a path the operator hides")
    extra.chmod(0o600)
    env_file = Path.cwd() / ".env"  # the gateway reads its .env from its working directory
    env_file.write_text("MCP_GATEWAY_LOG_LEVEL=debug\n")
    env_file.chmod(0o600)
    settings = isolated(mode, data_dir=data, identity_key_file=key, child_hidden_paths=[extra])
    gateway = await serve(aiohttp_client, **settings)
    alice = await Caller(gateway, ALICE).open()
    seen = {
        "data": outcome(await alice.tool("list_dir", path=str(data))),
        "state": outcome(await alice.tool("read_file", path=str(data / "oauth.sqlite3"))),
        "key": outcome(await alice.tool("read_file", path=str(key))),
        "hidden": outcome(await alice.tool("read_file", path=str(extra))),
        ".env": outcome(await alice.tool("read_file", path=str(env_file))),
        "shadow": outcome(await alice.tool("read_file", path="/etc/shadow")),
    }
    report("secrets", mode, seen)
    if mode == "none":
        assert set(seen.values()) == {"ok"}, seen
    elif mode == "uid":
        assert set(seen.values()) == {"EACCES"}, seen
    else:  # an empty directory in its place, and files that cannot be opened
        listing = await alice.tool("list_dir", path=str(data))
        assert listing["ok"], listing
        assert listing["names"] == [], listing
        # A covered file cannot be opened; what sits in a covered directory (or the private /tmp) is not there.
        refused = {name: seen[name] for name in seen if name != "data"}
        assert set(refused.values()) <= {"EACCES", "ENOENT"}, seen
        assert seen["state"] == "ENOENT", seen
    assert key.read_bytes() == pem  # hidden, never touched


@pytest.mark.parametrize("mode", NAMESPACE_MODES)
async def test_a_namespaced_childs_directory_and_processes_go_with_the_session(
    aiohttp_client: AiohttpClient, mode: str
) -> None:
    gateway = await serve(aiohttp_client, **isolated(mode))
    alice = await Caller(gateway, ALICE).open()
    me = await alice.tool("whoami")
    directory = Path(me["HOME"]).parent
    assert (directory / "home").is_dir()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert (await alice.tool("write_file", path=f"{me['HOME']}/cache.db", text="x" * 1000))["ok"]
    sleeper = await alice.tool("spawn_sleeper", seconds=60)  # a session and group of its own
    sleeper_pid = host_pid(me["pid_ns"], sleeper["pid"])
    server_pid = host_pid(me["pid_ns"], me["pid"])
    held = os.open(f"/proc/{server_pid}/ns/pid", os.O_RDONLY)  # its inode number is not reused meanwhile
    try:
        assert await alice.delete() == 204
        assert await eventually(lambda: not directory.exists())
        assert await eventually(lambda: not _alive(sleeper_pid))  # its PID namespace ended with its first process
        assert await eventually(lambda: not _alive(server_pid) and not namespace_members(me["pid_ns"]))
    finally:
        os.close(held)
    report("cleanup", mode, {"directory": "removed", "sleeper": "gone"})


def _run_without_bubblewrap(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run `argv` in a mount namespace of its own where bubblewrap is an empty file no one may
    execute (on the PATH and where Debian puts it): for that process, bubblewrap is not installed."""
    unshare = shutil.which("unshare")
    assert unshare is not None
    with tempfile.NamedTemporaryFile(prefix="no-bwrap-") as empty:
        os.chmod(empty.name, 0o600)
        command = [unshare, "--mount", "--propagation", "private", "/bin/sh", "-c", NO_BUBBLEWRAP, empty.name, *argv]
        return subprocess.run(command, capture_output=True, text=True, timeout=WAIT, check=False)


@needs_unshare
@pytest.mark.parametrize(
    ("mode", "code", "said"),
    [
        pytest.param(
            "uid+namespaces",
            1,
            "child_isolation=uid+namespaces is not possible: bubblewrap (bwrap) is not installed",
            marks=needs_uid,
            id="uid+namespaces",
        ),
        pytest.param(
            "auto",
            0,
            "child isolation: uid (namespaces are not possible: bubblewrap (bwrap) is not installed)",
            marks=needs_uid,
            id="auto",
        ),
    ],
)
def test_namespaces_without_bubblewrap_are_refused(mode: str, code: int, said: str) -> None:
    """`mcp-gateway check` decides as `serve` does (`decide`, which raises IsolationUnavailable)."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    range_ = ["--child-uid-range", f"{FIRST_UID}-{FIRST_UID + 999}"]
    argv = [sys.executable, "-m", "gateway", "check", "--child-isolation", mode, *range_, "--", *SPY]
    done = _run_without_bubblewrap("/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv)
    report("without-bubblewrap", mode, [done.returncode, done.stderr.strip().splitlines()[-1:]])
    assert done.returncode == code, done.stderr
    assert said in done.stderr
    assert bubblewrap_problem() == NAMESPACE_PROBLEM  # outside that namespace, nothing changed
