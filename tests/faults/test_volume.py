"""Output volume end to end: huge, long-lined, line-heavy, undecodable and unterminated output."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner import keys
from runner.client import Runner
from runner.stack import LocalStack, RedisServer
from tests.support.processes import PeakRss

PY = sys.executable
MB = 1024 * 1024


@pytest.fixture(scope="module")
def volume_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, Runner]]:
    """A stack on a Redis of its own without persistence: a gigabyte of log is not for the shared server's disk."""
    server = RedisServer(tmp_path_factory.mktemp("volume-redis"), appendonly=False).start()
    stack = LocalStack(redis_url=server.url, queue="volume")
    stack.start()
    client = Runner(redis_url=server.url, queue="volume")
    try:
        yield stack, client
    finally:
        stack.stop()
        server.stop()


def output_of(client: Runner, task_id: str, stream: str = "stdout") -> str:
    return "".join(
        e["data"] for e in client.handle(task_id).events(timeout=120) if e["type"] == "output" and e["stream"] == stream
    )


def test_a_gigabyte_streams_end_to_end_with_bounded_memory(volume_stack: tuple[LocalStack, Runner]) -> None:
    """1 GiB through handler, worker and Redis to a reader; handler and work-horse each stay under 150 MB RSS."""
    stack, client = volume_stack
    assert stack.handler is not None and stack.worker is not None
    script = "import sys\nblock = b'x' * 1048575 + b'\\n'\nfor _ in range(1024): sys.stdout.buffer.write(block)"
    with PeakRss(stack.handler.pid) as handler_rss, PeakRss(stack.worker.pid, include_children=True) as worker_rss:
        handle = client.submit(agent="command", argv=[PY, "-c", script], timeout=600)
        received = 0
        seqs = 0
        for event in handle.events(timeout=600):
            if event["type"] == "output":
                assert event["seq"] == seqs
                seqs += 1
                received += len(event["data"])
        result = handle.result(timeout=10)
    client.redis.delete(keys.log_key(handle.id))
    assert result.success and received == 1024 * MB
    assert result.output_truncated is True
    # Peaks observed on the reference machine are far lower (see docs/reliability.md); this bound
    # catches unbounded buffering, which would reach hundreds of MB or more.
    assert handler_rss.peak < 150 * MB, handler_rss.peak
    assert worker_rss.peak < 150 * MB, worker_rss.peak


def test_a_ten_megabyte_line_arrives_intact(volume_stack: tuple[LocalStack, Runner]) -> None:
    _, client = volume_stack
    handle = client.submit(
        agent="command", argv=[PY, "-c", "import sys; sys.stdout.write('ab' * (5 * 1048576) + 'END')"]
    )
    assert output_of(client, handle.id) == "ab" * (5 * MB) + "END"
    assert handle.result(timeout=10).success


def test_a_million_short_lines_arrive_in_order(volume_stack: tuple[LocalStack, Runner]) -> None:
    _, client = volume_stack
    handle = client.submit(agent="command", argv=["seq", "1000000"])
    text = output_of(client, handle.id)
    assert text == "".join(f"{n}\n" for n in range(1, 1_000_001))


def test_invalid_utf8_becomes_replacement_characters_and_unterminated_output_is_kept(
    volume_stack: tuple[LocalStack, Runner], tmp_path: Path
) -> None:
    _, client = volume_stack
    script = "import sys; sys.stdout.buffer.write(b'ok \\xff\\xfe bad \\xe2\\x82 cut'); sys.stderr.buffer.write(b'no newline')"
    handle = client.submit(agent="command", argv=[PY, "-c", script])
    assert output_of(client, handle.id) == "ok \ufffd\ufffd bad \ufffd cut"
    result = handle.result(timeout=10)
    assert result.output == "ok \ufffd\ufffd bad \ufffd cut" and result.stderr == "no newline"
