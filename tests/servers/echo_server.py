"""Scriptable stdio MCP server used by the benchmark and the integration tests.

It speaks newline-delimited JSON-RPC 2.0 on stdin/stdout (one compact JSON
object per line) and depends on the standard library only, so it starts fast
and keeps the echo hot path lean: no per-message logging, no extra copies.

Every request runs in its own asyncio task, so slow tools (``sleep``, ``hang``,
``sample``...) never block fast ones, and ``notifications/cancelled`` cancels
the matching task without any response being sent.

Besides the well-behaved tools (``echo``, ``big``, ``progress``...), some tools
misbehave on purpose (``crash``, ``garbage``, ``huge``, ``hang``...) and some
command-line flags make the whole process misbehave (ignore SIGTERM or stdin
EOF, leak a grandchild holding stdout open, flood stderr at startup), so the
gateway's supervision logic can be tested against a real child process.

Tools may carry MCP annotations (``read_note`` is read-only, ``write_note`` writes without
destroying, ``delete_note`` says it destroys, the others say nothing); ``retag`` changes a tool's
annotations and announces it with ``notifications/tools/list_changed``, ``received`` reports
which requests reached this process, and ``--page-size`` paginates ``tools/list``.

Run ``python echo_server.py --help`` for the flags.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import os
import resource
import signal
import subprocess
import sys
from typing import Any

JsonObj = dict[str, Any]

SUPPORTED_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
LATEST_VERSION = "2025-11-25"
STDIN_LIMIT = 64 * 1024 * 1024
_ANSWERED = object()  # returned by a tool that already wrote its own response
RECEIVED_KEPT = 1024  # requests remembered for the ``received`` tool (bounded for the benchmark)


def _schema(**props: str) -> JsonObj:
    """Build an object ``inputSchema`` whose properties have the given JSON types."""
    return {"type": "object", "properties": {k: {"type": t} for k, t in props.items()}}


# name -> (description, inputSchema)
TOOLS: dict[str, tuple[str, JsonObj]] = {
    "echo": ("Echo `text` back.", _schema(text="string")),
    "big": ("Answer with `size` 'x' characters.", _schema(size="integer")),
    "progress": (
        "Send `steps` progress notifications (optionally `delay` seconds apart), then answer.",
        _schema(steps="integer", delay="number"),
    ),
    "sleep": ("Sleep `seconds`, then answer.", _schema(seconds="number")),
    "hang": ("Never answer (until cancelled).", _schema()),
    "crash": ("Exit the process immediately with `code` (default 3).", _schema(code="integer")),
    "garbage": ("Write `lines` non-JSON lines to stdout, then answer.", _schema(lines="integer")),
    "huge": ("Answer with one response line of about `size` bytes.", _schema(size="integer")),
    "notify": (
        "Send notification `method` with `params`, then answer.",
        _schema(method="string", params="object"),
    ),
    "log": ("Send a notifications/message log entry, then answer.", _schema(message="string")),
    "sample": ("Ask the client for sampling/createMessage.", _schema(prompt="string")),
    "elicit": ("Ask the client for elicitation/create.", _schema(message="string")),
    "roots": ("Ask the client for roots/list.", _schema()),
    "ping_client": ("Ping the client.", _schema()),
    "stderr": ("Write `lines` lines to stderr, then answer.", _schema(lines="integer")),
    "flood": (
        "Send `count` notifications/flood of `size` characters each (blocking writes), then answer.",
        _schema(count="integer", size="integer"),
    ),
    "stop_reading": ("Answer, then stop reading stdin for good (writes to us pile up).", _schema()),
    "raw": (
        "Write `lines` to stdout in one write, each as given with {id} replaced by this request's id; "
        "then answer normally unless `answer` is false.",
        {"type": "object", "properties": {"lines": {"type": "array"}, "answer": {"type": "boolean"}}},
    ),
    "close_stdout": ("Answer, then close stdout and keep running.", _schema()),
    "close_stdin": ("Answer, then close stdin after `delay` seconds (keep running).", _schema(delay="number")),
    "env": ("Answer with the process environment as JSON.", _schema()),
    "cwd": ("Answer with the working directory.", _schema()),
    "pid": ("Answer with the process id.", _schema()),
    "rlimits": ("Answer with the process's resource limits (soft values) as JSON.", _schema()),
    "burn": ("Spin on the CPU until stopped.", _schema()),
    "exit_after_answer": ("Answer, then exit with `code` (default 0).", _schema(code="integer")),
    "cancelled": (
        "Answer with every notifications/cancelled received so far, as a JSON list of "
        "{requestId, reason, running} (running: it matched a request still in progress).",
        _schema(),
    ),
    "read_note": ("Answer with the note (annotated read-only).", _schema()),
    "write_note": ("Pretend to write the note (annotated: writes, not destructive).", _schema(text="string")),
    "delete_note": ("Pretend to delete the note (annotated destructive).", _schema()),
    "received": (
        "Answer with the requests this process received, as a JSON list of [method, tool name or null].",
        _schema(),
    ),
    "request_ids": ("Answer with the ids of the requests this process received, as a JSON list.", _schema()),
    "retag": (
        "Give tool `tool` the `annotations` object (null: none), then send notifications/tools/list_changed. "
        "Annotated read-only, so that callers without scopes can drive the test.",
        _schema(tool="string", annotations="object"),
    ),
}
ANNOTATIONS: dict[str, JsonObj] = {
    "read_note": {"readOnlyHint": True},
    "write_note": {"readOnlyHint": False, "destructiveHint": False},
    "delete_note": {"destructiveHint": True},
    "received": {"readOnlyHint": True},
    "retag": {"readOnlyHint": True},
    "request_ids": {"readOnlyHint": True},
}


class RpcError(Exception):
    """A JSON-RPC error to send back as the response to the current request."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _arg(args: JsonObj, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
    """Fetch a tool argument, checking its type (bool is never accepted as a number)."""
    value = args.get(name, default)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise RpcError(-32602, f"Invalid argument {name!r}: {value!r}")
    return value


def _text(text: str) -> JsonObj:
    return {"content": [{"type": "text", "text": text}], "isError": False}


def _stderr_lines(count: int, prefix: str) -> None:
    err = sys.stderr
    for i in range(count):
        err.write(f"{prefix} {i} {'x' * 200}\n")
    err.flush()


class EchoServer:
    """State of one server process: running request tasks and outstanding client calls."""

    def __init__(self, forced_version: str | None, page_size: int | None = None, slow_list: float = 0.0) -> None:
        self.forced_version = forced_version
        self.page_size = page_size
        self.slow_list = slow_list  # the first tools/list takes this long
        self.annotations = dict(ANNOTATIONS)
        self.received: collections.deque[tuple[str, Any]] = collections.deque(maxlen=RECEIVED_KEPT)
        self.request_ids: collections.deque[Any] = collections.deque(maxlen=RECEIVED_KEPT)
        self.broken_list = False  # answer tools/list with something that is not a tool list
        self.out = sys.stdout.buffer
        self.tasks: set[asyncio.Task[None]] = set()  # strong references
        self.by_id: dict[int | str, asyncio.Task[None]] = {}  # for cancellation
        self.pending: dict[str, asyncio.Future[JsonObj]] = {}  # server->client requests
        self.next_srv_id = itertools.count(1)
        self.cancellations: list[JsonObj] = []  # every notifications/cancelled, in arrival order
        self.stdin: asyncio.ReadTransport | None = None  # paused by stop_reading

    # -- output -------------------------------------------------------------

    def write_raw(self, line: bytes) -> None:
        try:
            self.out.write(line + b"\n")
            self.out.flush()
        except BrokenPipeError:  # nobody reads our stdout any more: nothing left to do
            os._exit(0)

    def write_chunk(self, data: bytes) -> None:
        """Write `data` (newlines included) with one system call: the reader gets it as one chunk."""
        self.out.flush()
        os.write(self.out.fileno(), data)

    def send(self, obj: JsonObj) -> None:
        self.write_raw(json.dumps(obj, separators=(",", ":")).encode())

    def notify(self, method: str, params: Any) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def invalid_request(self, message: str) -> None:
        self.send({"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": message}})

    # -- input --------------------------------------------------------------

    def handle_line(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError as exc:
            if line.strip():
                sys.stderr.write(f"echo-server: non-JSON line ({exc}): {line[:200]!r}\n")
                sys.stderr.flush()
            return
        if isinstance(msg, list):  # batch: every element is answered on its own line
            if not msg:
                self.invalid_request("Empty batch")
            for item in msg:
                self.handle_message(item)
        else:
            self.handle_message(msg)

    def handle_message(self, msg: Any) -> None:
        if not isinstance(msg, dict):
            self.invalid_request("Invalid Request")
            return
        method = msg.get("method")
        if method is None:  # a response to one of our server->client requests
            rid = msg.get("id")
            fut = self.pending.get(rid) if isinstance(rid, str) else None
            if fut is not None and not fut.done():
                fut.set_result(msg)
            return
        params = msg.get("params")
        if not isinstance(params, dict):
            params = {}
        if "id" not in msg:  # notification
            if method == "notifications/cancelled":
                rid = params.get("requestId")
                task = self.by_id.get(rid) if isinstance(rid, (int, str)) else None
                entry = {"requestId": rid, "reason": params.get("reason"), "running": task is not None}
                self.cancellations.append(entry)
                if task is not None:
                    task.cancel()
            return
        msg_id = msg["id"]
        self.received.append((method, params.get("name") if method == "tools/call" else None))
        self.request_ids.append(msg_id)
        task = asyncio.get_running_loop().create_task(self.run_request(msg_id, method, params))
        self.tasks.add(task)
        if isinstance(msg_id, (int, str)):
            self.by_id[msg_id] = task
        task.add_done_callback(lambda t: self.forget(t, msg_id))

    def forget(self, task: asyncio.Task[None], msg_id: Any) -> None:
        self.tasks.discard(task)
        if isinstance(msg_id, (int, str)) and self.by_id.get(msg_id) is task:
            del self.by_id[msg_id]

    # -- requests -----------------------------------------------------------

    async def run_request(self, msg_id: Any, method: str, params: JsonObj) -> None:
        try:
            result = await self.dispatch(msg_id, method, params)
        except RpcError as exc:
            error = {"code": exc.code, "message": exc.message}
            self.send({"jsonrpc": "2.0", "id": msg_id, "error": error})
            return
        except Exception as exc:  # a test fixture must keep serving
            error = {"code": -32603, "message": f"Internal error: {exc!r}"}
            self.send({"jsonrpc": "2.0", "id": msg_id, "error": error})
            return
        # CancelledError propagates: a cancelled request gets no response at all.
        if result is not _ANSWERED:
            self.send({"jsonrpc": "2.0", "id": msg_id, "result": result})

    async def dispatch(self, msg_id: Any, method: str, params: JsonObj) -> Any:
        if method == "tools/call":
            name = params.get("name")
            args = params.get("arguments")
            if args is None:
                args = {}
            if not isinstance(args, dict):
                raise RpcError(-32602, "Invalid params: arguments must be an object")
            if name == "echo":  # hot path first
                return _text(_arg(args, "text", str, ""))
            return await self.call_tool(msg_id, name, args, params)
        if method == "ping":
            return {}
        if method == "initialize":
            requested = params.get("protocolVersion")
            version = self.forced_version or (requested if requested in SUPPORTED_VERSIONS else LATEST_VERSION)
            return {
                "protocolVersion": version,
                "capabilities": {
                    "tools": {"listChanged": True},
                    "resources": {"subscribe": True},
                    "logging": {},
                },
                "serverInfo": {"name": "echo-server", "version": "1.0.0"},
            }
        if method == "tools/list":
            delay, self.slow_list = self.slow_list, 0.0
            await asyncio.sleep(delay)
            if self.broken_list:
                return {}
            return self.list_tools(params.get("cursor"))
        raise RpcError(-32601, "Method not found")

    def list_tools(self, cursor: Any) -> JsonObj:
        tools = []
        for name, (description, schema) in TOOLS.items():
            tool: JsonObj = {"name": name, "description": description, "inputSchema": schema}
            if name in self.annotations:
                tool["annotations"] = self.annotations[name]
            tools.append(tool)
        if self.page_size is None:
            return {"tools": tools}
        start = int(cursor) if isinstance(cursor, str) and cursor.isdigit() else 0
        page: JsonObj = {"tools": tools[start : start + self.page_size]}
        if start + self.page_size < len(tools):
            page["nextCursor"] = str(start + self.page_size)
        return page

    async def call_tool(self, msg_id: Any, name: Any, args: JsonObj, params: JsonObj) -> Any:
        if name == "big":
            return _text("x" * _arg(args, "size", int, 0))
        if name == "progress":
            steps = _arg(args, "steps", int, 0)
            delay = _arg(args, "delay", (int, float), 0)
            meta = params.get("_meta")
            token = meta.get("progressToken") if isinstance(meta, dict) else None
            for i in range(1, steps + 1):
                if token is not None:
                    progress = {"progressToken": token, "progress": i, "total": steps}
                    self.notify("notifications/progress", progress)
                await asyncio.sleep(delay)
            return _text("done")
        if name == "sleep":
            await asyncio.sleep(_arg(args, "seconds", (int, float), 0))
            return _text("slept")
        if name == "hang":
            await asyncio.get_running_loop().create_future()  # never resolved
        if name == "crash":
            sys.stderr.flush()
            os._exit(_arg(args, "code", int, 3))
        if name == "garbage":
            for _ in range(_arg(args, "lines", int, 1)):
                self.write_raw(b"this is not json")
            return _text("ok")
        if name == "huge":  # built as bytes directly: no 20 MiB json.dumps round trip
            size = _arg(args, "size", int, 0)
            head = b'{"jsonrpc":"2.0","id":' + json.dumps(msg_id).encode()
            self.write_raw(
                head + b',"result":{"content":[{"type":"text","text":"' + b"x" * size + b'"}],"isError":false}}'
            )
            return _ANSWERED
        if name == "notify":
            self.notify(_arg(args, "method", str, "notifications/test"), args.get("params", {}))
            return _text("notified")
        if name == "log":
            entry = {"level": "info", "logger": "echo", "data": args.get("message")}
            self.notify("notifications/message", entry)
            return _text("logged")
        if name == "sample":
            content = {"type": "text", "text": _arg(args, "prompt", str, "")}
            messages = [{"role": "user", "content": content}]
            return await self.ask_client("sampling/createMessage", {"messages": messages, "maxTokens": 16})
        if name == "elicit":
            message = _arg(args, "message", str, "")
            return await self.ask_client(
                "elicitation/create",
                {"message": message, "requestedSchema": _schema(name="string")},
            )
        if name == "roots":
            return await self.ask_client("roots/list", {})
        if name == "ping_client":
            return await self.ask_client("ping", {}, pong=True)
        if name == "stderr":
            _stderr_lines(_arg(args, "lines", int, 1), "stderr line")
            return _text("ok")
        if name == "flood":
            payload = "f" * _arg(args, "size", int, 1)
            for seq in range(_arg(args, "count", int, 1)):
                self.notify("notifications/flood", {"seq": seq, "data": payload})
            return _text("flooded")
        if name == "raw":
            request_id = json.dumps(msg_id)
            lines = [str(line).replace("{id}", request_id).encode() for line in args.get("lines", [])]
            self.write_chunk(b"".join(line + b"\n" for line in lines))
            return _text("written") if args.get("answer", True) else _ANSWERED
        if name == "close_stdout":
            self.send({"jsonrpc": "2.0", "id": msg_id, "result": _text("closing")})
            sys.stdout.flush()
            os.close(1)
            return _ANSWERED
        if name == "close_stdin":
            delay = _arg(args, "delay", (int, float), 0.0)
            asyncio.get_running_loop().call_later(delay, self.close_stdin)
            return _text("closing")
        if name == "stop_reading":
            if self.stdin is not None:
                self.stdin.pause_reading()
            return _text("stopped")
        if name == "env":
            return _text(json.dumps(dict(os.environ), separators=(",", ":")))
        if name == "cwd":
            return _text(os.getcwd())
        if name == "rlimits":
            names = ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_NOFILE", "RLIMIT_NPROC")
            return _text(json.dumps({n: resource.getrlimit(getattr(resource, n))[0] for n in names}))
        if name == "burn":
            while True:
                pass
        if name == "pid":
            return _text(str(os.getpid()))
        if name == "exit_after_answer":
            code = _arg(args, "code", int, 0)
            self.send({"jsonrpc": "2.0", "id": msg_id, "result": _text("bye")})
            sys.stderr.flush()
            os._exit(code)
        if name == "cancelled":
            return _text(json.dumps(self.cancellations, separators=(",", ":")))
        if name in ("read_note", "write_note", "delete_note"):
            return _text(name.removesuffix("_note"))
        if name == "request_ids":
            return _text(json.dumps(list(self.request_ids), separators=(",", ":")))
        if name == "received":
            return _text(json.dumps(list(self.received), separators=(",", ":")))
        if name == "retag":
            tagged = _arg(args, "tool", str, "")
            annotations = args.get("annotations")
            if isinstance(annotations, dict):
                self.annotations[tagged] = annotations
            else:
                self.annotations.pop(tagged, None)
            self.notify("notifications/tools/list_changed", {})
            return _text("retagged")
        raise RpcError(-32602, f"Unknown tool: {name}")

    def close_stdin(self) -> None:
        if self.stdin is not None:
            self.stdin.close()
        os.close(0)  # sys.stdin never closes descriptor 0 itself (closefd=False)

    async def ask_client(self, method: str, params: JsonObj, pong: bool = False) -> JsonObj:
        """Send a server->client request and turn the client's answer into a tool result."""
        srv_id = f"srv-{next(self.next_srv_id)}"
        fut: asyncio.Future[JsonObj] = asyncio.get_running_loop().create_future()
        self.pending[srv_id] = fut
        try:
            self.send({"jsonrpc": "2.0", "id": srv_id, "method": method, "params": params})
            reply = await fut
        finally:
            self.pending.pop(srv_id, None)
        if "error" in reply:
            error = reply["error"]
            message = error.get("message") if isinstance(error, dict) else error
            return _text(f"error: {message}")
        if pong:
            return _text("pong")
        return _text(json.dumps(reply.get("result"), separators=(",", ":")))


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STDIN_LIMIT)
    stdin, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    server = EchoServer(args.protocol_version, args.page_size, args.slow_first_list)
    server.stdin = stdin
    server.broken_list = args.broken_list
    while True:
        try:
            line = await reader.readline()
        except ValueError as exc:  # line longer than the limit: it was discarded
            sys.stderr.write(f"echo-server: dropping oversized input line: {exc}\n")
            sys.stderr.flush()
            continue
        if not line:
            break
        server.handle_line(line)
    if args.ignore_stdin_eof:
        await loop.create_future()  # run forever; only a signal stops us
    sys.stderr.flush()
    os._exit(0)  # promptly, even with requests still pending


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add = parser.add_argument
    add("--ignore-sigterm", action="store_true", help="ignore SIGTERM")
    add("--ignore-stdin-eof", action="store_true", help="keep running after stdin EOF")
    add("--grandchild", action="store_true", help="spawn a grandchild that inherits stdout")
    add("--stderr-lines", type=int, default=0, metavar="N", help="write N stderr lines at start")
    add("--protocol-version", metavar="V", help="always answer initialize with this version")
    add("--broken-list", action="store_true", help="answer tools/list with an empty object, not a tool list")
    add("--page-size", type=int, metavar="N", help="answer tools/list in pages of N tools")
    add("--slow-first-list", type=float, default=0.0, metavar="S", help="answer the first tools/list after S seconds")
    args = parser.parse_args(argv)

    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.grandchild:
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(3600)"],
            stdout=sys.stdout,
            stdin=subprocess.DEVNULL,
        )
        sys.stderr.write(f"grandchild pid {child.pid}\n")
        sys.stderr.flush()
    _stderr_lines(args.stderr_lines, "noise line")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
