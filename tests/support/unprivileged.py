"""A gateway run as an unprivileged user (`nobody`) from a test run as root: a real
`python -m gateway serve` process (or `check`) that holds no capability, as a gateway whose children
get `namespaces` alone must be (the host's root may not give its children that mode).

The virtualenv's interpreter lies under /root (mode 0700), which no other user may enter, so the
gateway starts in a mount namespace of its own (`unshare`) in which /root is a directory holding
only the interpreters (/root/.pyenv), then drops to `nobody` with no capability left and none to
gain (`setpriv`). Its working directory, HOME and TMPDIR are a directory of `nobody`'s outside
/tmp (each namespaced child has a /tmp of its own), so the directory of its children's private
ones is found there. `without_bubblewrap`: in that mount namespace bubblewrap is an empty file no
one may execute.

Whatever the test started is killed on the way out by pid, process group or PID namespace (held
open by a descriptor) — the gateway, each child's bubblewrap, every process of each child's PID
namespace, the orphan watchdog — never by user: other processes may run as `nobody`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import stat
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from tests.support.gateway_process import LOG_LINE_LIMIT, GatewayProcess
from tests.support.isolation import NO_BUBBLEWRAP, namespace_members
from tests.support.processes import descendants, drain_log, live_processes, startup_log
from tests.support.types import JsonObj
from tests.support.waits import WAIT

NOBODY: Final = 65534  # `nobody` and `nogroup` on Debian
PROJECT: Final = Path(__file__).resolve().parents[2]
GATEWAY_PYTHON: Final = PROJECT / ".venv" / "bin" / "python"
PYENV: Final = Path("/root/.pyenv")  # where the virtualenv's interpreter is installed
OUTSIDE: Final = Path("/var/tmp")  # noqa: S108 - a directory of nobody's is made inside, not in each child's /tmp
UNSHARE, SETPRIV = shutil.which("unshare"), shutil.which("setpriv")
# In the gateway's mount namespace: /root becomes $0, a directory others may enter holding only the
# interpreters ($1), then the rest of the command line runs.
ENTER: Final = 'mkdir "$0/.pyenv" && mount --bind "$1" "$0/.pyenv" && mount --rbind "$0" /root && shift && exec "$@"'
# As nobody, with no capability and none to gain.
AS_NOBODY: Final = (
    f"--reuid={NOBODY}",
    f"--regid={NOBODY}",
    "--clear-groups",
    "--inh-caps=-all",
    "--bounding-set=-all",
)


def _why_not() -> str | None:
    """Why an unprivileged gateway cannot be started here, or None."""
    if os.geteuid() != 0:
        return "starting a gateway as another user needs root"
    if UNSHARE is None or SETPRIV is None:
        return "unshare and setpriv (util-linux) are needed"
    if not GATEWAY_PYTHON.exists():
        return f"{GATEWAY_PYTHON} is missing"
    interpreter = GATEWAY_PYTHON.resolve()
    # /root itself is replaced in the gateway's view; the rest of the way must be open to others.
    if not others_may_reach(interpreter, PYENV if interpreter.is_relative_to(PYENV) else Path("/"), stat.S_IXOTH):
        return f"{interpreter} is not runnable by every user, even with {PYENV} reachable"
    if not others_may_reach(PROJECT / "gateway" / "__init__.py"):
        return f"{PROJECT} is not readable by every user"
    return None


def others_may_reach(path: Path, below: Path = Path("/"), need: int = stat.S_IROTH) -> bool:
    """Whether every user may enter each directory from `below` down to `path`, and `need` it
    (read it, by default)."""
    directories = [part for part in path.parents if part.is_relative_to(below)]
    return all(part.stat().st_mode & stat.S_IXOTH for part in directories) and bool(path.stat().st_mode & need)


WHY_NOT: Final = _why_not()


def start_time(pid: int) -> str | None:
    """When `pid` started, in clock ticks since boot (None: gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()[19]


@dataclass
class Started:
    """What the test started and must end: process groups, single processes, PID namespaces (held
    open by a descriptor, so their inode numbers name no other namespace meanwhile)."""

    groups: set[int] = field(default_factory=set)
    pids: dict[int, str] = field(default_factory=dict)  # pid → its start time: a reused pid is not ours
    namespaces: dict[str, int] = field(default_factory=dict)  # /proc/<pid>/ns/pid's link → descriptor

    def add(self, pids: set[int]) -> None:
        for pid in pids:
            if (started := start_time(pid)) is not None:
                self.pids.setdefault(pid, started)

    def hold_namespace(self, pid_ns: str, pid: int) -> None:
        if pid_ns not in self.namespaces:
            self.namespaces[pid_ns] = os.open(f"/proc/{pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)

    def alive(self) -> set[int]:
        """Every live process the test started, however it was found."""
        found = {
            pid
            for pid, _, pgid in live_processes()
            if pgid in self.groups or (pid in self.pids and start_time(pid) == self.pids[pid])
        }
        for pid_ns in self.namespaces:
            found |= set(namespace_members(pid_ns))
        return found

    def end(self) -> None:
        for pgid in self.groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        for pid in self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for descriptor in self.namespaces.values():
            os.close(descriptor)
        self.namespaces.clear()


class UnprivilegedGateway(GatewayProcess):
    """A gateway process run as `nobody`: its URL, its log, its working directory, and what the
    test started through it."""

    def __init__(self, process: asyncio.subprocess.Process, url: str, workdir: Path, started: Started) -> None:
        super().__init__(process, url)
        self.workdir = workdir
        self.started = started

    @property
    def health_url(self) -> str:
        return self.url.rsplit("/", 1)[0] + "/health"

    def children(self) -> set[int]:
        """The gateway's live descendants (each child's bubblewrap leads a group of its own),
        recorded to be ended on the way out."""
        found = descendants(self.process.pid)
        self.started.add(found)
        return found

    def cells_roots(self) -> list[Path]:
        """The directories of the children's private ones: the gateway's TMPDIR holds them."""
        return sorted(self.workdir.glob("mcp-gateway-children-*"))


def _environment(workdir: Path, settings: Mapping[str, str]) -> dict[str, str]:
    """The gateway's whole environment: nothing of the test's own, `settings` (names without the
    MCP_GATEWAY_ prefix) over a loopback listener on a free port and a JSON log."""
    env = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "PYTHONPATH": str(PROJECT),
        "MCP_GATEWAY_HOST": "127.0.0.1",
        "MCP_GATEWAY_PORT": "0",
        "MCP_GATEWAY_LOG_FORMAT": "json",
        "MCP_GATEWAY_AUDIT_LOG": "off",
    }
    return env | {f"MCP_GATEWAY_{name.upper()}": value for name, value in settings.items()}


@contextlib.contextmanager
def _directories() -> Iterator[tuple[Path, Path, Path]]:
    """The gateway's working directory (nobody's, outside /tmp), the directory that becomes /root
    in its mount namespace (root's, mode 0711) and an empty file (root's, mode 0600) to put over
    bubblewrap; all removed on the way out."""
    workdir = Path(tempfile.mkdtemp(prefix="isolation-nobody-", dir=OUTSIDE))
    new_root = Path(tempfile.mkdtemp(prefix="isolation-root-"))
    try:
        os.chown(workdir, NOBODY, NOBODY)
        new_root.chmod(0o711)
        with tempfile.NamedTemporaryFile(prefix="no-bwrap-") as empty:
            os.chmod(empty.name, 0o600)
            yield workdir, new_root, Path(empty.name)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(new_root, ignore_errors=True)


# Makes what the gateway is to find in its working directory (files of nobody's) before it starts,
# and returns the settings that name them.
Prepare = Callable[[Path], Mapping[str, str]]


@contextlib.asynccontextmanager
async def _started(
    settings: Mapping[str, str], argv: Sequence[str], without_bubblewrap: bool, prepare: Prepare | None
) -> AsyncIterator[tuple[asyncio.subprocess.Process, Path, Started]]:
    """`python -m gateway <argv>` as nobody, its stderr a pipe; on the way out everything the test
    started is killed and the directories removed."""
    assert UNSHARE is not None
    assert SETPRIV is not None
    started = Started()
    with _directories() as (workdir, new_root, empty):
        if prepare is not None:
            settings = {**settings, **prepare(workdir)}
        command = [UNSHARE, "--mount", "--propagation", "private", "/bin/sh", "-c", ENTER, str(new_root), str(PYENV)]
        if without_bubblewrap:  # still root in there, and able to mount
            command += ["/bin/sh", "-c", NO_BUBBLEWRAP, str(empty)]
        command += [SETPRIV, *AS_NOBODY, "--", str(GATEWAY_PYTHON), "-m", "gateway", *argv]
        process = await asyncio.create_subprocess_exec(
            *command,
            cwd=workdir,
            env=_environment(workdir, settings),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            limit=LOG_LINE_LIMIT,
            start_new_session=True,  # every exec keeps this pid: the gateway leads its own group
        )
        started.groups.add(process.pid)
        try:
            yield process, workdir, started
        finally:
            started.add(descendants(process.pid))  # its children lead groups of their own
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)  # the graceful way: it stops its children
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WAIT):
                    await process.wait()
            started.end()
            async with asyncio.timeout(WAIT):
                await process.wait()


@contextlib.asynccontextmanager
async def unprivileged_gateway(
    settings: Mapping[str, str], prepare: Prepare | None = None, flags: Sequence[str] = ()
) -> AsyncIterator[UnprivilegedGateway]:
    """`mcp-gateway serve` as nobody with `settings` (names without the MCP_GATEWAY_ prefix, those
    `prepare` returns over them) and `flags` after `serve`, once it serves; on the way out
    everything it started is killed and its directories removed, however the test went."""
    drain: asyncio.Task[None] | None = None
    try:
        async with _started(settings, ["serve", *flags], False, prepare) as (process, workdir, started):
            assert process.stderr is not None
            startup = await startup_log(process.stderr)
            gateway = UnprivilegedGateway(process, startup[-1]["url"], workdir, started)
            gateway.log.extend(startup)
            drain = asyncio.get_running_loop().create_task(drain_log(process.stderr, gateway.log))
            yield gateway
    finally:
        if drain is not None:  # the gateway has ended: its stderr is at its end
            async with asyncio.timeout(WAIT):
                await drain


async def run_unprivileged(
    settings: Mapping[str, str], *argv: str, without_bubblewrap: bool = False
) -> tuple[int, list[JsonObj]]:
    """`python -m gateway <argv>` as nobody, to its end: its exit status and the JSON records (or,
    for `check`, the lines) of its stderr."""
    async with _started(settings, argv, without_bubblewrap, None) as (process, _, _):
        async with asyncio.timeout(WAIT):
            _, stderr = await process.communicate()
    said: list[JsonObj] = []
    for line in stderr.decode().splitlines():
        try:
            said.append(json.loads(line))
        except ValueError:
            said.append({"msg": line})
    assert process.returncode is not None
    return process.returncode, said
