"""Generated bad input and connection churn against a real handler process: it answers and keeps serving."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.handler.helpers import Client, HandlerProcess, arun

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# Requests that look almost right: the real method names and field names with arbitrary values.
ALMOST = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "1.0", 2]) | JSON,
        "id": st.integers() | st.text(max_size=5) | JSON,
        "method": st.sampled_from(["execute", "cancel", "process.output", ""]) | JSON,
        "params": st.fixed_dictionaries(
            {},
            optional={
                "argv": st.lists(st.text(max_size=6), max_size=3) | JSON,
                "cwd": JSON,
                "env": JSON,
                "timeout": JSON,
                "stdin": JSON,
                "id": JSON,
            },
        )
        | JSON,
    },
)
MESSAGES = ALMOST.map(json.dumps) | JSON.map(json.dumps) | st.text(max_size=200) | st.binary(max_size=200)


@pytest.fixture(scope="module")
def handler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HandlerProcess]:
    # Only `true` may run: fuzzed argv must never execute anything else.
    process = HandlerProcess("--allow", "true", log=tmp_path_factory.mktemp("fuzz") / "handler.log")
    process.wait_ready()
    try:
        yield process
    finally:
        process.stop()


async def _exchange(handler: HandlerProcess, message: str | bytes) -> dict | None:
    """Send one message; return the reply to it, or None if the server closed the connection instead."""
    client = await Client.connect(handler.url, handler.token)
    try:
        await client.send(message)
        while True:
            reply = await client.receive(timeout=10)
            if "method" not in reply:
                return reply
    except ConnectionClosed:
        return None
    finally:
        await client.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=MESSAGES)
def test_any_message_gets_an_answer_or_a_close(handler: HandlerProcess, message: str | bytes) -> None:
    """Whatever arrives, the client gets a JSON-RPC answer (or a close); the handler never dies."""
    reply = arun(_exchange(handler, message))
    assert handler.proc.poll() is None, handler.log_text()
    if reply is not None:
        assert reply.get("jsonrpc") == "2.0"
        assert ("error" in reply) != ("result" in reply)
        if "error" in reply:
            assert isinstance(reply["error"]["code"], int) and reply["error"]["message"]


def test_thousands_of_dropped_connections_then_a_normal_run(handler: HandlerProcess) -> None:
    """2,000 connections opened and dropped (some mid-handshake, some mid-run): the server still serves."""

    async def churn() -> None:
        async def one(n: int) -> None:
            if n % 3 == 0:  # a raw TCP connection that sends half a handshake and vanishes
                _, writer = await asyncio.open_connection("127.0.0.1", handler.port)
                writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
                writer.close()
                return
            async with connect(
                handler.url,
                compression=None,
                proxy=None,
                additional_headers={"Authorization": f"Bearer {handler.token}"},
            ) as ws:
                if n % 3 == 1:
                    await ws.send(
                        json.dumps({"jsonrpc": "2.0", "id": n, "method": "execute", "params": {"argv": ["true"]}})
                    )

        for start in range(0, 2000, 100):
            await asyncio.gather(*(one(n) for n in range(start, start + 100)), return_exceptions=True)

        async with await Client.connect(handler.url, handler.token) as client:
            exchange = await client.run("after", ["true"], within=60)
            assert exchange.result["exit_code"] == 0

    arun(churn(), timeout=240)
    assert handler.proc.poll() is None


def test_huge_messages_are_refused_without_harm(handler: HandlerProcess) -> None:
    """A 20 MB message closes that connection (1009); the next client is served normally."""

    async def go() -> None:
        client = await Client.connect(handler.url, handler.token)
        with pytest.raises(ConnectionClosed):
            await client.send("x" * (20 * 1024 * 1024))
            await client.receive(timeout=10)
        async with await Client.connect(handler.url, handler.token) as again:
            assert (await again.run(1, ["true"])).result["exit_code"] == 0

    arun(go(), timeout=60)


def test_fuzzed_argv_runs_nothing_outside_the_allowlist(handler: HandlerProcess, tmp_path: Path) -> None:
    """With an allowlist, even a well-formed execute of another program is refused (-32001)."""
    marker = tmp_path / "ran"
    reply = arun(
        _exchange(
            handler,
            json.dumps({"jsonrpc": "2.0", "id": 1, "method": "execute", "params": {"argv": ["touch", str(marker)]}}),
        )
    )
    assert reply is not None and reply["error"]["code"] == -32001
    assert not marker.exists()
    assert sys.executable  # the handler runs under the same interpreter as the tests


NUMBERS = (
    st.floats()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.sampled_from([1e18, 1e20, 604800, 604800.0001, 366 * 86400, 366 * 86400 + 1])
)


@settings(max_examples=300, deadline=None)
@given(timeout=NUMBERS, idle_timeout=NUMBERS)
def test_any_number_for_a_timeout_is_accepted_within_bounds_or_refused_in_a_sentence(
    timeout: float, idle_timeout: float
) -> None:
    """No number gets past submit that the work-horse cannot hold (1e18 s killed it with a traceback)."""
    from runner.errors import SpecError
    from runner.spec import MAX_TIMEOUT, TaskSpec

    try:
        spec = TaskSpec.from_dict(
            {"agent": "command", "argv": ["true"], "timeout": timeout, "idle_timeout": idle_timeout}
        )
    except SpecError as exc:
        assert str(exc).count(".") >= 1 and "\n" not in str(exc)
        return
    assert 0 < spec.timeout <= MAX_TIMEOUT and spec.idle_timeout is not None and 0 <= spec.idle_timeout <= MAX_TIMEOUT


@settings(max_examples=300, deadline=None)
@given(at=NUMBERS | st.none() | st.text(max_size=30), in_=NUMBERS | st.none())
def test_any_time_for_later_is_due_within_the_horizon_or_refused_in_a_sentence(
    at: float | str | None, in_: float | None
) -> None:
    """`--in 1e20` was an OverflowError traceback at enqueue: nothing past the horizon gets through."""
    from runner.errors import SpecError
    from runner.schedules import MAX_AHEAD_SECONDS, due_time

    now = 1_790_000_000.0
    try:
        due = due_time(at, in_, now)
    except SpecError:
        return
    assert due is None or now < due <= now + MAX_AHEAD_SECONDS


CRON_FIELD = st.sampled_from(
    ["*", "0", "2", "4", "7", "30", "31", "60", "-1", "*/0", "*/7", "1-5", "5-1", "2,30", "L", "jan", "mon", "x"]
)


@settings(max_examples=300, deadline=None)
@given(fields=st.lists(CRON_FIELD, min_size=4, max_size=7))
@example(fields=["0", "0", "31", "2", "*"])  # 31 February: croniter could only say "failed to find next date"
@example(fields=["0", "0", "30", "2", "*", "0"])
def test_any_cron_expression_is_accepted_and_fires_or_refused_in_a_sentence(fields: list[str]) -> None:
    """Never croniter's bare "failed to find next date": an accepted expression has a next time."""
    import time

    from runner import schedules
    from runner.errors import SpecError

    try:
        expression = schedules.check_cron(" ".join(fields))
    except SpecError as exc:
        assert "not a cron expression" in str(exc) or "never fires" in str(exc)
        return
    assert schedules.next_slot(expression, time.time()) > time.time()
