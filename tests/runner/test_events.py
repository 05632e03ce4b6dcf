"""The batched event writer (runner/events.py) against a real Redis that forgets its scripts."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest
import redis
import redis.asyncio.client

from runner import events, keys
from runner.config import async_redis_client


def test_a_batch_refused_with_noscript_is_sent_again_with_the_script_loaded(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis restart empties the script cache; redis-py retries a pipeline cut by it on a new connection
    without loading the script again (seen as a lost task in the outage test). Here the pipeline's own loading
    is switched off to make that moment certain: the writer must load the script and send the batch again."""

    async def no_loading(self: object) -> None:
        return None

    task_id = f"noscript-{uuid.uuid4().hex}"
    admin = redis.Redis.from_url(redis_url)

    async def scenario() -> None:
        client = async_redis_client(redis_url)
        writer = events.EventWriter(client, task_id)
        writer.start()
        await writer.output("stdout", 0, "before\n")
        while not admin.exists(keys.log_key(task_id)):
            await asyncio.sleep(0.01)
        monkeypatch.setattr(redis.asyncio.client.Pipeline, "load_scripts", no_loading)
        admin.script_flush()
        await writer.output("stdout", 1, "after\n")
        await writer.close()
        await client.aclose()

    asyncio.run(asyncio.wait_for(scenario(), 30))
    logged = [orjson.loads(fields[b"e"])["data"] for _, fields in admin.xrange(keys.log_key(task_id))]
    admin.delete(keys.log_key(task_id))
    assert logged == ["before\n", "after\n"]
