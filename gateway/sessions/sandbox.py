"""Isolation between children: no child can read another's environment (`/proc/<pid>/environ`),
signal or trace it, or read its files.

Modes, weakest first: `none` (every child runs as the gateway's own user and sees the others),
`namespaces` (each child in PID, IPC, UTS, cgroup and user namespaces of its own, made by
bubblewrap: it sees only its own processes, a private `/tmp` and its own private directory, and
the rest of the file system read-only), `uid` (each child under a user ID of its own, with a
private `HOME` and `TMPDIR`), and `uid+namespaces` (both: bubblewrap runs as the child's user).
`uid` needs a gateway whose effective user is root with the kernel's usual rules for a change of
user (no securebits): then switching to the child's user drops every capability, which each
helper and each child checks before it does anything as that user. Capabilities alone (ambient
ones, a non-root gateway) are not enough: they would survive the switch, and a cleanup's `kill(-1)`
holding `CAP_KILL` would reach every process on the host. A child creates its own directories once
it runs as its user, and the cleanup after it runs as that user too. `namespaces` needs bubblewrap,
a kernel that lets this user create namespaces, and a gateway that is not the host's root (whose
children would be root too, which no namespace keeps from /proc/sys or root's sockets). The mode
in force is decided once, at startup (`decide`), by running the server's own program the way
children will run it, and named in the startup log, `/health`, `mcp-gateway check` and every
`child.spawn` audit line.

Invariants:
- A user ID belongs to at most one child at a time, across every gateway process on the host: it
  is held by an exclusive lock on a file of its own (released by the kernel if the gateway dies),
  and it is taken only when no process of that user is alive. It is given back only after every
  process of the user is gone and its directory is removed.
- A child's private directory (mode 0700) sits in a directory that no one other than the gateway
  may list, under a name no other child can guess; with namespaces, the child sees only its own.
- A child starts with `no_new_privs` and no capability. With a user of its own it starts with
  umask 077, after killing whatever else still runs as its user (none should: this makes sure), so
  it is alone with its user. In namespaces, the end of its first process ends every process of
  its namespaces, whatever group or session they moved to.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import glob
import grp
import logging
import os
import pwd
import secrets
import shutil
import stat
import tempfile
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from gateway.sessions.bubblewrap import (
    PRIVATE_TMP,
    SYSTEM_SECRETS,
    Network,
    find_bwrap,
    is_host_root,
    namespace_wrapper,
)
from gateway.sessions.watchdog import LOCK_DIR, remove_tree

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.sessions.watchdog import OrphanWatchdog

log = logging.getLogger("gateway.sandbox")

IsolationMode = Literal["none", "uid", "namespaces", "uid+namespaces"]
RequestedIsolation = Literal["auto", "none", "uid", "namespaces", "uid+namespaces"]
# Bits of the capability sets in /proc/self/status (linux/capability.h).
CAP_KILL: Final = 5
CAP_SETGID: Final = 6
CAP_SETUID: Final = 7
# A shell and its `kill` and `rm`: what the cleanup runs as the child's user (present on every
# Linux image that has a shell; without one, `uid` isolation is not offered).
SHELL: Final = "/bin/sh"
# Refuse to go on holding any capability (then `kill -1` would reach other users' processes).
_NO_CAPABILITIES: Final = (
    'while read -r key value; do [ "$key" = CapEff: ] && [ "$value" != 0000000000000000 ] && exit 3; '
    "done < /proc/self/status; "
)
# Kill every other process of the calling user (one system call no fork outruns; three times, for
# good measure), then remove every path given (its private directory, and whatever else it made
# beside it), read-only parts included; fail when anything of them is left.
_CLEANUP_SCRIPT: Final = (
    _NO_CAPABILITIES + "for sweep in 1 2 3; do kill -KILL -1 2>/dev/null; done; "
    'for path; do if [ -e "$path" ] || [ -L "$path" ]; then chmod -R u+rwx -- "$path" 2>/dev/null; '
    'rm -rf -- "$path"; fi; done; '
    'for path; do if [ -e "$path" ] || [ -L "$path" ]; then exit 1; fi; done'
)
# Whether the user may start a program: $1 the program, $2 (may be empty) its script interpreter,
# $3 the directory it starts in, then the files its command line names, which it must read.
_EXECUTABLE_SCRIPT: Final = (
    'cd "$3" && test -x "$1" && test -r "$1" && { [ -z "$2" ] || test -x "$2"; } && shift 3 && '
    'for file; do test -r "$file" || exit 1; done'
)
# A probe or a cleanup is a few system calls; a machine too loaded to run one in this long is
# reported, never waited on forever.
HELPER_TIMEOUT: Final = 5.0
# What a helper says on stderr, kept for the reason a probe gives (bubblewrap's own message).
HELPER_STDERR_BYTES: Final = 1024
# A helper killed for its timeout is gone within this; it is not waited on longer.
HELPER_KILL_WAIT: Final = 1.0
# Sweeps of the process table for survivors before a user ID is given back anyway is refused.
RELEASE_ATTEMPTS: Final = 3
RELEASE_RETRY_INTERVAL: Final = 0.2
PR_GET_SECUREBITS: Final = 27


class IsolationUnavailable(Exception):
    """The isolation asked for cannot be had on this host; the message says why."""


class NoFreeUser(Exception):
    """Every user ID of the range is held by a child (or by a process still alive)."""


@dataclass(frozen=True, slots=True)
class Cell:
    """Where one child runs: its private directories, the user it runs as (with user IDs), and the
    command that puts it in namespaces of its own (with namespaces)."""

    directory: Path  # the child's own: HOME and TMPDIR are inside it
    uid: int | None = None
    gid: int | None = None
    lock: int | None = None  # the file descriptor whose lock holds the user ID
    wrapper: tuple[str, ...] = ()  # bubblewrap's command line, in front of the server's own

    @property
    def home(self) -> Path:
        return self.directory / "home"

    @property
    def tmp(self) -> Path:
        return self.directory / "tmp"

    def environment(self) -> dict[str, str]:
        """What the child's environment says about where it lives and who it is (it wins over
        configuration: a user of its own has no name, so it goes by its number)."""
        env = {"HOME": str(self.home), "TMPDIR": str(self.tmp)}
        if self.uid is not None:
            env["USER"] = env["LOGNAME"] = str(self.uid)
        return env


def effective_capabilities() -> int:
    """The calling process's effective capability set (0 when /proc cannot tell)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def _securebits() -> int:
    """prctl(PR_GET_SECUREBITS): nonzero when a change of user may keep capabilities."""
    try:
        return int(ctypes.CDLL(None, use_errno=True).prctl(PR_GET_SECUREBITS, 0, 0, 0, 0))
    except (OSError, AttributeError):
        return -1


def why_no_user_switching() -> str | None:
    """Why this process cannot run children as other users (None: it can)."""
    if os.geteuid() != 0:
        return "the gateway does not run as root"
    wanted = {CAP_SETUID: "CAP_SETUID", CAP_SETGID: "CAP_SETGID", CAP_KILL: "CAP_KILL"}
    have = effective_capabilities()
    missing = [name for bit, name in wanted.items() if not have & (1 << bit)]
    if missing:
        return f"the gateway lacks {', '.join(missing)}"
    if _securebits() != 0:
        return "securebits are set: a change of user might keep capabilities"
    if not os.access(SHELL, os.X_OK):
        return f"{SHELL} is missing (the cleanup after a child runs it as the child's user)"
    return None


def why_not_this_range(first: int, last: int) -> str | None:
    """Why children may not take user IDs `first`..`last`: one of them is a known user or group
    (a person, a service, `nobody`), whose processes a cleanup would kill and whose files a child
    would own."""
    taken = sorted(
        {entry.pw_uid for entry in pwd.getpwall() if first <= entry.pw_uid <= last}
        | {entry.gr_gid for entry in grp.getgrall() if first <= entry.gr_gid <= last}
    )
    if taken:
        shown = ", ".join(map(str, taken[:5]))
        return f"child_uid_range {first}-{last} holds IDs of existing users or groups ({shown})"
    return None


def live_users(first: int = 0, last: int = 2**32) -> set[int]:
    """The user IDs from `first` to `last` that a live process runs as (its real, effective or
    saved user ID: what decides whether that user may signal it). A zombie is not alive: it is
    only waiting for its parent to reap it, which, for an orphan whose new parent is a PID 1 that
    does not reap, may be never."""
    users: set[int] = set()
    with os.scandir("/proc") as entries:
        for entry in entries:
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    users.update(uid for uid in _users_of_live(entry.path) if first <= uid <= last)
    return users


def _users_of_live(proc_entry: str) -> set[int]:
    """The real, effective and saved user IDs of a process (none for a zombie with no thread left:
    a leader that exited while its threads run is alive). The owner of /proc/<pid> would not do:
    it is root for a process that made itself non-dumpable."""
    status = Path(proc_entry, "status").read_text()
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    if fields.get("State", "")[:1] in ("Z", "X") and fields.get("Threads", "1").strip() in ("0", "1"):
        return set()
    return {int(uid) for uid in fields["Uid"].split()[:3]}


def interpreter_of(program: str, path: str | None = None) -> str | None:
    """The interpreter a `#!` script names, found on `path` when it names it through `env`
    (None for a binary, or an interpreter not found)."""
    try:
        with open(program, "rb") as file:
            head = file.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = [os.fsdecode(word) for word in head[2:].split(b"\n", 1)[0].split()]
    if words and words[0].endswith("/env"):
        named = [word for word in words[1:] if not word.startswith("-")]
        return shutil.which(named[0], path=path) if named else None
    return words[0] if words else None


async def _run_helper(argv: Sequence[str], uid: int | None = None) -> tuple[int, str]:
    """Run a helper (as `uid`, its own group, with no supplementary groups, when given) with no
    environment, in `/`; its exit status and the start of what it wrote to stderr."""
    switch: dict[str, Any] = {} if uid is None else {"user": uid, "group": uid, "extra_groups": []}
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={},
        cwd="/",
        start_new_session=True,
        **switch,
    )
    stderr = typing.cast(asyncio.StreamReader, process.stderr)  # a pipe, asked for above
    try:
        async with asyncio.timeout(HELPER_TIMEOUT):
            said = await stderr.read(HELPER_STDERR_BYTES)
            await stderr.read()  # the rest, unread: the helper never blocks on a full pipe
            return await process.wait(), said.decode(errors="replace").strip()
    except BaseException:  # timed out or cancelled: the helper does not outlive the wait
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HELPER_KILL_WAIT):
                await process.wait()
        raise


@dataclass(frozen=True, slots=True)
class IsolationRequest:
    """What the configuration asks of the children's isolation, and what decides whether it works."""

    mode: RequestedIsolation
    program: str | None  # the file the server's command runs (None: not found)
    uid_range: tuple[int, int]
    path: str | None = None  # the child's PATH
    network: Network = "host"
    cwd: str | None = None  # where children start (None: each in its home)
    writable: tuple[str, ...] = ()  # directories children may write with namespaces
    hidden: tuple[str, ...] = SYSTEM_SECRETS  # glob patterns of what children never see with namespaces
    readable: tuple[str, ...] = ()  # what children may read under /tmp with namespaces
    files: tuple[str, ...] = ()  # the files the command names, which children must read

    @classmethod
    def of(cls, settings: Settings) -> IsolationRequest:
        return cls(
            settings.child_isolation,
            settings.child_program(),
            settings.child_uids(),
            settings.child_environment().get("PATH"),
            settings.child_network,
            str(settings.child_cwd) if settings.child_cwd is not None else None,
            tuple(str(path) for path in settings.child_writable_paths),
            _hidden(settings),
            tuple(str(path) for path in settings.child_readable_paths),
            settings.child_files(),
        )


def _hidden(settings: Settings) -> tuple[str, ...]:
    """What children in namespaces never see, as glob patterns of absolute paths, each once: the
    system's password hashes, the gateway's own secrets and records, and the configured paths."""
    configured = [glob.escape(os.path.abspath(path)) for path in settings.child_hidden_paths]
    return tuple(dict.fromkeys([*SYSTEM_SECRETS, *settings.gateway_secret_paths, *configured]))


@dataclass(frozen=True, slots=True)
class Decision:
    """The isolation in force and why."""

    mode: IsolationMode
    reason: str
    bwrap: str | None = None  # bubblewrap, with namespaces

    @property
    def uses_uid(self) -> bool:
        return self.mode in ("uid", "uid+namespaces")

    @property
    def uses_namespaces(self) -> bool:
        return self.mode in ("namespaces", "uid+namespaces")


async def _probe(request: IsolationRequest, argv_prefix: Sequence[str], uid: int | None) -> str | None:
    """Why the server's program cannot run as children will run it, as `uid` and behind
    `argv_prefix` (None: it can)."""
    if request.program is None:
        return None
    interpreter = interpreter_of(request.program, request.path) or ""
    who = "the gateway's user" if uid is None else f"user {uid}"
    cwd = request.cwd or "/"
    argv = [*argv_prefix, SHELL, "-c", _EXECUTABLE_SCRIPT, "probe", request.program, interpreter, cwd, *request.files]
    try:
        code, said = await _run_helper(argv, uid)
    except (OSError, TimeoutError) as exc:
        return f"no process can be started as {who}: {exc!r}"
    if code == 0:
        return None
    shown = f"{request.program} (run by {interpreter})" if interpreter else request.program
    if request.files:
        shown += f" with {', '.join(request.files)}"
    where = f" in {cwd}" if request.cwd is not None else ""
    if argv_prefix:
        where += f" in namespaces ({said or 'bubblewrap failed, or the program is not in its view'})"
        if any(_in_private_tmp(path) for path in (request.program, interpreter, *request.files)):
            hint = "each child has a /tmp of its own: list what it needs of the host's in child_readable_paths"
            return f"{who} may not execute {shown}{where}: {hint}"
    return f"{who} may not execute {shown}{where}: install the server where every user can read it"


def _in_private_tmp(path: str) -> bool:
    return path == PRIVATE_TMP or path.startswith(PRIVATE_TMP + "/")


async def _uid_problem(request: IsolationRequest) -> str | None:
    """Why children cannot run under user IDs of their own (None: they can)."""
    problem = why_no_user_switching() or why_not_this_range(*request.uid_range)
    return problem or await _probe(request, (), request.uid_range[0])


async def _namespace_problem(request: IsolationRequest, bwrap: str | None, uid: int | None) -> str | None:
    """Why children cannot run in namespaces of their own, as `uid` (as the gateway's own user when
    None; never the host's root, whom no namespace keeps from the kernel's settings in /proc/sys or
    from root's sockets) (None: they can)."""
    if uid is None and is_host_root():
        return "the gateway runs as the host's root, and its children would too (uid+namespaces gives each a user)"
    if bwrap is None:
        return "bubblewrap (bwrap) is not installed"
    wrapper = namespace_wrapper(bwrap, request, request.cwd or "/", as_other=uid is not None)
    if request.program is not None:
        return await _probe(request, wrapper, uid)
    try:  # no program to try: bubblewrap itself, then
        code, said = await _run_helper([*wrapper, SHELL, "-c", "true"], uid)
    except (OSError, TimeoutError) as exc:
        return f"bubblewrap cannot be started: {exc!r}"
    return None if code == 0 else f"bubblewrap cannot create namespaces here: {said or f'exit status {code}'}"


async def decide(request: IsolationRequest) -> Decision:
    """The isolation children get: the mode asked for, checked by running the server's program the
    way children would run it (as the first user ID of the range, behind bubblewrap).
    `IsolationUnavailable` when the mode asked for cannot be had; `auto` takes the strongest that
    works (`uid+namespaces`, `uid`, `namespaces`, `none`), but never `none` for a gateway that is
    the host's root, whose children would be root too."""
    asked, first_uid, bwrap = request.mode, request.uid_range[0], find_bwrap()
    if asked == "none":
        return _checked(request, Decision("none", "configured"))
    if asked == "uid":
        _refuse_if(asked, await _uid_problem(request))
        return _checked(request, Decision("uid", "configured"))
    if asked == "namespaces":
        _refuse_if(asked, await _namespace_problem(request, bwrap, None))
        return _checked(request, Decision("namespaces", "configured", bwrap))
    if asked == "uid+namespaces":
        _refuse_if(asked, await _uid_problem(request) or await _namespace_problem(request, bwrap, first_uid))
        return _checked(request, Decision("uid+namespaces", "configured", bwrap))
    uid_problem = await _uid_problem(request)
    if uid_problem is None:
        if (both_problem := await _namespace_problem(request, bwrap, first_uid)) is None:
            return _checked(request, Decision("uid+namespaces", "the host allows it", bwrap))
        return _checked(request, Decision("uid", f"namespaces are not possible: {both_problem}"))
    if (namespace_problem := await _namespace_problem(request, bwrap, None)) is None:
        return _checked(request, Decision("namespaces", f"uid isolation is not possible: {uid_problem}", bwrap))
    problems = f"uid isolation is not possible: {uid_problem}; namespaces are not possible: {namespace_problem}"
    if is_host_root():
        raise IsolationUnavailable(
            f"child_isolation=auto found no isolation ({problems}), and without one the children of a root "
            "gateway would run as the host's root: install the server where every user may run it, run the "
            "gateway as another user, or accept root children with child_isolation=none"
        )
    return _checked(request, Decision("none", problems))


def _refuse_if(asked: str, problem: str | None) -> None:
    if problem is not None:
        raise IsolationUnavailable(f"child_isolation={asked} is not possible: {problem}")


def _checked(request: IsolationRequest, decision: Decision) -> Decision:
    """`decision`, unless the network asked for needs namespaces it does not have."""
    if request.network == "none" and not decision.uses_namespaces:
        raise IsolationUnavailable(
            f"child_network=none needs namespaces, and children would run with {decision.mode} ({decision.reason})"
        )
    return decision


def shared_user_refusal(mode: IsolationMode, per_user: Sequence[str], accepted: bool) -> str | None:
    """Why the gateway must not start: children that are not isolated from each other while their
    environments hold their users' values (a token, an identity) can each read the others' (None:
    it may start)."""
    if mode != "none" or not per_user or accepted:
        return None
    return (
        f"children would not be isolated from each other while {', '.join(per_user)} puts each user's values "
        "in their environments, where every other child can read them (/proc/<pid>/environ): run with uid "
        "isolation (a root gateway and a server every user may run) or namespaces (bubblewrap), or accept the "
        "risk with allow_shared_uid_children=true"
    )


class UserPool:
    """Hands out the user IDs of a range, one per child, never one a live process still holds."""

    def __init__(self, first: int, last: int, lock_dir: Path) -> None:
        self._first, self._last = first, last
        self._lock_dir = lock_dir
        self._next = first + secrets.randbelow(last - first + 1)

    @classmethod
    def open(cls, first: int, last: int, lock_dir: Path = LOCK_DIR) -> UserPool:
        """A pool over `first`..`last`, its locks in `lock_dir` (made root's, mode 0700)."""
        lock_dir.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if _why_not_a_safe_parent(lock_dir.parent) is None:  # else made by no one: refused below
            with contextlib.suppress(FileExistsError):
                os.mkdir(lock_dir, 0o700)
        if (problem := _why_no_locks_in(lock_dir)) is not None:
            raise IsolationUnavailable(problem)
        return cls(first, last, lock_dir)

    async def acquire(self) -> tuple[int, int]:
        """A free user ID and the descriptor whose lock holds it; `NoFreeUser` when none is free.
        (The lock, not the scan of the process table, makes it this child's alone.)"""
        alive = await asyncio.to_thread(live_users, self._first, self._last)
        size = self._last - self._first + 1
        for step in range(size):
            uid = self._first + (self._next - self._first + step) % size
            if uid in alive:
                continue
            fd = os.open(self._lock_dir / str(uid), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    continue  # another child of this or another gateway has it
                raise
            self._next = uid + 1 if uid < self._last else self._first
            return uid, fd
        raise NoFreeUser(f"all {size} user IDs of the child range are in use")

    @staticmethod
    def release(fd: int) -> None:
        os.close(fd)


class Sandbox:
    """The isolation of this gateway's children: the mode, the user IDs, the private directories."""

    def __init__(
        self,
        decision: Decision,
        request: IsolationRequest,
        pool: UserPool | None = None,
        root: Path | None = None,
        watchdog: OrphanWatchdog | None = None,
    ) -> None:
        self.decision = decision
        self._request = request
        self._pool = pool
        self._root = root
        self._watchdog = watchdog

    @property
    def mode(self) -> IsolationMode:
        return self.decision.mode

    @classmethod
    async def open(
        cls, request: IsolationRequest, watchdog: OrphanWatchdog | None = None, decided: Decision | None = None
    ) -> Sandbox:
        """Decide the isolation (unless it is `decided` already) and prepare what it needs
        (`IsolationUnavailable` if it cannot be had). The orphan watchdog is told each child's
        user, so a gateway that dies takes every process of it along, not only its process group,
        and the directory of the private ones."""
        decision = decided if decided is not None else await decide(request)
        if decision.mode == "none":
            return cls(decision, request)
        if (problem := preparation_problem(decision)) is not None:
            raise IsolationUnavailable(problem)
        pool = UserPool.open(*request.uid_range) if decision.uses_uid else None
        root = Path(tempfile.mkdtemp(prefix="mcp-gateway-children-"))
        if decision.uses_uid:
            # Anyone may enter and create (each child makes its own directory once it runs as its
            # user), no one but the gateway may list; the sticky bit keeps each entry its owner's.
            os.chmod(root, 0o1733)  # noqa: S103 - world-writable by design: see the comment above
        if watchdog is not None:
            watchdog.register_directory(str(root))
        return cls(decision, request, pool, root, watchdog)

    async def new_cell(self, cwd: Path | None) -> Cell | None:
        """Where the next child runs, in `cwd` (default: its home); None without isolation.
        `NoFreeUser` when every user ID is taken."""
        if self._root is None:
            return None
        directory = self._root / secrets.token_hex(12)
        wrapper: tuple[str, ...] = ()
        if self.decision.bwrap is not None:
            workdir = cwd if cwd is not None else directory / "home"
            wrapper = namespace_wrapper(
                self.decision.bwrap,
                self._request,
                workdir,
                hide=self._root,
                cell=directory,
                as_other=self._pool is not None,
            )
        if self._pool is None:  # the gateway's own user: it makes the directories itself
            try:
                for made in (directory, directory / "home", directory / "tmp"):
                    os.mkdir(made, 0o700)
            except OSError:
                remove_tree(directory)
                raise
            return Cell(directory, wrapper=wrapper)
        uid, lock = await self._pool.acquire()
        if self._watchdog is not None:
            self._watchdog.register_user(uid)
        return Cell(directory, uid, uid, lock, wrapper)

    async def release(self, cell: Cell) -> None:
        """After its child's group is gone: end every process of its user, remove its directory,
        give the user ID back. A user whose processes outlive every sweep is kept (logged)."""
        if cell.uid is None:
            if not await asyncio.to_thread(remove_tree, cell.directory):
                log.error("a child's private directory could not be removed", extra={"path": str(cell.directory)})
            return
        try:
            for _ in range(RELEASE_ATTEMPTS):
                # Listed again each time: a process the previous sweep had not ended yet may have made more.
                left = await asyncio.to_thread(self._made_by, cell.uid)
                paths = [str(path) for path in dict.fromkeys([cell.directory, *left])]
                code, _ = await _run_helper([SHELL, "-c", _CLEANUP_SCRIPT, "cleanup", *paths], cell.uid)
                if (
                    code == 0
                    and not await asyncio.to_thread(live_users, cell.uid, cell.uid)
                    and not await asyncio.to_thread(self._made_by, cell.uid)
                ):
                    break
                await asyncio.sleep(RELEASE_RETRY_INTERVAL)
            else:
                log.error("what a child left outlived its cleanup; its user ID stays held", extra={"uid": cell.uid})
                return
        except (OSError, TimeoutError) as exc:
            log.error("cleanup after a child failed: %s; the user ID stays held", exc, extra={"uid": cell.uid})
            return
        if self._watchdog is not None:
            self._watchdog.unregister_user(cell.uid)
        if self._pool is not None and cell.lock is not None:
            self._pool.release(cell.lock)

    def _made_by(self, uid: int) -> list[Path]:
        """What `uid` made in the directory of the private ones, its own or not (which only the
        gateway may list)."""
        if self._root is None:
            return []
        made: list[Path] = []
        with os.scandir(self._root) as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                    if entry.stat(follow_symlinks=False).st_uid == uid:
                        made.append(Path(entry.path))
        return made

    def close(self) -> None:
        """Remove the (by now empty) root of the private directories."""
        if self._root is not None:
            with contextlib.suppress(OSError):
                os.rmdir(self._root)
            if self._root.exists():
                remove_tree(self._root)


def preparation_problem(decision: Decision, lock_dir: Path = LOCK_DIR) -> str | None:
    """Why the gateway cannot prepare what `decision` needs on this host: the directory of the
    children's private ones, and with user IDs the one of their locks (None: it can; checked
    without making anything)."""
    if decision.mode == "none":
        return None
    if (problem := _why_not_a_safe_parent(Path(tempfile.gettempdir()))) is not None:
        return f"the children's directories cannot be made: {problem}"
    if decision.uses_uid and lock_dir.parent.exists():
        return _why_no_locks_in(lock_dir)
    return None


def _why_no_locks_in(lock_dir: Path) -> str | None:
    """Why the user-ID locks may not be kept in `lock_dir`: it must be this user's alone, in a
    directory where no one else may swap it out."""
    if (problem := _why_not_a_safe_parent(lock_dir.parent)) is not None:
        return f"the user-ID locks cannot be kept: {problem}"
    if lock_dir.exists():
        info = os.lstat(lock_dir)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
            return f"{lock_dir} is not a private directory of this user (mode 0700)"
    return None


def _why_not_a_safe_parent(directory: Path) -> str | None:
    """Why the gateway may not keep what its children must not touch (their private directories,
    the user-ID locks) in `directory`: one that another user owns, or that others may write
    without the sticky bit, lets them rename the gateway's entries and put their own in their
    place (None: it may)."""
    info = os.stat(directory)
    if info.st_uid not in (0, os.geteuid()):
        return f"{directory} belongs to user {info.st_uid}, neither root nor the gateway's"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
        return f"{directory} is writable by other users without the sticky bit (chmod it 1777 or 0755)"
    return None
