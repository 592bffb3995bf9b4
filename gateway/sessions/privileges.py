"""What the gateway process keeps of its privileges: the capabilities its children's isolation
needs, nothing else.

A gateway started as root holds every capability, and so would every child it starts as root
(`none`, `namespaces`). Once the isolation is decided, before anything else starts, `keep_only`
drops every capability but the few that isolation needs, from the effective, permitted and
inheritable sets, the ambient set and the bounding set (so no program it executes, as root or
otherwise, gains one back):

- `uid`, `uid+namespaces`: `CAP_SETUID` and `CAP_SETGID` (a child, a helper, the orphan watchdog
  become the child's user) and `CAP_KILL` (the process groups of children of other users);
- a listener on a port below 1024: `CAP_NET_BIND_SERVICE`.

Capabilities belong to threads: this runs before the event loop that serves or any thread exists,
and every thread and process made afterwards inherits the reduced sets.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from gateway.sessions.sandbox import CAP_KILL, CAP_SETGID, CAP_SETUID, IsolationMode

CAP_SETPCAP: Final = 8
CAP_NET_BIND_SERVICE: Final = 10
PR_CAPBSET_DROP: Final = 24
PR_CAP_AMBIENT: Final = 47
PR_CAP_AMBIENT_CLEAR_ALL: Final = 4
LINUX_CAPABILITY_VERSION_3: Final = 0x20080522
LAST_CAP_FILE: Final = Path("/proc/sys/kernel/cap_last_cap")
PRIVILEGED_PORTS_BELOW: Final = 1024
# A thread left by the decision (a child watcher's, where pidfds are missing) ends at once.
THREAD_JOIN_TIMEOUT: Final = 1.0
FOR_MODE: Final[dict[IsolationMode, frozenset[int]]] = {
    "none": frozenset(),
    "namespaces": frozenset(),
    "uid": frozenset({CAP_SETUID, CAP_SETGID, CAP_KILL}),
    "uid+namespaces": frozenset({CAP_SETUID, CAP_SETGID, CAP_KILL}),
}
NAMES: Final = {
    CAP_KILL: "CAP_KILL",
    CAP_SETGID: "CAP_SETGID",
    CAP_SETUID: "CAP_SETUID",
    CAP_NET_BIND_SERVICE: "CAP_NET_BIND_SERVICE",
}


log = logging.getLogger("gateway.privileges")


class _Header(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _Data(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32))


def needed(isolation: IsolationMode, ports: Iterable[int | None]) -> frozenset[int]:
    """The capabilities a gateway whose children get `isolation`, listening on `ports`, needs."""
    binds_low = any(port is not None and 0 < port < PRIVILEGED_PORTS_BELOW for port in ports)
    return FOR_MODE[isolation] | ({CAP_NET_BIND_SERVICE} if binds_low else set())


def describe(capabilities: int) -> str:
    """`capabilities` (a bit mask) by name, for the log."""
    names = [NAMES.get(bit, f"capability {bit}") for bit in range(64) if capabilities >> bit & 1]
    return ", ".join(names) or "none"


def keep_only(keep: frozenset[int]) -> int:
    """Drop every capability of this process but those of `keep` that it holds; the effective set
    left (a bit mask). `OSError` when the kernel refuses, which leaves the process as it was or
    with less, never with more. Call before any thread starts."""
    held = _capabilities("CapPrm") | _capabilities("CapAmb") | _capabilities("CapInh")
    if held == 0:
        return 0  # nothing to drop (a bounding set without CAP_SETPCAP to drop it with stays as it is)
    for thread in threading.enumerate():  # helpers of the decision (a child watcher) that are ending
        if thread is not threading.main_thread():
            thread.join(timeout=THREAD_JOIN_TIMEOUT)
    if threading.active_count() != 1:
        raise OSError("capabilities are per thread: drop them before any thread starts")
    libc = ctypes.CDLL(None, use_errno=True)
    mask = sum(1 << bit for bit in keep) & _capabilities("CapPrm")
    if _capabilities("CapEff") >> CAP_SETPCAP & 1:
        for bit in range(int(LAST_CAP_FILE.read_text()) + 1):
            if not mask >> bit & 1 and libc.prctl(PR_CAPBSET_DROP, bit, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), f"cannot drop capability {bit} from the bounding set")
    elif _capabilities("CapBnd") & ~mask:
        log.warning(
            "without CAP_SETPCAP the bounding set stays as given: a child that runs as root may regain %s",
            describe(_capabilities("CapBnd") & ~mask),
        )
    if libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "cannot clear the ambient capabilities")
    header = _Header(LINUX_CAPABILITY_VERSION_3, 0)
    low, high = mask & 0xFFFFFFFF, mask >> 32
    data = (_Data * 2)(_Data(low, low, 0), _Data(high, high, 0))
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "cannot set the capabilities")
    return _capabilities("CapEff")


def _capabilities(which: str) -> int:
    """One capability set of this process (`CapEff`, `CapPrm`, …) from /proc; `OSError` when it
    cannot be read, since then nothing can be dropped knowingly."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(which + ":"):
            return int(line.split()[1], 16)
    raise OSError(f"{which} is missing from /proc/self/status")
