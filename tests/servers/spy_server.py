"""Stdio MCP server that tries, on request, to cross the boundary between sessions, and reports.

It is the attacker in the isolation tests: each tool makes one attempt (read another process's
`/proc/<pid>/environ`, signal it, ptrace it, read, list or write files anywhere, fork past the
process limit, leave a detached grandchild behind, open a TCP connection) or reports what it can
see (its identity and namespaces, the processes in its `/proc`, its network interfaces), and
answers with one text content item whose text is a JSON object saying what the kernel allowed: `{"ok": true, ...}` or
`{"ok": false, "errno": "EACCES", "error": "..."}`. A refused attempt is a finding, not a tool
error, so `isError` is false whenever the attempt was made; bad arguments are JSON-RPC errors.

It must run as an arbitrary unprivileged uid under `/usr/bin/python3`, with no access to the
project or its virtualenv: it imports the standard library only. It speaks newline-delimited
JSON-RPC 2.0, one JSON object per line, parsed strictly (no batches, no duplicate keys, no
`NaN`/`Infinity`, bounded line length), and answers requests one at a time: every tool is bounded
in time (named constants below), so a synchronous loop suffices and `fork` is safe (one thread).

Configuration is by tool arguments only; the process takes no flags. `pid` arguments must be
positive: `kill(0)`/`kill(-1)` would reach whole groups or every process the uid may signal.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import resource
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

JsonObj = dict[str, Any]
Tool = Callable[[JsonObj], JsonObj]

SUPPORTED_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
LATEST_VERSION = "2025-11-25"

LINE_LIMIT = 1024 * 1024  # a request line longer than this is refused (nothing sent here is near it)
READ_LIMIT = 64 * 1024  # `read_file` returns at most this many bytes
ENVIRON_LIMIT = 1024 * 1024  # an environment block is bounded by ARG_MAX; read no more than this
LISTED_MAX = 1000  # `list_dir` returns at most this many names, `processes` this many processes
CMDLINE_LIMIT = 4096  # `processes` reads at most this many bytes of each command line
PIDS_SHOWN = 50  # `whoami` lists this many of the pids it can see (and counts them all)
PID_MAX = 1 << 22  # the kernel's PID_MAX_LIMIT: no pid is this large
CONNECT_TIMEOUT = 1.0  # `net_probe`: long enough for loopback, short enough for a dropped SYN
PTRACE_STOP_WAIT = 2.0  # a seized, interrupted tracee stops within microseconds; give up after this
PTRACE_POLL = 0.005
FORK_MAX = 4096  # `fork_bomb_probe` never tries more children than this
FORK_CHILD_LIFETIME = 10  # seconds (SIGALRM): a probe child dies even if its parent never releases it
FORK_REAP_WAIT = 5.0  # released children exit at once; after this they are SIGKILLed
FORK_POLL = 0.005
SLEEPER_MAX = 3600.0  # `spawn_sleeper` sleeps at most this long

PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
WALL = 0x40000000  # __WALL: wait for a tracee that is not our child

STATUS_FIELDS = ("NoNewPrivs", "Seccomp", "CapEff", "CapPrm", "CapBnd")
NAMESPACES = ("cgroup", "ipc", "mnt", "net", "pid", "user", "uts")  # the links in /proc/self/ns
NET_DEV = "/proc/net/dev"  # the interfaces of the network namespace this process is in
NET_DEV_HEADER_LINES = 2


class RpcError(Exception):
    """A JSON-RPC error to send back as the response to the current request."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# -- strict input -----------------------------------------------------------------------------


def _unique_keys(pairs: list[tuple[str, Any]]) -> JsonObj:
    obj: JsonObj = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def parse_line(line: bytes) -> Any:
    """One JSON value from one line; duplicate keys and NaN/Infinity refused (ValueError)."""
    try:
        return json.loads(line, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc


def _arg(args: JsonObj, name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    """The argument `name` of type `kind` (bool never counts as a number); required without a default."""
    if name not in args and default is None:
        raise RpcError(-32602, f"Missing argument {name!r}")
    value = args.get(name, default)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise RpcError(-32602, f"Invalid argument {name!r}: {value!r}")
    return value


def _int_arg(args: JsonObj, name: str, low: int, high: int, default: int | None = None) -> int:
    value: int = _arg(args, name, int, default)
    if not low <= value <= high:
        raise RpcError(-32602, f"Argument {name!r} out of range [{low}, {high}]: {value}")
    return value


def _pid_arg(args: JsonObj) -> int:
    return _int_arg(args, "pid", 1, PID_MAX)


# -- reports ----------------------------------------------------------------------------------


def _errno_name(code: int | None) -> str | None:
    return errno.errorcode.get(code) if isinstance(code, int) else None


def _failure(exc: OSError) -> JsonObj:
    """The report of a refused attempt: the errno's name (or the exception's, e.g. TimeoutError)."""
    return {"ok": False, "errno": _errno_name(exc.errno) or type(exc).__name__, "error": str(exc)}


def _errno_failure(code: int) -> JsonObj:
    return {"ok": False, "errno": _errno_name(code) or str(code), "error": os.strerror(code)}


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")  # never a lone surrogate on the wire


def _limit(value: int) -> int | None:
    return None if value == resource.RLIM_INFINITY else value  # null: unlimited


# -- tools ------------------------------------------------------------------------------------


def _proc_status() -> JsonObj:
    fields: JsonObj = dict.fromkeys(STATUS_FIELDS)
    with open("/proc/self/status", encoding="ascii", errors="replace") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in fields:
                value = value.strip()
                fields[key] = int(value) if key in ("NoNewPrivs", "Seccomp") else value  # Cap*: hex masks
    return fields


def _visible_pids() -> list[int]:
    return sorted(int(name) for name in os.listdir("/proc") if name.isdigit())


def _namespace(name: str) -> str:
    """The namespace's identity, as its link in /proc/self/ns reads (`pid:[4026531836]`)."""
    try:
        return os.readlink(f"/proc/self/ns/{name}")
    except OSError as exc:
        return f"unreadable: {_errno_name(exc.errno)}"


def whoami(args: JsonObj) -> JsonObj:
    env_name = args.get("env")
    if env_name is not None and not isinstance(env_name, str):
        raise RpcError(-32602, f"Invalid argument 'env': {env_name!r}")
    namespaces = {name: _namespace(name) for name in NAMESPACES}
    pids = _visible_pids()
    report: JsonObj = {
        "ok": True,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "gid": os.getgid(),
        "egid": os.getegid(),
        "groups": sorted(os.getgroups()),
        "HOME": os.environ.get("HOME"),
        "TMPDIR": os.environ.get("TMPDIR"),
        "cwd": os.getcwd(),
        "env": {"name": env_name, "value": os.environ.get(env_name) if env_name else None},
        "RLIMIT_NPROC": [_limit(v) for v in resource.getrlimit(resource.RLIMIT_NPROC)],
        "RLIMIT_NOFILE": [_limit(v) for v in resource.getrlimit(resource.RLIMIT_NOFILE)],
        "pid_ns": namespaces["pid"],
        "namespaces": namespaces,
        "hostname": socket.gethostname(),
        "pids": {"count": len(pids), "first": pids[:PIDS_SHOWN]},
    }
    report.update(_proc_status())
    return report


def read_environ(args: JsonObj) -> JsonObj:
    pid = _pid_arg(args)
    show = args.get("show")
    if show is not None and not isinstance(show, str):
        raise RpcError(-32602, f"Invalid argument 'show': {show!r}")
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            raw = environ.read(ENVIRON_LIMIT)
    except OSError as exc:
        return _failure(exc)
    names: list[str] = []
    value: str | None = None
    for entry in raw.split(b"\0"):
        name, sep, rest = entry.partition(b"=")
        if not sep:
            continue
        names.append(_decode(name))
        if show is not None and _decode(name) == show:
            value = _decode(rest)
    return {"ok": True, "pid": pid, "names": names, "show": show, "value": value}


def send_signal(args: JsonObj) -> JsonObj:
    pid = _pid_arg(args)
    signum = _int_arg(args, "signal", 0, signal.SIGRTMAX, default=0)
    try:
        os.kill(pid, signum)
    except OSError as exc:
        return _failure(exc)
    return {"ok": True, "pid": pid, "signal": signum}


def _libc_ptrace() -> Callable[[int, int, int, int], int]:
    libc = ctypes.CDLL(None, use_errno=True)
    function = libc.ptrace
    function.restype = ctypes.c_long
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]

    def call(request: int, pid: int, addr: int, data: int) -> int:
        ctypes.set_errno(0)
        result: int = function(request, pid, addr, data)
        return -ctypes.get_errno() if result == -1 else result

    return call


def _wait_stopped(pid: int) -> bool:
    deadline = time.monotonic() + PTRACE_STOP_WAIT
    while time.monotonic() < deadline:
        try:
            waited, status = os.waitpid(pid, os.WNOHANG | WALL)
        except ChildProcessError:
            return False
        if waited == pid and os.WIFSTOPPED(status):
            return True
        if waited == pid:  # it exited under us
            return False
        time.sleep(PTRACE_POLL)
    return False


def ptrace(args: JsonObj) -> JsonObj:
    """PTRACE_SEIZE (no signal is sent), then interrupt, wait for the stop and detach at once."""
    pid = _pid_arg(args)
    call = _libc_ptrace()
    seized = call(PTRACE_SEIZE, pid, 0, 0)
    if seized < 0:
        return _errno_failure(-seized)
    interrupted = call(PTRACE_INTERRUPT, pid, 0, 0) == 0
    stopped = interrupted and _wait_stopped(pid)
    detached = call(PTRACE_DETACH, pid, 0, 0) == 0  # fails only if it never stopped: we stay attached
    return {"ok": True, "pid": pid, "attached": True, "stopped": stopped, "detached": detached}


def read_file(args: JsonObj) -> JsonObj:
    path = _arg(args, "path", str)
    try:
        with open(path, "rb") as file:
            raw = file.read(READ_LIMIT + 1)
    except OSError as exc:
        return _failure(exc)
    return {
        "ok": True,
        "path": path,
        "content": _decode(raw[:READ_LIMIT]),
        "size": min(len(raw), READ_LIMIT),
        "truncated": len(raw) > READ_LIMIT,
    }


def list_dir(args: JsonObj) -> JsonObj:
    path = _arg(args, "path", str)
    try:
        names = sorted(os.listdir(path))
    except OSError as exc:
        return _failure(exc)
    return {"ok": True, "path": path, "count": len(names), "names": names[:LISTED_MAX]}


def write_file(args: JsonObj) -> JsonObj:
    path = _arg(args, "path", str)
    data = _arg(args, "text", str).encode("utf-8", errors="replace")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            info = os.fstat(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        return _failure(exc)
    mode = format(stat.S_IMODE(info.st_mode), "04o")
    return {"ok": True, "path": path, "mode": mode, "uid": info.st_uid, "gid": info.st_gid, "size": info.st_size}


def _cmdline(pid: int) -> str | None:
    """The command line of `pid`, its arguments joined by spaces (None: gone, or not readable)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            raw = cmdline.read(CMDLINE_LIMIT)
    except OSError:
        return None
    return _decode(raw.rstrip(b"\0").replace(b"\0", b" "))


def processes(args: JsonObj) -> JsonObj:
    """Every process this one can see in its /proc, with its command line (null: a kernel
    thread, one gone meanwhile, or one whose command line it may not read)."""
    if args:
        raise RpcError(-32602, f"Unexpected arguments: {', '.join(sorted(args))}")
    try:
        pids = _visible_pids()
    except OSError as exc:
        return _failure(exc)
    shown = [{"pid": pid, "cmdline": _cmdline(pid)} for pid in pids[:LISTED_MAX]]
    return {"ok": True, "count": len(pids), "processes": shown}


def net_interfaces(args: JsonObj) -> JsonObj:
    """The names of the network interfaces in this process's network namespace (/proc/net/dev)."""
    if args:
        raise RpcError(-32602, f"Unexpected arguments: {', '.join(sorted(args))}")
    try:
        with open(NET_DEV, encoding="ascii", errors="replace") as dev:
            lines = dev.read(READ_LIMIT).splitlines()[NET_DEV_HEADER_LINES:]
    except OSError as exc:
        return _failure(exc)
    names = sorted(line.partition(":")[0].strip() for line in lines if ":" in line)
    return {"ok": True, "interfaces": names}


def net_probe(args: JsonObj) -> JsonObj:
    host = _arg(args, "host", str)
    port = _int_arg(args, "port", 1, 65535)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT) as connection:
            peer = connection.getpeername()
    except OSError as exc:  # TimeoutError and socket.gaierror included
        return _failure(exc)
    return {"ok": True, "host": host, "port": port, "peer": [str(peer[0]), int(peer[1])]}


def _release_and_reap(children: list[int]) -> tuple[int, int]:
    """Wait for released children within FORK_REAP_WAIT; SIGKILL the rest. (reaped, killed)."""
    waiting = set(children)
    deadline = time.monotonic() + FORK_REAP_WAIT
    while waiting and time.monotonic() < deadline:
        for pid in list(waiting):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                waiting.discard(pid)
        if waiting:
            time.sleep(FORK_POLL)
    killed = len(waiting)
    for pid in waiting:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)  # SIGKILLed: prompt
    return len(children) - killed, killed


def _probe_child(release: int, hold: int) -> NoReturn:
    """In a forked child: wait until the parent closes the pipe (EOF), then exit; never return."""
    try:
        os.close(hold)
        signal.alarm(FORK_CHILD_LIFETIME)
        os.read(release, 1)
    finally:
        os._exit(0)


def fork_bomb_probe(args: JsonObj) -> JsonObj:
    """Fork `count` children that all stay alive until the last fork, so RLIMIT_NPROC can bite."""
    count = _int_arg(args, "count", 1, FORK_MAX)
    sys.stdout.flush()
    sys.stderr.flush()
    release, hold = os.pipe()
    children: list[int] = []
    first_error: OSError | None = None
    try:
        for _ in range(count):
            try:
                pid = os.fork()
            except OSError as exc:
                first_error = exc
                break
            if pid == 0:
                _probe_child(release, hold)
            children.append(pid)
    finally:
        os.close(hold)  # EOF for every child: they exit now
        os.close(release)
        reaped, killed = _release_and_reap(children)
    report: JsonObj = {
        "ok": first_error is None,
        "requested": count,
        "started": len(children),
        "reaped": reaped,
        "killed": killed,
        "RLIMIT_NPROC": [_limit(v) for v in resource.getrlimit(resource.RLIMIT_NPROC)],
    }
    if first_error is not None:
        report.update(errno=_errno_name(first_error.errno), error=str(first_error))
    return report


class SpyServer:
    """State of one server process: the sleepers it left behind (reaped when they exit)."""

    def __init__(self) -> None:
        self.out = sys.stdout.buffer
        self.sleepers: list[subprocess.Popen[bytes]] = []
        self.tools: dict[str, tuple[str, JsonObj, Tool]] = {
            "whoami": (
                "Identity, credentials, limits, namespaces and visible pids of this process; "
                "`env` names one environment variable to report.",
                _schema(env="string"),
                whoami,
            ),
            "read_environ": (
                "Read /proc/<pid>/environ: the variable names, and the value of `show`.",
                _schema(pid="integer", show="string"),
                read_environ,
            ),
            "signal": ("Send `signal` (default 0) to `pid`.", _schema(pid="integer", signal="integer"), send_signal),
            "ptrace": ("PTRACE_SEIZE `pid`, then detach at once.", _schema(pid="integer"), ptrace),
            "read_file": (f"Read up to {READ_LIMIT} bytes of `path`.", _schema(path="string"), read_file),
            "list_dir": ("List the directory `path`.", _schema(path="string"), list_dir),
            "write_file": (
                "Create or truncate `path` (mode 0600) with `text`; report its mode and owner.",
                _schema(path="string", text="string"),
                write_file,
            ),
            "spawn_sleeper": (
                "Start a grandchild in a new session that sleeps `seconds`, detached from stdio.",
                _schema(seconds="number"),
                self.spawn_sleeper,
            ),
            "fork_bomb_probe": (
                "Fork `count` children kept alive together; report how many started and the first errno.",
                _schema(count="integer"),
                fork_bomb_probe,
            ),
            "net_probe": (
                f"TCP connect to `host`:`port` ({CONNECT_TIMEOUT} s timeout).",
                _schema(host="string", port="integer"),
                net_probe,
            ),
            "processes": ("The pids in /proc and their command lines.", _schema(), processes),
            "net_interfaces": ("The network interfaces in /proc/net/dev.", _schema(), net_interfaces),
        }

    def spawn_sleeper(self, args: JsonObj) -> JsonObj:
        seconds = _arg(args, "seconds", (int, float))
        if not 0 <= seconds <= SLEEPER_MAX:
            raise RpcError(-32602, f"Argument 'seconds' out of range [0, {SLEEPER_MAX}]: {seconds}")
        self.sleepers = [sleeper for sleeper in self.sleepers if sleeper.poll() is None]
        try:
            sleeper = subprocess.Popen(
                [sys.executable, "-c", "import sys, time; time.sleep(float(sys.argv[1]))", str(seconds)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            return _failure(exc)
        self.sleepers.append(sleeper)
        pid = sleeper.pid
        return {"ok": True, "pid": pid, "pgid": os.getpgid(pid), "sid": os.getsid(pid), "seconds": seconds}

    # -- protocol -----------------------------------------------------------------------------

    def send(self, obj: JsonObj) -> None:
        try:
            self.out.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
            self.out.flush()
        except BrokenPipeError:  # nobody reads our answers any more
            os._exit(0)

    def send_error(self, msg_id: Any, code: int, message: str) -> None:
        self.send({"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}})

    def handle_line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            msg = parse_line(line)
        except ValueError as exc:
            self.send_error(None, -32700, f"Parse error: {exc}")
            return
        if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0" or not isinstance(msg.get("method"), str):
            self.send_error(msg.get("id") if isinstance(msg, dict) else None, -32600, "Invalid Request")
            return
        if "id" not in msg:
            return  # notifications (notifications/initialized, cancellations...) need nothing
        msg_id = msg["id"]
        params = msg.get("params", {})
        if not isinstance(params, dict):
            self.send_error(msg_id, -32602, "Invalid params: not an object")
            return
        try:
            result = self.dispatch(msg["method"], params)
        except RpcError as exc:
            self.send_error(msg_id, exc.code, exc.message)
            return
        self.send({"jsonrpc": "2.0", "id": msg_id, "result": result})

    def dispatch(self, method: str, params: JsonObj) -> JsonObj:
        if method == "tools/call":
            name = params.get("name")
            args = params.get("arguments", {})
            if not isinstance(args, dict):
                raise RpcError(-32602, "Invalid params: arguments must be an object")
            if not isinstance(name, str) or name not in self.tools:
                raise RpcError(-32602, f"Unknown tool: {name!r}")
            report = self.tools[name][2](args)
            return {"content": [{"type": "text", "text": json.dumps(report, separators=(",", ":"))}], "isError": False}
        if method == "ping":
            return {}
        if method == "initialize":
            requested = params.get("protocolVersion")
            return {
                "protocolVersion": requested if requested in SUPPORTED_VERSIONS else LATEST_VERSION,
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "spy-server", "version": "1.0.0"},
            }
        if method == "tools/list":
            tools = [
                {"name": name, "description": description, "inputSchema": schema}
                for name, (description, schema, _) in self.tools.items()
            ]
            return {"tools": tools}
        raise RpcError(-32601, "Method not found")


def _schema(**props: str) -> JsonObj:
    """An object `inputSchema` whose properties have the given JSON types."""
    return {"type": "object", "properties": {k: {"type": t} for k, t in props.items()}}


def main() -> None:
    if len(sys.argv) > 1:
        sys.exit("spy-server takes no arguments; configure it through tool arguments")
    server = SpyServer()
    stdin = sys.stdin.buffer
    while line := stdin.readline(LINE_LIMIT + 1):
        if len(line) > LINE_LIMIT and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):  # drop the rest of the oversized line
                line = stdin.readline(LINE_LIMIT)
            server.send_error(None, -32600, f"Invalid Request: line longer than {LINE_LIMIT} bytes")
            continue
        server.handle_line(line)
    sys.stdout.flush()
    os._exit(0)  # sleepers stay behind on purpose: that is what `spawn_sleeper` is for


if __name__ == "__main__":
    main()
