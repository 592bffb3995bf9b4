"""The pieces of child isolation that need no second user: the user-ID pool's locks, which
interpreter a script names, and why capabilities without root are refused."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Final

import pytest

from gateway.sessions.sandbox import (
    Decision,
    IsolationUnavailable,
    NoFreeUser,
    UserPool,
    interpreter_of,
    live_users,
    preparation_problem,
)


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


@pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None, reason="needs root and setpriv to start a process of another user"
)
def test_a_non_dumpable_process_still_counts_as_its_users() -> None:
    """/proc/<pid> of a process that made itself non-dumpable belongs to root; its status does not lie."""
    uid = 1_000_900_100
    program = "import ctypes, time; ctypes.CDLL(None).prctl(4, 0, 0, 0, 0); print(flush=True); time.sleep(60)"
    assert SETPRIV is not None
    argv = [SETPRIV, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", str(SYSTEM_PYTHON), "-c", program]
    hidden = subprocess.Popen(argv, stdout=subprocess.PIPE, cwd="/")
    try:
        assert hidden.stdout is not None
        hidden.stdout.readline()  # non-dumpable from here on
        assert os.stat(f"/proc/{hidden.pid}/status").st_uid == 0  # its /proc files are root's now
        assert live_users(uid, uid) == {uid}
    finally:
        hidden.kill()
        hidden.wait()
        if hidden.stdout is not None:
            hidden.stdout.close()
    assert live_users(uid, uid) == set()


@pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None or not SYSTEM_PYTHON.exists(),
    reason="needs root and setpriv to remove a tree as a user without the power to ignore modes",
)
def test_removing_a_tree_never_changes_what_a_link_in_it_points_to() -> None:
    """A child's read-only directory holding a link to a file of the gateway's: the directory goes,
    the file keeps its mode (removed as its owner, an unprivileged user, like a child's cell)."""
    place = Path(tempfile.mkdtemp(prefix="remove-tree-", dir="/var/tmp"))
    try:
        target, sealed = place / "key.pem", place / "cell" / "sealed"
        target.write_text("the gateway's")
        target.chmod(0o400)
        sealed.mkdir(parents=True)
        (sealed / "link").symlink_to(target)
        for path in (place, place / "cell", sealed, sealed / "link", target):
            os.chown(path, 65534, 65534, follow_symlinks=False)
        sealed.chmod(0o500)  # unlinking the link fails until the directory is writable again
        program = (
            "import sys; sys.path.insert(0, sys.argv[1]); "
            "from gateway.sessions.watchdog import remove_tree; remove_tree(sys.argv[2])"
        )
        assert SETPRIV is not None
        argv = [
            SETPRIV,
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            str(SYSTEM_PYTHON),
            "-I",
            "-c",
            program,
        ]
        done = subprocess.run(
            [*argv, str(REPO), str(place / "cell")], capture_output=True, text=True, timeout=30, check=False, cwd="/"
        )
        assert done.returncode == 0, done.stderr
        assert not (place / "cell").exists()
        assert stat.S_IMODE(target.stat().st_mode) == 0o400
    finally:
        shutil.rmtree(place)


def test_the_locks_are_refused_in_a_directory_anyone_may_swap(tmp_path: Path) -> None:
    """A lock directory whose parent every user may write without the sticky bit (an emptyDir)."""
    parent = tmp_path / "run"
    parent.mkdir()
    parent.chmod(0o777)
    decision = Decision("uid", "configured")
    assert "writable by other users without the sticky bit" in str(preparation_problem(decision, parent / "uids"))
    with pytest.raises(IsolationUnavailable, match="the user-ID locks cannot be kept"):
        UserPool.open(1_000_900_000, 1_000_900_001, parent / "uids")
    parent.chmod(0o1777)
    assert preparation_problem(decision, parent / "uids") is None


def test_the_childrens_directories_are_refused_in_a_temporary_directory_anyone_may_swap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loose = tmp_path / "tmp"
    loose.mkdir()
    loose.chmod(0o777)
    monkeypatch.setattr(tempfile, "tempdir", str(loose))
    problem = preparation_problem(Decision("namespaces", "configured"))
    assert problem is not None
    assert problem.startswith("the children's directories cannot be made")
    assert preparation_problem(Decision("none", "configured")) is None
