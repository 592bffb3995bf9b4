"""Isolation between children, through the real gateway: with `child_isolation=uid` each session's
child runs as a user of its own, so the spy server in one session is refused every attack on the
child of another (its environment, where the other user's upstream token is; signals; ptrace;
its private files), while the same attacks succeed with `none` (the control). Also: the user IDs,
the private directories and their removal, what the gateway reports, and when it refuses to start.

These need the power to switch users (root here, as in CI) and a Python another user may run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from gateway import create_app, keys
from gateway.auth.static import digest_of
from gateway.sessions.sandbox import IsolationUnavailable, live_users, why_no_user_switching
from tests.support.isolation import uid_released
from tests.support.mcp import LATEST, Mcp, text_of
from tests.support.servers import SERVERS
from tests.support.settings import make_settings, public_host
from tests.support.types import JsonObj
from tests.support.waits import eventually

PYTHON: Final = Path("/usr/bin/python3")  # the virtualenv's lives under /root, which other users cannot enter
SPY: Final = [str(PYTHON), str(SERVERS / "spy_server.py")]
ALICE, BOB = "alice-upstream-token-1234", "bob-upstream-token-5678"
SECRET_VAR: Final = "UPSTREAM_TOKEN"
# A range of our own, far from the default one other tests use, so no test here waits for another's.
FIRST_UID: Final = 1_000_300_000

pytestmark = pytest.mark.skipif(
    why_no_user_switching() is not None or not PYTHON.exists(),
    reason=f"uid isolation is not possible here: {why_no_user_switching() or f'{PYTHON} is missing'}",
)


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


async def serve(aiohttp_client: AiohttpClient, **settings: Any) -> Mcp:
    config = make_settings(**settings)
    return Mcp(await aiohttp_client(create_app(config), headers=public_host(config)))


def yama_allows_ptrace_of_a_sibling() -> bool:
    """Whether one process may trace another of its own user that is not its descendant."""
    try:
        return Path("/proc/sys/kernel/yama/ptrace_scope").read_text().strip() == "0"
    except OSError:
        return True  # no Yama: classic ptrace rules


@pytest.mark.parametrize("mode", ["uid", "none"])
async def test_one_child_cannot_reach_another(aiohttp_client: AiohttpClient, mode: str, tmp_path: Path) -> None:
    gateway = await serve(aiohttp_client, **isolated(mode))
    alice = await Caller(gateway, ALICE).open()
    bob = await Caller(gateway, BOB).open()
    a, b = await alice.tool("whoami", env=SECRET_VAR), await bob.tool("whoami", env=SECRET_VAR)
    # Per-user secrets reach their own child, in every mode.
    assert (a["env"]["value"], b["env"]["value"]) == (ALICE, BOB)

    stolen = await bob.tool("read_environ", pid=a["pid"], show=SECRET_VAR)
    probe = await bob.tool("signal", pid=a["pid"], signal=0)
    traced = await bob.tool("ptrace", pid=a["pid"])
    where = Path(a["TMPDIR"]) if mode == "uid" else tmp_path
    written = await alice.tool("write_file", path=str(where / "notes.txt"), text="alice's private notes")
    assert written["ok"], written
    read = await bob.tool("read_file", path=str(where / "notes.txt"))
    listed = await bob.tool("list_dir", path=str(where))
    outcome = {
        "environ": stolen.get("errno") or stolen.get("value"),
        "signal": probe.get("errno") or "sent",
        "file": read.get("errno") or read.get("content"),
    }
    if mode == "uid":
        assert a["uid"] != b["uid"]
        assert FIRST_UID <= a["uid"] < FIRST_UID + 1000
        assert FIRST_UID <= b["uid"] < FIRST_UID + 1000
        assert outcome == {"environ": "EACCES", "signal": "EPERM", "file": "EACCES"}
        assert traced["errno"] == "EPERM"
        assert listed["errno"] == "EACCES"
    else:  # the control: one user for every child, nothing stands between them
        assert a["uid"] == b["uid"] == os.geteuid()
        assert outcome == {"environ": ALICE, "signal": "sent", "file": "alice's private notes"}
        assert listed["ok"]
        if yama_allows_ptrace_of_a_sibling():
            assert traced["ok"], traced


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


async def test_two_gateways_never_hand_out_the_same_user(aiohttp_client: AiohttpClient) -> None:
    settings = isolated("uid", child_uid_range=f"{FIRST_UID + 600}-{FIRST_UID + 601}", max_sessions=2)
    one, two = await serve(aiohttp_client, **settings), await serve(aiohttp_client, **settings)
    a = await (await Caller(one, ALICE).open()).tool("whoami")
    b = await (await Caller(two, BOB).open()).tool("whoami")
    assert {a["uid"], b["uid"]} == {FIRST_UID + 600, FIRST_UID + 601}


async def test_the_isolation_in_force_is_reported(aiohttp_client: AiohttpClient) -> None:
    gateway = await serve(aiohttp_client, **isolated("uid"))
    async with gateway.http.get("/health") as response:
        assert (await response.json())["isolation"] == "uid"
    alice = await Caller(gateway, ALICE).open()
    me = await alice.tool("whoami")
    sandbox = gateway.http.app[keys.SANDBOX]
    assert (sandbox.mode, sandbox.decision.reason) == ("uid", "configured")
    assert me["uid"] >= FIRST_UID


async def test_auto_chooses_uid_when_the_child_can_run_as_another_user(aiohttp_client: AiohttpClient) -> None:
    gateway = await serve(aiohttp_client, **isolated("auto"))
    sandbox = gateway.http.app[keys.SANDBOX]
    assert (sandbox.mode, sandbox.decision.reason) == ("uid", "the host allows it")


async def test_auto_falls_back_when_no_other_user_may_run_the_server(aiohttp_client: AiohttpClient) -> None:
    """The virtualenv's interpreter lies under /root (mode 0700): no child user could start it."""
    if os.access(sys.executable, os.X_OK) and _others_may_run(sys.executable):
        pytest.skip(f"{sys.executable} is runnable by every user here")
    gateway = await serve(aiohttp_client, child_isolation="auto", child_uid_range=f"{FIRST_UID}-{FIRST_UID + 999}")
    sandbox = gateway.http.app[keys.SANDBOX]
    assert sandbox.mode == "none"
    assert "may not execute" in sandbox.decision.reason
    assert (await gateway.initialize())["serverInfo"]  # and the gateway serves


async def test_uid_asked_for_and_impossible_stops_startup() -> None:
    if _others_may_run(sys.executable):
        pytest.skip(f"{sys.executable} is runnable by every user here")
    settings = make_settings(child_isolation="uid", child_uid_range=f"{FIRST_UID}-{FIRST_UID + 999}")
    runner = web.AppRunner(create_app(settings))
    try:
        with pytest.raises(IsolationUnavailable, match="may not execute"):
            await runner.setup()
    finally:
        await runner.cleanup()


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
    [("none", SPY), ("auto", [sys.executable, str(SERVERS / "echo_server.py")])],
    ids=["none", "auto-without-a-runnable-server"],
)
async def test_per_user_values_and_shared_users_refuse_to_start(mode: str, command: list[str]) -> None:
    if mode == "auto" and _others_may_run(sys.executable):
        pytest.skip(f"{sys.executable} is runnable by every user here")
    settings = make_settings(**isolated(mode, command=command, allow_shared_uid_children=False))
    runner = web.AppRunner(create_app(settings))
    try:
        with pytest.raises(IsolationUnavailable, match="token_env puts each user's values") as refused:
            await runner.setup()
    finally:
        await runner.cleanup()
    assert "allow_shared_uid_children=true" in str(refused.value)


async def test_per_user_values_start_when_the_children_have_users_of_their_own(aiohttp_client: AiohttpClient) -> None:
    gateway = await serve(aiohttp_client, **isolated("auto", allow_shared_uid_children=False))
    assert gateway.http.app[keys.SANDBOX].mode == "uid"
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
    assert "cannot start: children would share one user while token_env" in err
    assert cli.main([*argv, "--allow-shared-uid-children", "--", *SPY]) == 0


async def test_a_child_that_cannot_start_as_its_user_is_a_502_and_gives_its_user_back(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    """Its pre-exec fails (a working directory its user may not enter): the client gets 502, the
    gateway keeps serving, and the user ID is free again."""
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    only = FIRST_UID + 700
    settings = isolated("uid", child_cwd=closed, child_uid_range=f"{only}-{only}", max_sessions=1)
    gateway = await serve(aiohttp_client, **settings)
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": LATEST}}
    headers = gateway.headers({"Authorization": f"Bearer {ALICE}"})
    for _ in range(2):  # the second gets the same (released) user ID, and fails the same way
        async with gateway.http.post("/mcp", json=init, headers=headers) as response:
            assert response.status == 502, await response.text()
        assert await eventually(lambda: uid_released(only))


async def test_a_range_holding_existing_users_is_refused(aiohttp_client: AiohttpClient) -> None:
    nobody = 65534  # `nobody` (and `nogroup`) on Debian
    settings = make_settings(**isolated("uid", child_uid_range=f"{nobody}-{nobody}", max_sessions=1))
    runner = web.AppRunner(create_app(settings))
    try:
        with pytest.raises(IsolationUnavailable, match="holds IDs of existing users or groups"):
            await runner.setup()
    finally:
        await runner.cleanup()
