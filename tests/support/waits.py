"""The one bound on a test's waits, and polling for a condition within it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final

WAIT: Final = 15.0
"""Upper bound for any single wait in a test; a real failure shows up as this timeout."""

POLL: Final = 0.02
"""Seconds between two looks at a condition being waited for."""


async def eventually(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll `predicate` until true or `timeout`; returns its last value (no timing is asserted)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(POLL)
    return True
