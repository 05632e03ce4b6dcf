"""Tests of the fake Anthropic API, alone and driven by the real Claude Code CLI.

Why both: the HTTP-level tests pin the wire format without needing npm, and
the CLI tests prove the stand-in is good enough for the real client, which is
what the rest of the suite relies on.  CLI tests skip (with the reason) only
when the CLI cannot be installed.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .claude_cli import claude_env, ensure_claude_cli, not_logged_in_env, unavailable_reason
from .fake_anthropic import FakeAnthropic, Reply, is_main_turn

CLI_TIMEOUT_S = 120.0
MAIN_BODY: dict[str, Any] = {
    "model": "claude-test",
    "max_tokens": 1000,
    "stream": True,
    "tools": [{"name": "Write", "input_schema": {"type": "object"}}],
    "messages": [{"role": "user", "content": "hi"}],
}


# --------------------------------------------------------------------- helpers
def _post(url: str, path: str, body: Any, timeout: float = 10.0) -> tuple[int, str, str]:
    """POST JSON and return (status, content-type, body text)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read().decode()
    finally:
        conn.close()


def _sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


@pytest.fixture(scope="module")
def claude() -> Path:
    path = ensure_claude_cli()
    if path is None:
        pytest.skip(f"Claude Code CLI unavailable: {unavailable_reason()}")
    return path


def run_claude(
    claude: Path, cwd: Path, env: dict[str, str], prompt: str, *args: str, timeout: float = CLI_TIMEOUT_S
) -> tuple[int, list[dict[str, Any]], str]:
    """Run ``claude -p`` with stream-json output; return (exit code, JSON lines, stderr)."""
    proc = subprocess.run(
        [str(claude), "-p", prompt, "--output-format", "stream-json", "--verbose", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, lines, proc.stderr


def result_line(lines: list[dict[str, Any]]) -> dict[str, Any]:
    results = [line for line in lines if line.get("type") == "result"]
    assert len(results) == 1, lines
    return results[0]


@pytest.fixture
def dirs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(home, cwd): an isolated HOME and an empty working directory."""
    home, cwd = tmp_path / "home", tmp_path / "work"
    cwd.mkdir()
    yield home, cwd


# ------------------------------------------------------- HTTP-level (no CLI)
def test_stream_wire_format_for_text_and_tool_use() -> None:
    with FakeAnthropic(script=[Reply.tool_use("Write", {"file_path": "a.txt", "content": "A" * 50}, text="ok")]) as api:
        status, ctype, text = _post(api.url, "/v1/messages?beta=true", MAIN_BODY)
    assert status == 200 and ctype.startswith("text/event-stream")
    events = _sse_events(text)
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]
    assert all(name == data["type"] for name, data in events)
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert [b["type"] for b in starts] == ["text", "tool_use"] and starts[1]["name"] == "Write"
    partial = "".join(
        d["delta"]["partial_json"]
        for n, d in events
        if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    )
    assert json.loads(partial) == {"file_path": "a.txt", "content": "A" * 50}
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "tool_use" and delta["usage"]["output_tokens"] > 0


def test_script_exhaustion_side_requests_and_other_paths() -> None:
    with FakeAnthropic(script=[Reply.text("first")]) as api:
        _post(api.url, "/v1/messages", MAIN_BODY)
        side = {"model": "claude-haiku", "max_tokens": 1, "messages": [{"role": "user", "content": "quota"}]}
        status, ctype, text = _post(api.url, "/v1/messages", side)
        assert status == 200 and ctype == "application/json"
        assert json.loads(text)["content"] == [{"type": "text", "text": "ok"}]
        _, _, streamed = _post(api.url, "/v1/messages", MAIN_BODY)
        assert '"text": "done"' in streamed  # script exhausted: default answer
        status, _, counted = _post(api.url, "/v1/messages/count_tokens", MAIN_BODY)
        assert status == 200 and json.loads(counted)["input_tokens"] > 0
        status, _, _ = _post(api.url, "/api/whatever", {})
        assert status == 200
        assert len(api.requests) == 3 and len(api.main_requests) == 2 and api.side_requests == [side]
        assert api.unknown_paths == ["POST /api/whatever"]


def test_callable_script_and_error_reply() -> None:
    seen: list[dict[str, Any]] = []

    def script(body: dict[str, Any]) -> Reply:
        seen.append(body)
        return Reply.error(400, "invalid_request_error", "nope")

    with FakeAnthropic(script=script) as api:
        status, _, text = _post(api.url, "/v1/messages", MAIN_BODY)
    assert status == 400 and json.loads(text)["error"]["message"] == "nope" and seen == [MAIN_BODY]


def test_is_main_turn_recognises_tool_less_agent_turns() -> None:
    agent_without_tools = {**MAIN_BODY, "tools": [], "thinking": {"type": "adaptive"}}
    helper = {**MAIN_BODY, "tools": [], "thinking": {"type": "disabled"}}
    assert is_main_turn(MAIN_BODY) and is_main_turn(agent_without_tools) and not is_main_turn(helper)


def test_silent_hang_sends_nothing() -> None:
    with FakeAnthropic(script=[Reply.hang(seconds=300, pings=False)]) as api:
        with pytest.raises(TimeoutError):
            _post(api.url, "/v1/messages", MAIN_BODY, timeout=1.0)
        started = time.monotonic()
    assert time.monotonic() - started < 5  # close() woke the hanging handler


def test_pinging_hang_streams_until_close() -> None:
    api = FakeAnthropic(script=[Reply.hang(seconds=300)], ping_interval=0.1).start()
    host, port = api.url.removeprefix("http://").split(":")
    request = json.dumps(MAIN_BODY).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(request), request)
        )
        received = b""
        while received.count(b"event: ping") < 2:
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
        assert b"event: message_start" in received and b"message_stop" not in received
        started = time.monotonic()
        api.close()
        while chunk := sock.recv(65536):  # the stream is cut off, never finished
            assert b"message_stop" not in chunk
    assert time.monotonic() - started < 5


# ------------------------------------------------------------ real CLI runs
def test_cli_plain_answer(claude: Path, dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    with FakeAnthropic(script=[Reply.text("Hello from the fake API")]) as api:
        code, lines, stderr = run_claude(claude, cwd, claude_env(api.url, home), "say hello")
    assert code == 0, stderr
    init = [line for line in lines if line.get("type") == "system" and line.get("subtype") == "init"]
    assert init and init[0]["session_id"]
    result = result_line(lines)
    assert result["result"] == "Hello from the fake API"
    assert result["is_error"] is False
    assert isinstance(result["total_cost_usd"], float) and result["total_cost_usd"] > 0
    assert result["session_id"] == init[0]["session_id"]
    assert len(api.main_requests) == 1 and api.unknown_paths == []


def test_cli_write_tool_allowed(claude: Path, dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    script = [Reply.tool_use("Write", {"file_path": "hello.txt", "content": "hi there\n"}), Reply.text("written")]
    with FakeAnthropic(script=script) as api:
        code, lines, stderr = run_claude(
            claude, cwd, claude_env(api.url, home), "write hello.txt", "--allowedTools", "Write"
        )
    assert code == 0, stderr
    assert (cwd / "hello.txt").read_text() == "hi there\n"
    result = result_line(lines)
    assert result["result"] == "written" and result["is_error"] is False and result["permission_denials"] == []
    # the second main turn carries the tool_result of the first
    last = api.main_requests[1]["messages"][-1]["content"]
    assert any(block.get("type") == "tool_result" and not block.get("is_error") for block in last)


def test_cli_write_tool_denied_without_permission(claude: Path, dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    script = [Reply.tool_use("Write", {"file_path": "hello.txt", "content": "hi there\n"}), Reply.text("gave up")]
    with FakeAnthropic(script=script) as api:
        code, lines, stderr = run_claude(
            claude, cwd, claude_env(api.url, home), "write hello.txt", "--permission-mode", "default"
        )
    assert code == 0, stderr  # a denial is not a CLI error: the model just gets an error tool_result
    assert not (cwd / "hello.txt").exists()
    result = result_line(lines)
    assert result["is_error"] is False and result["result"] == "gave up"
    denials = result["permission_denials"]
    assert [d["tool_name"] for d in denials] == ["Write"]
    assert denials[0]["tool_input"]["file_path"] == str(cwd / "hello.txt")  # made absolute by the CLI
    assert any(line.get("subtype") == "permission_denied" for line in lines if line.get("type") == "system")
    tool_result = api.main_requests[1]["messages"][-1]["content"][0]
    assert tool_result["is_error"] is True and "haven't granted it yet" in tool_result["content"]


def test_cli_not_logged_in(claude: Path, dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    code, lines, stderr = run_claude(claude, cwd, not_logged_in_env(home), "say hello")
    assert code == 1, stderr
    result = result_line(lines)
    assert result["is_error"] is True
    assert result["result"] == "Not logged in \u00b7 Please run /login"
    assert result["total_cost_usd"] == 0


def test_cli_hang_reply_blocks_until_killed(claude: Path, dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    with FakeAnthropic(script=[Reply.hang(seconds=300)]) as api:
        with pytest.raises(subprocess.TimeoutExpired):
            run_claude(claude, cwd, claude_env(api.url, home), "say hello", timeout=4)
        assert len(api.main_requests) == 1
