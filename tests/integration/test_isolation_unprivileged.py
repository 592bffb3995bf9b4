"""Isolation between children in `namespaces` alone, through a real gateway run as an unprivileged
user (`nobody`, tests/support/unprivileged.py): the only way that mode runs, since the host's root
may not give it to its children. Such a gateway cannot give children users of their own, so `auto`
takes namespaces, and the children are still isolated from each other: every attack of one child
on another is refused, each sees only loopback with `child_network=none`, writes only the
configured directories, never sees the gateway's own secrets, and nothing of a child is left after
its session ends or after the gateway is SIGKILLed. Users of their own and namespaces without
bubblewrap stop such a gateway at startup.

Every test prints what it observed (`report`): the unprivileged row of the matrix of mode × attack
→ errno.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import stat
from pathlib import Path
from typing import Any, Final

import pytest
from aiohttp import ClientSession, ClientTimeout
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.auth.static import digest_of
from tests.support.gateway_process import HttpMcp
from tests.support.isolation import (
    REFUSED_BY_NAMESPACES,
    bubblewrap_problem,
    exists,
    host_interfaces,
    host_pid,
    namespace_members,
    outcome,
    remove,
)
from tests.support.mcp import text_of
from tests.support.processes import children_of, descendants
from tests.support.servers import SERVERS
from tests.support.types import JsonObj
from tests.support.unprivileged import NOBODY, WHY_NOT, UnprivilegedGateway, run_unprivileged, unprivileged_gateway
from tests.support.waits import WAIT, eventually

PYTHON: Final = Path("/usr/bin/python3")  # the children's interpreter: every user may run it
SPY: Final = [str(PYTHON), str(SERVERS / "spy_server.py")]
ALICE, BOB = "alice-unprivileged-token-1234", "bob-unprivileged-token-5678"
SECRET_VAR: Final = "UPSTREAM_TOKEN"


def _why_not() -> str | None:
    """Why these tests cannot run here: no unprivileged gateway, no spy, or no bubblewrap that
    works for nobody (None: they can)."""
    if WHY_NOT is not None:
        return WHY_NOT
    if not PYTHON.exists():
        return f"{PYTHON} is missing: the spy runs under it"
    return bubblewrap_problem(NOBODY)


PROBLEM: Final = _why_not()
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=str(PROBLEM))


def report(test: str, observed: object) -> None:
    """One row of the matrix, for whoever reads the output (`pytest -s` or `-rP`)."""
    print(f"isolation {test} [unprivileged namespaces]: {json.dumps(observed, sort_keys=True)}")


def spy_settings(mode: str, **extra: str) -> dict[str, str]:
    """Alice and Bob with static tokens, each token handed to the user's own child (`token_env`);
    the audit log in the gateway's working directory."""
    tokens = [{"principal": "alice", "sha256": digest_of(ALICE)}, {"principal": "bob", "sha256": digest_of(BOB)}]
    return {
        "command": json.dumps(SPY),
        "child_env_allow": "PATH,LANG",
        "child_isolation": mode,
        "child_readable_paths": str(SERVERS),  # in the children's view even from a checkout under /tmp
        "auth": "static",
        "static_tokens": json.dumps(tokens),
        "token_env": SECRET_VAR,
        "audit_log": "audit.jsonl",
        **extra,
    }


class Caller:
    """One user's session with the gateway, over real HTTP."""

    def __init__(self, http: ClientSession, gateway: UnprivilegedGateway, token: str) -> None:
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


def _audit(gateway: UnprivilegedGateway) -> list[JsonObj]:
    """Every line of the gateway's audit log so far."""
    return [json.loads(line) for line in (gateway.workdir / "audit.jsonl").read_text().splitlines()]


def _decided(gateway: UnprivilegedGateway) -> JsonObj:
    [decided] = [record for record in gateway.log if str(record.get("msg", "")).startswith("child isolation: ")]
    return decided


async def _health(client: ClientSession, gateway: UnprivilegedGateway) -> JsonObj:
    async with client.get(gateway.health_url) as response:
        assert response.status == 200
        health: JsonObj = await response.json()
        return health


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


def http() -> ClientSession:
    return ClientSession(timeout=ClientTimeout(total=WAIT))


async def test_auto_takes_namespaces_and_every_attack_is_refused() -> None:
    async with unprivileged_gateway(spy_settings("auto")) as gateway, http() as client:
        assert _uids(gateway.process.pid) == [NOBODY] * 4
        assert _capabilities(gateway.process.pid)["CapEff"] == 0
        decided = _decided(gateway)
        assert decided["msg"] == "child isolation: namespaces", decided
        assert decided["reason"] == "uid isolation is not possible: the gateway does not run as root", decided
        assert (await _health(client, gateway))["isolation"] == "namespaces"

        alice = await Caller(client, gateway, ALICE).open()
        bob = await Caller(client, gateway, BOB).open()
        a, b = await alice.whoami(), await bob.whoami()
        # Per-user values start (and reach their own child): the children are isolated.
        assert (a["env"]["value"], b["env"]["value"]) == (ALICE, BOB)
        assert a["uid"] == b["uid"] == NOBODY  # one user: the namespaces alone keep them apart
        assert a["pid_ns"] != b["pid_ns"]
        alice_pid = host_pid(a["pid_ns"], a["pid"])
        # The audit line names the outer bubblewrap: the server is its grandchild on the host.
        [spawned] = [
            line for line in _audit(gateway) if line["event"] == "child.spawn" and line["principal"] == "alice"
        ]
        assert (spawned["isolation"], spawned["uid"]) == ("namespaces", None)
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
            in_host_tmp = exists(shared_tmp)
            assert (await alice.tool("whoami", env=SECRET_VAR))["env"]["value"] == ALICE
        finally:
            remove(shared_tmp)
        own = set(namespace_members(b["pid_ns"]).values())
        seen = {entry["pid"] for entry in listing["processes"]}
        observed = {"processes": "only its own" if seen == own and b["pid"] in seen else f"sees {sorted(seen)}"}
        observed |= {attack: outcome(attempt) for attack, attempt in reports.items()}
        report("attacks", observed)
        assert observed == REFUSED_BY_NAMESPACES, reports
        assert "value" not in reports["environ"]
        assert not in_host_tmp  # Alice's /tmp was her own
        assert not exists(gateway.workdir / "bob.txt")
        # Of the directory of every child's private one, Bob's child sees only its own.
        cells = await bob.tool("list_dir", path=str(Path(b["HOME"]).parent.parent))
        assert cells["names"] == [Path(b["HOME"]).parent.name], cells


async def test_the_child_is_in_namespaces_of_its_own_and_child_network_none_leaves_only_loopback() -> None:
    """A listener on the host's loopback is out of reach with `child_network=none`: the child's
    loopback is its own. The control: the same child with the host's network reaches it."""
    observed: dict[str, Any] = {}
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        for network in ("none", "host"):
            settings = spy_settings("namespaces", child_network=network)
            async with unprivileged_gateway(settings) as gateway, http() as client:
                assert (await _health(client, gateway))["isolation"] == "namespaces"
                decided = _decided(gateway)
                assert (decided["msg"], decided["reason"]) == ("child isolation: namespaces", "configured")
                alice = await Caller(client, gateway, ALICE).open()
                me = await alice.whoami()
                mine = {name: os.readlink(f"/proc/self/ns/{name}") for name in me["namespaces"]}
                own = sorted(name for name, link in me["namespaces"].items() if link != mine[name])
                interfaces = await alice.tool("net_interfaces")
                connected = await alice.tool("net_probe", host="127.0.0.1", port=port)
                observed[network] = {
                    "own": own,
                    "interfaces": interfaces["interfaces"],
                    "connect": outcome(connected),
                }
                assert me["pid"] != host_pid(me["pid_ns"], me["pid"])
                assert (me["uid"], me["NoNewPrivs"], int(me["CapEff"], 16), int(me["CapPrm"], 16)) == (NOBODY, 1, 0, 0)
                assert me["cwd"] == me["HOME"]
    report("network", observed)
    for network in ("none", "host"):
        assert {"ipc", "mnt", "pid", "user", "uts"} <= set(observed[network]["own"]), observed
    assert "net" in observed["none"]["own"]
    assert (observed["none"]["interfaces"], observed["none"]["connect"]) == (["lo"], "ECONNREFUSED")
    assert "net" not in observed["host"]["own"]
    assert (observed["host"]["interfaces"], observed["host"]["connect"]) == (host_interfaces(), "ok")


def _writable_directories(workdir: Path) -> dict[str, str]:
    """Two directories of nobody's, whom the child runs as: only its view keeps it from either."""
    for name in ("writable", "other"):
        (workdir / name).mkdir(mode=0o700)
        os.chown(workdir / name, NOBODY, NOBODY)
    return {"child_writable_paths": str(workdir / "writable")}


async def test_child_writable_paths_are_the_only_directories_a_child_writes() -> None:
    settings = spy_settings("namespaces")
    async with unprivileged_gateway(settings, _writable_directories) as gateway, http() as client:
        writable, other = gateway.workdir / "writable", gateway.workdir / "other"
        alice = await Caller(client, gateway, ALICE).open()
        inside = await alice.tool("write_file", path=str(writable / "alice.txt"), text="kept")
        beside = await alice.tool("write_file", path=str(other / "alice.txt"), text="lost")
        report("writable", {"configured": outcome(inside), "other": outcome(beside)})
        assert (outcome(inside), outcome(beside)) == ("ok", "EROFS"), (inside, beside)
        assert (writable / "alice.txt").read_text() == "kept"  # on the host, where it was written
        assert not (other / "alice.txt").exists()


def _secrets(workdir: Path) -> dict[str, str]:
    """The gateway's data directory, identity key, a path configured hidden and its `.env`, each
    nobody's: only their being hidden keeps them from a child of nobody's."""
    data, key, extra, env_file = workdir / "data", workdir / "identity.pem", workdir / "private", workdir / ".env"
    data.mkdir(mode=0o700)
    (data / "oauth.sqlite3").write_text("the authorization server's state")
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key.write_bytes(pem)
    extra.write_text("a path the operator hides")
    env_file.write_text("MCP_GATEWAY_LOG_LEVEL=debug\n")  # the gateway reads .env from its working directory
    (workdir / "visible").write_text("the control: a file of the same user's, not hidden")
    for path in (data, data / "oauth.sqlite3", key, extra, env_file, workdir / "visible"):
        os.chown(path, NOBODY, NOBODY)
        path.chmod(0o700 if path.is_dir() else 0o600)
    return {"data_dir": str(data), "identity_key_file": str(key), "child_hidden_paths": str(extra)}


async def test_the_gateways_own_secrets_are_hidden_from_children() -> None:
    """Its data directory, key, audit log, `.env` and the configured hidden paths, all of its own
    user, whom the child shares: an empty directory in place of the one, files that cannot be
    opened, or not there at all; another file of that user's the child reads."""
    async with unprivileged_gateway(spy_settings("namespaces"), _secrets) as gateway, http() as client:
        workdir = gateway.workdir
        assert any(record.get("level") == "debug" for record in gateway.log)  # it read its .env
        alice = await Caller(client, gateway, ALICE).open()
        data = workdir / "data"
        listing = await alice.tool("list_dir", path=str(data))
        seen = {
            "data": "empty" if listing["ok"] and listing["names"] == [] else outcome(listing),
            "state": outcome(await alice.tool("read_file", path=str(data / "oauth.sqlite3"))),
            "key": outcome(await alice.tool("read_file", path=str(workdir / "identity.pem"))),
            "hidden": outcome(await alice.tool("read_file", path=str(workdir / "private"))),
            ".env": outcome(await alice.tool("read_file", path=str(workdir / ".env"))),
            "audit": outcome(await alice.tool("read_file", path=str(workdir / "audit.jsonl"))),
            "shadow": outcome(await alice.tool("read_file", path="/etc/shadow")),
            "visible": outcome(await alice.tool("read_file", path=str(workdir / "visible"))),
        }
        report("secrets", seen)
        assert seen.pop("visible") == "ok", seen  # the control: its user's files are the child's to read
        assert seen["data"] == "empty", listing
        assert seen["state"] == "ENOENT", seen  # what sits in a covered directory is not there
        refused = {name: outcome for name, outcome in seen.items() if name not in ("data", "state")}
        assert set(refused.values()) <= {"EACCES", "ENOENT"}, seen  # a covered file cannot be opened
        assert (workdir / "audit.jsonl").stat().st_size > 0  # the gateway writes it all the same


@pytest.mark.parametrize("mode", ["uid", "uid+namespaces"])
async def test_users_of_their_own_are_impossible_and_stop_startup(mode: str) -> None:
    code, said = await run_unprivileged(spy_settings(mode), "serve")
    messages = [str(record.get("msg", "")) for record in said]
    report("startup", {mode: [code, messages[-1:]]})
    assert code != 0
    expected = f"child_isolation={mode} is not possible: the gateway does not run as root"
    assert any(expected in message for message in messages), said


@pytest.mark.parametrize(
    ("mode", "code", "said"),
    [
        pytest.param(
            "namespaces",
            1,
            "child_isolation=namespaces is not possible: bubblewrap (bwrap) is not installed",
            id="namespaces",
        ),
        pytest.param(
            "auto",
            0,
            "child isolation: none (uid isolation is not possible: the gateway does not run as root; "
            "namespaces are not possible: bubblewrap (bwrap) is not installed)",
            id="auto",
        ),
    ],
)
async def test_namespaces_without_bubblewrap_are_refused(mode: str, code: int, said: str) -> None:
    """`mcp-gateway check` decides as `serve` does; no user's values go to the children here, so
    `auto` may fall back to none."""
    settings = {"command": json.dumps(SPY), "child_isolation": mode, "child_readable_paths": str(SERVERS)}
    done, lines = await run_unprivileged(settings, "check", without_bubblewrap=True)
    messages = [str(line.get("msg", "")) for line in lines]
    report("without-bubblewrap", {mode: [done, messages[-1:]]})
    assert done == code, messages
    assert f"mcp-gateway: {said}" in messages
    assert bubblewrap_problem(NOBODY) is None  # outside that mount namespace, nothing changed


async def test_nothing_is_left_after_delete_nor_after_the_gateway_is_killed() -> None:
    async with unprivileged_gateway(spy_settings("namespaces")) as gateway, http() as client:
        sessions = [await Caller(client, gateway, token).open() for token in (ALICE, BOB)]
        children: list[tuple[JsonObj, int]] = []
        for caller in sessions:
            me = await caller.whoami()
            sleeper = await caller.tool("spawn_sleeper", seconds=300)  # a session and group of its own
            assert sleeper["ok"], sleeper
            assert host_pid(me["pid_ns"], sleeper["pid"]) in gateway.children()
            children.append((me, len(namespace_members(me["pid_ns"]))))
        [root] = gateway.cells_roots()
        # The gateway's own user made the private directories, in a directory no one else may enter.
        assert (root.stat().st_uid, stat.S_IMODE(root.stat().st_mode)) == (NOBODY, 0o700)
        for me, _ in children:
            cell = Path(me["HOME"]).parent
            assert (cell.stat().st_uid, stat.S_IMODE(cell.stat().st_mode)) == (NOBODY, 0o700)
        watchdogs = [pid for pid in gateway.children() if "watchdog" in _cmdline(pid)]
        assert len(watchdogs) == 1, watchdogs
        assert all(count == 3 for _, count in children), children  # bubblewrap's init, the spy, its sleeper

        # DELETE: the session's namespace, sleeper included, and its private directory go.
        (alice, _), (bob, _) = children
        assert (await sessions[0].tool("write_file", path=f"{alice['HOME']}/cache.db", text="x" * 1000))["ok"]
        assert await sessions[0].delete() == 204
        alice_cell = Path(alice["HOME"]).parent
        assert await eventually(lambda: not namespace_members(alice["pid_ns"]) and not alice_cell.exists())
        assert namespace_members(bob["pid_ns"])  # the other session is untouched

        # SIGKILL: bubblewrap dies with its parent, the watchdog removes the private directories.
        gateway.process.kill()
        assert await eventually(lambda: not namespace_members(bob["pid_ns"]))
        assert await eventually(lambda: not gateway.started.alive())
        assert await eventually(lambda: not exists(root))
        report("leftovers", {"after delete": "none", "after SIGKILL": "none", "cells root": "removed"})
        assert sorted(path.name for path in gateway.workdir.iterdir()) == ["audit.jsonl"]
