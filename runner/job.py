"""The RQ job function: relay one task to the handler, stream its events, record its result.

It runs in RQ's work-horse (a fork of the worker). The spec arrives as plain
JSON; the handler runs the process; each output frame becomes an event in
the task's log and channel; the agent's parser turns the run into a result.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import time
import uuid
from typing import Any

import redis
from rq import get_current_job
from rq.job import Job

from handler.config import ConfigError
from handler.memory import pin_malloc_thresholds
from handler.protocol import (
    EXECUTABLE_NOT_ALLOWED,
    EXECUTABLE_NOT_FOUND,
    SHUTTING_DOWN,
    STALE_FENCE,
    ExecuteParams,
    ExecuteResult,
)
from runner import events, lifecycle, policy, queue_state
from runner.agents import get_agent
from runner.config import Settings, async_redis_client
from runner.events import EventWriter
from runner.handler_client import HandlerError, HandlerUnavailable, HandlerUnreachable, execute_remote, probe_handler
from runner.lock import RENEW_LEASE
from runner.policy import CONTINUE_PROMPT
from runner.spec import SpecError, TaskResult, TaskSpec
from runner.store import TaskStore

log = logging.getLogger("ccx.runner")

_PR_SET_PDEATHSIG = 1


_settings: Settings | None = None
"""The worker's settings, set before it forks: every work-horse inherits them (one path, not the environment)."""
_fence: int | None = None
"""The fencing token of the worker's queue lock (see runner/lock.py); None under a plain ``rq worker``."""

INTERRUPTED = events.INTERRUPTED
REQUEUE_META = "ccx_requeue"
"""Job meta set by a work-horse whose task must go back to the front of the queue (why, in a word)."""


_run: str = ""
"""The run id the worker made for the job it is about to fork a horse for (see :func:`new_run`)."""


def new_run(fence: int | None) -> str:
    """A run id for the next job, made in the worker before it forks: the horse starts its run under it, and
    the worker can end exactly that run should the horse die (runner/worker.py)."""
    global _run
    _run = f"{fence if fence is not None else '-'}:{uuid.uuid4().hex[:12]}"
    return _run


def configure(settings: Settings, fence: int | None = None) -> None:
    """Called by the worker once its settings are final (flags over environment over token file)."""
    global _settings, _fence
    _settings = settings
    _fence = fence


def current_settings() -> Settings:
    """The worker's settings; a plain ``rq worker`` running our jobs reads them from the environment."""
    return _settings if _settings is not None else Settings.from_env().with_local_token()


class TaskFailed(Exception):
    """Raised after the result is recorded, so RQ files the job as failed (and dependents wait or are cancelled)."""


class TaskRequeued(Exception):
    """Raised when the task goes back to the front of its queue (interrupted, or this worker is stale)."""


def die_with_parent() -> None:
    """Make this work-horse die when its worker does (even by SIGKILL), closing the handler connection.

    The handler then kills the task's process tree, so a killed worker leaves no agent running.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the worker died before prctl took effect
        os._exit(1)


def run_task(spec_data: dict) -> dict:
    """RQ entry point: run the task whose spec is ``spec_data``; return its result as a dict."""
    job = get_current_job()
    assert job is not None, "run_task runs inside an RQ work-horse"
    if job.connection is None:
        raise RuntimeError("the job has no Redis connection")
    die_with_parent()
    settings = current_settings()
    store = TaskStore(job.connection, settings.log_maxlen, settings.log_ttl, settings.idempotency_ttl)
    try:
        result = run_job(job, spec_data, settings, store)
    except TaskRequeued:
        raise
    except Exception as exc:
        # Whatever went wrong, the task must end with a result, never stay "running" forever.
        log.exception("task %s: internal error in the worker", job.id)
        result = TaskResult.failed(
            job.id, f"Internal error in the worker ({type(exc).__name__}: {exc}); see the worker's log."
        )
        # Its own run, or, if it failed before starting one, the task as long as no run holds it: never a run
        # another worker started meanwhile.
        if not lifecycle.end(store, result, job.origin, job, _run) and not store.client.hexists(
            events.info_key(job.id), "run"
        ):
            lifecycle.end(store, result, job.origin, job)
    if not result.success:
        raise TaskFailed(result.error or "The task failed.")
    return result.to_dict()


def _requeue(job: Job, why: str) -> TaskRequeued:
    job.meta[REQUEUE_META] = why
    job.save_meta()
    return TaskRequeued(why)


def run_job(job: Job, spec_data: dict, settings: Settings, store: TaskStore) -> TaskResult:
    task_id, queue = job.id, job.origin
    client: redis.Redis = job.connection
    reason = client.get(events.cancel_key(task_id))
    if reason is not None:
        result = TaskResult.cancelled_with(task_id, reason.decode())
        lifecycle.end(store, result, queue, job)
        return result
    started_at = events.now_iso()
    began = time.monotonic()
    try:
        spec = TaskSpec.from_dict(spec_data)
    except SpecError as exc:
        result = TaskResult.failed(task_id, f"Invalid task spec: {exc}", started_at=started_at)
        lifecycle.end(store, result, queue, job)
        return result
    run_id = _run or new_run(_fence)  # a plain ``rq worker`` makes none before forking
    lease_ms = int(settings.lock_ttl * 1000)
    started = lifecycle.start(store, task_id, queue, run_id, _fence, lease_ms)
    if started.code == -1:
        log.warning(
            "task %s: another worker serves queue %s now (this one lost its lock); handing it back", task_id, queue
        )
        raise _requeue(job, "stale")
    if started.code == 0:
        record = store.get(task_id)
        return record.result if record is not None and record.result is not None else TaskResult(id=task_id)
    attempts = started.attempts
    if started.continue_session:
        # The last attempt made progress before a usage limit: go on in the same session, not afresh.
        spec = TaskSpec.from_dict({**spec.to_dict(), "resume": started.continue_session, "task": CONTINUE_PROMPT})
    pin_malloc_thresholds()  # the work-horse is where output frames pass: see handler/memory.py
    job_key = job.key.decode() if isinstance(job.key, bytes) else job.key
    result = asyncio.run(relay(task_id, spec, settings, job_key, queue=queue, run_id=run_id))
    result.started_at = started_at
    result.ended_at = events.now_iso()
    if result.duration_ms is None:
        result.duration_ms = round((time.monotonic() - began) * 1000, 3)
    result.metadata = spec.metadata
    this = {"started_at": started_at, "ended_at": result.ended_at, "error": result.error}
    if result.interrupted:
        if result.error == STALE_RUN:
            raise _requeue(job, "stale")
        attempts.append({**this, "kind": INTERRUPTED})
        interruptions = sum(1 for attempt in attempts if attempt.get("kind", INTERRUPTED) == INTERRUPTED)
        if interruptions <= settings.interrupted_retries and lifecycle.interrupt(
            store, task_id, queue, run_id, attempts
        ):
            log.warning(
                "task %s interrupted (%s); it runs again (attempt %d)", task_id, result.error, len(attempts) + 1
            )
            raise _requeue(job, INTERRUPTED)
        result.error = f"{result.error} It was tried {interruptions} time(s); resubmit it to try again."
        attempts.pop()
    elif not result.success:
        state = queue_state.get(client, queue)
        decision = policy.decide(
            spec, result, attempts, settings, state.backoff_level, get_agent(spec.agent).default_retries
        )
        if decision.action == policy.AGAIN and lifecycle.interrupt(
            store, task_id, queue, run_id, [*attempts, {**this, "kind": decision.kind, "reason": decision.reason}]
        ):
            if decision.continue_session:
                store.continue_session(task_id, decision.continue_session)
            queue_state.pause(client, queue, decision.kind, decision.reason, decision.until)
            log.warning("task %s goes back to the front of queue %s: %s", task_id, queue, decision.reason)
            raise _requeue(job, decision.kind)
    elif attempts:
        queue_state.succeeded(client, queue)  # a backoff starts from the beginning next time
    result.attempts = attempts
    if not lifecycle.end(store, result, queue, job, run_id):
        log.info("task %s already had a result, or was started again elsewhere; keeping that", task_id)
    log.info(
        "task %s %s in %.0f ms%s",
        task_id,
        result.status,
        result.duration_ms or 0,
        f": {result.error}" if result.error else "",
    )
    return result


STALE_RUN = "This worker lost its queue to a newer one, which runs the task instead."


async def relay(
    task_id: str,
    spec: TaskSpec,
    settings: Settings,
    job_key: str | None = None,
    queue: str | None = None,
    run_id: str = "",
) -> TaskResult:
    """Run ``spec`` on the handler, writing every frame to the task's events; build the result.

    While it runs, it renews the task's run lease (when ``run_id`` is given): this process, not the
    worker, is what proves the run alive.
    """
    agent = get_agent(spec.agent)
    parser = agent.parser(settings.output_limit)
    fence = {"key": queue, "token": _fence} if queue is not None and _fence is not None else None
    params = ExecuteParams(
        argv=agent.argv(spec),
        cwd=spec.cwd,
        env=agent.env(spec) or None,
        timeout=spec.timeout,
        stdin=agent.stdin(spec),
        fence=fence,
    )
    client = async_redis_client(settings.redis_url)
    writer = EventWriter(client, task_id, settings.log_maxlen, job_key=job_key)
    writer.start()
    cancel = asyncio.Event()
    # Listening for a cancel is set up alongside the handler connection, not before it:
    # subscribing costs round trips a trivial task should not wait for.
    pubsub = client.pubsub()
    relay_done = asyncio.Event()
    watcher = asyncio.create_task(_watch_cancel(client, pubsub, task_id, cancel, relay_done))
    lease = asyncio.create_task(_keep_lease(client, task_id, run_id, settings.lock_ttl)) if run_id else None

    idle = spec.idle_timeout if spec.idle_timeout is not None else agent.default_idle_timeout
    quiet = _QuietWatch(idle or None, cancel)

    async def on_output(stream: str, seq: int, data: str) -> None:
        quiet.heard()
        parser.feed(stream, data)
        await writer.output(stream, seq, data)

    async def on_started(pid: int) -> None:
        quiet.start()

    execute_result: ExecuteResult | None = None
    error: str | None = None
    interrupted = False
    try:
        execute_result = await _execute_waiting_for_handler(settings, params, on_output, cancel, on_started)
    except HandlerError as exc:
        if exc.code == EXECUTABLE_NOT_FOUND:
            error = agent.not_found_message(params.argv[0])
        elif exc.code == EXECUTABLE_NOT_ALLOWED:
            error = exc.message
        elif exc.code == SHUTTING_DOWN:
            error, interrupted = exc.message, True
        elif exc.code == STALE_FENCE:
            error, interrupted = STALE_RUN, True
        else:
            error = f"The handler could not run the task: {exc.message}"
    except HandlerUnreachable as exc:
        url = settings.handler_url
        error = str(exc).replace(f"at {url} (", f"at {url} for {settings.handler_wait:g} s (CCX_HANDLER_WAIT; ", 1)
    except HandlerUnavailable as exc:
        # The handler went away mid-run: the infrastructure, not the task.
        error, interrupted = str(exc), not cancel.is_set()
    except ConfigError as exc:
        error = str(exc)
    except redis.RedisError as exc:
        error = f"Lost the connection to Redis while streaming the task's output ({exc}); the task was stopped."
    finally:
        # redis-py can swallow a cancellation that lands mid-connect, so the watcher also
        # stops on `relay_done`, and is not waited for beyond a short bound either way.
        relay_done.set()
        quiet.stop()
        watcher.cancel()
        if lease is not None:
            lease.cancel()
        await asyncio.wait({watcher, *([lease] if lease else [])}, timeout=2)
        try:
            await writer.close()
        except redis.RedisError as exc:
            error = error or f"Lost the connection to Redis while streaming the task's output ({exc})."
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pubsub.aclose(), 2)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.aclose(), 2)

    if execute_result is None:
        return TaskResult(id=task_id, error=error, agent={"name": agent.name}, interrupted=interrupted)
    outcome = parser.finish(execute_result)
    if quiet.fired:
        error = (
            f"No output for {quiet.seconds:g} s: the task was taken for hung and stopped, its whole process tree "
            "killed; give it a larger idle_timeout if it may be quiet that long."
        )
    elif execute_result.timed_out:
        error = f"The task timed out after {spec.timeout:g} s and was stopped; its whole process tree was killed."
    elif execute_result.cancelled:
        error = "The task was cancelled while running; its process tree was stopped."
    else:
        error = error or outcome.error
    return TaskResult(
        id=task_id,
        success=outcome.success and error is None,
        exit_code=execute_result.exit_code,
        signal=execute_result.signal,
        output=outcome.output,
        output_truncated=parser.stdout.truncated and outcome.output == parser.stdout.text(),
        stderr=parser.stderr.text(),
        timed_out=execute_result.timed_out or quiet.fired,
        cancelled=execute_result.cancelled and not quiet.fired,
        error=error,
        duration_ms=execute_result.duration_ms,
        agent=outcome.info or {"name": agent.name},
        log_key=events.log_key(task_id),
        structured_output=(outcome.info or {}).get("structured_output"),
    )


class _QuietWatch:
    """Stops a run (through ``cancel``) once it has printed nothing for ``seconds``, counted from its start."""

    def __init__(self, seconds: float | None, cancel: asyncio.Event) -> None:
        self.seconds = seconds
        self.cancel = cancel
        self.fired = False
        self.last = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.last = time.monotonic()
        if self.seconds and self._task is None:
            self._task = asyncio.create_task(self._watch())

    def heard(self) -> None:
        self.last = time.monotonic()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _watch(self) -> None:
        assert self.seconds
        while not self.cancel.is_set():
            left = self.last + self.seconds - time.monotonic()
            if left <= 0:
                self.fired = True
                self.cancel.set()
                return
            await asyncio.sleep(min(left, 1.0))


async def _execute_waiting_for_handler(
    settings: Settings,
    params: ExecuteParams,
    on_output: Any,
    cancel: asyncio.Event,
    on_started: Any = None,
) -> ExecuteResult:
    """``execute_remote``, trying again for up to ``settings.handler_wait`` seconds while no connection
    can be opened (a handler restarting): nothing ran yet, so trying again is safe."""
    deadline = time.monotonic() + settings.handler_wait
    delay = 0.2
    while True:
        try:
            return await execute_remote(
                settings.handler_url,
                params,
                on_output,
                token=settings.handler_token,
                cancel=cancel,
                ca=settings.handler_ca,
                allow_insecure=settings.allow_insecure,
                on_started=on_started,
            )
        except HandlerUnreachable:
            if time.monotonic() + delay > deadline or cancel.is_set():
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def _keep_lease(client: redis.asyncio.Redis, task_id: str, run_id: str, ttl: float) -> None:
    """Renew the run lease every third of ``ttl`` while the run goes on (only while it is still ours)."""
    renew = client.register_script(RENEW_LEASE)
    while True:
        await asyncio.sleep(ttl / 3)
        with contextlib.suppress(redis.RedisError):
            await renew(keys=[events.lease_key(task_id), events.info_key(task_id)], args=[run_id, int(ttl * 1000)])


CANCEL_POLL = 0.5
"""Seconds between the cancel watcher's looks when its subscription is silent."""


async def _watch_cancel(
    client: redis.asyncio.Redis,
    pubsub: redis.asyncio.client.PubSub,
    task_id: str,
    cancel: asyncio.Event,
    relay_done: asyncio.Event,
) -> None:
    """Set ``cancel`` when the task's cancel channel speaks or its flag is set (checked after subscribing).

    Every round suspends for its whole half second. A subscription whose connection died (TCP keepalive
    gives up after about 45 s of partition) makes redis-py answer "no message" at once, without ever
    suspending: a loop trusting it would spin and starve the relay's keepalive, lease and writer. Such a
    round waits out its time instead and reads the cancel flag itself, so a cancel is still seen.
    """
    key = events.cancel_key(task_id)
    await pubsub.subscribe(key)
    if await client.exists(key):
        cancel.set()
    loop = asyncio.get_running_loop()
    while not cancel.is_set() and not relay_done.is_set():
        began = loop.time()
        try:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=CANCEL_POLL)
        except (redis.RedisError, OSError):
            message = None
        if message is not None:
            cancel.set()
            return
        left = began + CANCEL_POLL - loop.time()
        if left > CANCEL_POLL / 2:  # answered at once with nothing: the subscription is not listening
            await asyncio.sleep(left)
            with contextlib.suppress(redis.RedisError, OSError):
                if await client.exists(key):
                    cancel.set()


def warm_up(settings: Settings, rounds: int = 20) -> str | None:
    """Run the relay's network paths a few times in the worker before it forks work-horses.

    Each work-horse is a fresh fork: code the worker never ran is cold in every horse
    (Python specializes bytecode as it first runs it, and each such write copies a page
    in the child). Exercising the Redis and handler clients here first measured about
    0.6 ms less per task (bench ratio 1.51 → 1.45). Returns why the handler could not be reached, or None.
    """

    async def rounds_() -> str | None:
        problem = None
        for _ in range(rounds):
            client = async_redis_client(settings.redis_url)
            try:
                await client.ping()
            finally:
                await client.aclose()
            try:
                await probe_handler(
                    settings.handler_url,
                    settings.handler_token,
                    ca=settings.handler_ca,
                    allow_insecure=settings.allow_insecure,
                )
            except (HandlerUnavailable, ConfigError) as exc:
                return str(exc)
        return problem

    try:
        return asyncio.run(rounds_())
    except redis.RedisError as exc:
        return f"Redis: {exc}"
