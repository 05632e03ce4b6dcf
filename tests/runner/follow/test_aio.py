"""The asyncio driver against a real Redis: the newest page, appends, a skip when lagging, an expired log."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.asyncio

from runner import keys
from runner.follow.aio import Batch, Follower, Pace, read_page

FAST = Pace(block_ms=50, max_rate=1e12)
"""No pacing to speak of: the tests are about what comes, not when."""


def out(task_id: str, seq: int, data: str = "0123456789") -> dict[str, Any]:
    return {"type": "output", "task_id": task_id, "seq": seq, "stream": "stdout", "data": data, "lines": seq}


def result(task_id: str) -> dict[str, Any]:
    return {"type": "result", "task_id": task_id, "result": {"id": task_id, "success": True}}


async def add(client: redis.asyncio.Redis, task_id: str, *items: dict[str, Any]) -> None:
    for item in items:
        await client.xadd(keys.log_key(task_id), {"e": orjson.dumps(item)})


def scenario(redis_url: str, body: Callable[[redis.asyncio.Redis, str], Awaitable[None]]) -> None:
    task_id = f"aio-{uuid.uuid4().hex}"

    async def run() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            await asyncio.wait_for(body(client, task_id), 30)
        finally:
            await client.delete(keys.log_key(task_id), keys.info_key(task_id))
            await client.aclose()

    asyncio.run(run())


def seqs(batch: Batch) -> list[int]:
    return [event["seq"] for _, event in batch.entries if event.get("type") == "output"]


def test_a_follow_starts_from_the_newest_page_then_appends_until_the_result(redis_url: str) -> None:
    async def body(client: redis.asyncio.Redis, task_id: str) -> None:
        await add(client, task_id, *(out(task_id, seq) for seq in range(10)))
        batches = Follower(client, task_id, Pace(block_ms=50, max_rate=1e12, page_chars=30)).batches()
        first = await anext(batches)
        assert (first.reset, first.more_before, first.skipped, first.ended, seqs(first)) == (
            True,
            True,
            0,
            False,
            [7, 8, 9],
        )
        await add(client, task_id, out(task_id, 10), result(task_id))
        rest = [batch async for batch in batches]
        assert [(batch.reset, batch.ended, seqs(batch)) for batch in rest] == [(False, True, [10])]
        assert rest[0].entries[-1][1]["type"] == "result"

    scenario(redis_url, body)


def test_a_follow_that_stays_behind_skips_to_the_newest_page_and_counts_what_it_skipped(redis_url: str) -> None:
    async def body(client: redis.asyncio.Redis, task_id: str) -> None:
        await add(client, task_id, out(task_id, 0))
        pace = Pace(block_ms=50, max_rate=1e12, read_max=2, max_lag=0.0, page_chars=10)
        batches = Follower(client, task_id, pace).batches()
        assert seqs(await anext(batches)) == [0]
        await add(client, task_id, *(out(task_id, seq) for seq in range(1, 60)))
        behind = await anext(batches)  # a full read with more after it: behind, not yet for long
        assert (behind.reset, seqs(behind)) == (False, [1, 2])
        skip = await anext(batches)
        assert (skip.reset, skip.more_before, skip.skipped, seqs(skip)) == (True, True, 56, [59])
        await add(client, task_id, result(task_id))
        assert [(batch.ended, batch.entries[0][1]["type"]) async for batch in batches] == [(True, "result")]

    scenario(redis_url, body)


def test_a_task_whose_log_expired_shows_an_empty_page_that_says_so(redis_url: str) -> None:
    async def body(client: redis.asyncio.Redis, task_id: str) -> None:
        await client.hset(keys.info_key(task_id), "result", orjson.dumps({"id": task_id, "success": True}))
        batches = [batch async for batch in Follower(client, task_id, FAST).batches()]
        assert [(b.reset, b.expired, b.ended, b.entries) for b in batches] == [(True, True, True, [])]

    scenario(redis_url, body)


def test_a_log_that_starts_later_is_followed_from_its_first_entry(redis_url: str) -> None:
    async def body(client: redis.asyncio.Redis, task_id: str) -> None:
        batches = Follower(client, task_id, FAST).batches()
        first = await anext(batches)
        assert (first.reset, first.entries, first.more_before, first.ended) == (True, [], False, False)
        await add(client, task_id, out(task_id, 0), out(task_id, 1), result(task_id))
        rest = [batch async for batch in batches]
        assert [seq for batch in rest for seq in seqs(batch)] == [0, 1] and rest[-1].ended
        assert all(batch.skipped == 0 for batch in rest)

    scenario(redis_url, body)


def test_a_page_read_back_from_inside_an_entry_ends_at_that_character(redis_url: str) -> None:
    async def body(client: redis.asyncio.Redis, task_id: str) -> None:
        await add(client, task_id, *(out(task_id, seq, f"{seq:04d}" * 5) for seq in range(30)))
        newest, more = await read_page(client, task_id, size=100)
        assert seqs(Batch(newest)) == list(range(25, 30)) and more
        older, more = await read_page(client, task_id, newest[0][0], offset=7, size=100)
        assert older[-1] == (newest[0][0], {**out(task_id, 25, "0025002"), "data": "0025002"})
        assert seqs(Batch(older)) == [20, 21, 22, 23, 24, 25] and more  # 7 + 5 × 20 characters
        everything, more = await read_page(client, task_id, size=10_000)
        assert seqs(Batch(everything)) == list(range(30)) and not more

    scenario(redis_url, body)
