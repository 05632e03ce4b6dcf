"""What the core tells the features that follow it, without knowing them: a queue paused, a queue resumed, a
task ended.

The core calls the functions below (:func:`queue_paused` and :func:`queue_resumed` from runner/queue_state.py,
:func:`task_ended` from :func:`runner.lifecycle.end`). A feature registers a :class:`Listener` where a process
is put together, before that process pauses, resumes or ends anything: the worker's ``run_worker`` (its
work-horses are forked from it, so they inherit it) and :class:`runner.client.Runner`, through which the
command line, the dashboard, the MCP server and library users all act. The one listener today is the
webhooks' outbox (``runner.webhooks.outbox.LISTENER``).

Listeners run in the caller's thread, after the fact: the pause or the end has happened and stands, so a
listener handles its own I/O failures (logs them) instead of raising into the core.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import redis
from redis.client import Pipeline

from runner.spec import TaskResult

QueuePaused = Callable[[redis.Redis, str, str, str, float | None], object]
"""(client, queue, kind, reason, until): a pause took hold (one that a stronger pause kept out is not told)."""
QueueResumed = Callable[[redis.Redis, str, str, str], object]
"""(client, queue, the kind of the pause that ended, why it ended)."""
TaskEnded = Callable[[Pipeline, str, TaskResult, int], object]
"""(pipeline, queue, result, ttl of the task's record): queue commands on the end's bookkeeping pipeline, which
the core sends in one round trip right after recording the end, and whose failed replies it logs."""


@dataclass(frozen=True)
class Listener:
    """What one feature wants to be told; an event it leaves None is not its business."""

    name: str
    """Registering a listener of the same name again replaces it (every Runner registers the webhooks')."""
    queue_paused: QueuePaused | None = None
    queue_resumed: QueueResumed | None = None
    task_ended: TaskEnded | None = None


_listeners: dict[str, Listener] = {}


def register(listener: Listener) -> None:
    _listeners[listener.name] = listener


def unregister(name: str) -> None:
    _listeners.pop(name, None)


def queue_paused(client: redis.Redis, queue: str, kind: str, reason: str, until: float | None) -> None:
    for listener in tuple(_listeners.values()):  # a copy: another thread may register meanwhile
        if listener.queue_paused is not None:
            listener.queue_paused(client, queue, kind, reason, until)


def queue_resumed(client: redis.Redis, queue: str, kind: str, reason: str) -> None:
    for listener in tuple(_listeners.values()):
        if listener.queue_resumed is not None:
            listener.queue_resumed(client, queue, kind, reason)


def task_ended(pipe: Pipeline, queue: str, result: TaskResult, ttl: int) -> None:
    for listener in tuple(_listeners.values()):
        if listener.task_ended is not None:
            listener.task_ended(pipe, queue, result, ttl)
