"""Process-group liveness ignores zombies: a dead orphan nobody has reaped is not alive."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.sessions.watchdog import group_alive

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
