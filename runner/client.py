"""The orchestrator's API: submit tasks, follow their events, wait for results, cancel.

>>> runner = Runner.from_env()
>>> handle = runner.submit("Create a FastAPI app with a health endpoint", tools=["Write", "Edit"])
>>> for event in handle.events(): ...
>>> handle.result().success
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import redis
from rq import Queue
from rq.job import Dependency
from rq.serializers import JSONSerializer

from runner import clock, hooks, lifecycle, queue_state, schedules
from runner.config import Settings, check_redis_url, redact_url, redis_client
from runner.errors import RedisUnavailable, SpecError, UnknownTask
from runner.follow.sync import follow, wait_for_result
from runner.lifecycle import fetch_job
from runner.spec import TaskResult, TaskSpec
from runner.store import TaskRecord, TaskStore
from runner.vocabulary import STATUSES, PauseKind, Status
from runner.webhooks import outbox

JOB_FUNCTION = "runner.job.run_task"

JOB_TIMEOUT_MARGIN = 120
"""Seconds RQ allows beyond the task's own timeout: the handler's kill grace and result writing fit in it."""


class TaskHandle:
    """A submitted task: its id, its events, its result."""

    def __init__(self, runner: Runner, task_id: str) -> None:
        self.runner = runner
        self.id = task_id

    def __repr__(self) -> str:
        return f"TaskHandle({self.id!r})"

    def events(self, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Every event from the task's first byte (replay, then live), ending with the result event."""
        return follow(self.runner.redis, self.id, timeout=timeout)

    def result(self, timeout: float | None = None) -> TaskResult:
        """Wait for the task to end (at most ``timeout`` seconds, else ``TimeoutError``)."""
        return TaskResult.from_dict(wait_for_result(self.runner.redis, self.id, timeout=timeout))

    def cancel(self) -> str:
        """Cancel: a queued task never runs, a running one is stopped. Returns what happened."""
        return self.runner.cancel(self.id)

    def status(self) -> str:
        record = self.runner.get(self.id)
        return record.status if record else "unknown"


class Runner:
    """A connection to one queue in one Redis."""

    def __init__(
        self, redis_url: str | None = None, queue: str | None = None, settings: Settings | None = None
    ) -> None:
        url = check_redis_url(redis_url, "redis_url") if redis_url else None
        # Settings check the URL (transport, password); with none configured, redis_client says so.
        self.settings = (
            settings.replace(redis_url=url, queue=queue) if settings else Settings.from_env(redis_url=url, queue=queue)
        )
        self.redis = redis_client(self.settings.redis_url)
        self.queue = Queue(self.settings.queue, connection=self.redis, serializer=JSONSerializer)
        self.store = TaskStore(
            self.redis, self.settings.log_maxlen, self.settings.log_ttl, self.settings.idempotency_ttl
        )
        hooks.register(outbox.LISTENER)  # cancels, pauses and resumptions made through it queue their webhooks

    @classmethod
    def from_env(cls) -> Runner:
        """Settings from REDIS_URL / CCX_REDIS_URL (else a running ``ccx up``'s Redis), CCX_QUEUE and the other
        CCX_* variables; with no Redis configured, a :class:`~runner.errors.ConfigError` says what to do."""
        return cls()

    def ping(self) -> None:
        """Raise :class:`RedisUnavailable` with a clear sentence when Redis cannot be reached."""
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            if isinstance(exc, redis.AuthenticationError) or "authenticat" in str(exc).lower() or "NOAUTH" in str(exc):
                raise RedisUnavailable(
                    f"Redis at {redact_url(self.settings.redis_url)} refused this client's password (or its lack of one): "
                    "put the password in REDIS_URL (redis://:PASSWORD@host:port/0); a `ccx up` stack keeps its own in "
                    "~/.config/cc-execute/redis.password."
                ) from None
            raise RedisUnavailable(
                f"Redis is unreachable at {redact_url(self.settings.redis_url)} ({exc}): start it (e.g. `ccx up`) or set REDIS_URL."
            ) from None

    def submit(
        self,
        task: str | TaskSpec | dict[str, Any] = "",
        *,
        after: str | None = None,
        after_any: bool = False,
        key: str | None = None,
        at: datetime | str | float | None = None,
        in_: float | None = None,
        **options: Any,
    ) -> TaskHandle:
        """Queue a task and return its handle; a bad spec raises :class:`~runner.errors.SpecError` at once.

        ``after`` runs this task only once that task has ended: by default only if it
        succeeded (else this one is cancelled), with ``after_any=True`` also if it failed.
        A cancelled predecessor cancels its dependents either way: a cancel stops the line.

        ``key`` makes the submit idempotent: while a task submitted with that key is queued or
        running, or ended less than ``CCX_IDEMPOTENCY_TTL`` seconds ago (default an hour), its
        handle is returned and nothing new is queued; an orchestrator that retries after a
        timeout never double-submits. The key, the task's record and its job are written in one
        transaction; a key that names no record (left by a crash of an older version) is taken over.

        ``at`` (a datetime, naive meaning UTC, or an ISO 8601 time) or ``in_`` (seconds) run it later: it
        is ``scheduled`` until then, and then joins the end of the line like a task submitted at that
        moment (see runner/schedules.py). A time already past queues it now.
        """
        spec = _spec_of(task, options)
        due = schedules.due_time(at, in_)
        if due is not None and after:
            raise SpecError(
                "A task cannot wait both for another task ('after') and for a time ('at'/'in'): "
                "schedule the first task of the chain instead."
            )
        if key is not None and (not isinstance(key, str) or not key or len(key) > 200):
            raise SpecError("'key' must be a non-empty string of at most 200 characters.")
        self.ping()
        depends_on = None
        if after:
            if self.store.get(after) is None:
                raise UnknownTask(after, f"Cannot run after task {after}: no such task in this Redis; check the id.")
            depends_on = Dependency(jobs=[after], allow_failure=after_any)
        new_id = str(uuid.uuid4())
        task_id = self._enqueue(new_id, spec, after, key, due, depends_on)
        if after and task_id == new_id:
            lifecycle.settle_new_dependent(self.store, task_id, after, after_any)
        return TaskHandle(self, task_id)

    def _enqueue(
        self,
        task_id: str,
        spec: TaskSpec,
        after: str | None,
        key: str | None,
        due: float | None,
        depends_on: Dependency | None,
    ) -> str:
        """Write the task's idempotency key, record and RQ job in one MULTI/EXEC; the id of the task ``key``
        already names instead, if it names one.

        One transaction, so there is no moment, and no crash of this process, after which the key names a
        task that was never written, or the record stands for a job that was never queued: a failure before
        EXEC writes nothing, and the key stays free for the retry.
        """
        # Held for as long as the task may wait and run; its end shortens it to the idempotency window.
        hold = int(spec.timeout) + JOB_TIMEOUT_MARGIN + 7 * 24 * 3600 + int(max(0.0, (due or 0) - time.time()))
        status = Status.DEFERRED if after else Status.SCHEDULED if due else Status.QUEUED
        queue = self.settings.queue
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    if key is not None:
                        holder = self.store.key_holder(pipe, queue, key)
                        if holder is not None:
                            return holder
                    if depends_on is None:
                        pipe.multi()  # (with one, RQ's enqueue WATCHes the predecessor first, then starts it)
                    self._queue_job(pipe, task_id, spec, due, depends_on)
                    at = clock.now_iso()
                    self.store.create(
                        pipe, task_id, queue, spec, status, at, after=after, key=key, scheduled_for=due, key_ttl=hold
                    )
                    pipe.execute()
                    return task_id
                except redis.WatchError:
                    continue  # another submit took the key, or the predecessor changed: look again

    def _queue_job(
        self, pipe: Any, task_id: str, spec: TaskSpec, due: float | None, depends_on: Dependency | None
    ) -> None:
        """The task's RQ job, written on ``pipe`` (in MULTI once this returns)."""
        job = {
            "job_id": task_id,
            "result_ttl": self.settings.log_ttl,
            "failure_ttl": self.settings.log_ttl,
            "description": _describe(spec),
            "meta": {"ccx": True},
            "pipeline": pipe,
        }
        timeout = int(spec.timeout) + JOB_TIMEOUT_MARGIN
        if due is not None:  # RQ's scheduler (run by the worker) puts it at the end of the queue when due
            when = datetime.fromtimestamp(due, UTC)
            self.queue.enqueue_at(when, JOB_FUNCTION, spec.to_dict(), job_timeout=timeout, **job)
        else:
            self.queue.enqueue_call(JOB_FUNCTION, args=(spec.to_dict(),), timeout=timeout, depends_on=depends_on, **job)

    def handle(self, task_id: str) -> TaskHandle:
        return TaskHandle(self, task_id)

    def get(self, task_id: str) -> TaskRecord | None:
        return self.store.get(task_id)

    def list(self, limit: int = 50, status: str | list[str] | None = None) -> list[TaskRecord]:
        """The newest tasks of this queue, newest first, with their status (only ``status`` ones, if given)."""
        wanted = frozenset([status] if isinstance(status, str) else status) if status else None
        unknown = (wanted or frozenset()) - set(STATUSES)
        if unknown:
            raise SpecError(f"Unknown status {sorted(unknown)[0]!r}: use one of {', '.join(STATUSES)}.")
        return self.store.list(self.settings.queue, limit, wanted)

    def cancel(self, task_id: str, reason: str | None = None) -> str:
        return lifecycle.cancel(self.store, task_id, reason)

    def queue_state(self) -> queue_state.QueueState:
        """Whether this queue is paused, why and until when (see runner/queue_state.py)."""
        return queue_state.get(self.redis, self.settings.queue)

    def pause(self, reason: str = "paused by hand") -> queue_state.QueueState:
        """Hold the queue: the running task goes on, nothing new starts until :meth:`resume`."""
        return queue_state.pause(self.redis, self.settings.queue, PauseKind.MANUAL, reason)

    def resume(self) -> bool:
        """End the queue's pause, whatever set it; False if it was not paused."""
        return queue_state.resume(self.redis, self.settings.queue, "resumed by hand", reset_backoff=True)

    def costs(self) -> dict[str, float]:
        """The queue's spend as the agents reported it: ``today`` (UTC), ``total``, and ``budget_per_day``."""
        return queue_state.costs(self.redis, self.settings.queue)

    def set_budget(self, per_day: float | None) -> None:
        """Pause the queue before the next task once the day's spend reaches ``per_day`` USD (None: no budget)."""
        queue_state.set_budget(self.redis, self.settings.queue, per_day)

    def job(self, task_id: str) -> Any:
        """The RQ job behind a task (for RQ tooling), or None."""
        return fetch_job(self.redis, task_id)


def _spec_of(task: str | TaskSpec | dict[str, Any], options: dict[str, Any]) -> TaskSpec:
    """The checked spec of a submit: a prompt, a spec or a spec's dict, with ``options`` over it."""
    if isinstance(task, TaskSpec):
        return TaskSpec.from_dict({**task.to_dict(), **options})
    if isinstance(task, dict):
        return TaskSpec.from_dict({**task, **options})
    return TaskSpec.from_dict({"task": task, **options})


def _describe(spec: TaskSpec) -> str:
    what = " ".join(spec.argv or []) if spec.agent == "command" else spec.task
    what = what.replace("\n", " ")
    return f"{spec.agent}: {what[:80]}{'…' if len(what) > 80 else ''}"


def execute_task_via_websocket(
    task: str, timeout: float = 120, tools: list[str] | None = None, **options: Any
) -> dict[str, Any]:
    """Submit ``task``, wait for it, return the result as a dict (``success``, ``output``, ``exit_code``, …).

    The blocking call of the original cc_execute design. Connection settings come
    from the environment (REDIS_URL, CCX_QUEUE); pass ``redis_url=`` or ``queue=``
    to override. It waits as long as the task takes, queue time included; pass
    ``wait=SECONDS`` to give up earlier with ``TimeoutError`` (the task keeps running).
    """
    redis_url = options.pop("redis_url", None)
    queue = options.pop("queue", None)
    wait = options.pop("wait", None)
    runner = Runner(redis_url=redis_url, queue=queue)
    handle = runner.submit(task, timeout=timeout, tools=tools, **options)
    return handle.result(timeout=wait).to_dict()
