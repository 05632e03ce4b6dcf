"""The relay (runner/relay.py) against a real handler: an attempt after one whose answer never came collects
the outcome the handler kept, instead of running the task a second time."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
import redis.asyncio
from websockets.asyncio.server import ServerConnection, serve

from handler.protocol import (
    CONFIG_NOT_ALLOWED,
    ENV_NOT_ALLOWED,
    EXECUTABLE_NOT_ALLOWED,
    EXECUTABLE_NOT_FOUND,
    INTERNAL_ERROR,
    NOTHING_KEPT,
    SHUTTING_DOWN,
    STALE_FENCE,
)
from runner import keys
from runner.agents import get_agent
from runner.config import Settings
from runner.errors import HandlerError, HandlerUnreachable
from runner.relay import CANCELLED_UNANSWERED, NOTHING_KEPT_RUN, STALE_RUN, refusal, relay
from runner.spec import TaskSpec
from runner.stack import free_port
from tests.handler.helpers import PY, TOKEN, eventually, serving
from tests.handler.test_kept import COUNTED


def test_an_attempt_collects_the_outcome_of_a_run_that_ended_while_its_worker_was_cut_off(
    redis_url: str, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    spec = TaskSpec(agent="command", argv=[PY, "-c", COUNTED, str(runs)])

    async def scenario() -> None:
        async with serving() as served:
            # The first attempt's work-horse: its run ends on the handler, then its connection dies unread.
            cut = await served.client()
            assert (await cut.run("a", spec.argv or [], run="R1")).result["exit_code"] == 0
            cut.connection.transport.abort()
            await eventually(lambda: not served.handler.sessions, 10, what="the cut-off session to end")
            settings = Settings(redis_url=redis_url, handler_url=served.url, handler_token=TOKEN)
            result = await relay("task-1", spec, settings, run_id="R2", collect=["R1"])
            assert (result.success, result.exit_code, result.output) == (True, 0, "first\nlast\n")
            assert result.stderr == "oops\n"
            assert runs.read_text() == "ran\n", "the command ran once"

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_collect_only_attempt_that_finds_nothing_kept_runs_nothing(redis_url: str, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    spec = TaskSpec(agent="command", argv=[PY, "-c", COUNTED, str(runs)])

    async def scenario() -> None:
        async with serving() as served:
            settings = Settings(redis_url=redis_url, handler_url=served.url, handler_token=TOKEN)
            result = await relay("task-2", spec, settings, run_id="R2", collect=["R1"], collect_only=True)
            assert (result.success, result.interrupted, result.error) == (False, False, NOTHING_KEPT_RUN)
            assert not runs.exists(), "nothing ran"

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_an_unreachable_handler_is_raised_saying_where_and_how_long_it_was_waited_for(redis_url: str) -> None:
    """Past CCX_HANDLER_WAIT the relay ends no attempt, fresh or after unread runs: it raises, naming the URL and
    the wait, for the work-horse to hand the task back (runner/job.py)."""
    url = f"ws://127.0.0.1:{free_port()}/ws"  # nothing listens there
    settings = Settings(redis_url=redis_url, handler_url=url, handler_token=TOKEN, handler_wait=0.3)
    spec = TaskSpec(agent="command", argv=["true"])
    for collect in (None, ["R1"]):
        with pytest.raises(HandlerUnreachable) as raised:
            asyncio.run(asyncio.wait_for(relay("t-1", spec, settings, run_id="R2", collect=collect), 30))
        assert str(raised.value).startswith(f"Could not reach the handler at {url} for 0.3 s (CCX_HANDLER_WAIT; ")
        assert str(raised.value).endswith("start it with `ccx handler` (or `ccx up`), or set CCX_HANDLER_URL.")


def test_a_cancel_whose_answer_is_lost_with_the_connection_ends_the_task_cancelled_saying_so(
    redis_url: str,
) -> None:
    """Someone cancels a running task, and the connection to the handler dies before the answer comes (a
    partition, say): the task ends cancelled, saying its end is unknown, not failed for a closed connection
    (chaos seed 101), and it is not run again (not interrupted)."""
    asked: list[str] = []

    async def handler(connection: ServerConnection) -> None:
        async for message in connection:
            method = orjson.loads(message)["method"]
            asked.append(method)
            if method == "execute":
                await connection.send(orjson.dumps({"jsonrpc": "2.0", "method": "process.started",
                                                    "params": {"pid": 4242}}).decode())  # fmt: skip
            elif method == "cancel":
                connection.transport.abort()  # the answer never comes

    async def scenario() -> None:
        async with serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            settings = Settings(redis_url=redis_url, handler_url=f"ws://127.0.0.1:{port}/ws", handler_wait=1)
            client = redis.asyncio.Redis.from_url(redis_url)
            try:
                running = asyncio.create_task(relay("t-cancelled", TaskSpec(agent="command", argv=["true"]), settings))
                await eventually(lambda: asked == ["execute"], 10, what="the run to start")
                await client.set(keys.cancel_key("t-cancelled"), "cancelled by the test")
                result = await asyncio.wait_for(running, 30)
            finally:
                await client.aclose()
        assert asked == ["execute", "cancel"]
        assert (result.cancelled, result.interrupted, result.success) == (True, False, False)
        assert result.error == CANCELLED_UNANSWERED

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_each_error_the_handler_answers_execute_with_is_one_sentence_and_says_if_the_run_was_interrupted() -> None:
    """The code -> sentence table: refusals that already say what to do are passed on, a stale fence and a handler
    shutting down interrupt the run (the task runs again), anything else fails the task naming the handler."""
    claude, command = get_agent("claude"), get_agent("command")
    own = "The handler's own sentence."
    assert refusal(HandlerError(EXECUTABLE_NOT_FOUND, own), claude, "claude") == (
        "Claude Code CLI not found ('claude') on the handler's machine: install it with "
        "`npm install -g @anthropic-ai/claude-code` or set CCX_CLAUDE_BIN to its path.",
        False,
    )
    assert refusal(HandlerError(EXECUTABLE_NOT_FOUND, own), command, "nope") == (
        "Command not found: 'nope' is not on the handler's PATH; install it on the handler's machine or give its "
        "full path.",
        False,
    )
    assert refusal(HandlerError(EXECUTABLE_NOT_ALLOWED, own), command, "x") == (own, False)
    assert refusal(HandlerError(CONFIG_NOT_ALLOWED, own), command, "x") == (own, False)
    assert refusal(HandlerError(SHUTTING_DOWN, own), command, "x") == (own, True)
    assert refusal(HandlerError(STALE_FENCE, own), command, "x") == (STALE_RUN, True)
    assert refusal(HandlerError(NOTHING_KEPT, own), command, "x") == (NOTHING_KEPT_RUN, False)
    for code in (ENV_NOT_ALLOWED, INTERNAL_ERROR, 12345):
        assert refusal(HandlerError(code, own), command, "x") == (f"The handler could not run the task: {own}", False)


def test_a_frame_that_breaks_the_protocol_ends_the_run_as_interrupted_saying_what_was_wrong(redis_url: str) -> None:
    """A handler that sends what the worker cannot read (not a cc-execute handler, or another version): the run
    is given up in one sentence naming the handler and what was wrong, as for a handler gone away, not a
    traceback out of the work-horse."""

    async def handler(connection: ServerConnection) -> None:
        async for _ in connection:
            await connection.send('{"jsonrpc": "2.0", "method": "process.output", "params": {"seq": 0}}')

    async def scenario() -> None:
        async with serve(handler, "127.0.0.1", 0) as server:
            url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
            settings = Settings(redis_url=redis_url, handler_url=url, handler_wait=1)
            result = await relay("t-garbled", TaskSpec(agent="command", argv=["true"]), settings)
        assert (result.success, result.interrupted, result.cancelled) == (False, True, False)
        assert result.error == (
            f"The handler at {url} sent a message this worker cannot read (Invalid params: process.output needs "
            "'stream' (stdout or stderr), 'seq' (a whole number) and 'data' (a string)): check that "
            "CCX_HANDLER_URL names a cc-execute handler of this version."
        )

    asyncio.run(asyncio.wait_for(scenario(), 60))
