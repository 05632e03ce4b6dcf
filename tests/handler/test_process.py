"""ProcessRun under asyncio with real child processes: output, exit status, environment, and killing whole trees."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import orjson
import pytest

from handler.process import ProcessRun, RunLimits
from handler.proctree import MARKER_VAR
from handler.protocol import EXECUTABLE_NOT_FOUND, SPAWN_FAILED, ExecuteParams, ProtocolError
from tests.handler.helpers import (
    PY,
    ROOT,
    Recorder,
    arun,
    expected_mixed,
    marked_token,
    mixed_writer,
    payload,
    run_process,
    spawner,
    trickle,
)
from tests.support.processes import pids_with_marker, wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def token() -> Iterator[str]:
    with marked_token() as value:
        yield value


def test_mixed_stdout_and_stderr_reassemble_byte_exact_with_gapless_seq() -> None:
    """Interleaved stdout/stderr (split mid-character) rebuild exactly per stream; seq runs 0..n-1 across both."""
    result, out = arun(run_process(mixed_writer(1, 4_000_000, 2_000_000), cwd=str(ROOT)))
    expected_out, expected_err = expected_mixed(1, 4_000_000, 2_000_000)
    assert result.exit_code == 0
    assert out.text("stdout").encode() == expected_out
    assert out.text("stderr").encode() == expected_err
    assert [frame.seq for frame in out.frames] == list(range(len(out.frames)))
    assert {frame.stream for frame in out.frames} == {"stdout", "stderr"}
    assert (result.stdout_bytes, result.stderr_bytes) == (len(expected_out), len(expected_err))


def test_a_ten_megabyte_single_line_arrives_intact() -> None:
    """One 10 MB line without a newline until its end comes through unchanged (split into frames, not lines)."""
    line = payload(2, 10_000_000, newlines=False) + b"\n"
    code = "import sys; from tests.handler.helpers import payload; sys.stdout.buffer.write(payload(2, 10_000_000, newlines=False) + b'\\n')"
    result, out = arun(run_process([PY, "-c", code], cwd=str(ROOT)))
    assert result.exit_code == 0
    assert out.text().encode() == line
    assert len(out.frames) > 1  # the line was not held back to be sent as one line


def test_multibyte_characters_written_byte_by_byte_are_not_mangled() -> None:
    """A 4-byte emoji (and 2/3-byte characters) arriving one byte per read decode to the original text."""
    text = "a😀b€cé😀"
    result, out = arun(run_process(trickle(text)))
    assert result.exit_code == 0
    assert out.text() == text
    assert result.stdout_bytes == len(text.encode())


def test_invalid_utf8_becomes_replacement_characters() -> None:
    """Bytes that are not UTF-8 (including a truncated sequence at EOF) arrive as U+FFFD, the rest unchanged."""
    raw = b"ok \xff\xfe end \xc3( \xf0\x9f"
    code = f"import sys; sys.stdout.buffer.write({raw!r})"
    result, out = arun(run_process([PY, "-c", code]))
    assert out.text() == raw.decode("utf-8", "replace")
    assert out.text() == "ok \ufffd\ufffd end \ufffd( \ufffd"
    assert result.stdout_bytes == len(raw)


@pytest.mark.parametrize("code", [0, 3, 255])
def test_exit_code_is_reported(code: int) -> None:
    """The child's exit status comes back as exit_code, with no signal."""
    result, _ = arun(run_process([PY, "-c", f"import sys; sys.exit({code})"]))
    assert (result.exit_code, result.signal, result.timed_out, result.cancelled) == (code, None, False, False)


def test_a_child_killed_by_sigkill_reports_signal_9_and_no_exit_code() -> None:
    """Death by signal is reported as the signal number, with exit_code null."""
    result, _ = arun(run_process([PY, "-c", "import os; os.kill(os.getpid(), 9)"]))
    assert (result.exit_code, result.signal) == (None, signal.SIGKILL)


@pytest.mark.parametrize("argv0", ["ccx-no-such-program-x7", "/nonexistent/ccx-no-such-program-x7"])
def test_a_missing_executable_is_a_clear_error(argv0: str) -> None:
    """A missing program (bare name or path) fails to start with -32002 and a message naming it."""
    run = ProcessRun(ExecuteParams(argv=[argv0]), Recorder().emit)
    with pytest.raises(ProtocolError) as caught:
        arun(run.start())
    assert caught.value.code == EXECUTABLE_NOT_FOUND
    assert argv0 in caught.value.message
    assert run.pid is None


def test_a_missing_working_directory_is_a_clear_error(tmp_path) -> None:
    """A cwd that does not exist fails to start with -32003 and a message naming the directory."""
    missing = str(tmp_path / "gone")
    run = ProcessRun(ExecuteParams(argv=[PY, "-c", "pass"], cwd=missing), Recorder().emit)
    with pytest.raises(ProtocolError) as caught:
        arun(run.start())
    assert caught.value.code == SPAWN_FAILED
    assert missing in caught.value.message
    assert run.pid is None


def test_the_child_runs_in_the_requested_directory(tmp_path) -> None:
    """``cwd`` sets the child's working directory."""
    _, out = arun(run_process([PY, "-c", "import os; print(os.getcwd())"], cwd=str(tmp_path)))
    assert out.text().strip() == str(tmp_path)


def test_env_is_merged_over_the_handler_environment_and_null_removes(monkeypatch: pytest.MonkeyPatch) -> None:
    """``env`` adds and overrides variables, null removes one, everything else is inherited."""
    monkeypatch.setenv("CCX_TEST_KEEP", "kept")
    monkeypatch.setenv("CCX_TEST_OVERRIDE", "old")
    monkeypatch.setenv("CCX_TEST_REMOVE", "doomed")
    env = {"CCX_TEST_ADD": "added", "CCX_TEST_OVERRIDE": "new", "CCX_TEST_REMOVE": None}
    code = "import json, os; print(json.dumps(dict(os.environ)))"
    _, out = arun(run_process([PY, "-c", code], env=env))
    seen = orjson.loads(out.text())
    assert seen["CCX_TEST_KEEP"] == "kept"
    assert seen["CCX_TEST_ADD"] == "added"
    assert seen["CCX_TEST_OVERRIDE"] == "new"
    assert "CCX_TEST_REMOVE" not in seen
    assert seen["PATH"] == os.environ["PATH"]
    assert seen[MARKER_VAR]  # every run is marked, so its escapees can be found


def test_stdin_is_delivered_then_closed() -> None:
    """The ``stdin`` text reaches the child, followed by EOF (a child reading to EOF finishes)."""
    text = "line one\nzwei ü 😀\n" * 1000
    _, out = arun(run_process([PY, "-c", "import sys; sys.stdout.write(sys.stdin.read()[::-1])"], stdin=text))
    assert out.text() == text[::-1]


def test_without_stdin_the_child_reads_eof_at_once() -> None:
    """With no ``stdin`` param the child's stdin is empty, never the handler's own."""
    result, out = arun(run_process([PY, "-c", "import sys; print(repr(sys.stdin.read()))"]))
    assert result.exit_code == 0
    assert out.text().strip() == "''"


def test_timeout_counts_wall_clock_even_while_output_flows() -> None:
    """A child that keeps printing is still stopped at its timeout and reported as timed out."""
    code = "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.01)"
    result, out = arun(run_process([PY, "-c", code], timeout=0.5))
    assert result.timed_out and not result.cancelled
    assert result.exit_code is None and result.signal == signal.SIGTERM
    assert "tick" in out.text()


@pytest.mark.parametrize("how", ["setsid", "nohup", "double-fork"])
def test_timeout_kills_grandchildren_that_escaped_the_process_group(how: str, token: str, tmp_path) -> None:
    """On timeout, a grandchild started with setsid / nohup & / a double fork dies with the run."""
    ready = tmp_path / "ready"

    async def scenario() -> None:
        out = Recorder()
        run = ProcessRun(ExecuteParams(argv=spawner(token, how, ready_file=str(ready)), timeout=0.3), out.emit)
        await run.start()
        # The timeout counts from wait(): start it once the escapee certainly runs, however loaded the machine.
        await asyncio.to_thread(wait_until, ready.exists, 15, what="the grandchild to start")
        result = await run.wait()
        assert result.timed_out and not result.cancelled
        assert "ready" in out.text()

    arun(scenario())
    wait_until(lambda: not pids_with_marker(token), 5, what="every process of the run to be gone")


@pytest.mark.parametrize("how", ["setsid", "nohup", "double-fork"])
def test_cancel_kills_grandchildren_that_escaped_the_process_group(how: str, token: str) -> None:
    """cancel() stops the run and every escaped grandchild; the result says cancelled, not timed out."""

    async def scenario() -> None:
        out = Recorder()
        run = ProcessRun(ExecuteParams(argv=spawner(token, how)), out.emit)
        await run.start()
        waiting = asyncio.create_task(run.wait())
        await out.wait_for_text("ready")
        # Exactly the child and its escaped grandchild: by "ready" the spawner has reaped any shell or middle fork
        # that carried the token (subprocess.run, os.wait) and the grandchild has exec'd (it wrote "up").
        pids = pids_with_marker(token)
        assert run.popen is not None and run.popen.pid in pids and len(pids) == 2
        run.cancel()
        result = await waiting
        assert result.cancelled and not result.timed_out
        assert result.exit_code is None and result.signal == signal.SIGTERM

    arun(scenario())
    wait_until(lambda: not pids_with_marker(token), 5, what="every process of the run to be gone")


@pytest.mark.parametrize("how", ["background", "setsid", "double-fork"])
def test_a_normal_exit_also_kills_children_left_behind(how: str, token: str) -> None:
    """A child that exits 0 leaving a (possibly escaped) process running: the run ends, and so does the leftover."""
    result, out = arun(run_process(spawner(token, how, then="exit")))
    assert (result.exit_code, result.timed_out, result.cancelled) == (0, False, False)
    assert out.text() == "ready\n"
    wait_until(lambda: not pids_with_marker(token), 5, what="the leftover child to be gone")


def test_a_child_ignoring_sigterm_is_killed_after_the_grace_period(token: str) -> None:
    """SIGTERM first; a child that ignores it gets SIGKILL once ``grace`` has passed."""
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(1000)"

    async def scenario() -> None:
        out = Recorder()
        run = ProcessRun(ExecuteParams(argv=[PY, "-c", code, token]), out.emit, RunLimits(grace=0.3))
        await run.start()
        waiting = asyncio.create_task(run.wait())
        await out.wait_for_text("ready")
        run.cancel()
        result = await waiting
        assert result.cancelled
        assert (result.exit_code, result.signal) == (None, signal.SIGKILL)

    arun(scenario())
    assert not pids_with_marker(token)


def test_output_that_cannot_be_delivered_stops_the_run(token: str) -> None:
    """When ``emit`` fails (the client is gone) the run is stopped with its whole tree instead of running unwatched."""

    async def scenario() -> None:
        async def emit(stream: str, seq: int, data: str) -> None:
            if "ready" in data:
                raise ConnectionError("receiver gone")

        run = ProcessRun(ExecuteParams(argv=spawner(token, "setsid")), emit)
        await run.start()
        result = await run.wait()
        assert result.cancelled

    arun(scenario())
    wait_until(lambda: not pids_with_marker(token), 5, what="every process of the run to be gone")


def test_a_slow_receiver_gets_every_byte_even_after_the_child_exits() -> None:
    """Output still in the pipe when the child exits is delivered, however much longer than the drain window the receiver takes."""
    limits = RunLimits(drain_after_exit=0.05, buffered_chars=64 * 1024)
    expected = payload(3, 3_000_000)
    code = "import sys; from tests.handler.helpers import payload; sys.stdout.buffer.write(payload(3, 3_000_000))"

    async def scenario() -> str:
        received: list[str] = []

        async def emit(stream: str, seq: int, data: str) -> None:
            await asyncio.sleep(limits.drain_after_exit * 3)  # a receiver on a slow link
            received.append(data)

        run = ProcessRun(ExecuteParams(argv=[PY, "-c", code], cwd=str(ROOT)), emit, limits)
        await run.start()
        result = await run.wait()
        assert result.stdout_bytes == len(expected)
        return "".join(received)

    assert arun(scenario()).encode() == expected


def test_closing_a_pipe_reader_twice_never_closes_a_reused_fd() -> None:
    """A reader closed again must not close the fd number the process has since reused (another client's socket)."""
    from handler.process import RunLimits, _Outbox, _PipeReader

    async def scenario() -> None:
        read_end, write_end = os.pipe()
        reader = _PipeReader(read_end, "stdout", _Outbox(RunLimits(), lambda: None))
        reader.close()
        reused, other = os.pipe()  # the lowest free numbers: read_end's is free again
        try:
            reader.close()
            os.fstat(reused)  # still open
        finally:
            for fd in (reused, other, write_end):
                os.close(fd)

    arun(scenario())
