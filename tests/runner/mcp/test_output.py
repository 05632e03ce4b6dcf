"""Paging a task's output for a model: bounded pages, exact continuation, whole transcript lines."""

from __future__ import annotations

import fakeredis
import orjson
import pytest

from runner import keys
from runner.agents import get_agent
from runner.agents.base import Transcript
from runner.errors import BadCursor
from runner.mcp.output import MIN_PAGE_BYTES, read_page
from runner.vocabulary import AttemptKind, EventType

TASK = "t-1"
CLAUDE = get_agent("claude").transcript()
"""A Claude task's transcript: pages render its stream-json lines (only its ``render`` is used: no state)."""


def _log(client: fakeredis.FakeRedis, *items: dict) -> None:
    for item in items:
        client.xadd(keys.log_key(TASK), {"e": orjson.dumps(item)})


def _out(data: str, stream: str = "stdout") -> dict:
    return {"type": EventType.OUTPUT, "task_id": TASK, "stream": stream, "data": data, "seq": 0}


def _read_all(
    client: fakeredis.FakeRedis, max_bytes: int, transcript: Transcript | None, ended: bool = True
) -> list[str]:
    pages, cursor = [], "0"
    for _ in range(10_000):
        page = read_page(client, TASK, cursor, max_bytes, transcript=transcript, ended=ended)
        assert len(page.text.encode()) <= max(max_bytes, MIN_PAGE_BYTES)
        pages.append(page.text)
        cursor = page.next_seq
        if not page.more:
            return pages
    raise AssertionError("paging never ended")


def test_raw_pages_are_bounded_and_join_to_the_whole_output_exactly() -> None:
    client = fakeredis.FakeRedis()
    chunks = [f"line {i} " + "é" * (i % 7) + "\n" for i in range(3000)]
    _log(
        client,
        {"type": EventType.STARTED, "task_id": TASK},
        *(_out("".join(chunks[i : i + 37])) for i in range(0, 3000, 37)),
    )
    pages = _read_all(client, 1000, transcript=None)
    assert "".join(pages) == "".join(chunks)
    assert len(pages) > 40  # about 35 KB in pages of at most 1000 bytes


def test_the_cursor_goes_on_where_a_live_task_left_off() -> None:
    client = fakeredis.FakeRedis()
    _log(client, _out("first\n"))
    page = read_page(client, TASK, "0", 8000, transcript=None, ended=False)
    assert (page.text, page.more) == ("first\n", False)
    _log(client, _out("second\n"))
    again = read_page(client, TASK, page.next_seq, 8000, transcript=None, ended=False)
    assert again.text == "second\n"
    assert read_page(client, TASK, again.next_seq, 8000, transcript=None, ended=False).text == ""


def _claude_line(text: str) -> str:
    message = {"type": "assistant", "message": {"content": [{"type": "text", "text": text}]}}
    return orjson.dumps(message).decode() + "\n"


def test_transcript_lines_split_across_entries_are_rendered_once_whole() -> None:
    client = fakeredis.FakeRedis()
    lines = "".join(_claude_line(f"answer number {i}") for i in range(50))
    pieces = [lines[i : i + 97] for i in range(0, len(lines), 97)]  # every line is cut somewhere
    _log(client, *(_out(piece) for piece in pieces))
    text = "".join(_read_all(client, 300, transcript=CLAUDE))
    shown = [line for line in text.splitlines() if "answer number" in line]
    assert len(shown) == 50
    assert all(f"answer number {i}" in shown[i] for i in range(50))
    assert "{" not in text  # rendered, never raw JSON


def test_a_live_transcript_waits_for_the_end_of_a_line() -> None:
    client = fakeredis.FakeRedis()
    line = _claude_line("hello there")
    _log(client, _out(line[:20]))
    page = read_page(client, TASK, "0", 8000, transcript=CLAUDE, ended=False)
    assert page.text == ""
    _log(client, _out(line[20:]))
    page = read_page(client, TASK, page.next_seq, 8000, transcript=CLAUDE, ended=False)
    assert "hello there" in page.text
    assert read_page(client, TASK, page.next_seq, 8000, transcript=CLAUDE, ended=False).text == ""


def test_a_huge_line_is_cut_to_the_page_and_paging_moves_on() -> None:
    client = fakeredis.FakeRedis()
    _log(client, _out("x" * 100_000 + "\n"), _out("after\n"))
    mark = " … [cut]\n"
    assert _read_all(client, 500, transcript=CLAUDE) == ["x" * (500 - len(mark.encode())) + mark, "after\n"]


def test_interruptions_are_noted_in_the_text() -> None:
    client = fakeredis.FakeRedis()
    _log(
        client,
        _out("one\n"),
        {"type": AttemptKind.INTERRUPTED, "task_id": TASK, "attempt": 1, "error": "The handler stopped."},
        _out("two\n"),
    )
    text = "".join(_read_all(client, 8000, transcript=None))
    assert text == "one\n[attempt 1 interrupted: The handler stopped. It runs again.]\ntwo\n"


@pytest.mark.parametrize("cursor", ["", "12", "abc/1", "1-2", "1-2/x", "1-2/-1"])
def test_a_cursor_not_handed_out_is_refused_with_a_sentence(cursor: str) -> None:
    with pytest.raises(BadCursor, match="pass '0' for the start"):
        read_page(fakeredis.FakeRedis(), TASK, cursor, 8000, transcript=None, ended=True)


def test_a_long_line_after_a_cursor_inside_the_log_is_cut_and_paging_moves_on() -> None:
    client = fakeredis.FakeRedis()
    _log(client, {"type": EventType.STARTED, "task_id": TASK}, _out(_claude_line("short")))
    first = read_page(client, TASK, "0", 8000, transcript=CLAUDE, ended=False)
    assert "short" in first.text and not first.more
    long_line = _claude_line("L" * 9000)
    _log(client, _out(long_line[:5000]), _out(long_line[5000:]))
    page = read_page(client, TASK, first.next_seq, 8000, transcript=CLAUDE, ended=False)
    assert page.text.endswith(" … [cut]\n") and len(page.text.encode()) <= 8000
    assert page.next_seq != first.next_seq
    assert read_page(client, TASK, page.next_seq, 8000, transcript=CLAUDE, ended=False).text == ""


def test_stderr_while_a_stdout_line_is_incomplete_is_shown_once_after_it() -> None:
    client = fakeredis.FakeRedis()
    line = _claude_line("hello")
    _log(client, _out(line[:20]), _out("warn\n", stream="stderr"))
    page = read_page(client, TASK, "0", 8000, transcript=CLAUDE, ended=False)
    assert page.text == ""
    assert read_page(client, TASK, page.next_seq, 8000, transcript=CLAUDE, ended=False).text == ""
    _log(client, _out(line[20:]))
    done = read_page(client, TASK, page.next_seq, 8000, transcript=CLAUDE, ended=False)
    assert "hello" in done.text and done.text.endswith("warn\n") and done.text.count("warn") == 1
    assert read_page(client, TASK, done.next_seq, 8000, transcript=CLAUDE, ended=False).text == ""
