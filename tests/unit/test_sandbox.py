"""The pieces of child isolation that need no second user: the user-ID pool's locks, which
interpreter a script names, and why capabilities without root are refused."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Final

import pytest

from gateway.sessions.sandbox import NoFreeUser, UserPool, interpreter_of


async def test_two_pools_never_hold_the_same_user_id(tmp_path: Path) -> None:
    """The lock alone keeps them apart (no process of the user runs: the scan finds nothing)."""
    locks = tmp_path / "uids"
    first, second = (
        UserPool.open(1_000_900_000, 1_000_900_000, locks),
        UserPool.open(1_000_900_000, 1_000_900_000, locks),
    )
    uid, fd = await first.acquire()
    with pytest.raises(NoFreeUser):
        await second.acquire()
    UserPool.release(fd)
    assert (await second.acquire())[0] == uid


def test_a_lock_directory_others_may_enter_is_refused(tmp_path: Path) -> None:
    from gateway.sessions.sandbox import IsolationUnavailable

    locks = tmp_path / "uids"
    locks.mkdir(mode=0o755)
    os.chmod(locks, 0o755)  # noqa: S103 - the permissive mode is what is refused
    with pytest.raises(IsolationUnavailable, match="private directory"):
        UserPool.open(1_000_900_000, 1_000_900_001, locks)


@pytest.mark.parametrize(
    ("first_line", "expected"),
    [
        ("#!/bin/sh", "/bin/sh"),
        ("#! /usr/bin/python3 -I", "/usr/bin/python3"),
        ("#!/usr/bin/env sh", shutil.which("sh", path="/usr/bin:/bin")),
        ("#!/usr/bin/env -S sh -e", shutil.which("sh", path="/usr/bin:/bin")),
        ("#!/usr/bin/env no-such-interpreter", None),
        ("print('a binary, or a script without #!')", None),
    ],
    ids=["absolute", "absolute-with-flags", "env", "env-with-flags", "env-not-found", "none"],
)
def test_the_interpreter_a_script_names(tmp_path: Path, first_line: str, expected: str | None) -> None:
    script = tmp_path / "server"
    script.write_text(first_line + "\n")
    assert interpreter_of(str(script), "/usr/bin:/bin") == expected


SETPRIV: Final = shutil.which("setpriv")
SYSTEM_PYTHON: Final = Path("/usr/bin/python3")  # one every user may run (the venv's may be under /root)
REPO: Final = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None or not SYSTEM_PYTHON.exists(),
    reason="needs root, setpriv and /usr/bin/python3 to start a non-root process holding capabilities",
)
def test_capabilities_without_root_are_not_enough_for_uid_isolation() -> None:
    """A non-root gateway with CAP_SETUID, CAP_SETGID and CAP_KILL (ambient, so they would survive
    the change of user) is refused: its children and cleanups would keep them."""
    program = (
        "import asyncio, sys; sys.path.insert(0, sys.argv[1]); "
        "from gateway.sessions.sandbox import IsolationRequest, IsolationUnavailable, decide, "
        "effective_capabilities, why_no_user_switching\n"
        "print(hex(effective_capabilities())); print(why_no_user_switching())\n"
        "try: asyncio.run(decide(IsolationRequest('uid', None, (1000900000, 1000900009))))\n"
        "except IsolationUnavailable as error: print(error)\n"
    )
    caps = "+setuid,+setgid,+kill"
    assert SETPRIV is not None
    argv = [SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups", f"--inh-caps={caps}"]
    argv += [f"--ambient-caps={caps}", "--", str(SYSTEM_PYTHON), "-I", "-c", program, str(REPO)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd="/", check=False)
    assert done.returncode == 0, done.stderr
    held, why, refusal = done.stdout.splitlines()
    assert int(held, 16) & 0xE0 == 0xE0  # CAP_KILL, CAP_SETGID, CAP_SETUID, in its effective set
    assert why == "the gateway does not run as root"
    assert refusal == "child_isolation=uid is not possible: the gateway does not run as root"
