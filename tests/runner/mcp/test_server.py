"""``ccx mcp`` driven by the official MCP client, over stdio and over streamable HTTP, against a real stack."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from runner.client import Runner
from runner.stack import LocalStack, _read_line, terminate
from tests.support.rawhttp import send_raw, send_twice

CCX = str(Path(sys.executable).parent / "ccx")
TOOLS = {"submit_task", "task_status", "wait_for_result", "read_output", "cancel_task", "list_tasks", "queue_status"}
THIRTY_LINES = ["python3", "-c", "for i in range(30): print(f'line {i:02d} ' + 'x' * 40)"]
EXPECTED = "".join(f"line {i:02d} " + "x" * 40 + "\n" for i in range(30))


def _env(stack: LocalStack) -> dict[str, str]:
    return {"CCX_REDIS_URL": stack.redis_url or "", "CCX_QUEUE": stack.queue}


async def _call(client: Client, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(name, arguments)
    assert not result.is_error, result.content
    return result.structured_content or json.loads(result.content[0].text)


async def _error(client: Client, name: str, arguments: dict[str, Any]) -> str:
    result = await client.call_tool(name, arguments)
    assert result.is_error
    return result.content[0].text


async def _session(client: Client, runner: Runner, tmp_path: Path) -> None:
    """The orchestrator's whole loop: list, submit, wait, read paged output, cancel, look at the queue."""
    listed = await client.list_tools()
    assert {tool.name for tool in listed.tools} == TOOLS
    assert all(tool.description and len(tool.description) > 40 for tool in listed.tools)

    submitted = await _call(client, "submit_task", {"task": "", "agent": "command", "argv": THIRTY_LINES, "key": "k1"})
    assert submitted["status"] == "queued"
    again = await _call(client, "submit_task", {"task": "", "agent": "command", "argv": THIRTY_LINES, "key": "k1"})
    assert again["id"] == submitted["id"]  # a retried submit is the same task

    done = await _call(client, "wait_for_result", {"task_id": submitted["id"], "timeout_seconds": 60})
    assert (done["done"], done["status"], done["success"], done["exit_code"]) == (True, "finished", True, 0)
    assert done["output"] == EXPECTED

    cursor, pages = "0", []
    while True:
        page = await _call(client, "read_output", {"task_id": submitted["id"], "since_seq": cursor, "max_bytes": 300})
        assert len(page["text"].encode()) <= 300
        pages.append(page["text"])
        cursor = page["next_seq"]
        if not page["more"]:
            break
    assert "".join(pages) == EXPECTED
    assert len(pages) == 5  # 1470 bytes in pages of at most 300

    gate = tmp_path / "go"
    blocker = await _call(
        client,
        "submit_task",
        {
            "task": "",
            "agent": "command",
            "argv": ["python3", "-c", f"import os,time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.05)"],
        },
    )
    status = await _call(client, "task_status", {"task_id": blocker["id"]})
    while status["status"] != "running":  # bounded by the test's timeout
        await asyncio.sleep(0.05)
        status = await _call(client, "task_status", {"task_id": blocker["id"]})
    waiting = await _call(client, "submit_task", {"task": "", "agent": "command", "argv": ["true"]})
    assert waiting["tasks_ahead"] == 1
    still = await _call(client, "wait_for_result", {"task_id": blocker["id"], "timeout_seconds": 0.5})
    assert still["done"] is False and still["message"].startswith("Still running")
    queue = await _call(client, "queue_status", {})
    assert (queue["paused"], queue["queued"], [r["id"] for r in queue["running"]]) == (False, 1, [blocker["id"]])

    cancelled = await _call(client, "cancel_task", {"task_id": waiting["id"]})
    assert cancelled["outcome"] == "cancelled"
    stopping = await _call(client, "cancel_task", {"task_id": blocker["id"]})
    assert stopping["outcome"] == "cancelling"
    ended = await _call(client, "wait_for_result", {"task_id": blocker["id"], "timeout_seconds": 60})
    assert (ended["done"], ended["status"]) == (True, "cancelled")
    listed_tasks = await _call(client, "list_tasks", {"limit": 10})
    assert [t["id"] for t in listed_tasks["tasks"]] == [waiting["id"], blocker["id"], submitted["id"]]
    assert [t["status"] for t in listed_tasks["tasks"]] == ["cancelled", "cancelled", "finished"]

    unknown = await _error(client, "wait_for_result", {"task_id": "no-such-task"})
    assert "No task with id no-such-task is known to this Redis" in unknown
    bad = await _error(client, "submit_task", {"task": "hi", "agent": "nope"})
    assert "nope" in bad and "Traceback" not in bad
    bad_field = await _error(client, "submit_task", {"task": "hi", "options": {"colour": "red"}})
    assert "Unknown task field(s): colour" in bad_field
    bad_cursor = await _error(client, "read_output", {"task_id": submitted["id"], "since_seq": "yesterday"})
    assert "pass '0' for the start" in bad_cursor


@pytest.mark.timeout(180)
def test_stdio_with_the_official_client(stack: LocalStack, runner: Runner, tmp_path: Path) -> None:
    params = StdioServerParameters(command=CCX, args=["mcp"], env=_env(stack))

    async def main() -> None:
        async with Client(params, read_timeout_seconds=90) as client:
            await _session(client, runner, tmp_path)

    asyncio.run(asyncio.wait_for(main(), 150))


@pytest.fixture
def http_server(stack: LocalStack) -> Iterator[tuple[str, str]]:
    token = "test-mcp-token-" + stack.queue
    proc = subprocess.Popen(
        [CCX, "mcp", "--http", "--port", "0", "--token", token],
        env={**stack.child_env(), **_env(stack)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        line = _read_line(proc, 30, "ccx mcp --http")
        assert line.startswith("ccx mcp serving http://127.0.0.1:"), line
        yield line.split()[3], token
    finally:
        terminate(proc, 10)


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}},
}


def _post(url: str, headers: dict[str, str], message: dict[str, Any] = INITIALIZE) -> tuple[int, str]:
    body = json.dumps(message).encode()
    request = urllib.request.Request(
        url, body, {"Content-Type": "application/json", "Accept": "application/json, text/event-stream", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.timeout(180)
def test_http_with_the_official_client_and_the_token_rules(
    http_server: tuple[str, str], runner: Runner, tmp_path: Path
) -> None:
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    url, token = http_server
    status, body = _post(url, {})
    assert status == 401 and "Authorization: Bearer" in body
    assert _post(url, {"Authorization": "Bearer wrong"})[0] == 401
    status, body = _post(url, {"Authorization": f"Bearer {token}", "Origin": "https://evil.example"})
    assert status == 403 and "web pages" in body
    # Reached by another name (as it is when it serves another address): the token is what counts.
    status, body = _post(url, {"Authorization": f"Bearer {token}", "Host": "mcp.example.com:8767"})
    assert status == 200 and '"name":"ccx"' in body.replace(" ", ""), body
    assert runner.list(10) == []  # nothing the strangers sent reached the queue

    async def main() -> None:
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=90) as http,
            Client(streamable_http_client(url, http_client=http), read_timeout_seconds=90) as client,
        ):
            await _session(client, runner, tmp_path)

    asyncio.run(asyncio.wait_for(main(), 150))


def test_the_skill_file_names_only_tools_the_server_has() -> None:
    skill = (Path(__file__).resolve().parents[3] / "docs" / "claude" / "skills" / "cc-execute" / "SKILL.md").read_text()
    assert skill.startswith("---\nname: cc-execute\ndescription: ")
    named = set(re.findall(r"mcp__ccx__(\w+)", skill))
    assert named and named <= TOOLS


def test_http_refuses_a_header_sent_twice_with_a_400(redis_url: str, queue_name: str) -> None:
    """Repeated headers were read as the last copy: an Origin sent twice, the second one empty, passed as no
    Origin at all. Now two Origins or Authorizations are a 400 saying so, before any other check."""
    token = "test-mcp-token-" + queue_name
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner.cli", "mcp", "--http", "--port", "0", "--token", token],
        env={**os.environ, "CCX_REDIS_URL": redis_url, "CCX_QUEUE": queue_name},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        line = _read_line(proc, 30, "ccx mcp --http")
        port = int(line.split()[3].rsplit(":", 1)[1].split("/", 1)[0])
        headers = {
            "Host": f"127.0.0.1:{port}",
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
        }
        body = json.dumps(INITIALIZE).encode()
        assert send_twice(port, "POST", "/mcp", headers, "", body)[0] == 200
        # Two Hosts never reach the server's code: uvicorn (h11) refuses them itself.
        assert send_twice(port, "POST", "/mcp", headers, "Host", body) == (400, b"Invalid HTTP request received.")
        for name in ("Origin", "Authorization"):
            sent = {**headers, "Origin": f"http://127.0.0.1:{port}"} if name == "Origin" else headers
            status, answer = send_twice(port, "POST", "/mcp", sent, name, body)
            assert (status, json.loads(answer)) == (
                400,
                {"error": f"Bad request: the {name} header was sent more than once; send it once."},
            ), name
        # The bypass: a page's Origin, then an empty one, was read as the empty one (no Origin) and let in.
        evil = [("Origin", "https://evil.example"), ("Origin", ""), *headers.items()]
        assert send_raw(port, "POST", "/mcp", evil, body)[0] == 400
    finally:
        terminate(proc, 10)
