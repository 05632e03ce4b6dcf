"""Live updates: one subscription to ``ccx:events`` shared by every browser, one session per WebSocket.

Messages are JSON objects with a ``type``. From the browser (``op``), after the first message, which
authenticates the connection (``auth``; see :mod:`runner.dashboard.auth`):

* ``watch`` – send the queue view now and whenever a lifecycle event changes it, plus progress.
* ``follow`` ``task`` – the task's record, its log from the tail (a *reset*), then each new entry
  (*append*) until its result, at most about 2 MB a second. A follow that stays behind a chatty
  task for two seconds skips to the newest page (another *reset*), so the page shows the latest
  output and never drowns.
* ``unfollow`` ``task``; ``submit`` ``form``/``spec``; ``cancel`` ``task`` – the last two answer with
  a ``reply`` carrying the request's ``req``.

Slow browsers get the newest queue view, not every one in between: each session
keeps only the latest message of each kind until it can be sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
from typing import Any

import orjson
import redis
import redis.asyncio
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from runner import keys
from runner.agents import get_agent
from runner.agents.base import Transcript
from runner.client import Runner
from runner.dashboard import logview
from runner.dashboard.data import TASK_ID, Reader
from runner.errors import RedisUnavailable, SpecError, UnknownTask
from runner.follow.aio import Batch, Follower
from runner.spec import TaskSpec
from runner.vocabulary import CancelOutcome

log = logging.getLogger("ccx.dashboard")

SNAPSHOT_GAP = 0.1
"""Least seconds between two queue views (a burst of submissions becomes one update)."""
PROGRESS_INTERVAL = 1.0
SAFETY_REFRESH = 30.0
"""Seconds after which the queue view is re-read even without events (pub/sub can miss some while reconnecting)."""
MAX_FOLLOWS = 4
CANCEL_WORDS = {
    CancelOutcome.CANCELLED: "Cancelled: the task will not run.",
    CancelOutcome.CANCELLING: "Stopping the running task…",
    CancelOutcome.ALREADY_ENDED: "The task had already ended.",
}


def encode(message: dict[str, Any]) -> str:
    return orjson.dumps(message).decode()


def spec_from_form(form: dict[str, Any]) -> dict[str, Any]:
    """A task spec from the submit form's text fields (the same rules as ``ccx submit``)."""
    if not isinstance(form, dict):
        raise SpecError("The form must be a JSON object.")
    agent = str(form.get("agent") or TaskSpec.agent).strip()  # (the spec's default agent)
    spec: dict[str, Any] = {"agent": agent}
    if agent and "argv" in get_agent(agent).options:  # an agent that runs a command line, not a prompt
        try:
            spec["argv"] = shlex.split(str(form.get("argv") or ""))
        except ValueError as exc:
            raise SpecError(f"'argv' is not a valid command line ({exc}); quote it as in a shell.") from None
    else:
        spec["task"] = str(form.get("task") or "")
    tools = [tool.strip() for tool in str(form.get("tools") or "").split(",") if tool.strip()]
    if tools:
        spec["tools"] = tools
    timeout = str(form.get("timeout") or "").strip()
    if timeout:
        try:
            spec["timeout"] = float(timeout)
        except ValueError:
            raise SpecError("'timeout' must be a positive number of seconds.") from None
    return spec


class Hub:
    """Shared by all sessions: the lifecycle subscription, the queue view and the running tasks' progress."""

    def __init__(self, client: redis.asyncio.Redis, reader: Reader, runner: Runner) -> None:
        self.client = client
        self.reader = reader
        self.runner = runner
        self.sessions: set[Session] = set()
        self.snapshot: dict[str, Any] | None = None
        self.status: dict[str, Any] = {"type": "status", "redis": True, "error": None}
        self._dirty = asyncio.Event()
        self.progress: dict[str, Any] = {}

    async def run(self) -> None:
        await asyncio.gather(self._listen(), self._refresh(), self._tick())

    def _watchers(self) -> list[Session]:
        return [session for session in self.sessions if session.watching]

    def _set_redis(self, ok: bool, error: str | None = None) -> None:
        if self.status["redis"] == ok and (ok or self.status["error"] == error):
            return
        self.status = {"type": "status", "redis": ok, "error": error}
        for session in self.sessions:
            session.offer("status", encode(self.status))

    async def _listen(self) -> None:
        backoff = 0.2
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(keys.LIFECYCLE_CHANNEL)
                self._set_redis(True)
                self._dirty.set()  # events may have been missed while (re)connecting
                backoff = 0.2
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._on_event(message["data"])
            except (redis.RedisError, OSError) as exc:
                self._set_redis(False, f"Redis is unreachable ({exc}); retrying.")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _on_event(self, raw: bytes) -> None:
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        if not isinstance(event, dict):
            return
        if event.get("queue") == self.reader.queue:
            self._dirty.set()
        task_id = event.get("task_id")
        for session in self.sessions:
            if task_id in session.follows:
                session.refresh_record(str(task_id))

    async def _refresh(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), SAFETY_REFRESH)
            self._dirty.clear()
            watchers = self._watchers()
            if not watchers:
                continue
            try:
                self.snapshot = await self.reader.snapshot()
            except redis.RedisError as exc:
                self._set_redis(False, f"Redis is unreachable ({exc}); retrying.")
                continue
            payload = encode({"type": "queue", **self.snapshot})
            for session in watchers:
                session.offer("queue", payload)
            await asyncio.sleep(SNAPSHOT_GAP)

    async def _tick(self) -> None:
        """Progress of the running tasks and who serves the queue, pushed when they change."""
        worker: str | None = None
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL)
            watchers = self._watchers()
            if not watchers or self.snapshot is None:
                continue
            try:
                running = [row["id"] for row in self.snapshot["running"]]
                progress = await self.reader.progress(running)
                now_worker = await self.reader.worker()
            except redis.RedisError:
                continue
            if now_worker != worker:
                worker = now_worker
                self._dirty.set()
            if progress != self.progress:
                self.progress = progress
                payload = encode({"type": "progress", "tasks": progress})
                for session in watchers:
                    session.offer("progress", payload)


class Session:
    """One browser connection: what it watches and follows, and its requests."""

    def __init__(self, hub: Hub, connection: ServerConnection, login: str = "") -> None:
        self.hub = hub
        self.connection = connection
        self.login = login
        """The key of the dashboard session this connection authenticated with (to close it when that ends)."""
        self.watching = False
        self.follows: dict[str, asyncio.Task[None]] = {}
        self._latest: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def serve(self) -> None:
        self.hub.sessions.add(self)
        writer = asyncio.create_task(self._write_latest())
        try:
            await self.send({"type": "hello", "queue": self.hub.reader.queue})
            if not self.hub.status["redis"]:
                await self.send(self.hub.status)
            async for message in self.connection:
                await self.dispatch(message)
        except ConnectionClosed:
            pass
        finally:
            self.hub.sessions.discard(self)
            for task in [writer, *self.follows.values(), *self._tasks]:
                task.cancel()
            await asyncio.gather(writer, *self.follows.values(), *self._tasks, return_exceptions=True)

    async def send(self, message: dict[str, Any]) -> None:
        await self.connection.send(encode(message))

    def offer(self, kind: str, payload: str) -> None:
        """Queue ``payload`` replacing any unsent message of the same ``kind``."""
        self._latest[kind] = payload
        self._wake.set()

    async def _write_latest(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._latest:
                kind = next(iter(self._latest))
                await self.connection.send(self._latest.pop(kind))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def refresh_record(self, task_id: str) -> None:
        self._spawn(self._send_record(task_id))

    async def _send_record(self, task_id: str) -> None:
        with contextlib.suppress(redis.RedisError, ConnectionClosed):
            record = await self.hub.reader.record(task_id)
            if record is not None:
                await self.send({"type": "task", "record": record})

    async def dispatch(self, message: str | bytes) -> None:
        try:
            request = orjson.loads(message)
        except orjson.JSONDecodeError:
            await self.send({"type": "error", "message": "Messages must be JSON objects."})
            return
        if not isinstance(request, dict):
            await self.send({"type": "error", "message": "Messages must be JSON objects."})
            return
        op, task_id, req = request.get("op"), request.get("task"), request.get("req")
        if task_id is not None and not (isinstance(task_id, str) and TASK_ID.match(task_id)):
            await self.send({"type": "error", "req": req, "message": "That is not a task id."})
            return
        if op == "watch":
            self.watching = True
            self._spawn(self._send_snapshot())
        elif op == "unwatch":
            self.watching = False
        elif op == "follow" and isinstance(task_id, str):
            self._unfollow(task_id)
            if len(self.follows) >= MAX_FOLLOWS:
                self._unfollow(next(iter(self.follows)))
            self.follows[task_id] = asyncio.create_task(self._follow(task_id))
        elif op == "unfollow" and isinstance(task_id, str):
            self._unfollow(task_id)
        elif op == "submit":
            self._spawn(self._submit(request, req))
        elif op == "cancel" and isinstance(task_id, str):
            self._spawn(self._cancel(task_id, req))
        else:
            await self.send({"type": "error", "req": req, "message": f"Unknown request {op!r}."})

    def _unfollow(self, task_id: str) -> None:
        task = self.follows.pop(task_id, None)
        if task is not None:
            task.cancel()

    async def _send_snapshot(self) -> None:
        try:
            snapshot = await self.hub.reader.snapshot()
        except redis.RedisError as exc:
            self.offer("status", encode({"type": "status", "redis": False, "error": f"Redis is unreachable ({exc})."}))
            return
        self.hub.snapshot = snapshot
        self.offer("queue", encode({"type": "queue", **snapshot}))
        if self.hub.progress:
            self.offer("progress", encode({"type": "progress", "tasks": self.hub.progress}))

    async def _submit(self, request: dict[str, Any], req: Any) -> None:
        try:
            spec = request["spec"] if isinstance(request.get("spec"), dict) else spec_from_form(request.get("form"))
            handle = await asyncio.to_thread(self.hub.runner.submit, spec)
        except (SpecError, ValueError, RedisUnavailable) as exc:
            reply: dict[str, Any] = {"ok": False, "error": str(exc)}
        except redis.RedisError as exc:
            reply = {"ok": False, "error": f"Could not submit: Redis failed ({exc})."}
        else:
            reply = {"ok": True, "id": handle.id}
        with contextlib.suppress(ConnectionClosed):
            await self.send({"type": "reply", "req": req, **reply})

    async def _cancel(self, task_id: str, req: Any) -> None:
        try:
            outcome = await asyncio.to_thread(self.hub.runner.cancel, task_id, "Cancelled from the dashboard.")
        except UnknownTask as exc:
            reply: dict[str, Any] = {"ok": False, "error": str(exc)}
        except redis.RedisError as exc:
            reply = {"ok": False, "error": f"Could not cancel: Redis failed ({exc})."}
        else:
            reply = {"ok": True, "outcome": outcome, "message": CANCEL_WORDS.get(outcome, outcome)}
        with contextlib.suppress(ConnectionClosed):
            await self.send({"type": "reply", "req": req, **reply})

    async def _follow(self, task_id: str) -> None:
        try:
            await self._follow_log(task_id)
        except ConnectionClosed:
            pass
        except Exception:  # one broken follow must not end the session
            log.exception("following task %s failed", task_id)
            with contextlib.suppress(ConnectionClosed):
                await self.send(
                    {
                        "type": "error",
                        "task": task_id,
                        "message": "The dashboard failed reading this task; see its log.",
                    }
                )

    async def _follow_log(self, task_id: str) -> None:
        """The record, then the log's newest page (reset), then new entries (append) until the result."""
        record = await self.hub.reader.record(task_id)
        if record is None:
            await self.send(
                {
                    "type": "missing",
                    "task": task_id,
                    "message": f"No task {task_id} in this Redis (it may have expired).",
                }
            )
            return
        await self.send({"type": "task", "record": record})
        agent = record["spec"].get("agent")
        transcript: Transcript | None = None
        async with contextlib.aclosing(Follower(self.hub.client, task_id).batches()) as batches:
            async for batch in batches:
                if batch.error is not None:
                    await self.send(
                        {"type": "error", "task": task_id, "message": f"Lost Redis ({batch.error}); retrying."}
                    )
                    continue
                if batch.reset:  # a page that does not follow what was shown: its transcript starts afresh
                    first = batch.entries[0] if batch.entries else None
                    transcript = await logview.transcript_for(self.hub.client, task_id, agent, first)
                await self.send(_log_message(task_id, batch, logview.make_chunks(batch.entries, transcript)))
                if batch.ended:
                    await self._send_record(task_id)


def _log_message(task_id: str, batch: Batch, chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``log`` message: a *reset* replaces the page's output (and says what it skipped), an *append* adds."""
    message: dict[str, Any] = {"type": "log", "task": task_id, "mode": "reset" if batch.reset else "append"}
    message["chunks"] = chunks
    if batch.reset:
        message["more_before"] = batch.more_before
    message["progress"] = logview.latest_progress(batch.entries)
    if batch.reset and batch.skipped:
        message["skipped_frames"] = batch.skipped
    if batch.expired:
        message["expired"] = True
    return message
