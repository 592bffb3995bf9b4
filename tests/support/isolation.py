"""What the isolation tests read off the host about the children: whether a user ID is held,
whether bubblewrap works here, and which host process a child is (inside namespaces of its own a
child knows only its pid there)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

from gateway.sessions.watchdog import LOCK_DIR
from tests.support.processes import live_processes, namespace_pids
from tests.support.types import JsonObj
from tests.support.waits import WAIT

BWRAP_FALLBACK: Final = "/usr/bin/bwrap"
# The namespaces children get, the host read-only: what the probe asks of bubblewrap.
PROBE_VIEW: Final = (
    *("--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net", "--die-with-parent"),
    *("--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"),  # noqa: S108 - its own, empty
)

# Run by root in a mount namespace of its own: bubblewrap (on the PATH and where Debian puts it)
# becomes $0, an empty file no one may execute; then the rest of the command line runs.
NO_BUBBLEWRAP: Final = (
    'for f in /usr/bin/bwrap /usr/local/bin/bwrap; do [ -e "$f" ] && mount --bind "$0" "$f"; done; exec "$@"'
)

# What Bob's child observes attacking Alice's, when each is in namespaces of its own: her pid is
# none in his PID namespace, her directory and /tmp are not in his view, the rest is read-only.
REFUSED_BY_NAMESPACES: Final = {
    "processes": "only its own",
    "environ": "ENOENT",
    "signal": "ESRCH",
    "ptrace": "ESRCH",
    "tmpdir_read": "ENOENT",
    "tmpdir_list": "ENOENT",
    "tmp_read": "ENOENT",
    "write_outside": "EROFS",
}


def uid_released(uid: int) -> bool:
    """Whether no gateway holds `uid`: its lock file can be locked (and is let go at once)."""
    try:
        fd = os.open(LOCK_DIR / str(uid), os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops the lock, if it was taken
    return True


def bwrap_path() -> str | None:
    """bubblewrap, on this process's PATH or where Debian puts it (None: not installed)."""
    return shutil.which("bwrap") or (BWRAP_FALLBACK if os.access(BWRAP_FALLBACK, os.X_OK) else None)


def bubblewrap_problem(uid: int | None = None) -> str | None:
    """Why a program cannot run behind bubblewrap here, as `uid` when given (None: it can): the
    probe runs `/bin/true` in namespaces of its own, independently of the gateway's own probe."""
    bwrap = bwrap_path()
    if bwrap is None:
        return "bubblewrap (bwrap) is not installed"
    switch: dict[str, Any] = {} if uid is None else {"user": uid, "group": uid, "extra_groups": []}
    try:
        done = subprocess.run(
            [bwrap, *PROBE_VIEW, "--", "/bin/true"], capture_output=True, timeout=WAIT, check=False, cwd="/", **switch
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bubblewrap cannot be started: {exc!r}"
    if done.returncode != 0:
        return f"bubblewrap fails here: {done.stderr.decode(errors='replace').strip()}"
    return None


def namespace_members(pid_ns: str) -> dict[int, int]:
    """The live processes of the PID namespace `pid_ns` (as /proc/<pid>/ns/pid reads): host pid →
    pid in there (the innermost namespace's). A freed namespace's inode number goes to the next
    one made: ask about a namespace only while it lives, or while a descriptor of it is open."""
    members: dict[int, int] = {}
    for pid, _, _ in live_processes():
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/ns/pid") == pid_ns and (pids := namespace_pids(pid)):
                members[pid] = pids[-1]
    return members


def host_pid(pid_ns: str, pid: int) -> int:
    """The host's pid of the process that is `pid` in the PID namespace `pid_ns` (what `whoami`
    reports as `pid` and `pid_ns`)."""
    found = [host for host, inner in namespace_members(pid_ns).items() if inner == pid]
    assert len(found) == 1, f"no single process is {pid} in {pid_ns}: {found}"
    return found[0]


def outcome(report: JsonObj) -> str:
    """What an attempt the spy server made came to: "ok", or the errno the kernel refused it with."""
    return "ok" if report["ok"] else str(report["errno"])


def exists(path: Path) -> bool:
    return path.exists()


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def host_interfaces() -> list[str]:
    """The network interfaces of this process's network namespace (the host's, the gateway's)."""
    return sorted(line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:])
