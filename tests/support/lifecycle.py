"""The lifecycle channel as a test reads it: subscribe before acting, then take the queue's events."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
import redis

from runner import keys


@contextmanager
def subscribed(client: redis.Redis) -> Iterator[redis.client.PubSub]:
    """A subscription to the lifecycle channel, confirmed before the block runs: from there on nothing is missed."""
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.LIFECYCLE_CHANNEL)
    pubsub.get_message(timeout=1.0)  # the subscribe confirmation
    try:
        yield pubsub
    finally:
        pubsub.close()


def queue_events(
    pubsub: redis.client.PubSub, queue: str, wanted: int, deadline: float = 5.0, types: tuple[str, ...] = ()
) -> list[dict]:
    """This queue's events (of ``types``, if given) until ``wanted`` have come or ``deadline`` seconds passed."""
    found: list[dict] = []
    ends = time.monotonic() + deadline
    while len(found) < wanted and time.monotonic() < ends:
        message = pubsub.get_message(timeout=0.1)
        if message is None:
            continue
        body = orjson.loads(message["data"])
        if body.get("queue") == queue and (not types or body.get("type") in types):
            found.append(body)
    return found
