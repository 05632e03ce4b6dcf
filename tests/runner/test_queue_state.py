"""A queue's pauses compose (the strongest holds, whoever sets it and whenever), and every lifting is announced."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from runner import hooks, keys, queue_state
from runner.vocabulary import EventType, PauseKind
from runner.webhooks import outbox, queue_setting
from tests.support.lifecycle import queue_events, subscribed

HOUR = 3600.0


@pytest.fixture
def lifecycle(redis_client: redis.Redis) -> Iterator[redis.client.PubSub]:
    """A subscription to the lifecycle channel, ready before the test acts."""
    with subscribed(redis_client) as pubsub:
        yield pubsub


@pytest.fixture
def webhooks_listen() -> None:
    """The webhooks' outbox told of pauses and resumptions, as in every worker and Runner (runner/hooks.py)."""
    hooks.register(outbox.LISTENER)


def quiet(pubsub: redis.client.PubSub, queue: str) -> list[dict]:
    """What this queue published within half a second (nothing, when nothing was announced)."""
    return queue_events(pubsub, queue, 1, deadline=0.5)


def test_a_manual_pause_outlasts_a_running_tasks_retry_pause(redis_client: redis.Redis, queue_name: str) -> None:
    """Issue 19, case 6: `ccx pause` while a task runs, then the task fails and asks for its retry pause.
    The queue stays held by hand, with no end time, so it never resumes by itself."""
    queue_state.pause(redis_client, queue_name, PauseKind.MANUAL, "deploy")
    state = queue_state.pause(
        redis_client, queue_name, PauseKind.RETRY, "API error 529; retry 1/2 in 30 s", time.time() + 30
    )
    assert (state.kind, state.reason, state.until) == (PauseKind.MANUAL, "deploy", None)
    assert queue_state.get(redis_client, queue_name) == state


@pytest.mark.parametrize(
    "kind", [PauseKind.CREDENTIALS, PauseKind.BUDGET, PauseKind.USAGE_LIMIT, PauseKind.BACKOFF, PauseKind.RETRY]
)
def test_no_automatic_pause_replaces_a_manual_one(redis_client: redis.Redis, queue_name: str, kind: str) -> None:
    queue_state.pause(redis_client, queue_name, PauseKind.MANUAL, "deploy")
    queue_state.pause(
        redis_client, queue_name, kind, "automatic", None if kind == PauseKind.CREDENTIALS else time.time() + HOUR
    )
    assert queue_state.get(redis_client, queue_name).kind == PauseKind.MANUAL


@pytest.mark.parametrize(
    ("first", "second", "holds"),
    [
        # An indefinite pause beats any timed one: nothing but a person ends it.
        ((PauseKind.CREDENTIALS, None), (PauseKind.USAGE_LIMIT, HOUR), PauseKind.CREDENTIALS),
        ((PauseKind.USAGE_LIMIT, HOUR), (PauseKind.CREDENTIALS, None), PauseKind.CREDENTIALS),
        ((PauseKind.CREDENTIALS, None), (PauseKind.MANUAL, None), PauseKind.MANUAL),
        # Among timed ones the later end holds: the queue cannot go on before it anyway.
        ((PauseKind.RETRY, 30.0), (PauseKind.USAGE_LIMIT, HOUR), PauseKind.USAGE_LIMIT),
        ((PauseKind.USAGE_LIMIT, HOUR), (PauseKind.RETRY, 30.0), PauseKind.USAGE_LIMIT),
        ((PauseKind.BUDGET, HOUR), (PauseKind.USAGE_LIMIT, 2 * HOUR), PauseKind.USAGE_LIMIT),
        ((PauseKind.BACKOFF, 2 * HOUR), (PauseKind.BUDGET, HOUR), PauseKind.BACKOFF),
        # The same end: the kind's order decides.
        ((PauseKind.BUDGET, HOUR), (PauseKind.USAGE_LIMIT, HOUR), PauseKind.BUDGET),
        ((PauseKind.RETRY, HOUR), (PauseKind.BACKOFF, HOUR), PauseKind.BACKOFF),
    ],
)
def test_the_strongest_pause_holds(
    redis_client: redis.Redis,
    queue_name: str,
    first: tuple[str, float | None],
    second: tuple[str, float | None],
    holds: str,
) -> None:
    now = time.time()
    for kind, after in (first, second):
        queue_state.pause(redis_client, queue_name, kind, kind, None if after is None else now + after)
    assert queue_state.get(redis_client, queue_name).kind == holds


def test_a_person_and_a_failing_task_pausing_at_once_never_lose_the_manual_pause(
    redis_client: redis.Redis, queue_name: str
) -> None:
    """Both at the same moment, many times over: whichever lands last, the manual pause holds."""
    for round_ in range(30):
        queue = f"{queue_name}-{round_}"
        start = threading.Barrier(2)

        def manual(queue: str = queue, start: threading.Barrier = start) -> None:
            start.wait()
            queue_state.pause(redis_client, queue, PauseKind.MANUAL, "deploy")

        def automatic(queue: str = queue, start: threading.Barrier = start) -> None:
            start.wait()
            queue_state.pause(redis_client, queue, PauseKind.RETRY, "retry 1/2 in 30 s", time.time() + 30)

        threads = [threading.Thread(target=manual), threading.Thread(target=automatic)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert queue_state.get(redis_client, queue).kind == PauseKind.MANUAL, f"round {round_}"


@pytest.mark.usefixtures("webhooks_listen")
def test_a_pause_that_does_not_take_hold_is_not_announced(
    redis_client: redis.Redis, queue_name: str, lifecycle: redis.client.PubSub
) -> None:
    queue_setting.set_queue_webhook(redis_client, queue_name, "http://queue.example/hook", on_pause=True)
    queue_state.pause(redis_client, queue_name, PauseKind.MANUAL, "deploy")
    assert [body["kind"] for body in queue_events(lifecycle, queue_name, 1)] == [PauseKind.MANUAL]
    queue_state.pause(redis_client, queue_name, PauseKind.RETRY, "retry 1/2 in 30 s", time.time() + 30)
    assert quiet(lifecycle, queue_name) == []
    assert redis_client.zcard(keys.webhook_due_key(queue_name)) == 1  # the manual pause's POST only


def test_a_backoff_that_does_not_take_hold_still_counts_towards_the_next_one(
    redis_client: redis.Redis, queue_name: str
) -> None:
    queue_state.pause(redis_client, queue_name, PauseKind.MANUAL, "deploy")
    queue_state.pause(redis_client, queue_name, PauseKind.BACKOFF, "429", time.time() + 60)
    assert queue_state.get(redis_client, queue_name).backoff_level == 1


def test_every_lifting_is_a_resumed_event_naming_the_pause_it_ended(
    redis_client: redis.Redis, queue_name: str, lifecycle: redis.client.PubSub
) -> None:
    queue_state.pause(redis_client, queue_name, PauseKind.USAGE_LIMIT, "five-hour usage limit", time.time() + HOUR)
    assert queue_state.resume(redis_client, queue_name, "resumed by hand")
    paused, resumed = queue_events(lifecycle, queue_name, 2)
    assert paused["type"] == EventType.PAUSED and paused["kind"] == PauseKind.USAGE_LIMIT
    assert resumed["type"] == EventType.RESUMED and resumed["kind"] == PauseKind.USAGE_LIMIT
    assert resumed["reason"] == "resumed by hand" and resumed["at"]
    assert not queue_state.resume(redis_client, queue_name, "again")  # nothing to lift: nothing announced
    assert quiet(lifecycle, queue_name) == []


def test_the_listeners_are_told_of_each_pause_that_takes_hold_and_each_lifting(
    redis_client: redis.Redis, queue_name: str
) -> None:
    told: list[tuple[object, ...]] = []
    listener = hooks.Listener(
        "test-recorder",
        queue_paused=lambda _client, *args: told.append(("paused", *args)),
        queue_resumed=lambda _client, *args: told.append(("resumed", *args)),
    )
    hooks.register(listener)
    try:
        queue_state.pause(redis_client, queue_name, PauseKind.MANUAL, "deploy")
        queue_state.pause(
            redis_client, queue_name, PauseKind.RETRY, "retry 1/2", time.time() + 30
        )  # kept out: not told
        assert queue_state.resume(redis_client, queue_name, "resumed by hand")
        assert not queue_state.resume(redis_client, queue_name, "again")  # nothing to lift: not told
    finally:
        hooks.unregister(listener.name)
    assert told == [
        ("paused", queue_name, PauseKind.MANUAL, "deploy", None),
        ("resumed", queue_name, PauseKind.MANUAL, "resumed by hand"),
    ]


@pytest.mark.usefixtures("webhooks_listen")
def test_a_lifting_posts_queue_resumed_to_a_queue_that_asked_for_pauses(
    redis_client: redis.Redis, queue_name: str
) -> None:
    queue_setting.set_queue_webhook(redis_client, queue_name, "http://queue.example/hook", on_pause=True)
    queue_state.pause(redis_client, queue_name, PauseKind.RETRY, "retry 1/2 in 1 s", time.time() + 1)
    queue_state.resume(redis_client, queue_name, "the pause ended (retry 1/2 in 1 s)")
    deliveries = [
        outbox.Delivery.load(redis_client, item.decode())
        for item in redis_client.zrange(keys.webhook_due_key(queue_name), 0, -1)
    ]
    resumed = [delivery for delivery in deliveries if delivery is not None and delivery.event == "queue.resumed"]
    assert len(resumed) == 1
    assert resumed[0].payload["kind"] == PauseKind.RETRY and resumed[0].payload["reason"].startswith("the pause ended")


def test_the_worker_ends_only_a_timed_pause_that_is_due(redis_client: redis.Redis, queue_name: str) -> None:
    """The worker saw a due timed pause and lifts it; a person's pause set in between must survive that."""
    queue_state.pause(redis_client, queue_name, PauseKind.RETRY, "retry", time.time() - 1)
    queue_state.pause(
        redis_client, queue_name, PauseKind.MANUAL, "deploy"
    )  # lands between the worker's look and its lift
    assert not queue_state.resume(redis_client, queue_name, "the pause ended (retry)", only_if_due=True)
    assert queue_state.get(redis_client, queue_name).kind == PauseKind.MANUAL

    queue_state.resume(redis_client, queue_name, "resumed by hand")
    queue_state.pause(redis_client, queue_name, PauseKind.USAGE_LIMIT, "five-hour usage limit", time.time() + HOUR)
    assert not queue_state.resume(redis_client, queue_name, "early", only_if_due=True)
    assert queue_state.get(redis_client, queue_name).paused

    queue_state.pause(redis_client, queue_name, PauseKind.MANUAL, "deploy")
    queue_state.resume(redis_client, queue_name, "resumed by hand")
    queue_state.pause(redis_client, queue_name, PauseKind.RETRY, "retry", time.time() - 1)
    assert queue_state.resume(redis_client, queue_name, "the pause ended (retry)", only_if_due=True)
    assert not queue_state.get(redis_client, queue_name).paused
