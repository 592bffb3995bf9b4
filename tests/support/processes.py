"""Processes as /proc shows them, for leak checks (descendants, process groups, PID namespaces, the
MCP servers this test process started), and the JSON log of a gateway run as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from tests.support.types import JsonObj
from tests.support.waits import WAIT


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) from /proc, or None when the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def live_processes() -> Iterator[tuple[int, int, int]]:
    """(pid, ppid, pgid) of every live (non-zombie) process."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[0] not in ("Z", "X"):
                yield int(entry.name), stat[1], stat[2]


def descendants(root: int) -> set[int]:
    """Live descendants of `root`."""
    children: dict[int, list[int]] = {}
    for pid, ppid, _ in live_processes():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def group_members(pgids: set[int]) -> set[int]:
    """Live processes in any of the given process groups (children keep it after reparenting)."""
    return {pid for pid, _, pgid in live_processes() if pgid in pgids}


def children_of(parent: int) -> set[int]:
    """Live processes whose parent is `parent`."""
    return {pid for pid, ppid, _ in live_processes() if ppid == parent}


def pid_namespace(pid: int) -> tuple[int, int] | None:
    """The PID namespace `pid` is in, as the (device, inode) of /proc/<pid>/ns/pid (None once it is
    gone). A freed namespace's inode number goes to the next one made: compare against a namespace
    only while a descriptor of it is held open."""
    try:
        info = os.stat(f"/proc/{pid}/ns/pid")
    except OSError:
        return None
    return info.st_dev, info.st_ino


def pid_namespace_members(namespace: tuple[int, int]) -> set[int]:
    """Live processes in the PID namespace `namespace` (as `pid_namespace` gives it), whatever
    process group, session or user they moved to."""
    return {pid for pid, _, _ in live_processes() if pid_namespace(pid) == namespace}


def namespace_pids(pid: int) -> list[int]:
    """`pid` in each PID namespace it is in, the host's first (`NSpid:` of /proc/<pid>/status;
    empty once it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return [int(number) for number in line.split()[1:]]
    return []


def child_pids() -> set[int]:
    """Children of this test process that are MCP servers (the orphan watchdog excluded)."""
    return {pid for pid in descendants(os.getpid()) if _is_server(pid)}


def _is_server(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"watchdog.py" not in cmdline


async def startup_log(stderr: asyncio.StreamReader) -> list[JsonObj]:
    """A gateway subprocess's JSON log records up to the one that names its URL (within WAIT)."""
    records: list[JsonObj] = []
    async with asyncio.timeout(WAIT):
        while "url" not in (records[-1] if records else {}):
            line = await stderr.readline()
            assert line, f"the gateway exited before serving: {records}"
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
    return records


async def drain_log(stderr: asyncio.StreamReader, log: list[JsonObj]) -> None:
    """Keep reading a gateway subprocess's stderr (a full pipe would block it), keeping its JSON records."""
    while line := await stderr.readline():
        with contextlib.suppress(ValueError):
            log.append(json.loads(line))
