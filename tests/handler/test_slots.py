"""FifoSlots: at most N holders, waiters served strictly in arrival order, giving up never loses a slot.

And the admission of fenced runs next to them: a stale fencing token is refused with a sentence, logged once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import pytest

from handler.config import HandlerConfig
from handler.process import ProcessRun
from handler.protocol import STALE_FENCE, ProtocolError
from handler.server import Handler
from handler.slots import FifoSlots
from tests.handler.helpers import arun, eventually

pytestmark = pytest.mark.timeout(30)


def test_size_must_be_at_least_one() -> None:
    """A limit of zero slots is refused."""
    with pytest.raises(ValueError):
        FifoSlots(0)


def test_try_acquire_grants_up_to_size_then_refuses() -> None:
    """``size`` holders at once; a release makes room again."""
    slots = FifoSlots(2)
    assert slots.try_acquire() and slots.try_acquire()
    assert not slots.try_acquire()
    assert slots.running == 2
    slots.release()
    assert slots.running == 1
    assert slots.try_acquire()


def test_waiters_are_served_in_arrival_order() -> None:
    """With one slot, five queued waiters get it one after another in the order they asked."""

    async def scenario() -> list[int]:
        slots = FifoSlots(1)
        assert slots.try_acquire()
        never = asyncio.Event()
        order: list[int] = []

        async def worker(n: int) -> None:
            assert await slots.acquire(never)
            order.append(n)
            assert slots.running == 1  # never two holders at once
            await asyncio.sleep(0)  # yield while holding, so others get a chance to cheat
            slots.release()

        tasks = []
        for n in range(5):
            tasks.append(asyncio.create_task(worker(n)))
            await eventually(lambda n=n: slots.queued == n + 1, what=f"waiter {n} to queue")
        slots.release()
        await asyncio.gather(*tasks)
        assert (slots.running, slots.queued) == (0, 0)
        return order

    assert arun(scenario()) == [0, 1, 2, 3, 4]


def test_a_newcomer_cannot_overtake_a_queued_waiter() -> None:
    """A released slot goes to the oldest waiter, so try_acquire fails for a newcomer meanwhile."""

    async def scenario() -> None:
        slots = FifoSlots(1)
        assert slots.try_acquire()
        waiter = asyncio.create_task(slots.acquire(asyncio.Event()))
        await eventually(lambda: slots.queued == 1, what="the waiter to queue")
        slots.release()
        assert not slots.try_acquire()  # the slot was handed over, not put back up for grabs
        assert await waiter
        assert slots.running == 1

    arun(scenario())


def test_giving_up_while_queued_returns_false_and_leaves_the_queue() -> None:
    """A waiter whose give-up event fires holds nothing, and the next release skips it."""

    async def scenario() -> None:
        slots = FifoSlots(1)
        assert slots.try_acquire()
        give_up, keep = asyncio.Event(), asyncio.Event()
        quitter = asyncio.create_task(slots.acquire(give_up))
        await eventually(lambda: slots.queued == 1, what="the first waiter to queue")
        stayer = asyncio.create_task(slots.acquire(keep))
        await eventually(lambda: slots.queued == 2, what="the second waiter to queue")
        give_up.set()
        assert await quitter is False
        assert slots.queued == 1
        slots.release()
        assert await stayer is True
        assert (slots.running, slots.queued) == (1, 0)

    arun(scenario())


def test_a_cancelled_waiter_leaves_the_queue() -> None:
    """Cancelling the task that waits removes it; the slot goes to the next in line."""

    async def scenario() -> None:
        slots = FifoSlots(1)
        assert slots.try_acquire()
        first = asyncio.create_task(slots.acquire(asyncio.Event()))
        await eventually(lambda: slots.queued == 1, what="the first waiter to queue")
        second = asyncio.create_task(slots.acquire(asyncio.Event()))
        await eventually(lambda: slots.queued == 2, what="the second waiter to queue")
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert slots.queued == 1
        slots.release()
        assert await second is True
        assert slots.running == 1

    arun(scenario())


def test_a_slot_handed_to_a_waiter_cancelled_at_that_moment_is_passed_on() -> None:
    """If the slot arrives just as its waiter is cancelled, it goes to the next waiter instead of being lost."""

    async def scenario() -> None:
        slots = FifoSlots(1)
        assert slots.try_acquire()
        first = asyncio.create_task(slots.acquire(asyncio.Event()))
        await eventually(lambda: slots.queued == 1, what="the first waiter to queue")
        second = asyncio.create_task(slots.acquire(asyncio.Event()))
        await eventually(lambda: slots.queued == 2, what="the second waiter to queue")
        slots.release()  # hands the slot to `first`...
        first.cancel()  # ...which is cancelled before it could notice
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await second is True
        assert (slots.running, slots.queued) == (1, 0)
        slots.release()
        assert slots.running == 0

    arun(scenario())


def test_acquire_returns_at_once_when_a_slot_is_free() -> None:
    """No queueing (and no give-up needed) while there is room."""

    async def scenario() -> None:
        slots = FifoSlots(2)
        assert await slots.acquire(asyncio.Event())
        assert await slots.acquire(asyncio.Event())
        assert (slots.running, slots.queued) == (2, 0)

    arun(scenario())


def test_a_stale_fencing_token_is_refused_with_a_sentence_and_logged_once_per_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker refused again and again (a spin) makes one log line naming both causes, not one per refusal."""
    caplog.set_level(logging.WARNING, logger="ccx.handler")
    handler = Handler(HandlerConfig(no_token=True))
    handler.admit("q", 1796000000000, cast(ProcessRun, object()), 1)
    for token in (5, 5, 5, 6):
        with pytest.raises(ProtocolError) as refused:
            handler.admit("q", token, cast(ProcessRun, object()), 2)
        assert refused.value.code == STALE_FENCE
        assert f"fencing token {token} for queue 'q' is stale" in refused.value.message
        assert "Redis lost its data" in refused.value.message
    said = [r.getMessage() for r in caplog.records if "stale fencing token" in r.getMessage()]
    assert len(said) == 2 and "token 5 " in said[0] and "token 6 " in said[1], said
    assert all("Redis lost its data" in line for line in said)
