"""The worker's webhook deliveries: threads of its main process (never a work-horse) that claim due deliveries
from the outbox (outbox.py), POST them (http_post.py), and record each attempt's outcome on the task's record,
rescheduling a failure with backoff until ``CCX_WEBHOOK_RETRY_FOR`` has passed.

A claim is a lease: a worker that dies mid-delivery sends it again after its restart (at least once; receivers
deduplicate on ``X-CCX-Delivery``). A failing endpoint's retries wait in the outbox by their next-attempt time,
so they never hold up the other deliveries.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import queue as queue_lib
import threading
import time
import urllib.parse
from typing import Any

import redis

from runner import clock
from runner.config import PATIENT_RETRIES, Settings, redis_client, running_stack
from runner.webhooks import payload
from runner.webhooks.http_post import Response, post
from runner.webhooks.outbox import DELIVERED, FAILED, RETRYING, Delivery, Outbox
from runner.webhooks.queue_setting import queue_secret

log = logging.getLogger("ccx.webhooks")

CLAIM_MARGIN = 30.0
"""Seconds past the POST timeout a claimed delivery stays leased; then another deliverer may take it."""
DELIVERY_THREADS = 4
"""POSTs at once: a receiver that takes its whole timeout holds up only its own thread."""


def url_for_log(url: str) -> str:
    """Scheme and host only (``https://hooks.example.com/…``): a URL's credentials, path and query often
    are its secret (Slack-style hooks put it in the path), so records and logs never show them."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    with contextlib.suppress(ValueError):
        host += f":{parts.port}" if parts.port else ""
    rest = "/…" if (parts.path not in ("", "/") or parts.query) else ""
    return f"{parts.scheme}://{host}{rest}"


def backoff(attempts: int, first: float, ceiling: float) -> float:
    """Seconds before attempt ``attempts + 1``: ``first``, doubled after each failure, at most ``ceiling``."""
    return min(ceiling, max(0.05, first) * 2 ** min(62, max(0, attempts - 1)))  # (no float overflow)


def dashboard_base(settings: Settings) -> str | None:
    """Where task pages are: CCX_DASHBOARD_URL, else the dashboard of a ``ccx up`` on this Redis. Asked at each
    attempt, not once: a ``ccx up`` may start or stop while a delivery is retried."""
    if settings.dashboard_url:
        return settings.dashboard_url.rstrip("/")
    stack = running_stack() or {}
    url = stack.get("dashboard_url")
    if isinstance(url, str) and url and stack.get("redis_url") == settings.redis_url:
        return url.rstrip("/")
    return None


def outcome_of(
    delivery: Delivery, response: Response, now: float, settings: Settings
) -> tuple[dict[str, Any], float | None]:
    """What the task's record says after this attempt, and when the next one is due (None: no more)."""
    attempts = delivery.attempts + 1
    delay = backoff(attempts, settings.webhook_backoff, settings.webhook_backoff_max)
    if response.ok:
        status, next_at = DELIVERED, None
    elif response.refused or now + delay - delivery.created > settings.webhook_retry_for:
        # A refused destination is given up at once: a retry would only probe the address again.
        status, next_at = FAILED, None
    else:
        status, next_at = RETRYING, now + delay
    outcome: dict[str, Any] = {
        "url": url_for_log(delivery.url),
        "event": delivery.event,
        "delivery": delivery.id,
        "status": status,
        "attempts": attempts,
        "last_status_code": response.status_code,
        "last_error": None if response.ok else response.error,
        "last_attempt_at": clock.iso(now),
        "delivered_at": clock.iso(now) if response.ok else None,
        "next_attempt_at": clock.iso(next_at) if next_at else None,
    }
    return outcome, next_at


class Deliverer:
    """The queue's webhook deliveries, made by threads of the worker's main process (never a work-horse).

    One thread claims due deliveries and hands them to :data:`DELIVERY_THREADS` senders; it claims only
    as many as there are idle senders, so nothing claimed waits past its lease.
    """

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis | None = None,
        sender: Any = None,
        threads: int = DELIVERY_THREADS,
    ) -> None:
        self.settings = settings
        self.queue = settings.queue
        self.client = client if client is not None else redis_client(settings.redis_url, retries=PATIENT_RETRIES)
        allow = tuple(ipaddress.ip_network(text, strict=False) for text in settings.webhook_allow_networks)
        self.sender = sender if sender is not None else functools.partial(post, allow=allow)
        self.timeout = max(0.1, settings.webhook_timeout)
        self.outbox = Outbox(self.client, self.queue)
        self._work: queue_lib.Queue[str | None] = queue_lib.Queue()
        self._idle = threads
        self._inflight: set[str] = set()
        self._idle_changed = threading.Condition()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._claim_loop, name="ccx-webhooks", daemon=True)]
        self._threads += [
            threading.Thread(target=self._send_loop, name=f"ccx-webhook-{n}", daemon=True) for n in range(threads)
        ]

    def start(self) -> Deliverer:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop claiming; a POST under way may finish. What is left stays in the outbox for the next worker."""
        self._stop.set()
        for _ in self._threads[1:]:
            self._work.put(None)
        with self._idle_changed:
            self._idle_changed.notify_all()
        self._threads[0].join(timeout)

    def _claim_loop(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                wait = self.dispatch()
                if wait > 0:
                    self.outbox.wait(wait)
                failing = False
            except redis.RedisError as exc:
                if not failing:
                    log.warning("queue %s: webhook deliveries wait for Redis (%s)", self.queue, exc)
                failing = True
                self._stop.wait(1.0)
            except Exception as exc:  # a bug here must not end deliveries for good
                log.error("queue %s: webhook deliveries hit an internal error: %r", self.queue, exc)
                self._stop.wait(1.0)

    def dispatch(self) -> float:
        """Hand the due deliveries to idle senders; return how long to wait before looking again."""
        with self._idle_changed:
            while self._idle == 0 and not self._stop.is_set():
                self._idle_changed.wait(1.0)
            free = self._idle
        if self._stop.is_set():
            return 0.0
        claim = self.outbox.claim(self.timeout + CLAIM_MARGIN, free)
        with self._idle_changed:
            # One in flight per delivery: one whose lease ran out while it is still being sent waits.
            ids = [delivery_id for delivery_id in claim.ids if delivery_id not in self._inflight]
            self._inflight.update(ids)
            self._idle -= len(ids)
        for delivery_id in ids:
            self._work.put(f"{delivery_id} {claim.lease}")
        if len(ids) == free:
            return 0.0  # perhaps more are due
        if claim.next_due is None:
            return 1.0
        return min(1.0, max(0.01, claim.next_due - claim.now))

    def _send_loop(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            delivery_id, lease = item.split(" ", 1)
            try:
                self.attempt(delivery_id, lease)
            except redis.RedisError as exc:  # the lease runs out and it is claimed again
                log.warning("webhook delivery %s: Redis failed during it (%s); it is tried again", delivery_id, exc)
            except Exception as exc:
                log.error("webhook delivery %s: internal error: %r", delivery_id, exc)
            finally:
                with self._idle_changed:
                    self._inflight.discard(delivery_id)
                    self._idle += 1
                    self._idle_changed.notify_all()

    def attempt(self, delivery_id: str, lease: str = "") -> dict[str, Any] | None:
        """POST one delivery once and record the outcome; return what was recorded (None: nothing to do).
        ``lease``: the score its claim gave it; none, for an attempt made outside a claim (tests, tools)."""
        delivery = self.outbox.load(delivery_id)
        if delivery is None:  # expired, or finished by another deliverer meanwhile
            return None
        body = payload.body(delivery.payload, delivery.task_id, dashboard_base(self.settings))
        secret = queue_secret(self.client, delivery.queue or self.queue)
        headers = payload.request_headers(delivery.event, delivery.id, secret, body, int(time.time()))
        response = self.sender(delivery.url, body, headers, self.timeout)
        seconds, micros = self.client.time()
        now = seconds + micros / 1e6
        outcome, next_at = outcome_of(delivery, response, now, self.settings)
        self.outbox.record(delivery, outcome, next_at, lease or self.outbox.lease_of(delivery.id))
        if outcome["status"] == FAILED:
            what = f"task {delivery.task_id}" if delivery.task_id else f"queue {self.queue}"
            log.warning(
                "webhook %s for %s to %s failed after %d attempt(s) over %.0f s (last: %s); given up",
                delivery.event,
                what,
                url_for_log(delivery.url),
                outcome["attempts"],
                now - delivery.created,
                response.error,
            )
        return outcome
