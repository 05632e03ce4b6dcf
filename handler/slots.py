"""A first-come, first-served limit on how many processes run at once."""

from __future__ import annotations

import asyncio
from collections import deque


class FifoSlots:
    """At most ``size`` holders at a time; waiters are served strictly in arrival order.

    A released slot is handed straight to the oldest waiter, so a newcomer can
    never overtake someone already queued (``asyncio.Semaphore`` gives no such
    promise across releases).
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return sum(1 for waiter in self._waiters if not waiter.done())

    def try_acquire(self) -> bool:
        if self.running < self.size and not self._waiters:
            self.running += 1
            return True
        return False

    def join(self) -> asyncio.Future[None] | None:
        """Take a slot now (returns None) or a place in line (returns the waiter to pass to :meth:`acquire`).

        Synchronous, so the place in line is the order of arrival even when the
        caller awaits something (e.g. telling its client it is queued) before waiting.
        """
        if self.try_acquire():
            return None
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    async def acquire(self, give_up: asyncio.Event, waiter: asyncio.Future[None] | None = None) -> bool:
        """Wait for a slot; return False (holding nothing) if ``give_up`` is set first."""
        if waiter is None:
            waiter = self.join()
            if waiter is None:
                return True
        give_up_task = asyncio.ensure_future(give_up.wait())
        try:
            await asyncio.wait({waiter, give_up_task}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self.abandon(waiter)
            raise
        finally:
            give_up_task.cancel()
        if waiter.done():
            return True
        self.abandon(waiter)
        return False

    def abandon(self, waiter: asyncio.Future[None]) -> None:
        """Leave the line; a slot handed over at that very moment is passed on."""
        if waiter.done() and not waiter.cancelled():
            self.release()
        else:
            waiter.cancel()
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # hand the slot over; `running` is unchanged
                return
        self.running -= 1
