"""The WebSocket server end to end: a real server on an ephemeral port, a real websockets client, real children."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.protocol import State
from websockets.uri import parse_uri

from handler import __version__, protocol
from handler.allowlist import Allowlist
from tests.handler.helpers import (
    NO_TOKEN,
    PY,
    ROOT,
    Client,
    HandlerProcess,
    arun,
    eventually,
    expected_mixed,
    marked_token,
    mixed_writer,
    payload,
    serving,
    spawner,
)
from tests.support.processes import pids_with_marker, wait_until
from tests.support.rawhttp import WEBSOCKET_UPGRADE, send_twice

pytestmark = pytest.mark.timeout(90)

ECHO = [PY, "-c", "import sys; print(' '.join(sys.argv[1:]))"]

# A child that logs "<name>+" when it starts and "<name>-" just before it exits, once `release` exists.
HOLDER = r"""
import os, sys, time
log, name, release = sys.argv[1:4]
def note(text):
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, text.encode() + b" ")
    os.close(fd)
note(name + "+")
deadline = time.monotonic() + 60
while not os.path.exists(release) and time.monotonic() < deadline:
    time.sleep(0.01)
note(name + "-")
"""


@pytest.fixture
def token() -> Iterator[str]:
    with marked_token() as value:
        yield value


async def _still_serves(client: Client, request_id: Any = "after") -> None:
    """A normal execute on ``client`` works from start to finish."""
    exchange = await client.run(request_id, [*ECHO, "still", "serving"])
    assert exchange.result["exit_code"] == 0
    assert exchange.output() == "still serving\n"


def _http_get(url: str) -> tuple[int, dict[str, Any]]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy from the environment
    try:
        with opener.open(url, timeout=10) as reply:
            return reply.status, orjson.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


# --------------------------------------------------------------------------- a run, end to end


def test_a_run_is_announced_streamed_and_answered() -> None:
    """process.started (with the pid), then output, then the result with every documented field."""

    async def scenario() -> None:
        async with serving() as served, await served.client() as client:
            exchange = await client.run(1, [PY, "-c", "import sys; print('out'); print('err', file=sys.stderr)"])
            first = exchange.messages[0]
            assert first["method"] == "process.started" and first["params"]["pid"] > 0
            assert exchange.output("stdout") == "out\n"
            assert exchange.output("stderr") == "err\n"
            result = exchange.result
            assert set(result) == {
                "exit_code",
                "signal",
                "timed_out",
                "cancelled",
                "duration_ms",
                "stdout_bytes",
                "stderr_bytes",
            }
            assert (result["exit_code"], result["signal"], result["timed_out"], result["cancelled"]) == (
                0,
                None,
                False,
                False,
            )
            assert (result["stdout_bytes"], result["stderr_bytes"]) == (4, 4)
            assert result["duration_ms"] >= 0

    arun(scenario())


def test_large_mixed_output_reassembles_byte_exact_over_the_wire() -> None:
    """30 MB interleaved on stdout and stderr: per-stream concatenation in seq order equals what the child wrote."""
    out_size, err_size = 20_000_000, 10_000_000

    async def scenario() -> None:
        async with serving() as served, await served.client() as client:
            exchange = await client.run("big", mixed_writer(5, out_size, err_size), within=60, cwd=str(ROOT))
            frames = exchange.notifications("process.output")
            assert [frame["seq"] for frame in frames] == list(range(len(frames)))  # from 0, no gaps, both streams
            expected_out, expected_err = expected_mixed(5, out_size, err_size)
            ordered = sorted(frames, key=lambda frame: frame["seq"])
            assert "".join(f["data"] for f in ordered if f["stream"] == "stdout").encode() == expected_out
            assert "".join(f["data"] for f in ordered if f["stream"] == "stderr").encode() == expected_err
            assert exchange.result["stdout_bytes"] == len(expected_out)
            assert exchange.result["stderr_bytes"] == len(expected_err)

    arun(scenario(), timeout=80)


def test_a_ten_megabyte_single_line_arrives_intact_over_the_wire() -> None:
    """A 10 MB line with no newline until its end reaches the client whole."""
    code = "import sys; from tests.handler.helpers import payload; sys.stdout.buffer.write(payload(6, 10_000_000, False) + b'\\n')"

    async def scenario() -> None:
        async with serving() as served, await served.client() as client:
            exchange = await client.run(1, [PY, "-c", code], cwd=str(ROOT))
            assert exchange.output().encode() == payload(6, 10_000_000, newlines=False) + b"\n"
            assert len(exchange.notifications("process.output")) > 1

    arun(scenario())


@pytest.mark.parametrize(
    ("code", "exit_code", "signal"),
    [("import sys; sys.exit(3)", 3, None), ("import os; os.kill(os.getpid(), 9)", None, 9)],
    ids=["exit-3", "sigkill"],
)
def test_exit_status_travels_as_exit_code_or_signal(code: str, exit_code: int | None, signal: int | None) -> None:
    """An exit code comes back with signal null; death by SIGKILL as signal 9 with exit_code null."""

    async def scenario() -> None:
        async with serving() as served, await served.client() as client:
            result = (await client.run(1, [PY, "-c", code])).result
            assert (result["exit_code"], result["signal"]) == (exit_code, signal)

    arun(scenario())


def test_env_merge_and_null_removal_over_the_wire(monkeypatch: pytest.MonkeyPatch) -> None:
    """JSON null in ``env`` removes a handler variable; strings add or override; the rest is inherited."""
    monkeypatch.setenv("CCX_TEST_REMOVE", "doomed")
    monkeypatch.setenv("CCX_TEST_KEEP", "kept")
    code = "import json, os; print(json.dumps(dict(os.environ)))"

    async def scenario() -> None:
        async with serving() as served, await served.client() as client:
            exchange = await client.run(1, [PY, "-c", code], env={"CCX_TEST_REMOVE": None, "CCX_TEST_ADD": "x"})
            seen = orjson.loads(exchange.output())
            assert "CCX_TEST_REMOVE" not in seen
            assert (seen["CCX_TEST_ADD"], seen["CCX_TEST_KEEP"]) == ("x", "kept")

    arun(scenario())


def test_stdin_param_is_delivered_then_closed_over_the_wire() -> None:
    """The child reads the ``stdin`` text and then EOF."""

    async def scenario() -> None:
        async with serving() as served, await served.client() as client:
            exchange = await client.run(1, [PY, "-c", "import sys; print(repr(sys.stdin.read()))"], stdin="héllo\n")
            assert exchange.output() == "'héllo\\n'\n"

    arun(scenario())


# --------------------------------------------------------------------------- refusals of execute


@pytest.mark.parametrize("argv0", ["ccx-no-such-program-x7", "/nonexistent/dir/ccx-no-such-program-x7"])
def test_a_missing_executable_is_error_32002_naming_it(argv0: str) -> None:
    """A program that does not exist is answered with -32002 naming it, and no process.started."""

    async def scenario() -> None:
        async with serving() as served, await served.client() as client:
            exchange = await client.run(4, [argv0, "--help"])
            assert exchange.answer["id"] == 4
            assert exchange.error["code"] == -32002
            assert argv0 in exchange.error["message"]
            assert not exchange.notifications("process.started")
            await _still_serves(client)

    arun(scenario())


@pytest.mark.parametrize("argv0", ["sh", "/bin/sh", PY, "rm"])
def test_the_default_allowlist_refuses_other_executables_with_32001(argv0: str) -> None:
    """With the default allowlist (claude, codex, gemini) anything else gets -32001 naming it and how to allow it."""

    async def scenario() -> None:
        async with serving(allow=Allowlist()) as served, await served.client() as client:
            exchange = await client.run(5, [argv0, "-c", "echo should-not-run"])
            assert exchange.answer["id"] == 5
            assert exchange.error["code"] == -32001
            assert argv0 in exchange.error["message"] and "--allow" in exchange.error["message"]
            assert not exchange.notifications("process.started")

    arun(scenario())


def test_a_missing_working_directory_is_error_32003_naming_it(tmp_path: Path) -> None:
    """A cwd that does not exist is answered with a spawn error naming the directory."""
    missing = str(tmp_path / "nowhere")

    async def scenario() -> None:
        async with serving() as served, await served.client() as client:
            exchange = await client.run(1, ECHO, cwd=missing)
            assert exchange.error["code"] == -32003
            assert missing in exchange.error["message"]
            await _still_serves(client)

    arun(scenario())


# --------------------------------------------------------------------------- stopping runs


def test_timeout_over_the_wire_reports_timed_out() -> None:
    """A run past its wall-clock ``timeout`` is stopped (SIGTERM) and answered with timed_out true."""

    async def scenario() -> None:
        async with serving() as served, await served.client() as client:
            result = (await client.run(1, [PY, "-c", "import time; time.sleep(1000)"], timeout=0.5)).result
            assert (result["timed_out"], result["cancelled"], result["exit_code"], result["signal"]) == (
                True,
                False,
                None,
                15,
            )

    arun(scenario())


@pytest.mark.parametrize("how", ["setsid", "nohup"])
def test_cancel_stops_the_run_and_its_escaped_grandchild(how: str, token: str) -> None:
    """cancel is acknowledged, the execute answer says cancelled, and the setsid/nohup grandchild is gone too."""

    async def scenario() -> None:
        async with serving() as served, await served.client() as client:
            await client.execute("job", spawner(token, how))
            exchange = await client.read_until_output("job", "ready")
            assert len(pids_with_marker(token)) >= 2
            await client.cancel("job", request_id="stop")
            assert await client.next_for("stop") == {"jsonrpc": "2.0", "id": "stop", "result": {"cancelling": True}}
            exchange = await client.finish("job", exchange=exchange)
            assert exchange.result["cancelled"] is True and exchange.result["timed_out"] is False
            await eventually(lambda: not pids_with_marker(token), 5, what="every process of the run to be gone")

    arun(scenario())


def test_cancel_of_an_unknown_run_is_error_32004() -> None:
    """Cancelling an id that is not running is answered with -32004."""

    async def scenario() -> None:
        async with serving() as served, await served.client() as client:
            await client.cancel("nope", request_id=3)
            answer = await client.next_for(3)
            assert answer["error"]["code"] == -32004

    arun(scenario())


def test_a_second_execute_with_a_live_id_is_error_32005(token: str) -> None:
    """Reusing the id of a run still in progress on the connection is refused; the first run is unaffected."""

    async def scenario() -> None:
        async with serving() as served, await served.client() as client:
            await client.execute("dup", spawner(token, "background"))
            exchange = await client.read_until_output("dup", "ready")
            await client.execute("dup", ECHO)
            # The refusal carries the same id: tell it from the run's own messages by its shape.
            while "error" not in (message := await client.next_for("dup")):
                exchange.messages.append(message)
            assert message["error"]["code"] == -32005
            await client.cancel("dup")
            assert (await client.finish("dup", exchange=exchange)).result["cancelled"] is True

    arun(scenario())


@pytest.mark.parametrize("abrupt", [False, True], ids=["close", "abort"])
def test_a_client_disconnecting_mid_run_leaves_no_process(abrupt: bool, token: str) -> None:
    """Closing (or dropping) the connection mid-run kills the child and its setsid grandchild; the slot is freed."""

    async def scenario() -> None:
        async with serving() as served:
            client = await served.client()
            await client.execute(1, spawner(token, "setsid"))
            await client.read_until_output(1, "ready")
            assert len(pids_with_marker(token)) >= 2
            if abrupt:
                client.connection.transport.abort()
            else:
                await client.close()
            await eventually(lambda: not pids_with_marker(token), 15, what="every process of the run to be gone")
            await eventually(lambda: served.handler.slots.running == 0, 5, what="the slot to be released")
            async with await served.client() as other:
                await _still_serves(other)

    arun(scenario())


def test_a_client_that_stops_answering_pings_is_dropped_and_its_run_killed(token: str, tmp_path: Path) -> None:
    """A client that goes silent (no pongs, no reads) is dropped after the ping timeout, and its run dies with it."""
    ready = tmp_path / "ready"

    async def scenario() -> None:
        async with serving(ping_interval=0.2, ping_timeout=0.5) as served:
            # A hand-driven client: it answers pings only when we feed it data, and we never will.
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            silent = ClientProtocol(parse_uri(served.url))
            handshake = silent.connect()
            handshake.headers["Authorization"] = f"Bearer {served.handler.config.token}"
            silent.send_request(handshake)
            writer.write(b"".join(silent.data_to_send()))
            while silent.state is State.CONNECTING:
                silent.receive_data(await asyncio.wait_for(reader.read(65536), 10))
            assert silent.state is State.OPEN
            # Not under test: how long websockets then waits for the TCP close (close_timeout, 10 s by default).
            (session,) = await eventually(lambda: list(served.handler.sessions), what="the session")
            session.connection.close_timeout = 0.5
            silent.send_text(protocol.request("execute", {"argv": spawner(token, "setsid", ready_file=str(ready))}, 1))
            writer.write(b"".join(silent.data_to_send()))
            await eventually(ready.exists, 15, what="the run and its grandchild to start")
            await eventually(lambda: not pids_with_marker(token), 15, what="every process of the run to be gone")
            await eventually(lambda: not served.handler.sessions, 5, what="the session to end")
            writer.close()

    arun(scenario())


# --------------------------------------------------------------------------- queueing


def test_runs_from_several_clients_are_served_one_at_a_time_in_arrival_order(tmp_path: Path) -> None:
    """With max-concurrent 1, later clients get process.queued (positions 1, 2) and start only after the earlier run ended."""
    log, release = tmp_path / "log", tmp_path / "release"

    async def scenario() -> None:
        async with serving(max_concurrent=1) as served:
            a, b, c = [await served.client() for _ in range(3)]
            try:
                await a.execute("a", [PY, "-c", HOLDER, str(log), "A", str(release)])
                assert (await a.next_for("a"))["method"] == "process.started"
                await b.execute("b", [PY, "-c", HOLDER, str(log), "B", str(release)])
                assert await b.next_for("b") == {
                    "jsonrpc": "2.0",
                    "method": "process.queued",
                    "params": {"id": "b", "position": 1},
                }
                await c.execute("c", [PY, "-c", HOLDER, str(log), "C", str(release)])
                assert (await c.next_for("c"))["params"] == {"id": "c", "position": 2}
                assert (served.handler.slots.running, served.handler.slots.queued) == (1, 2)
                release.touch()
                for client, request_id in ((a, "a"), (b, "b"), (c, "c")):
                    exchange = await client.finish(request_id)
                    assert exchange.result["exit_code"] == 0
                assert log.read_text().split() == ["A+", "A-", "B+", "B-", "C+", "C-"]
            finally:
                for client in (a, b, c):
                    await client.close()

    arun(scenario())


def test_a_queued_run_can_be_cancelled_before_it_starts(tmp_path: Path) -> None:
    """Cancelling a run that waits for its turn answers cancelled at once; it never starts; the running one is unaffected."""
    log, release = tmp_path / "log", tmp_path / "release"

    async def scenario() -> None:
        async with serving(max_concurrent=1) as served, await served.client() as a, await served.client() as b:
            await a.execute("a", [PY, "-c", HOLDER, str(log), "A", str(release)])
            assert (await a.next_for("a"))["method"] == "process.started"
            await b.execute("b", [PY, "-c", HOLDER, str(log), "B", str(release)])
            assert (await b.next_for("b"))["method"] == "process.queued"
            await b.cancel("b", request_id="stop-b")
            assert (await b.next_for("stop-b"))["result"] == {"cancelling": True}
            exchange = await b.finish("b")
            assert exchange.result == {
                "exit_code": None,
                "signal": None,
                "timed_out": False,
                "cancelled": True,
                "duration_ms": 0.0,
                "stdout_bytes": 0,
                "stderr_bytes": 0,
            }
            assert not exchange.notifications("process.started")
            assert served.handler.slots.queued == 0
            release.touch()
            assert (await a.finish("a")).result["exit_code"] == 0
            assert log.read_text().split() == ["A+", "A-"]

    arun(scenario())


def test_healthz_reports_status_counts_version_and_uptime(tmp_path: Path) -> None:
    """GET /healthz is 200 JSON with status, running, queued, version and uptime_s, counting live runs."""
    release = tmp_path / "release"

    async def scenario() -> None:
        async with serving(max_concurrent=1) as served:
            url = f"http://127.0.0.1:{served.port}/healthz"
            status, body = await asyncio.to_thread(_http_get, url)
            assert status == 200
            assert set(body) == {"status", "running", "queued", "version", "uptime_s"}
            assert (body["status"], body["running"], body["queued"], body["version"]) == ("ok", 0, 0, __version__)
            assert body["uptime_s"] >= 0
            async with await served.client() as client:
                await client.execute("a", [PY, "-c", HOLDER, str(tmp_path / "log"), "A", str(release)])
                assert (await client.next_for("a"))["method"] == "process.started"
                await client.execute("b", ECHO)
                assert (await client.next_for("b"))["method"] == "process.queued"
                status, body = await asyncio.to_thread(_http_get, url)
                assert (status, body["running"], body["queued"]) == (200, 1, 1)
                release.touch()
                await client.finish("a")
                await client.finish("b")

    arun(scenario())


def test_other_paths_are_404() -> None:
    """Only /ws and /healthz exist."""

    async def scenario() -> None:
        async with serving() as served:
            status, body = await asyncio.to_thread(_http_get, f"http://127.0.0.1:{served.port}/other")
            assert status == 404 and "/ws" in body["error"]

    arun(scenario())


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("frame", "code", "answer_id"),
    [
        ("{not json", -32700, None),
        ("[]", -32600, None),
        ('[{"jsonrpc": "2.0", "id": 1, "method": "execute", "params": {"argv": ["x"]}}]', -32600, None),
        ('{"jsonrpc": "2.0", "id": 1}', -32600, 1),
        ('{"jsonrpc": "1.0", "id": 1, "method": "execute"}', -32600, 1),
        ('{"jsonrpc": "2.0", "id": {"x": 1}, "method": "execute"}', -32600, None),
        ('{"jsonrpc": "2.0", "method": "execute", "params": {"argv": ["echo"]}}', -32600, None),
        ('{"jsonrpc": "2.0", "id": 1, "method": "launch", "params": {}}', -32601, 1),
        ('{"jsonrpc": "2.0", "id": 1, "method": "execute", "params": [["echo", "hi"]]}', -32602, 1),
        ('{"jsonrpc": "2.0", "id": 1, "method": "execute", "params": {"argv": "echo hi"}}', -32602, 1),
        ('{"jsonrpc": "2.0", "id": 1, "method": "execute", "params": {"argv": ["echo"], "timeout": "9"}}', -32602, 1),
        ('{"jsonrpc": "2.0", "id": 1, "method": "execute", "params": {"argv": ["echo"], "env": {"A": 1}}}', -32602, 1),
        ('{"jsonrpc": "2.0", "id": 1, "method": "cancel", "params": {"id": true}}', -32602, 1),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "execute", "params": {"argv": ["echo"]}}', -32600, None),
    ],
    ids=[
        "not-json",
        "array",
        "batch",
        "no-method",
        "wrong-version",
        "object-id",
        "execute-without-id",
        "unknown-method",
        "positional-params",
        "argv-string",
        "timeout-string",
        "env-number",
        "cancel-bool-id",
        "binary-frame",
    ],
)
def test_a_bad_message_gets_an_error_and_the_connection_keeps_serving(
    frame: str | bytes, code: int, answer_id: Any
) -> None:
    """Malformed JSON, wrong shapes or types, unknown methods and binary frames are answered; the next execute works."""

    async def scenario() -> None:
        async with serving() as served, await served.client() as client:
            await client.send(frame)
            answer = await client.receive()
            assert answer["jsonrpc"] == "2.0"
            assert (answer["error"]["code"], answer["id"]) == (code, answer_id)
            assert answer["error"]["message"]
            await _still_serves(client)

    arun(scenario())


def test_an_oversized_message_closes_that_connection_with_1009_and_the_server_keeps_serving() -> None:
    """A message above the size limit closes the connection with 1009; new connections still work."""

    async def scenario() -> None:
        async with serving(max_message_bytes=64 * 1024) as served:
            client = await served.client()
            argv = [*ECHO, "x" * 100_000]
            await client.send({"jsonrpc": "2.0", "id": 1, "method": "execute", "params": {"argv": argv}})
            with pytest.raises(ConnectionClosed) as closed:
                await client.receive()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
            async with await served.client() as other:
                await _still_serves(other)

    arun(scenario())


# --------------------------------------------------------------------------- auth and binding


@pytest.mark.parametrize(
    "supplied", [NO_TOKEN, "wrong", "s3cret-but-longer", " "], ids=["none", "wrong", "prefix", "blank"]
)
def test_with_a_token_clients_without_the_right_one_get_401(supplied: str) -> None:
    """A handler with a token refuses the upgrade with HTTP 401 unless the bearer token matches."""

    async def scenario() -> None:
        async with serving(token="s3cret") as served:
            with pytest.raises(InvalidStatus) as refused:
                await served.client(token=supplied)
            assert refused.value.response.status_code == 401

    arun(scenario())


def test_with_a_token_the_right_one_is_let_in_and_health_needs_none() -> None:
    """The matching bearer token connects and runs; /healthz stays open for health checks."""

    async def scenario() -> None:
        async with serving(token="s3cret") as served:
            async with await served.client(token="s3cret") as client:
                await _still_serves(client)
            status, body = await asyncio.to_thread(_http_get, f"http://127.0.0.1:{served.port}/healthz")
            assert (status, body["status"]) == (200, "ok")

    arun(scenario())


def test_the_cli_refuses_a_public_address_without_a_token() -> None:
    """``python -m handler --host 0.0.0.0 --no-token`` exits with status 2 explaining why, and never listens."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCX_") or k == "CCX_CONFIG_DIR"}
    done = subprocess.run(
        [PY, "-m", "handler", "--host", "0.0.0.0", "--port", "0", "--no-token"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert "listening" not in done.stdout
    assert "Refusing to listen on 0.0.0.0 without a token" in done.stderr
    assert "--no-token" in done.stderr


def test_the_cli_serves_on_an_ephemeral_port_and_sigterm_stops_every_run(tmp_path: Path, token: str) -> None:
    """``python -m handler --port 0`` announces its address; on SIGTERM it ends the runs (escapees too), answers
    them with -32006 (an interruption, not a user's cancel: the worker runs the task again) and exits 0."""
    with HandlerProcess("--allow", "*", log=tmp_path / "handler.log") as handler:
        banner = handler.wait_ready()
        assert banner.startswith("ccx handler listening on ws://127.0.0.1:") and "/ws" in banner

        async def scenario() -> dict[str, Any]:
            async with await Client.connect(handler.url, handler.token) as client:
                await _still_serves(client)
                await client.execute("job", spawner(token, "setsid"))
                exchange = await client.read_until_output("job", "ready")
                handler.proc.terminate()
                return (await client.finish("job", exchange=exchange)).error

        error = arun(scenario())
        assert error["code"] == -32006 and "shut down while the task ran" in error["message"]
        assert handler.proc.wait(30) == 0
    wait_until(lambda: not pids_with_marker(token), 5, what="every process of the run to be gone")


# --------------------------------------------------------------------------- backpressure

WRITER = r"""
import os, sys
total, pattern = int(sys.argv[1]), sys.argv[2].encode()
big = pattern * (2**20 // len(pattern) + 2)
written = 0
while written < total:
    view = memoryview(big)[written % len(pattern) :][: min(2**20, total - written)]
    written += len(view)
    while view:
        view = view[os.write(1, view) :]
"""


def _blocked_writing_stdout(pid: int) -> bool:
    """True while ``pid`` sleeps inside write(2) on fd 1 (a full pipe)."""
    try:
        return Path(f"/proc/{pid}/syscall").read_text().startswith("1 0x1 ")
    except OSError:
        return False


def _bytes_written(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def test_a_client_that_stops_reading_keeps_the_handler_memory_bounded(tmp_path: Path) -> None:
    """A child writing 500 MB to a client that reads nothing stalls on a full pipe, handler RSS stays < 150 MB, then every byte arrives."""
    total = 500_000_000
    pattern = "".join(chr(33 + (i * 7919) % 94) for i in range(4093))  # printable, period not a power of two
    limit = 150 * 2**20

    with HandlerProcess("--allow", "*", log=tmp_path / "handler.log") as handler:
        handler.wait_ready()
        handler_process = psutil.Process(handler.proc.pid)

        async def scenario() -> tuple[int, int]:
            async with await Client.connect(handler.url, handler.token) as client:
                await client.execute(1, [PY, "-c", WRITER, str(total), pattern])
                started = await client.next_for(1)
                pid = started["params"]["pid"]
                # Read nothing until the child has been stuck in write(2) with no progress for a while.
                peak, last, still = 0, -1, 0
                deadline = time.monotonic() + 60
                while still < 25:
                    peak = max(peak, handler_process.memory_info().rss)
                    written = _bytes_written(pid)
                    assert written is not None, "the child finished while the client read nothing: no backpressure"
                    still = still + 1 if written == last and _blocked_writing_stdout(pid) else 0
                    last = written
                    assert time.monotonic() < deadline, "the child never blocked on its full stdout pipe"
                    await asyncio.sleep(0.02)
                assert last < total
                assert peak < limit, f"handler RSS reached {peak / 2**20:.0f} MB while the client was not reading"
                # Resume reading: every byte arrives, in order.
                reference = pattern * (2**21 // len(pattern) + 2)
                received = 0
                while "method" in (message := await client.next_for(1, timeout=60)):
                    if message["method"] != "process.output":
                        continue
                    data = message["params"]["data"]
                    offset = received % len(pattern)
                    assert data == reference[offset : offset + len(data)], f"corrupted output at byte {received}"
                    received += len(data)
                    if message["params"]["seq"] % 64 == 0:
                        peak = max(peak, handler_process.memory_info().rss)
                assert message["result"]["stdout_bytes"] == total
                return received, peak

        received, peak = arun(scenario(), timeout=85)
        assert received == total
        assert peak < limit, f"handler RSS reached {peak / 2**20:.0f} MB while streaming"


@pytest.mark.parametrize("origin", ["https://evil.example", "http://127.0.0.1:8765", "null"])
def test_a_browser_origin_is_refused_with_403_even_with_the_token(origin: str) -> None:
    """Any page may open ws://127.0.0.1 in a browser; an upgrade carrying Origin is refused unless listed."""

    async def scenario() -> None:
        async with serving() as served:
            with pytest.raises(InvalidStatus) as refused:
                await served.client(origin=origin)
            assert refused.value.response.status_code == 403
            assert b"--allow-origin" in refused.value.response.body

    arun(scenario())


def test_a_listed_origin_is_let_in_with_the_token_and_still_needs_it() -> None:
    async def scenario() -> None:
        async with serving(allowed_origins=frozenset({"https://app.example"})) as served:
            async with await served.client(origin="https://app.example") as client:
                await _still_serves(client)
            with pytest.raises(InvalidStatus) as refused:
                await served.client(token=NO_TOKEN, origin="https://app.example")
            assert refused.value.response.status_code == 401

    arun(scenario())


# --------------------------------------------------------------------------- fencing


# A child that leaves its pid in <dir>/<name>.pid, says whether a process of an earlier pid file is alive, then
# stays for <hold> seconds.
LONER = r"""
import os, sys, time, pathlib
directory, name, hold = pathlib.Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
def alive(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False
others = [int(p.read_text()) for p in directory.glob("*.pid")]
(directory / f"{name}.pid").write_text(str(os.getpid()))
print("overlap" if any(alive(pid) for pid in others) else "alone", flush=True)
time.sleep(hold)
"""


def test_a_newer_fencing_token_stops_the_older_run_first_and_an_older_token_is_refused(tmp_path: Path) -> None:
    """Two workers of one queue (the old one lost its lock): with --max-concurrent 2, the newer token's run
    starts only once the older token's run is gone, and the old worker cannot start another."""

    async def scenario() -> None:
        async with serving(max_concurrent=2) as served, await served.client() as old, await served.client() as new:
            await old.execute("a", [PY, "-c", LONER, str(tmp_path), "a", "60"], fence={"key": "q", "token": 1})
            first = await old.read_until_output("a", "alone\n")
            assert first.output() == "alone\n"
            exchange = await new.run("b", [PY, "-c", LONER, str(tmp_path), "b", "0"], fence={"key": "q", "token": 2})
            assert (exchange.output(), exchange.result["exit_code"]) == ("alone\n", 0)
            stopped = await old.finish("a")
            assert stopped.result["cancelled"] is True
            stale = await old.run("c", ["true"], fence={"key": "q", "token": 1})
            assert stale.error["code"] == -32008 and "stale" in stale.error["message"]
            other_queue = await old.run("d", ["true"], fence={"key": "other", "token": 1})
            assert other_queue.result["exit_code"] == 0

    arun(scenario(), 60)


@pytest.mark.parametrize("name", ["Host", "Origin", "Authorization"])
def test_a_header_sent_twice_is_a_400_saying_so_not_a_500(name: str) -> None:
    """Two Origin or Authorization headers made reading them raise (a 500); which copy a check reads would be a
    guess, and HTTP wants a 400 for two Hosts (RFC 9112, 3.2). Same values twice: only the repeat is wrong."""

    async def scenario() -> None:
        async with serving(allowed_origins=frozenset({"https://app.example"})) as served:
            headers = {
                "Host": f"127.0.0.1:{served.port}",
                "Origin": "https://app.example",
                "Authorization": f"Bearer {served.handler.config.token}",
                **WEBSOCKET_UPGRADE,
            }
            assert await asyncio.to_thread(send_twice, served.port, "GET", "/ws", headers, "") == (101, b"")
            status, body = await asyncio.to_thread(send_twice, served.port, "GET", "/ws", headers, name)
            assert (status, orjson.loads(body)) == (
                400,
                {"error": f"Bad request: the {name} header was sent more than once; send it once."},
            )

    arun(scenario())
