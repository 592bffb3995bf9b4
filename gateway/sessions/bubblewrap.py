"""bubblewrap's command line: what puts one child in namespaces of its own, and what it sees there.

The child gets user, PID, IPC, UTS and cgroup namespaces (and a network with only loopback, with
`network=none`), no capability and no way to make another user namespace; it dies with
bubblewrap, which dies with the gateway. Its view of the files, mount by mount, in this order:

1. the host's file system, read-only; a fresh `/dev` and `/proc`; an empty private `/tmp`;
2. the kernel's settings (`/proc/sys`, `/proc/sysrq-trigger`) read-only again, since bubblewrap
   leaves them as the host has them;
3. the configured readable paths (what the server needs from the host's /tmp), read-only, and
   the configured writable directories, read-write;
4. every path that a hidden pattern matches when the child starts covered (a directory by an
   empty one, anything else by a file that cannot be opened), then the directory of every
   child's private one covered;
5. its own private directory, bound read-write at its own path.

Later mounts win, so nothing hidden comes back into view through a writable directory, and no
child sees another's directory. bubblewrap is looked up on the gateway's own PATH, then where
Debian puts it.
"""

from __future__ import annotations

import glob
import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Literal, Protocol

Network = Literal["host", "none"]
BWRAP: Final = "bwrap"
BWRAP_FALLBACK: Final = "/usr/bin/bwrap"
# Hidden from children with namespaces wherever they exist, whatever is configured: the system's
# password hashes.
SYSTEM_SECRETS: Final = ("/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-")
# Each child's own /tmp, empty: nothing of the host's is in it.
PRIVATE_TMP: Final = "/tmp"  # noqa: S108 - a mount point in the child's view, not a file the gateway makes


class View(Protocol):
    """What a child in namespaces may reach: the network, the directories it may write, the paths
    it never sees, what it may read of the host's /tmp."""

    @property
    def network(self) -> Network: ...

    @property
    def writable(self) -> Sequence[str]: ...

    @property
    def hidden(self) -> Sequence[str]: ...  # glob patterns, matched anew for each child

    @property
    def readable(self) -> Sequence[str]: ...


def namespace_wrapper(
    bwrap: str,
    view: View,
    cwd: Path | str,
    *,
    hide: Path | None = None,
    cell: Path | None = None,
    as_other: bool = False,
) -> tuple[str, ...]:
    """bubblewrap's command line for one child seeing `view`, starting in `cwd` (what it sees, in
    order, is in this module's docstring): `hide` is the directory of every child's private one,
    `cell` its own. `as_other`: bubblewrap runs as a user of its own, who cannot reach (nor needs
    covered) what sits in a directory only its owner and group may enter."""
    argv = [bwrap, "--die-with-parent", "--unshare-user", "--disable-userns", "--unshare-pid", "--unshare-ipc"]
    argv += ["--unshare-uts", "--unshare-cgroup-try"]
    if view.network == "none":
        argv.append("--unshare-net")
    argv += ["--cap-drop", "ALL", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    argv += ["--tmpfs", PRIVATE_TMP]
    argv += ["--ro-bind", "/proc/sys", "/proc/sys", "--ro-bind-try", "/proc/sysrq-trigger", "/proc/sysrq-trigger"]
    for path in view.readable:
        argv += ["--ro-bind", path, path]
    for directory in view.writable:
        argv += ["--bind", directory, directory]
    for path in (path for pattern in view.hidden for path in sorted(glob.glob(pattern))):
        if (as_other and not _others_may_reach(path)) or not os.path.exists(path):
            continue  # out of its reach anyway, or a link to nothing
        if os.path.isdir(path):  # through a link too: the mount covers what it points to
            argv += ["--tmpfs", path]
        else:
            argv += ["--ro-bind", os.devnull, path]
    if hide is not None:
        argv += ["--tmpfs", str(hide)]
    if cell is not None:
        argv += ["--bind", str(cell), str(cell)]
    return (*argv, "--chdir", str(cwd), "--")


def _others_may_reach(path: str) -> bool:
    """Whether a user that owns nothing on the host (a child's) may look `path` up: every directory
    above it lets others search it."""
    parent = os.path.dirname(path)
    while True:
        try:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
        if parent == os.path.dirname(parent):
            return True
        parent = os.path.dirname(parent)


def find_bwrap() -> str | None:
    """bubblewrap's path (None when it is not installed)."""
    found = shutil.which(BWRAP)
    if found is None and os.access(BWRAP_FALLBACK, os.X_OK):
        found = BWRAP_FALLBACK
    return found


def is_host_root() -> bool:
    """Whether this process is the host's root: user 0 of the initial user namespace (not the root
    of a container whose users the host maps elsewhere)."""
    if os.geteuid() != 0:
        return False
    try:
        mapping = Path("/proc/self/uid_map").read_text().split()
    except OSError:
        return True
    return mapping[:3] == ["0", "0", "4294967295"]
