"""The pieces of child isolation that need no second user: the user-ID pool's locks, and which
interpreter a script names."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from gateway.sessions.sandbox import NoFreeUser, UserPool, interpreter_of


def test_two_pools_never_hold_the_same_user_id(tmp_path: Path) -> None:
    """The lock alone keeps them apart (no process of the user runs: the scan finds nothing)."""
    locks = tmp_path / "uids"
    first, second = (
        UserPool.open(1_000_900_000, 1_000_900_000, locks),
        UserPool.open(1_000_900_000, 1_000_900_000, locks),
    )
    uid, fd = first.acquire()
    with pytest.raises(NoFreeUser):
        second.acquire()
    UserPool.release(fd)
    assert second.acquire()[0] == uid


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
