"""The blocking driver against a real Redis: replay then live, gaps, an expired log, unknown tasks, deadlines."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis

from runner import keys
from runner.errors import UnknownTask
from runner.follow.cursor import LogCursor
from runner.follow.sync import entries, follow, wait_for_result
from tests.support.processes import wait_until


@pytest.fixture
def task_id(redis_client: redis.Redis) -> Iterator[str]:
    name = f"follow-{uuid.uuid4().hex}"
    yield name
    redis_client.delete(keys.log_key(name), keys.info_key(name), keys.done_key(name))


def add(client: redis.Redis, task_id: str, *items: dict[str, Any]) -> list[str]:
    return [client.xadd(keys.log_key(task_id), {"e": orjson.dumps(item)}).decode() for item in items]


def out(task_id: str, seq: int, data: str = "x\n") -> dict[str, Any]:
    return {"type": "output", "task_id": task_id, "seq": seq, "stream": "stdout", "data": data}


def _blocked_in_xread(client: redis.Redis) -> bool:
    return any(entry.get("cmd") == "xread" and "b" in entry.get("flags", "") for entry in client.client_list())


def result(task_id: str) -> dict[str, Any]:
    return {"type": "result", "task_id": task_id, "result": {"id": task_id, "success": True}}


def test_a_follow_replays_the_log_then_goes_live_until_the_result(redis_client: redis.Redis, task_id: str) -> None:
    add(redis_client, task_id, {"type": "started", "task_id": task_id}, out(task_id, 0))

    def later() -> None:
        # Once the follower has replayed and waits in a blocking XREAD: what comes now, it must get live.
        wait_until(lambda: _blocked_in_xread(redis_client), 10, what="the follower to wait for new entries")
        add(redis_client, task_id, out(task_id, 1), result(task_id))

    writer = threading.Thread(target=later)
    writer.start()
    seen = [event["type"] for event in follow(redis_client, task_id, timeout=10, block_ms=100)]
    writer.join()
    assert seen == ["started", "output", "output", "result"]


def test_a_log_trimmed_at_its_start_begins_with_a_gap(redis_client: redis.Redis, task_id: str) -> None:
    add(redis_client, task_id, out(task_id, 40), out(task_id, 41), result(task_id))
    seen = list(follow(redis_client, task_id, timeout=10))
    assert seen[0] == {"type": "gap", "task_id": task_id, "missing": 40, "from_seq": 0}
    assert [event.get("seq") for event in seen[1:]] == [40, 41, None]


def test_a_task_whose_log_is_gone_ends_with_the_result_of_its_record(redis_client: redis.Redis, task_id: str) -> None:
    stored = {"id": task_id, "success": False}
    redis_client.hset(keys.info_key(task_id), mapping={"id": task_id, "result": orjson.dumps(stored)})
    assert list(follow(redis_client, task_id, timeout=10, block_ms=10)) == [
        {"type": "result", "task_id": task_id, "result": stored}
    ]
    assert wait_for_result(redis_client, task_id, timeout=10) == stored


def test_no_such_task_and_a_deadline_are_said(redis_client: redis.Redis, task_id: str) -> None:
    with pytest.raises(UnknownTask):
        list(follow(redis_client, task_id, timeout=10, block_ms=10))
    with pytest.raises(UnknownTask):
        wait_for_result(redis_client, task_id, timeout=10, block_ms=10)
    redis_client.hset(keys.info_key(task_id), "id", task_id)
    add(redis_client, task_id, out(task_id, 0))
    began = time.monotonic()
    with pytest.raises(TimeoutError, match=r"did not finish within 0\.3 s"):
        list(follow(redis_client, task_id, timeout=0.3))
    with pytest.raises(TimeoutError, match=r"did not finish within 0\.3 s"):
        wait_for_result(redis_client, task_id, timeout=0.3)
    assert time.monotonic() - began < 3


def test_entries_read_up_to_the_end_in_pieces_and_no_further_than_taken(
    redis_client: redis.Redis, task_id: str
) -> None:
    ids = add(redis_client, task_id, *(out(task_id, seq) for seq in range(40)))
    assert [entry_id for entry_id, _ in entries(redis_client, LogCursor(task_id), count=16)] == ids
    cursor = LogCursor.at(task_id, ids[10])
    taken = entries(redis_client, cursor, count=16)
    assert [next(taken)[0] for _ in range(3)] == ids[10:13]
    assert cursor.next_id == ids[12]
    assert [entry_id for entry_id, _ in entries(redis_client, cursor, count=16)] == ids[13:]
