"""Orphan watchdog: a process that kills the gateway's child process groups if it dies.

The gateway starts one watchdog and keeps the write end of a pipe to its stdin; it announces every
child process group it creates (`+PGID`) and every group it has finished stopping (`-PGID`), and,
with uid isolation, every user ID a child runs as (`+uUID`, `-uUID` once its cleanup is done) and
the directory that holds the children's private ones (`+dPATH`).
When the pipe reaches end of file — the gateway exited, however it exited, `kill -9` included —
the watchdog sends SIGTERM to every group still announced, waits briefly, then SIGKILLs whatever
remains, then every process of an announced user, then removes the announced directories. Killing
the group, not just the child, also takes grandchildren; killing the user also takes those that
left the group.

It also owns what both it and the gateway need of the children's users: where their user-ID
locks live (`LOCK_DIR`), which it takes before it sweeps a user, and `remove_tree`, which removes
what a child left as that child's owner would.

This file runs as a script with the interpreter's isolated flags (`-I -S`) so it starts fast and
imports nothing but the standard library. On Linux each child additionally carries a parent-death
signal (see child.py), which covers the instant between spawn and announcement.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

# The logger and its messages keep the name operators already filter on ("guard").
log = logging.getLogger("gateway.guard")

# Where the user-ID locks live: one file per user ID, shared by every gateway on the host (a
# directory only root may create, so no one can take it first).
LOCK_DIR = Path("/run/mcp-gateway/uids")
# Seconds between SIGTERM and SIGKILL, matching the gateway's own stop sequence.
TERM_GRACE_SECONDS = 2.0
POLL_SECONDS = 0.05


def group_alive(pgid: int) -> bool:
    """Whether any process that is not a zombie is left in group `pgid`."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # EPERM never proves a group is gone
    # kill() also reaches zombies: orphans whose new parent has not reaped them yet (or never
    # will, where PID 1 does not reap). They are dead; only a live member counts.
    return _live_member(pgid)


def _live_member(pgid: int) -> bool:
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True  # no procfs: trust kill()
    wanted = str(pgid).encode()
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                raw = stat.read()
        except OSError:
            continue  # exited meanwhile
        fields = raw[raw.rindex(b")") + 2 :].split()  # state, ppid, pgrp, ...
        if fields[2] == wanted and fields[0] not in (b"Z", b"X"):
            return True
    return False


def signal_group(pgid: int, signum: int) -> None:
    """Signal every process of group `pgid`; a group already gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def terminate_groups(groups: set[int]) -> None:
    """SIGTERM every group, wait up to the grace period, SIGKILL the survivors."""
    living = {pgid for pgid in groups if group_alive(pgid)}
    for pgid in living:
        signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + TERM_GRACE_SECONDS
    while living and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        living = {pgid for pgid in living if group_alive(pgid)}
    for pgid in living:
        signal_group(pgid, signal.SIGKILL)


def kill_users(uids: set[int], directories: list[str]) -> None:
    """SIGKILL every process of each user in `uids`, through `kill(-1)` from a helper that has
    become that user: one system call the kernel applies to all of them at once, so no process
    escapes it by forking into a new pid (a sweep of /proc, one pid at a time, could be outrun).
    The helper then removes what the user owns directly in `directories` (a child's private
    directory), which a watchdog holding no more than the capabilities it needs could not."""
    owned = _entries_by_owner(directories)
    for uid in uids:
        with _user_lock(uid) as free:
            # When another gateway's child has the user now, its start ended what was left of the
            # processes: only what the user made here is removed (this gateway's, not that child's).
            _as_user(uid, owned.get(uid, []), kill=free)


def _as_user(uid: int, owned: list[str], *, kill: bool) -> None:
    """As `uid`: end every process of the user (with `kill`), then remove `owned`."""
    try:
        pid = os.fork()
    except OSError:
        return  # no process to spare: the next user may still get one
    if pid == 0:  # the watchdog is single-threaded: forking here is safe
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            with open("/proc/self/status", "rb") as status:
                alone = b"CapEff:\t0000000000000000\n" in status.read()
            if alone:  # with a capability left, kill(-1) would reach other users' processes
                if kill:
                    os.kill(-1, signal.SIGKILL)  # every process of the user, this helper excepted
                for path in owned:
                    remove_tree(path)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


@contextlib.contextmanager
def _user_lock(uid: int) -> Iterator[bool]:
    """Hold the user ID's lock (the gateway that held it is gone, so the kernel let it go): True
    while held, or when no lock file says it was ever handed out; False when another gateway
    holds it."""
    try:
        fd = os.open(LOCK_DIR / str(uid), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        yield True
        return
    except OSError:
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        yield False
        return
    try:
        yield True
    finally:
        os.close(fd)


def _entries_by_owner(directories: list[str]) -> dict[int, list[str]]:
    """The entries of `directories` (which only the watchdog's own user may list), by owner."""
    owned: dict[int, list[str]] = {}
    for directory in directories:
        with contextlib.suppress(OSError), os.scandir(directory) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    owned.setdefault(entry.stat(follow_symlinks=False).st_uid, []).append(entry.path)
    return owned


def remove_tree(path: str | os.PathLike[str]) -> bool:
    """Remove `path` and everything in it, as its owner: directories a child made unreadable or
    read-only are opened up first, top down (directories only, never through a symbolic link).
    Never raises; whether the path is gone."""
    root = os.fspath(path)
    with contextlib.suppress(OSError):
        if stat.S_ISDIR(os.lstat(root).st_mode):
            os.chmod(root, 0o700)
            for parent, directories, _ in os.walk(root):  # lists each directory after it was opened
                for name in directories:
                    inner = os.path.join(parent, name)
                    with contextlib.suppress(OSError):
                        if stat.S_ISDIR(os.lstat(inner).st_mode):
                            os.chmod(inner, 0o700)
            shutil.rmtree(root, ignore_errors=True)
        else:
            os.unlink(root)
    return not os.path.lexists(root)


def main() -> int:
    # Interrupts aimed at the gateway's terminal are the gateway's to handle; the watchdog's
    # only exit is end of file on its stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    groups: set[int] = set()
    users: set[int] = set()
    directories: list[str] = []
    pending = b""
    while True:
        try:
            chunk = os.read(0, 4096)
        except InterruptedError:  # pragma: no cover - retried by the runtime since PEP 475
            continue
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            sign, what = line[:1], line[1:]
            if sign == b"+" and what.startswith(b"d/"):
                directories.append(os.fsdecode(what[1:]))
                continue
            members = users if what.startswith(b"u") else groups
            number = what.removeprefix(b"u")
            if not number.isdigit():
                continue
            if sign == b"+":
                members.add(int(number))
            elif sign == b"-":
                members.discard(int(number))
    terminate_groups(groups)
    kill_users(users, directories)
    for directory in directories:
        remove_tree(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())


class OrphanWatchdog:
    """The gateway's side of the watchdog: starts it and announces process groups to it."""

    def __init__(self) -> None:
        read_fd, self._write_fd = os.pipe()  # both ends non-inheritable by default
        try:
            self._process = subprocess.Popen(  # noqa: S603 - fixed argv: this interpreter and this file
                [sys.executable, "-I", "-S", os.path.abspath(__file__)],
                stdin=read_fd,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            os.close(read_fd)
        os.set_blocking(self._write_fd, False)
        self._closed = False

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def running(self) -> bool:
        return not self._closed and self._process.poll() is None

    def _send(self, line: bytes) -> None:
        if self._closed:
            return
        try:
            os.write(self._write_fd, line)
        except (BlockingIOError, BrokenPipeError) as exc:
            log.error("orphan guard unreachable: %s", exc)

    def register(self, pgid: int) -> None:
        self._send(b"+%d\n" % pgid)

    def register_user(self, uid: int) -> None:
        self._send(b"+u%d\n" % uid)

    def unregister_user(self, uid: int) -> None:
        self._send(b"-u%d\n" % uid)

    def register_directory(self, path: str) -> None:
        """Remove `path` (absolute, one line) if the gateway dies: what its children left there."""
        self._send(b"+d" + os.fsencode(path) + b"\n")

    def unregister(self, pgid: int) -> None:
        self._send(b"-%d\n" % pgid)

    async def aclose(self) -> None:
        """Close the pipe: the watchdog kills any group still announced, then exits."""
        if self._closed:
            return
        self._closed = True
        os.close(self._write_fd)
        deadline = time.monotonic() + TERM_GRACE_SECONDS + 1.0
        while self._process.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110 - a Popen has no awaitable exit
            await asyncio.sleep(POLL_SECONDS)
        if self._process.poll() is None:
            log.error("orphan guard did not exit; killing it")
            self._process.kill()
            self._process.wait(timeout=1.0)
