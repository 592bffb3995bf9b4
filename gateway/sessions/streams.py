"""Message streams between a session's router and its HTTP responses.

A `Stream` is one logical SSE stream: the session's standalone GET stream, or the stream of one
POST exchange. The router pushes encoded JSON-RPC messages into it; at most one HTTP response
(the consumer) takes them out. Every message gets a sequence number, and the event id
`"<stream>.<seq>"` names both the stream and the position, so a GET carrying `Last-Event-ID`
can resume exactly that stream and no other.

Memory is bounded on both sides of the consumer:
- undelivered messages: while a consumer is attached, too many queued bytes mark the stream
  congested and the router stops reading the child (backpressure); with no consumer attached,
  the oldest non-final messages are dropped beyond the backlog cap;
- delivered messages are kept for replay only up to a small window.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Final

log = logging.getLogger("gateway.streams")

# Undelivered bytes above which an attached consumer is "slow" and the child is paused, and
# below which reading resumes.
CONGESTED_BYTES: Final = 8 * 1024 * 1024
DECONGESTED_BYTES: Final = 1024 * 1024
# With no consumer attached, at most this much is held for the next one.
BACKLOG_MESSAGES: Final = 512
BACKLOG_BYTES: Final = 8 * 1024 * 1024
# Delivered messages kept so a reconnecting consumer can replay what it may have missed.
REPLAY_MESSAGES: Final = 64
REPLAY_BYTES: Final = 1024 * 1024

Entry = tuple[int, bytes, bool]  # (sequence number, encoded message, is a response)


class Stream:
    """One ordered, resumable sequence of messages with at most one consumer at a time."""

    __slots__ = (
        "_congestion",
        "_delivered",
        "_delivered_bytes",
        "_queue",
        "_queued_bytes",
        "_waiter",
        "attached",
        "congested",
        "consumer",
        "dropped",
        "evicted_upto",
        "finished",
        "id",
        "next_seq",
        "only_responses",
        "round_over",
    )

    def __init__(self, stream_id: int, congestion: Callable[[Stream, bool], None]) -> None:
        self.id = stream_id
        self._congestion = congestion
        self._queue: deque[Entry] = deque()
        self._queued_bytes = 0
        self._delivered: deque[Entry] = deque()
        self._delivered_bytes = 0
        self._waiter: asyncio.Future[None] | None = None
        self.next_seq = 1
        self.attached = False
        self.consumer = 0  # generation of the current consumer; a newer one takes over
        self.congested = False
        self.finished = False  # no more messages will be pushed
        self.only_responses = True  # every message so far is a response (JSON body possible)
        # The current consumer's part is over though the stream is not: a 2026-07-28 call whose
        # HTTP request was answered with a request for input, and whose retry takes over the rest.
        self.round_over = False
        self.dropped = 0
        self.evicted_upto = 0  # highest sequence number no longer held anywhere

    def event_id(self, seq: int) -> str:
        return f"{self.id}.{seq}"

    @property
    def answered(self) -> bool:
        """Nothing more comes for the current consumer: the stream finished, or its round is over."""
        return self.finished or self.round_over

    @property
    def has_pending(self) -> bool:
        return bool(self._queue)

    def push(self, payload: bytes, *, response: bool = False, final: bool = False) -> None:
        """Append one message; `final` marks the last message this stream will ever carry."""
        self._queue.append((self.next_seq, payload, response))
        self.next_seq += 1
        self._queued_bytes += len(payload)
        if not response:
            self.only_responses = False
        if final:
            self.finished = True
        if self.attached:
            if not self.congested and self._queued_bytes > CONGESTED_BYTES:
                self.congested = True
                self._congestion(self, True)
        elif len(self._queue) > BACKLOG_MESSAGES or self._queued_bytes > BACKLOG_BYTES:
            self._trim_backlog()
        self._wake()

    def finish(self) -> None:
        """No more messages: the consumer ends after draining what is queued."""
        self.finished = True
        self._wake()

    def take(self) -> list[Entry]:
        """Everything queued, in order; it moves to the replay window."""
        entries = list(self._queue)
        self._queue.clear()
        self._queued_bytes = 0
        for entry in entries:
            self._delivered.append(entry)
            self._delivered_bytes += len(entry[1])
        while self._delivered and (len(self._delivered) > REPLAY_MESSAGES or self._delivered_bytes > REPLAY_BYTES):
            seq, payload, _ = self._delivered.popleft()
            self._delivered_bytes -= len(payload)
            self.evicted_upto = seq
        if self.congested:
            self.congested = False
            self._congestion(self, False)
        return entries

    def rewind(self, after_seq: int) -> bool:
        """Queue again the delivered messages after `after_seq` (a consumer's Last-Event-ID).

        Returns False when some message after `after_seq` is no longer held: the replay would
        have a gap.
        """
        complete = self.evicted_upto <= after_seq
        replay = [entry for entry in self._delivered if entry[0] > after_seq]
        if not replay:
            return complete
        keep = [entry for entry in self._delivered if entry[0] <= after_seq]
        self._delivered = deque(keep)
        self._delivered_bytes = sum(len(entry[1]) for entry in keep)
        self._queue.extendleft(reversed(replay))
        self._queued_bytes += sum(len(entry[1]) for entry in replay)
        return complete

    def attach(self) -> int:
        """Become this stream's consumer, displacing any earlier one; returns the consumer token."""
        self.consumer += 1
        self.attached = True
        self._wake()
        return self.consumer

    def detach(self) -> None:
        """The consumer went away; its queue becomes a bounded backlog."""
        self.attached = False
        if self.congested:
            self.congested = False
            self._congestion(self, False)
        if len(self._queue) > BACKLOG_MESSAGES or self._queued_bytes > BACKLOG_BYTES:
            self._trim_backlog()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, timeout: float, *, after: int | None = None) -> None:  # noqa: ASYNC109 - a tick, not an error
        """Return when the stream finishes, `timeout` seconds pass, or a message is queued
        (with `after`: a message numbered above `after` has been pushed)."""
        if self.finished or (self.next_seq - 1 > after if after is not None else self._queue):
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        handle = loop.call_later(timeout, _resolve, waiter)
        try:
            await waiter
        finally:
            handle.cancel()
            if self._waiter is waiter:  # a newer consumer may be waiting by now
                self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _trim_backlog(self) -> None:
        # Drop the oldest messages that are not responses: a response is what a client waits
        # for, and losing one would hang its request until the timeout.
        count = len(self._queue)
        kept: deque[Entry] = deque()
        for entry in self._queue:
            if (count > BACKLOG_MESSAGES or self._queued_bytes > BACKLOG_BYTES) and not entry[2]:
                count -= 1
                self._queued_bytes -= len(entry[1])
                self.dropped += 1
                self.evicted_upto = max(self.evicted_upto, entry[0])
            else:
                kept.append(entry)
        self._queue = kept
        if self.dropped and self.dropped & (self.dropped - 1) == 0:  # 1, 2, 4, 8…: never a flood
            log.warning("stream %d: %d messages dropped (no reader kept up; backlog full)", self.id, self.dropped)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
