"""What the isolation tests read off the host about the children's users."""

from __future__ import annotations

import fcntl
import os

from gateway.sessions.sandbox import LOCK_DIR


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
