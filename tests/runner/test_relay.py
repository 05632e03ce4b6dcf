"""The relay (runner/relay.py) against a real handler: an attempt after one whose answer never came collects
the outcome the handler kept, instead of running the task a second time."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
import redis.asyncio
from websockets.asyncio.server import ServerConnection, serve

from runner import events
from runner.config import Settings
from runner.handler_client import HandlerUnreachable
from runner.relay import CANCELLED_UNANSWERED, NOTHING_KEPT_RUN, relay
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
                await client.set(events.cancel_key("t-cancelled"), "cancelled by the test")
                result = await asyncio.wait_for(running, 30)
            finally:
                await client.aclose()
        assert asked == ["execute", "cancel"]
        assert (result.cancelled, result.interrupted, result.success) == (True, False, False)
        assert result.error == CANCELLED_UNANSWERED

    asyncio.run(asyncio.wait_for(scenario(), 60))
