"""Process-group liveness ignores zombies: a dead orphan nobody has reaped is not alive. And the
watchdog never sweeps a user that another gateway holds."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.sessions import watchdog
from gateway.sessions.watchdog import LOCK_DIR, group_alive

POLL = 0.01
LIMIT = 10.0


def _state(pid: int) -> str:
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    return raw[raw.rindex(b")") + 2 :].split()[0].decode()


def test_a_group_of_only_zombies_is_not_alive() -> None:
    # This test process is the parent and deliberately does not reap: the child stays a zombie.
    child = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    deadline = time.monotonic() + LIMIT
    while _state(child.pid) != "Z":
        assert time.monotonic() < deadline, "the child never exited"
        time.sleep(POLL)
    try:
        os.killpg(child.pid, 0)  # the kernel still counts the zombie as a group member
        assert not group_alive(child.pid)
    finally:
        child.wait()
    assert not group_alive(child.pid)


def test_a_group_with_a_live_member_is_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        assert group_alive(child.pid)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()


SETPRIV = shutil.which("setpriv")
WATCHDOG = Path(watchdog.__file__)


def _watch_once(uid: int) -> None:
    """A watchdog told of `uid`, then of its gateway's end (end of file): it does what it does."""
    process = subprocess.run(
        [sys.executable, "-I", "-S", str(WATCHDOG)], input=b"+u%d\n" % uid, timeout=30, check=True, cwd="/"
    )
    assert process.returncode == 0


@pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None, reason="needs root and setpriv to run a process as another user"
)
def test_the_watchdog_leaves_a_user_another_gateway_has_taken_since() -> None:
    """Once its gateway is gone the kernel lets that gateway's user-ID locks go, and another
    gateway may hand the user to a new child before the watchdog sweeps: the watchdog takes the
    lock first, and leaves the user alone when it cannot."""
    uid = 1_000_900_200
    LOCK_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = os.open(LOCK_DIR / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    assert SETPRIV is not None
    argv = [SETPRIV, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", "/bin/sleep", "60"]
    sleeper = subprocess.Popen(argv, cwd="/")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # "another gateway" holds the user now
        _watch_once(uid)
        assert sleeper.poll() is None, "the watchdog killed a user another gateway holds"
        fcntl.flock(lock, fcntl.LOCK_UN)
        _watch_once(uid)
        assert sleeper.wait(timeout=10) == -signal.SIGKILL
    finally:
        os.close(lock)
        if sleeper.poll() is None:
            sleeper.kill()
        sleeper.wait()
