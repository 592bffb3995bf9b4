"""The spy server (`tests/servers/spy_server.py`), driven over its pipes without the gateway: each
tool reports what the kernel allowed, and, as root, the attacks between two copies show the
isolation matrix the gateway's sandbox must reproduce — another uid is refused everything (with
the errno the kernel gives), the same uid is refused nothing (the control)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Final

import pytest

from tests.servers.spy_server import NAMESPACES
from tests.support.isolation import PROBE_VIEW, bubblewrap_problem, bwrap_path
from tests.support.processes import group_members
from tests.support.servers import SERVERS
from tests.support.types import JsonObj
from tests.support.waits import WAIT, eventually

PYTHON: Final = Path("/usr/bin/python3")
"""The system interpreter: the project's virtualenv lives where another uid cannot read it."""
SPY: Final = SERVERS / "spy_server.py"
SETPRIV: Final = shutil.which("setpriv")
PRLIMIT: Final = shutil.which("prlimit")
UID_A: Final = 59_001
UID_B: Final = 59_002
"""Two uids outside the system and login ranges, used only here (checked: no process runs as them)."""
NPROC_LIMIT: Final = 8
"""RLIMIT_NPROC for the fork probe: small, so a handful of forks reaches it."""
SECRET: Final = ("SECRET_TOKEN", "hunter2")
BWRAP_PROBLEM: Final = bubblewrap_problem()
SPY_ENV: Final = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/nonexistent"}
"""The whole environment of a spy (plus what a test adds): nothing of the test process leaks in."""

pytestmark = pytest.mark.skipif(not PYTHON.exists(), reason=f"{PYTHON} is missing: the spy runs under it")


def _processes_of(uid: int) -> set[int]:
    """Live processes whose real uid is `uid`."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("Uid:") and int(line.split()[1]) == uid:
                    found.add(int(entry.name))
                if line.startswith("State:") and line.split()[1] in ("Z", "X"):
                    break
    return found


def _other_uids_possible() -> str | None:
    """Why the cross-uid tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root to start spies under other uids"
    if SETPRIV is None:
        return "setpriv (util-linux) is missing"
    if _processes_of(UID_A) or _processes_of(UID_B):
        return f"uid {UID_A} or {UID_B} is in use on this machine"
    return None


needs_other_uids = pytest.mark.skipif(_other_uids_possible() is not None, reason=str(_other_uids_possible()))


class Spy:
    """One spy process: JSON-RPC over its pipes, one request at a time, every read bounded."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.pid = process.pid  # setpriv and prlimit exec: the spy keeps their pid
        self.stderr = bytearray()
        self.ids = itertools.count(1)

    async def send_line(self, line: bytes) -> JsonObj:
        """Write one raw line and return the one message that answers it."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(line + b"\n")
        async with asyncio.timeout(WAIT):
            await self.process.stdin.drain()
            answer = await self.process.stdout.readline()
        assert answer, f"the spy closed stdout; stderr: {self.stderr.decode(errors='replace')}"
        message: JsonObj = json.loads(answer)
        return message

    async def request(self, method: str, params: JsonObj | None = None) -> JsonObj:
        msg_id = next(self.ids)
        message = {"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params or {}}
        answer = await self.send_line(json.dumps(message).encode())
        assert answer["id"] == msg_id, answer
        return answer

    async def call(self, tool: str, **arguments: object) -> JsonObj:
        """The report of `tool`: the JSON object in its one text content item."""
        answer = await self.request("tools/call", {"name": tool, "arguments": arguments})
        assert "result" in answer, answer
        result = answer["result"]
        assert result["isError"] is False
        [content] = result["content"]
        assert content["type"] == "text"
        report: JsonObj = json.loads(content["text"])
        return report


async def _drain(stream: asyncio.StreamReader, into: bytearray) -> None:
    while chunk := await stream.read(65536):
        into += chunk


@contextlib.asynccontextmanager
async def running_spy(
    uid: int | None = None,
    env: dict[str, str] | None = None,
    nproc: int | None = None,
    wrapper: tuple[str, ...] = (),
) -> AsyncIterator[Spy]:
    """A spy, initialized; under `uid` (setpriv: no groups, no_new_privs) and an RLIMIT_NPROC if
    given, behind `wrapper` (a command that runs the rest of its command line). Its process group
    is SIGKILLed on the way out (its sleepers are the test's to kill)."""
    argv = [*wrapper, str(PYTHON), str(SPY)]
    if uid is not None:
        assert SETPRIV is not None
        argv = [SETPRIV, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs", *argv]
    if nproc is not None:
        assert PRLIMIT is not None
        argv = [PRLIMIT, f"--nproc={nproc}:{nproc}", *argv]
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**SPY_ENV, **(env or {})},
        cwd="/",
        start_new_session=True,
    )
    spy = Spy(process)
    assert process.stderr is not None
    assert process.stdin is not None
    drain = asyncio.get_running_loop().create_task(_drain(process.stderr, spy.stderr))
    try:
        init = await spy.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}})
        assert init["result"]["serverInfo"]["name"] == "spy-server"
        process.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        yield spy
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.stdin.close()
        async with asyncio.timeout(WAIT):
            await process.wait()
            await drain


@contextlib.contextmanager
def killing(pids: list[int]) -> Iterator[list[int]]:
    """SIGKILL every pid a test adds to the list, on the way out."""
    try:
        yield pids
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return raw[raw.rindex(")") + 2 :].split()[0] not in ("Z", "X")


def _tracer(pid: int) -> int:
    """The TracerPid of `pid` (0: nobody traces it)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no TracerPid for {pid}")


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def _own_attempt_at_environ(pid: int) -> str:
    """What this test process gets reading /proc/<pid>/environ: "ok" or the errno's name."""
    try:
        Path(f"/proc/{pid}/environ").read_bytes()
    except OSError as exc:
        return errno.errorcode[exc.errno] if exc.errno is not None else type(exc).__name__
    return "ok"


def _absent_pid() -> int:
    """A pid no process can have: pids stay below pid_max."""
    return int(Path("/proc/sys/kernel/pid_max").read_text())


def _interfaces() -> list[str]:
    """The network interfaces of this process's network namespace, as /proc/net/dev lists them."""
    return sorted(line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:])


def _exists(path: Path) -> bool:
    return path.exists()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # closed now; nothing else on loopback is likely to take it within the test


# --- the protocol --------------------------------------------------------------------------------


async def test_tools_list_names_every_tool() -> None:
    async with running_spy() as spy:
        answer = await spy.request("tools/list")
        assert (await spy.request("ping"))["result"] == {}
    names = [tool["name"] for tool in answer["result"]["tools"]]
    assert names == [
        "whoami",
        "read_environ",
        "signal",
        "ptrace",
        "read_file",
        "list_dir",
        "write_file",
        "spawn_sleeper",
        "fork_bomb_probe",
        "net_probe",
        "processes",
        "net_interfaces",
    ]


@pytest.mark.parametrize(
    ("line", "code"),
    [
        pytest.param(b"not json", -32700, id="not-json"),
        pytest.param(b'{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}', -32700, id="duplicate-key"),
        pytest.param(b'{"jsonrpc":"2.0","id":NaN,"method":"ping"}', -32700, id="nan"),
        pytest.param(b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', -32600, id="batch"),
        pytest.param(b'{"id":1,"method":"ping"}', -32600, id="no-jsonrpc-member"),
        pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"nope"}', -32601, id="unknown-method"),
        pytest.param(
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"nope"}}', -32602, id="unknown-tool"
        ),
        pytest.param(
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"signal","arguments":{"pid":-1}}}',
            -32602,
            id="signal-every-process",
        ),
        pytest.param(
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_file","arguments":{"path":true}}}',
            -32602,
            id="wrong-type",
        ),
    ],
)
async def test_malformed_requests_get_an_error_and_the_spy_keeps_serving(line: bytes, code: int) -> None:
    async with running_spy() as spy:
        answer = await spy.send_line(line)
        assert answer["error"]["code"] == code, answer
        assert (await spy.call("whoami"))["ok"] is True


# --- each tool, as the test's own uid -------------------------------------------------------------


async def test_whoami_reports_identity_limits_and_namespace() -> None:
    async with running_spy(env={"SPY_MARK": "here"}) as spy:
        report = await spy.call("whoami", env="SPY_MARK")
    assert report["pid"] == spy.pid
    assert report["ppid"] == os.getpid()
    assert (report["uid"], report["euid"], report["gid"], report["egid"]) == (
        os.getuid(),
        os.geteuid(),
        os.getgid(),
        os.getegid(),
    )
    assert report["env"] == {"name": "SPY_MARK", "value": "here"}
    assert report["HOME"] == "/nonexistent"
    assert report["TMPDIR"] is None
    assert report["cwd"] == "/"
    assert report["NoNewPrivs"] in (0, 1)
    assert isinstance(report["Seccomp"], int)
    for mask in ("CapEff", "CapPrm", "CapBnd"):
        int(report[mask], 16)
    for limit in ("RLIMIT_NPROC", "RLIMIT_NOFILE"):
        assert len(report[limit]) == 2
    assert report["pid_ns"] == os.readlink("/proc/self/ns/pid")  # no namespace of its own yet
    assert report["namespaces"] == {name: os.readlink(f"/proc/self/ns/{name}") for name in NAMESPACES}
    assert report["hostname"] == socket.gethostname()
    assert report["pids"]["count"] >= len(report["pids"]["first"]) > 0
    assert report["pids"]["count"] >= 2  # at least this test process and the spy


async def test_read_environ_of_itself_shows_a_value() -> None:
    async with running_spy(env={SECRET[0]: SECRET[1]}) as spy:
        report = await spy.call("read_environ", pid=spy.pid, show=SECRET[0])
    assert report["ok"] is True
    assert set(report["names"]) == {*SPY_ENV, SECRET[0]}
    assert report["value"] == SECRET[1]


async def test_read_environ_of_init_matches_what_its_uid_gets() -> None:
    # Not predicted from uid and capabilities alone: an LSM (Landlock scoping, Yama) or a
    # non-dumpable init can refuse even root, so the test process's own attempt is the reference.
    async with running_spy() as spy:
        report = await spy.call("read_environ", pid=1)
    assert ("ok" if report["ok"] else report["errno"]) == _own_attempt_at_environ(1), report


async def test_signal_reaches_itself_and_not_a_missing_pid() -> None:
    async with running_spy() as spy:
        assert (await spy.call("signal", pid=spy.pid))["ok"] is True
        missing = await spy.call("signal", pid=_absent_pid(), signal=signal.SIGTERM)
    assert missing["errno"] == "ESRCH"


async def test_ptrace_attaches_to_its_own_sleeper_and_lets_it_go() -> None:
    with killing([]) as leftovers:
        async with running_spy() as spy:
            sleeper = await spy.call("spawn_sleeper", seconds=60)
            leftovers.append(sleeper["pid"])
            report = await spy.call("ptrace", pid=sleeper["pid"])
            assert report == {"ok": True, "pid": sleeper["pid"], "attached": True, "stopped": True, "detached": True}
            assert (await spy.call("ptrace", pid=spy.pid))["errno"] == "EPERM"  # never oneself
            assert (await spy.call("ptrace", pid=_absent_pid()))["errno"] == "ESRCH"
            assert _alive(sleeper["pid"])
            assert _tracer(sleeper["pid"]) == 0


async def test_spawn_sleeper_outlives_the_spy_and_its_process_group() -> None:
    with killing([]) as leftovers:
        async with running_spy() as spy:
            report = await spy.call("spawn_sleeper", seconds=60)
            leftovers.append(report["pid"])
            assert report["pgid"] == report["sid"] == report["pid"]  # a session of its own
        # running_spy SIGKILLed the spy's process group: the sleeper was not in it
        assert _alive(report["pid"])
        assert "time.sleep" in _cmdline(report["pid"])


async def test_files_are_written_private_read_back_and_listed(tmp_path: Path) -> None:
    note = tmp_path / "note"
    async with running_spy() as spy:
        written = await spy.call("write_file", path=str(note), text="hello")
        read = await spy.call("read_file", path=str(note))
        listed = await spy.call("list_dir", path=str(tmp_path))
        missing = await spy.call("read_file", path=str(tmp_path / "missing"))
        not_a_dir = await spy.call("list_dir", path=str(note))
    assert written == {"ok": True, "path": str(note), "mode": "0600", "uid": os.getuid(), "gid": os.getgid(), "size": 5}
    assert (read["content"], read["truncated"]) == ("hello", False)
    assert listed["names"] == ["note"]
    assert missing["errno"] == "ENOENT"
    assert not_a_dir["errno"] == "ENOTDIR"


async def test_fork_bomb_probe_cleans_up_every_child() -> None:
    async with running_spy() as spy:
        report = await spy.call("fork_bomb_probe", count=5)
        children = group_members({spy.pid}) - {spy.pid}
    assert (report["ok"], report["started"], report["reaped"], report["killed"]) == (True, 5, 5, 0)
    assert not children


async def test_net_probe_on_loopback() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        open_port = listener.getsockname()[1]
        async with running_spy() as spy:
            opened = await spy.call("net_probe", host="127.0.0.1", port=open_port)
            refused = await spy.call("net_probe", host="127.0.0.1", port=_closed_port())
    assert opened == {"ok": True, "host": "127.0.0.1", "port": open_port, "peer": ["127.0.0.1", open_port]}
    assert refused["errno"] == "ECONNREFUSED"


async def test_processes_lists_what_its_proc_shows_with_command_lines() -> None:
    async with running_spy() as spy:
        report = await spy.call("processes")
        extra = await spy.send_line(
            b'{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"processes","arguments":{"all":true}}}'
        )
    listed = {entry["pid"]: entry["cmdline"] for entry in report["processes"]}
    assert report["ok"] is True
    assert report["count"] >= len(listed) >= 2
    assert listed[spy.pid] == f"{PYTHON} {SPY}"
    assert listed[os.getpid()] == _cmdline(os.getpid()).rstrip(" ")
    assert extra["error"]["code"] == -32602  # it takes no arguments


async def test_net_interfaces_are_those_of_its_network_namespace() -> None:
    async with running_spy() as spy:
        report = await spy.call("net_interfaces")
    assert report == {"ok": True, "interfaces": _interfaces()}
    assert "lo" in report["interfaces"]


@pytest.mark.skipif(BWRAP_PROBLEM is not None, reason=str(BWRAP_PROBLEM))
async def test_behind_bubblewrap_the_tools_report_the_namespaces() -> None:
    """In namespaces of its own (loopback only, the host read-only, a /tmp of its own)."""
    bwrap = bwrap_path()
    assert bwrap is not None
    private_tmp = Path(f"/tmp/spy-{os.getpid()}-{os.urandom(4).hex()}.txt")  # noqa: S108 - the spy's own /tmp
    # The spy itself stays in view, even from a checkout under /tmp.
    async with running_spy(wrapper=(bwrap, *PROBE_VIEW, "--ro-bind", str(SPY.parent), str(SPY.parent), "--")) as spy:
        who = await spy.call("whoami")
        seen = await spy.call("processes")
        interfaces = await spy.call("net_interfaces")
        outside = await spy.call("write_file", path=f"/spy-{os.getpid()}.txt", text="x")
        inside = await spy.call("write_file", path=str(private_tmp), text="x")
        host = await spy.call("signal", pid=os.getpid())
    assert who["namespaces"]["pid"] != os.readlink("/proc/self/ns/pid")
    assert who["namespaces"]["net"] != os.readlink("/proc/self/ns/net")
    # bubblewrap is the namespace's first process, the spy its second; nothing of the host shows.
    assert [entry["pid"] for entry in seen["processes"]] == [1, who["pid"]], seen
    assert seen["processes"][1]["cmdline"] == f"{PYTHON} {SPY}"
    assert interfaces["interfaces"] == ["lo"]
    assert outside["errno"] == "EROFS", outside
    assert inside["ok"] is True, inside
    assert not _exists(private_tmp)  # its /tmp was its own
    assert host["errno"] == "ESRCH", host  # this process's pid means nothing in there


# --- two uids, as root ---------------------------------------------------------------------------


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A 0700 directory owned by UID_A outside pytest's root-only tmp tree (which no uid can enter)."""
    path = Path(tempfile.mkdtemp(prefix="spy-private-"))
    try:
        os.chown(path, UID_A, UID_A)
        path.chmod(0o700)
        yield path
    finally:
        shutil.rmtree(path)


@needs_other_uids
async def test_a_setpriv_spy_runs_with_only_the_identity_it_was_given() -> None:
    async with running_spy(uid=UID_A) as spy:
        who = await spy.call("whoami")
        init = await spy.call("read_environ", pid=1)
    assert (who["uid"], who["euid"], who["gid"], who["egid"], who["groups"]) == (UID_A, UID_A, UID_A, UID_A, [])
    assert who["NoNewPrivs"] == 1
    assert who["CapEff"] == who["CapPrm"] == "0000000000000000"
    assert init["errno"] == "EACCES"  # init is root's


@pytest.mark.parametrize(
    ("uid_b", "expected"),
    [
        pytest.param(
            UID_B,
            {
                "read_environ": "EACCES",
                "signal": "EPERM",
                "ptrace": "EPERM",
                "read_file": "EACCES",
                "list_dir": "EACCES",
            },
            id="other-uid",
        ),
        pytest.param(
            UID_A,
            {"read_environ": "ok", "signal": "ok", "ptrace": "ok", "read_file": "ok", "list_dir": "ok"},
            id="same-uid-control",
        ),
    ],
)
@needs_other_uids
async def test_attacks_between_two_spies(private_dir: Path, uid_b: int, expected: dict[str, str]) -> None:
    secret_file = private_dir / "secret.txt"
    async with running_spy(uid=UID_A, env={SECRET[0]: SECRET[1]}) as a, running_spy(uid=uid_b) as b:
        written = await a.call("write_file", path=str(secret_file), text=SECRET[1])
        assert (written["ok"], written["mode"], written["uid"]) == (True, "0600", UID_A)
        reports = {
            "read_environ": await b.call("read_environ", pid=a.pid, show=SECRET[0]),
            "signal": await b.call("signal", pid=a.pid),
            "ptrace": await b.call("ptrace", pid=a.pid),
            "read_file": await b.call("read_file", path=str(secret_file)),
            "list_dir": await b.call("list_dir", path=str(private_dir)),
        }
        # A still serves (a stray signal or a tracer left attached would show here) and keeps its secret
        assert (await a.call("read_environ", pid=a.pid, show=SECRET[0]))["value"] == SECRET[1]
        assert _tracer(a.pid) == 0
    observed = {attack: "ok" if report["ok"] else report["errno"] for attack, report in reports.items()}
    assert observed == expected, reports
    if uid_b == UID_A:  # the control: everything of A is B's to take
        assert reports["read_environ"]["value"] == SECRET[1]
        assert reports["read_file"]["content"] == SECRET[1]
        assert reports["list_dir"]["names"] == ["secret.txt"]
        assert reports["ptrace"]["detached"] is True


@needs_other_uids
async def test_a_real_signal_from_another_uid_is_refused_and_harmless() -> None:
    async with running_spy(uid=UID_A) as a, running_spy(uid=UID_B) as b:
        report = await b.call("signal", pid=a.pid, signal=signal.SIGKILL)
        assert report["errno"] == "EPERM"
        assert (await a.request("ping"))["result"] == {}


@needs_other_uids
@pytest.mark.skipif(PRLIMIT is None, reason="prlimit (util-linux) is missing")
async def test_fork_bomb_probe_stops_at_rlimit_nproc_and_leaves_nothing() -> None:
    async with running_spy(uid=UID_A, nproc=NPROC_LIMIT) as spy:
        report = await spy.call("fork_bomb_probe", count=4 * NPROC_LIMIT)
        assert await eventually(lambda: _processes_of(UID_A) == {spy.pid})
    assert report["RLIMIT_NPROC"] == [NPROC_LIMIT, NPROC_LIMIT]
    assert report["ok"] is False
    assert report["errno"] == "EAGAIN"
    assert report["started"] == NPROC_LIMIT - 1  # the spy itself is the uid's first process
    assert (report["reaped"], report["killed"]) == (report["started"], 0)
