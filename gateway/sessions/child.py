"""One stdio MCP server process: spawn, framed stdout, flow-controlled stdin, stderr drain, stop.

Invariants:
- The process runs without a shell, as the leader of its own process group (its pid is the
  group id), with an environment given by configuration only. The group is announced to the
  orphan watchdog as soon as it exists, and on Linux the process also carries a parent-death signal,
  so a gateway that is killed outright still takes its children along.
- stdout is read through `LineFramer`: no line above the limit ever reaches the router, and an
  oversized line never desynchronises the stream. stderr is always drained (truncated,
  rate-limited) so a chatty child can never block on a full pipe.
- Every wait is bounded. Stopping escalates close-stdin → SIGTERM → SIGKILL against the whole
  group, polling for exit instead of awaiting pipe EOF (which a grandchild holding stdout can
  withhold forever). The sink hears `child_exited` exactly once, after the last stdout line.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import resource
import signal
import subprocess
import sys
import time
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gateway.framing import LineFramer
from gateway.sessions.watchdog import OrphanWatchdog, group_alive, signal_group

if TYPE_CHECKING:
    from gateway.sessions.sandbox import Cell

log = logging.getLogger("gateway.child")

# Stop sequence (the MCP stdio shutdown order); each step waits at most this long.
STDIN_CLOSE_GRACE = 2.0  # stdin closed → a well-behaved server exits on EOF
SIGTERM_GRACE = 2.0  # SIGTERM to the group → exit
SIGKILL_CONFIRM = 1.0  # SIGKILL cannot be ignored; this only waits for the kernel's report
EXIT_POLL_INTERVAL = 0.02
# After the process exits on its own, how long stdout may stay open (held by a grandchild)
# before the rest of the group is terminated; output already in the pipe arrives well within it.
EXIT_DRAIN_GRACE = 0.5
# A child whose stdout closed is given this long to exit by itself (an exiting process closes its
# pipes just before the kernel reports its exit) before it is stopped.
OUTPUT_CLOSED_GRACE = 0.5
# A child that stops reading stdin may hold a writer this long before the write fails.
STDIN_DRAIN_TIMEOUT = 30.0
STDIN_HIGH_WATER = 1024 * 1024
# Writes up to this size are joined with their newline into one write (one wake-up for the child).
JOIN_WRITE_BYTES = 256 * 1024
# stderr goes to the log line by line: long lines are cut, floods are thinned.
STDERR_LINE_BYTES = 2048
STDERR_BURST_LINES = 200
STDERR_LINES_PER_SECOND = 50.0


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to start a child: everything comes from configuration, nothing from a request."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: Path | None
    max_line_bytes: int
    # (resource.RLIMIT_*, limit) pairs set in the child before it executes (soft = hard).
    rlimits: tuple[tuple[int, int], ...] = ()
    # The open-file limit (soft, hard) the child starts with, when it is not the gateway's own:
    # the gateway raises its soft limit for its connections, and its children must not inherit that.
    nofile: tuple[int, int] | None = None


class ChildSink(Protocol):
    """Receives what a child says. Called on the event loop, synchronously."""

    def child_line(self, line: bytearray | bytes) -> None: ...

    def child_oversize(self, size: int, head: bytes) -> None: ...

    def child_exited(self, returncode: int | None) -> None: ...


class ChildError(Exception):
    """Base of the errors a child's input side raises."""


class ChildGone(ChildError):
    """The child has exited or its stdin is closed."""


class StdinStalled(ChildError):
    """The child stopped reading its stdin for longer than the write timeout."""


def use_pidfd_child_watcher() -> bool:
    """On Python 3.11, watch children with pidfds instead of one thread per child.

    The default watcher there parks a thread in waitpid() for every child (about 16 KiB of
    resident memory each); 3.12 and later already use pidfds. Call before the event loop
    starts. Returns whether pidfds are in use.
    """
    if sys.version_info >= (3, 12):
        return True
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False  # not Linux ≥ 5.3: keep the default
    asyncio.set_child_watcher(asyncio.PidfdChildWatcher())  # type: ignore[deprecated]  # current API on 3.11
    return True


@functools.cache
def _pre_exec(rlimits: tuple[tuple[int, int], ...], nofile: tuple[int, int] | None = None) -> Callable[[], None] | None:
    """What runs in the child between fork and exec: the parent-death signal, then resource limits
    (the inherited open-file limit first, so that a configured one wins).

    Only system calls on precomputed values: nothing here may allocate locks or import.
    """
    death_signal = _parent_death_signal()
    if not rlimits and nofile is None:
        return death_signal

    def prepare() -> None:
        if death_signal is not None:
            death_signal()
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)
        for which, limit in rlimits:
            resource.setrlimit(which, (limit, limit))

    return prepare


def _pre_exec_as(cell: Cell, cwd: Path | None, then: Callable[[], None] | None) -> Callable[[], None]:
    """The pre-exec hook of a child that runs as its own user. Python has switched the user by the
    time it runs. The child makes sure the switch left it no capability, ends any process of its
    user still alive (none should be: its user ID was free), makes its private directories itself
    (its user owns them, mode 0700, as everything it creates: umask 077), enters its working
    directory as that user, and can gain no privilege from then on; then `then` (the parent-death
    signal, armed after the switch, which would clear it)."""
    directories = (os.fsencode(cell.directory), os.fsencode(cell.home), os.fsencode(cell.tmp))
    workdir = os.fsencode(cwd if cwd is not None else cell.home)
    no_new_privs = _no_new_privs()

    def prepare() -> None:
        with open("/proc/self/status", "rb") as status:
            if b"CapEff:\t0000000000000000\n" not in status.read():
                os._exit(126)  # never run a child that kept a capability
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)  # every other process of this user, this one excepted
        os.umask(0o077)
        for directory in directories:
            os.mkdir(directory, 0o700)
        os.chdir(workdir)
        no_new_privs()
        if then is not None:
            then()

    return prepare


def _no_new_privs() -> Callable[[], None]:
    """A pre-exec hook setting `no_new_privs` (Linux): exec never grants privileges afterwards."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_no_new_privs = 38

    def set_no_new_privs() -> None:
        if prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0:
            os._exit(126)  # never run a child without it

    return set_no_new_privs


def _parent_death_signal() -> Callable[[], None] | None:
    """A pre-exec hook that makes the kernel SIGKILL the child when the gateway dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    gateway_pid = os.getpid()

    def set_parent_death_signal() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != gateway_pid:  # the gateway died before the signal was armed
            os.kill(os.getpid(), signal.SIGKILL)

    return set_parent_death_signal


class _StderrLog:
    """Drains one child's stderr into the log: lines cut to size, floods thinned by a token bucket."""

    __slots__ = ("_framer", "_label", "_last", "_suppressed", "_tokens")

    def __init__(self, label: str) -> None:
        self._label = label
        self._tokens = float(STDERR_BURST_LINES)
        self._last = time.monotonic()
        self._suppressed = 0
        self._framer = LineFramer(STDERR_LINE_BYTES, self._line, self._long_line)

    def feed(self, data: bytes) -> None:
        self._framer.feed(data)

    def close(self) -> None:
        self._framer.close()
        if self._suppressed:
            log.warning("child stderr: %d lines not logged (rate limit)", self._suppressed, extra=self._extra())

    def _extra(self) -> dict[str, str]:
        return {"session": self._label}

    def _admit(self) -> bool:
        now = time.monotonic()
        self._tokens = min(STDERR_BURST_LINES, self._tokens + (now - self._last) * STDERR_LINES_PER_SECOND)
        self._last = now
        if self._tokens < 1.0:
            self._suppressed += 1
            return False
        self._tokens -= 1.0
        if self._suppressed:
            log.warning("child stderr: %d lines not logged (rate limit)", self._suppressed, extra=self._extra())
            self._suppressed = 0
        return True

    def _line(self, line: bytearray | bytes) -> None:
        if self._admit():
            log.info("child stderr: %s", line.decode(errors="replace").rstrip(), extra=self._extra())

    def _long_line(self, size: int, head: bytes) -> None:
        if self._admit():
            text = head.decode(errors="replace")
            log.info("child stderr: %s… (%d bytes, cut)", text, size, extra=self._extra())


class _ChildProtocol(asyncio.SubprocessProtocol):
    def __init__(self, child: Child) -> None:
        self._child = child

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 1:
            self._child._stdout.feed(data)
        else:
            self._child._stderr.feed(data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._child._pipe_closed(fd)

    def pause_writing(self) -> None:
        self._child._write_paused = True

    def resume_writing(self) -> None:
        self._child._resume_writers(None)

    def process_exited(self) -> None:
        self._child._process_exited()


class Child:
    """A running stdio MCP server. Create with `await Child.spawn(...)`."""

    def __init__(self, spec: ChildSpec, sink: ChildSink, watchdog: OrphanWatchdog | None, label: str) -> None:
        self._sink = sink
        self._watchdog = watchdog
        self.label = label
        self._stdout = LineFramer(spec.max_line_bytes, sink.child_line, sink.child_oversize)
        self._stderr = _StderrLog(label)
        self._transport: asyncio.SubprocessTransport | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._stdout_closed = asyncio.Event()
        self._shutdown: asyncio.Task[int | None] | None = None
        self._reported = False
        self._output_check: asyncio.TimerHandle | None = None
        self.output_closed_early = False  # its stdout closed while the process went on running
        self.pid = 0

    @classmethod
    async def spawn(
        cls,
        spec: ChildSpec,
        sink: ChildSink,
        watchdog: OrphanWatchdog | None,
        label: str,
        cell: Cell | None = None,
    ) -> Child:
        """Start the process (in `cell`, with isolation: as its user, in its namespaces); raises
        `OSError` when it cannot be executed."""
        child = cls(spec, sink, watchdog, label)
        loop = asyncio.get_running_loop()
        pre_exec = _pre_exec(spec.rlimits, spec.nofile)
        switch: dict[str, Any] = {}
        argv, env, cwd = spec.argv, dict(spec.env), spec.cwd
        if cell is not None:
            argv, env = (*cell.wrapper, *spec.argv), {**env, **cell.environment()}
            cwd = None  # entered as the child's user, or by bubblewrap in the child's view
            if cell.uid is not None:
                switch = {"user": cell.uid, "group": cell.gid, "extra_groups": []}
                pre_exec = _pre_exec_as(cell, spec.cwd, pre_exec)
        transport, _ = await loop.subprocess_exec(
            lambda: _ChildProtocol(child),
            *argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
            preexec_fn=pre_exec,
            **switch,
        )
        child._transport = transport
        child.pid = transport.get_pid()
        if watchdog is not None:
            watchdog.register(child.pid)
        # Typed loosely by asyncio; any event loop's pipe transport has these methods.
        stdin = typing.cast(asyncio.WriteTransport, transport.get_pipe_transport(0))
        stdin.set_write_buffer_limits(high=STDIN_HIGH_WATER)
        child._stdin = stdin
        if transport.get_returncode() is not None:  # exited before the pipes were connected
            child._process_exited()
        return child

    @property
    def running(self) -> bool:
        return self._shutdown is None

    # --- input -------------------------------------------------------------------------------

    def send(self, line: bytes) -> None:
        """Queue one message (without its newline) for the child's stdin; never blocks."""
        stdin = self._stdin
        if stdin is None or stdin.is_closing() or self._shutdown is not None:
            raise ChildGone("the MCP server is not running")
        if len(line) <= JOIN_WRITE_BYTES:
            stdin.write(line + b"\n")
        else:
            stdin.write(line)
            stdin.write(b"\n")

    async def drain(self) -> None:
        """Wait until stdin's buffer is below its high-water mark; `StdinStalled` after the timeout."""
        if not self._write_paused:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(waiter)
        try:
            async with asyncio.timeout(STDIN_DRAIN_TIMEOUT):
                await waiter
        except TimeoutError:
            raise StdinStalled(f"the MCP server read none of its input for {STDIN_DRAIN_TIMEOUT:.0f} s") from None
        finally:
            with contextlib.suppress(ValueError):
                self._drain_waiters.remove(waiter)

    def _resume_writers(self, error: Exception | None) -> None:
        self._write_paused = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)

    # --- output flow control -----------------------------------------------------------------

    def pause_output(self) -> None:
        """Stop reading stdout (the pipe fills and the child blocks) until `resume_output`."""
        pipe = self._stdout_pipe()
        if pipe is not None:
            pipe.pause_reading()

    def resume_output(self) -> None:
        pipe = self._stdout_pipe()
        if pipe is not None:
            pipe.resume_reading()

    def _stdout_pipe(self) -> asyncio.ReadTransport | None:
        pipe = self._transport.get_pipe_transport(1) if self._transport else None
        return None if pipe is None or pipe.is_closing() else typing.cast(asyncio.ReadTransport, pipe)

    # --- lifecycle ---------------------------------------------------------------------------

    def _pipe_closed(self, fd: int) -> None:
        if fd == 0:
            self._resume_writers(ChildGone("the MCP server closed its input"))
        elif fd == 1:
            self._stdout.close()
            self._stdout_closed.set()
            if self._shutdown is None:
                loop = asyncio.get_running_loop()
                self._output_check = loop.call_later(OUTPUT_CLOSED_GRACE, self._stop_without_output)
        else:
            self._stderr.close()

    def _stop_without_output(self) -> None:
        self._output_check = None
        if self._shutdown is not None or self._transport is None:
            return  # it exited (or is being stopped) meanwhile
        self.output_closed_early = True
        log.warning("MCP server closed its stdout but kept running; stopping it", extra={"session": self.label})
        self._shutdown = asyncio.get_running_loop().create_task(self._finish(self._transport, stopping=True))

    def _process_exited(self) -> None:
        # Before spawn() has stored the transport, spawn() itself notices the exit.
        if self._shutdown is None and self._transport is not None:
            self._shutdown = asyncio.get_running_loop().create_task(self._finish(self._transport, stopping=False))

    async def stop(self) -> int | None:
        """Stop the process and its group; returns the exit code (negative: the signal)."""
        if self._transport is None:
            return None
        if self._shutdown is None:
            self._shutdown = asyncio.get_running_loop().create_task(self._finish(self._transport, stopping=True))
        return await asyncio.shield(self._shutdown)

    async def _finish(self, transport: asyncio.SubprocessTransport, *, stopping: bool) -> int | None:
        try:
            if stopping:
                await self._stop_leader(transport)
            else:
                # Exited on its own: let output already written reach the router first.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(EXIT_DRAIN_GRACE):
                        await self._stdout_closed.wait()
            await self._terminate_group()
        finally:
            if self._output_check is not None:
                self._output_check.cancel()
            transport.close()
            self._resume_writers(ChildGone("the MCP server has exited"))
            if self._watchdog is not None:
                self._watchdog.unregister(self.pid)
            code = transport.get_returncode()
            if not self._reported:
                self._reported = True
                self._sink.child_exited(code)
        return code

    async def _stop_leader(self, transport: asyncio.SubprocessTransport) -> None:
        if self._stdin is not None:
            self._stdin.close()
        if await self._exited_within(transport, STDIN_CLOSE_GRACE):
            return
        log.warning("MCP server did not exit on stdin EOF; sending SIGTERM", extra={"session": self.label})
        self._signal_group(signal.SIGTERM)
        if await self._exited_within(transport, SIGTERM_GRACE):
            return
        log.warning("MCP server ignored SIGTERM; sending SIGKILL", extra={"session": self.label})
        self._signal_group(signal.SIGKILL)
        if not await self._exited_within(transport, SIGKILL_CONFIRM):
            log.error("MCP server pid %d survived SIGKILL", self.pid, extra={"session": self.label})

    async def _terminate_group(self) -> None:
        """End whatever else lives in the group (grandchildren) once the leader is gone."""
        if not self._group_alive():
            return
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + SIGTERM_GRACE
        while self._group_alive() and time.monotonic() < deadline:  # noqa: ASYNC110 - no event exists for a group's exit
            await asyncio.sleep(EXIT_POLL_INTERVAL)
        if self._group_alive():
            self._signal_group(signal.SIGKILL)

    @staticmethod
    async def _exited_within(transport: asyncio.SubprocessTransport, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        # Polled on purpose: awaiting the process would also await pipe EOF, which a grandchild
        # holding stdout can withhold forever.
        while transport.get_returncode() is None:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(EXIT_POLL_INTERVAL)
        return True

    def _group_alive(self) -> bool:
        # The leader's pid is the group id (start_new_session); never getpgid(), which fails
        # once the leader has been reaped.
        return group_alive(self.pid)

    def _signal_group(self, signum: int) -> None:
        signal_group(self.pid, signum)
