"""The relay: one run of a task on the handler, every output frame written to the task's events.

It runs in the work-horse (runner/job.py decides what the run means for the task). While the run goes
on, it renews the run's lease, watches for a cancel and for silence (the idle timeout); every loop here
suspends on each round, so a dead connection can never make it spin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis

from handler.protocol import (
    CONFIG_NOT_ALLOWED,
    EXECUTABLE_NOT_ALLOWED,
    EXECUTABLE_NOT_FOUND,
    MAX_COLLECT,
    NOTHING_KEPT,
    SHUTTING_DOWN,
    STALE_FENCE,
    ExecuteParams,
    ExecuteResult,
)
from runner import keys
from runner.agents import get_agent
from runner.agents.base import Agent, OutputParser
from runner.config import Settings, async_redis_client
from runner.errors import ConfigError, HandlerError, HandlerUnavailable, HandlerUnreachable
from runner.events import EventWriter
from runner.handler_client import OnOutput, OnStarted, execute_remote, probe_handler
from runner.lock import RENEW_LEASE
from runner.spec import TaskResult, TaskSpec

log = logging.getLogger("ccx.runner")

STALE_RUN = "This worker lost its queue to a newer one, which runs the task instead."
CANCELLED_UNANSWERED = (
    "The task was cancelled while running, and the connection to the handler was lost before its answer came: "
    "the handler stops the run if it still goes on, but it may have finished first; check its log."
)
NOTHING_KEPT_RUN = "The handler kept no outcome of the task's unread runs; nothing was run."

REFUSALS: dict[int, tuple[str | None, bool]] = {
    EXECUTABLE_NOT_ALLOWED: (None, False),
    CONFIG_NOT_ALLOWED: (None, False),
    SHUTTING_DOWN: (None, True),
    STALE_FENCE: (STALE_RUN, True),
    NOTHING_KEPT: (NOTHING_KEPT_RUN, False),
}
"""What the handler's JSON-RPC errors answering ``execute`` mean for the task, by code: the sentence its result
says (None: the handler's own message, which already says what to do) and whether the run was interrupted (the
infrastructure's doing, so the task runs again) rather than failed. A missing executable and any other code are
:func:`refusal`'s."""


def refusal(exc: HandlerError, agent: Agent, executable: str) -> tuple[str, bool]:
    """The sentence for the handler's error ``exc`` answering ``execute``, and whether the run was interrupted."""
    if exc.code == EXECUTABLE_NOT_FOUND:
        return agent.not_found_message(executable), False  # names the agent's CLI and how to install it
    if exc.code not in REFUSALS:
        return f"The handler could not run the task: {exc.message}", False
    sentence, interrupted = REFUSALS[exc.code]
    return sentence or exc.message, interrupted


@dataclass
class _RunEnd:
    """How a run ended, before the agent's parser makes a result of it: ``execute_result`` when the handler
    answered, else the ``error`` that says why not."""

    execute_result: ExecuteResult | None = None
    error: str | None = None
    interrupted: bool = False
    cancelled: bool = False


async def relay(
    task_id: str,
    spec: TaskSpec,
    settings: Settings,
    job_key: str | None = None,
    queue: str | None = None,
    run_id: str = "",
    fence_token: int | None = None,
    collect: list[str] | None = None,
    collect_only: bool = False,
) -> TaskResult:
    """Run ``spec`` on the handler, writing every frame to the task's events; build the result.

    While it runs, it renews the task's run lease (when ``run_id`` is given): this process, not the
    worker, is what proves the run alive. ``collect`` names the task's earlier runs whose answer never came:
    the handler gives back the outcome of one that ran to its end instead of running the task again.

    Raises :class:`HandlerUnreachable` (saying where and for how long) when no connection to the handler
    could be opened within ``settings.handler_wait``: nothing ran, so the task is not this attempt's to end
    (runner/job.py hands it back and the queue waits for the handler).
    """
    agent = get_agent(spec.agent)
    parser = agent.parser(settings.output_limit)
    fence = {"key": queue, "token": fence_token} if queue is not None and fence_token is not None else None
    params = execute_params(spec, fence, run_id, collect, collect_only, settings.agent_binary(spec.agent))
    cancel = asyncio.Event()
    live = _Live.open(task_id, settings, job_key, run_id, cancel)
    idle = spec.idle_timeout if spec.idle_timeout is not None else agent.default_idle_timeout
    quiet = _QuietWatch(idle or None, cancel)

    async def on_output(stream: str, seq: int, data: str) -> None:
        quiet.heard()
        parser.feed(stream, data)
        await live.writer.output(stream, seq, data)

    async def on_started(pid: int) -> None:
        quiet.start()

    end = _RunEnd()
    try:
        end = await _execute(settings, params, agent, on_output, on_started, cancel, quiet)
    finally:
        quiet.stop()
        lost = await live.close()
        end.error = end.error or lost
    return _task_result(task_id, spec, agent, parser, quiet, end)


@dataclass
class _Live:
    """What a run holds open while it goes on: the Redis client, the task's event writer, the cancel
    watcher and the lease keeper."""

    client: redis.asyncio.Redis
    writer: EventWriter
    pubsub: redis.asyncio.client.PubSub
    relay_done: asyncio.Event
    watcher: asyncio.Task[None]
    lease: asyncio.Task[None] | None

    @classmethod
    def open(cls, task_id: str, settings: Settings, job_key: str | None, run_id: str, cancel: asyncio.Event) -> _Live:
        client = async_redis_client(settings.redis_url)
        writer = EventWriter(client, task_id, settings.log_maxlen, job_key=job_key)
        writer.start()
        # Listening for a cancel is set up alongside the handler connection, not before it:
        # subscribing costs round trips a trivial task should not wait for.
        pubsub = client.pubsub()
        relay_done = asyncio.Event()
        watcher = asyncio.create_task(_watch_cancel(client, pubsub, task_id, cancel, relay_done))
        lease = asyncio.create_task(_keep_lease(client, task_id, run_id, settings.lock_ttl)) if run_id else None
        return cls(client, writer, pubsub, relay_done, watcher, lease)

    async def close(self) -> str | None:
        """Let go of it all within a few seconds; returns the sentence for Redis lost while the last events
        were written, if it was."""
        # redis-py can swallow a cancellation that lands mid-connect, so the watcher also
        # stops on `relay_done`, and is not waited for beyond a short bound either way.
        self.relay_done.set()
        self.watcher.cancel()
        if self.lease is not None:
            self.lease.cancel()
        await asyncio.wait({self.watcher, *([self.lease] if self.lease else [])}, timeout=2)
        lost = None
        try:
            await self.writer.close()
        except redis.RedisError as exc:
            lost = f"{_redis_lost(exc)}."
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pubsub.aclose(), 2)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.aclose(), 2)
        return lost


async def _execute(
    settings: Settings,
    params: ExecuteParams,
    agent: Agent,
    on_output: OnOutput,
    on_started: OnStarted,
    cancel: asyncio.Event,
    quiet: _QuietWatch,
) -> _RunEnd:
    """The run on the handler, and how it ended; an unreachable handler is raised, as :func:`relay` says."""
    try:
        return _RunEnd(await _execute_waiting_for_handler(settings, params, on_output, cancel, on_started))
    except HandlerError as exc:
        error, interrupted = refusal(exc, agent, params.argv[0])
        return _RunEnd(error=error, interrupted=interrupted)
    except HandlerUnreachable as exc:
        url = settings.handler_url
        waited = f"at {url} for {settings.handler_wait:g} s (CCX_HANDLER_WAIT; "
        raise HandlerUnreachable(str(exc).replace(f"at {url} (", waited, 1)) from None
    except HandlerUnavailable as exc:
        # The handler went away mid-run: the infrastructure, not the task. The run may have ended all the same
        # (its outcome kept on the handler for the next attempt to collect), unless someone asked to cancel it:
        # then it ends cancelled, saying its end is unknown (chaos seed 101: a cancel sent into a partition,
        # the run finished, and the task was failed for "the handler closed the connection").
        cancelled = cancel.is_set() and not quiet.fired
        error = CANCELLED_UNANSWERED if cancelled else str(exc)
        return _RunEnd(error=error, interrupted=not cancelled, cancelled=cancelled)
    except ConfigError as exc:
        return _RunEnd(error=str(exc))
    except redis.RedisError as exc:
        return _RunEnd(error=f"{_redis_lost(exc)}; the task was stopped.")


def _redis_lost(exc: redis.RedisError) -> str:
    return f"Lost the connection to Redis while streaming the task's output ({exc})"


def _task_result(
    task_id: str, spec: TaskSpec, agent: Agent, parser: OutputParser, quiet: _QuietWatch, end: _RunEnd
) -> TaskResult:
    """The task's result: what the agent's parser made of the run, and why it ended if not by itself."""
    execute_result = end.execute_result
    if execute_result is None:
        return TaskResult(
            id=task_id,
            error=end.error,
            agent={"name": agent.name},
            interrupted=end.interrupted,
            cancelled=end.cancelled,
        )
    outcome = parser.finish(execute_result)
    if execute_result.collected:
        log.warning(
            "task %s: its run %s had ended on the handler but its answer never came; that outcome is kept, the "
            "task not run again",
            task_id, execute_result.collected,
        )  # fmt: skip
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
        error = end.error or outcome.error
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
        log_key=keys.log_key(task_id),
        structured_output=(outcome.info or {}).get("structured_output"),
    )


def execute_params(
    spec: TaskSpec,
    fence: dict[str, Any] | None = None,
    run_id: str = "",
    collect: list[str] | None = None,
    collect_only: bool = False,
    binary: str | None = None,
) -> ExecuteParams:
    """The ``execute`` request for one run of ``spec``: what its agent runs (``binary``: the worker's executable
    for it, if set), and how the handler fences it."""
    agent = get_agent(spec.agent)
    return ExecuteParams(
        argv=agent.command(spec, binary),
        cwd=spec.cwd,
        env=agent.env(spec) or None,
        timeout=spec.timeout,
        stdin=agent.stdin(spec),
        fence=fence,
        run=run_id or None,
        collect=collect[-MAX_COLLECT:] if collect else None,
        collect_only=collect_only or None,
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
    on_output: OnOutput,
    cancel: asyncio.Event,
    on_started: OnStarted | None = None,
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
            await renew(keys=[keys.lease_key(task_id), keys.info_key(task_id)], args=[run_id, int(ttl * 1000)])


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
    key = keys.cancel_key(task_id)
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


async def _probe(settings: Settings) -> None:
    await probe_handler(
        settings.handler_url, settings.handler_token, ca=settings.handler_ca, allow_insecure=settings.allow_insecure
    )


def handler_answers(settings: Settings) -> bool:
    """Whether a connection to the handler opens now (refusing this worker counts as answering: the next
    attempt then says why). The worker asks it to end a ``handler`` pause (runner/queue_state.py)."""
    try:
        asyncio.run(_probe(settings))
    except HandlerUnreachable:
        return False
    except (HandlerUnavailable, ConfigError):
        pass  # it answered, refusing this worker: the next attempt says why
    return True


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
                await _probe(settings)
            except (HandlerUnavailable, ConfigError) as exc:
                return str(exc)
        return problem

    try:
        return asyncio.run(rounds_())
    except redis.RedisError as exc:
        return f"Redis: {exc}"
