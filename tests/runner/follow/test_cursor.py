"""The log cursor on plain data: replies in, entries, gaps, positions and read sizes out (no Redis)."""

from __future__ import annotations

from typing import Any

import orjson

from runner.follow.cursor import (
    START,
    UNREADABLE,
    Budget,
    LogCursor,
    decode_entries,
    entry_chars,
    id_before,
)

TASK = "t-1"


def raw(entry_id: str, event: dict[str, Any]) -> tuple[bytes, dict[bytes, bytes]]:
    """One entry as redis-py returns it from XRANGE / XREAD: bytes id, bytes field ``e``."""
    return entry_id.encode(), {b"e": orjson.dumps(event)}


def out(seq: int, data: str = "x\n") -> dict[str, Any]:
    return {"type": "output", "task_id": TASK, "seq": seq, "stream": "stdout", "data": data}


STARTED = {"type": "started", "task_id": TASK}
RESULT = {"type": "result", "task_id": TASK, "result": {"success": True}}


def test_a_replay_then_live_gives_every_entry_once_in_order_and_stops_at_the_result() -> None:
    cursor = LogCursor(TASK)
    assert (cursor.next_id, cursor.range_min, cursor.expected, cursor.done) == (START, "-", 0, False)
    replay = [raw("1-0", STARTED), raw("1-1", out(0)), raw("2-0", out(1))]
    assert list(cursor.feed(replay)) == [("1-0", STARTED), ("1-1", out(0)), ("2-0", out(1))]
    assert (cursor.next_id, cursor.range_min, cursor.expected, cursor.done) == ("2-0", "(2-0", 2, False)
    live = [raw("3-0", out(2)), raw("4-0", RESULT), raw("5-0", out(3))]
    assert list(cursor.feed(live)) == [("3-0", out(2)), ("4-0", RESULT)]
    assert (cursor.next_id, cursor.done) == ("4-0", True)
    assert list(cursor.feed([raw("6-0", out(4))])) == []
    assert cursor.next_id == "4-0"


def test_an_empty_reply_changes_nothing() -> None:
    cursor = LogCursor(TASK)
    assert list(cursor.feed([])) == []
    assert (cursor.next_id, cursor.expected, cursor.entry_size, cursor.done) == (START, 0, None, False)
    list(cursor.feed([raw("7-3", out(0, "abcd"))]))
    assert list(cursor.feed([])) == []
    assert (cursor.next_id, cursor.expected, cursor.entry_size) == ("7-3", 1, 4)


def test_frames_trimmed_away_before_the_first_one_read_are_a_gap() -> None:
    cursor = LogCursor(TASK)
    gap = {"type": "gap", "task_id": TASK, "missing": 1234, "from_seq": 0}
    assert list(cursor.feed([raw("9-0", out(1234)), raw("9-1", out(1235))])) == [
        ("9-0", gap),
        ("9-0", out(1234)),
        ("9-1", out(1235)),
    ]
    assert cursor.expected == 1236


def test_a_jump_in_the_middle_is_a_gap_and_a_new_attempt_counts_from_zero() -> None:
    cursor = LogCursor(TASK)
    entries = list(
        cursor.feed(
            [raw("1-0", out(0)), raw("1-1", out(5)), raw("2-0", STARTED), raw("2-1", out(0)), raw("2-2", out(1))]
        )
    )
    assert entries == [
        ("1-0", out(0)),
        ("1-1", {"type": "gap", "task_id": TASK, "missing": 4, "from_seq": 1}),
        ("1-1", out(5)),
        ("2-0", STARTED),
        ("2-1", out(0)),
        ("2-2", out(1)),
    ]


def test_a_cursor_that_joins_mid_log_knows_the_next_frame_only_once_it_has_seen_one() -> None:
    after = LogCursor(TASK, after="5-0")
    assert (after.next_id, after.range_min, after.expected) == ("5-0", "(5-0", None)
    assert list(after.feed([raw("6-0", out(700)), raw("6-1", out(702))])) == [
        ("6-0", out(700)),
        ("6-1", {"type": "gap", "task_id": TASK, "missing": 1, "from_seq": 701}),
        ("6-1", out(702)),
    ]
    tail = LogCursor.tail(TASK)
    assert (tail.next_id, tail.range_min, tail.expected) == (START, "-", None)
    assert list(tail.take([("8-0", out(90))])) == [("8-0", out(90))]
    assert tail.expected == 91


def test_a_cursor_at_an_entry_reads_that_entry_first() -> None:
    at = LogCursor.at(TASK, "1700000000000-3")
    assert (at.next_id, at.range_min, at.expected) == ("1700000000000-2", "(1700000000000-2", None)
    assert LogCursor.at(TASK, "1700000000000-0").range_min == f"(1699999999999-{2**64 - 1}"
    assert LogCursor.at(TASK, "0-0").range_min == "-"
    assert (id_before("0-5"), id_before("0-1"), id_before("0-0"), id_before("12-0")) == (
        "0-4",
        "0-0",
        START,
        f"11-{2**64 - 1}",
    )


def test_entries_are_decoded_as_the_caller_takes_them() -> None:
    cursor = LogCursor(TASK)
    entries = cursor.feed([raw("1-0", out(0)), raw("1-1", out(1)), raw("1-2", RESULT)])
    assert next(entries) == ("1-0", out(0))
    assert (cursor.next_id, cursor.expected, cursor.done) == ("1-0", 1, False)  # the rest is not read yet
    assert [entry_id for entry_id, _ in entries] == ["1-1", "1-2"]
    assert (cursor.next_id, cursor.done) == ("1-2", True)


def test_str_replies_and_unreadable_entries_are_taken_too() -> None:
    """A client with decode_responses gives str ids and fields; an entry that is not a JSON object is shown as
    unreadable rather than ending the follow."""
    reply = [
        ("1-0", {"e": orjson.dumps(out(0)).decode()}),
        (b"1-1", {b"e": b"not json"}),
        (b"1-2", {b"e": b"[1, 2]"}),
        (b"1-3", {b"other": b"field"}),
    ]
    assert decode_entries(reply) == [
        ("1-0", out(0)),
        ("1-1", {"type": UNREADABLE}),
        ("1-2", {"type": UNREADABLE}),
        ("1-3", {}),
    ]
    cursor = LogCursor(TASK)
    assert [entry_id for entry_id, _ in cursor.feed(reply)] == ["1-0", "1-1", "1-2", "1-3"]
    assert (cursor.next_id, cursor.expected) == ("1-3", 1)


def test_an_expired_log_ends_with_the_result_the_record_keeps() -> None:
    cursor = LogCursor(TASK)
    assert cursor.expired({"success": False}) == {"type": "result", "task_id": TASK, "result": {"success": False}}
    assert cursor.done and list(cursor.feed([raw("1-0", out(0))])) == []


def test_a_budget_says_what_a_page_may_still_take() -> None:
    page = Budget(entries=3, size=100)
    assert not page.full
    page.take(60)
    assert (page.entries, page.size, page.full) == (2, 40, False)
    page.take(40)
    assert (page.entries, page.size, page.full) == (1, 0, True)
    assert Budget(entries=1).full is False and Budget(entries=0).full is True and Budget().full is False
    bytes_only = Budget(size=10)
    bytes_only.take(3)
    assert (bytes_only.entries, bytes_only.size) == (None, 7)


def test_a_read_asks_for_as_many_entries_as_the_budget_holds_at_the_size_seen() -> None:
    live = Budget(entries=64, size=256 * 1024)
    assert [live.count(size) for size in (None, 0, 1, 4096, 8192, 300 * 1024)] == [64, 64, 64, 64, 32, 1]
    assert Budget(entries=200).count(512 * 1024) == 200
    assert Budget(size=1000).count(None) == 1 << 30
    assert Budget(entries=0).count(None) == 1  # a read always asks for something


def test_the_cursor_sizes_reads_by_the_entries_of_the_last_reply() -> None:
    cursor = LogCursor(TASK)
    live = Budget(entries=64, size=256 * 1024)
    assert (cursor.count(live), cursor.count(live, first=4)) == (64, 4)
    big = "y" * (128 * 1024)
    list(cursor.feed([raw("1-0", out(0, big)), raw("1-1", out(1, big + big))]))
    assert cursor.entry_size == 3 * 128 * 1024 // 2
    assert (cursor.count(live), cursor.count(live, first=4)) == (1, 1)
    list(cursor.feed([raw("2-0", out(2, "z" * 16384)), raw("2-1", RESULT)]))
    assert cursor.entry_size == (16384 + 64) // 2 == 8224
    assert cursor.count(live) == 256 * 1024 // 8224 == 31
    assert (entry_chars(out(0, "abc")), entry_chars(RESULT)) == (3, 64)
