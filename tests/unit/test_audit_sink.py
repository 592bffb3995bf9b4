"""Where audit lines go: batched per event-loop turn, written at once without a loop, the file
reopened after logrotate moves or deletes it, and a failing write logged without raising."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from pathlib import Path

import pytest

from gateway.observe.audit import Audit, LineSink


class CountingStream(io.StringIO):
    """A text stream that counts the writes reaching it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


async def test_lines_of_one_loop_turn_leave_in_one_write() -> None:
    stream = CountingStream()
    sink = LineSink(stream=stream)
    for number in range(5):
        sink.write(f'{{"n":{number}}}')
    assert stream.getvalue() == ""  # nothing written before the turn ends

    await asyncio.sleep(0)

    assert stream.writes == 1
    assert [json.loads(line)["n"] for line in stream.getvalue().splitlines()] == [0, 1, 2, 3, 4]
    sink.write('{"n":5}')
    await asyncio.sleep(0)
    assert stream.writes == 2


def test_without_a_running_loop_a_line_is_written_at_once() -> None:
    stream = CountingStream()
    LineSink(stream=stream).write("startup")
    assert stream.getvalue() == "startup\n"


async def test_close_writes_what_is_pending(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = LineSink(path=path)
    sink.write("last words")
    sink.close()
    assert path.read_text() == "last words\n"
    await asyncio.sleep(0)  # the flush scheduled before the close finds nothing left to write
    assert path.read_text() == "last words\n"


@pytest.mark.parametrize("rotate", ["rename", "delete"])
async def test_the_file_is_reopened_after_rotation(tmp_path: Path, rotate: str) -> None:
    path = tmp_path / "audit.jsonl"
    audit = Audit.to(str(path))
    audit.record("child.violation", kind="not_json", count=1)
    await asyncio.sleep(0)
    if rotate == "rename":
        path.rename(tmp_path / "audit.jsonl.1")
    else:
        path.unlink()

    audit.record("child.violation", kind="not_json", count=2)
    await asyncio.sleep(0)
    audit.close()

    assert [json.loads(line)["count"] for line in path.read_text().splitlines()] == [2]
    if rotate == "rename":
        rotated = (tmp_path / "audit.jsonl.1").read_text().splitlines()
        assert [json.loads(line)["count"] for line in rotated] == [1]


async def test_a_failing_write_is_logged_and_the_next_batch_still_goes(caplog: pytest.LogCaptureFixture) -> None:
    class Flaky(CountingStream):
        def write(self, text: str) -> int:
            if self.writes == 0:
                self.writes += 1
                raise OSError(28, "No space left on device")
            return super().write(text)

    stream = Flaky()
    sink = LineSink(stream=stream)
    with caplog.at_level(logging.ERROR, logger="gateway.audit"):
        sink.write("lost")
        await asyncio.sleep(0)
    assert "cannot write 1 audit lines" in caplog.text

    sink.write("kept")
    await asyncio.sleep(0)
    assert stream.getvalue() == "kept\n"
