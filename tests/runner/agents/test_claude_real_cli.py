"""The real Claude Code CLI through the whole pipeline: queue → worker → handler → ``claude`` → result.

Nothing is faked but the model: the CLI is the npm package (installed once
into the test cache by :mod:`tests.support.claude_cli`) and it talks to
:class:`~tests.support.fake_anthropic.FakeAnthropic` on loopback.

How the pieces are wired: the worker builds the argv, so it must see
``CCX_CLAUDE_BIN`` in *its* environment; this module's ``stack`` fixture (which
the shared ``runner`` fixture picks up) starts the handler and worker with it.
The CLI's offline environment travels in each task's ``env``, merged by the
handler over its own environment: :func:`task_env` turns the environment the
CLI should see into exactly those changes (a None value removes a variable).

Tests skip, with the reason, only when the CLI cannot be installed here.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from runner.client import Runner, TaskHandle, execute_task_via_websocket
from runner.spec import TaskResult
from runner.stack import LocalStack
from runner.vocabulary import END_STATUSES
from tests.conftest import running_stack
from tests.support.claude_cli import claude_env, ensure_claude_cli, not_logged_in_env, unavailable_reason
from tests.support.fake_anthropic import FakeAnthropic, Reply
from tests.support.processes import pid_alive, wait_until

RESULT_WAIT = 180.0
"""Seconds to wait for a task's result: generous, for a loaded machine; a passing run takes a few."""

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def claude_bin() -> Path:
    path = ensure_claude_cli()
    if path is None:
        pytest.skip(f"Claude Code CLI unavailable: {unavailable_reason()}")
    return path


@pytest.fixture
def stack(claude_bin: Path, redis_url: str, queue_name: str, tmp_path: Path) -> Iterator[LocalStack]:
    """The shared ``stack`` fixture, with the worker told where the CLI is."""
    with running_stack(redis_url, queue_name, tmp_path / "worker.log", CCX_CLAUDE_BIN=str(claude_bin)) as stack:
        yield stack


@pytest.fixture
def token() -> str:
    """A unique string put in this test's HOME and working directories, to find its processes by."""
    return f"ccxcli{uuid.uuid4().hex[:12]}"


@pytest.fixture
def home(tmp_path: Path, token: str) -> Path:
    return tmp_path / f"home-{token}"


@pytest.fixture
def workdir(tmp_path: Path, token: str) -> Path:
    path = tmp_path / f"work-{token}"
    path.mkdir()
    return path


def task_env(stack: LocalStack, wanted: dict[str, str]) -> dict[str, str | None]:
    """The ``env`` changes that turn the handler's environment into ``wanted``."""
    handler_env = stack.child_env()
    changes: dict[str, str | None] = {name: None for name in handler_env if name not in wanted}
    changes.update({name: value for name, value in wanted.items() if handler_env.get(name) != value})
    return changes


def processes_with(marker: str) -> set[int]:
    """Live processes whose environment or working directory contains ``marker``."""
    found = set()
    needle = marker.encode()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as handle:
                environ = handle.read()
            cwd = os.readlink(f"/proc/{name}/cwd")
        except OSError:  # gone meanwhile, or a kernel thread
            continue
        if (needle in environ or marker in cwd) and pid_alive(int(name)):
            found.add(int(name))
    return found


def result_of(handle: TaskHandle) -> TaskResult:
    return handle.result(timeout=RESULT_WAIT)


def user_texts(body: dict[str, Any]) -> list[str]:
    """The text blocks of the first user message of a Messages API request."""
    content = body["messages"][0]["content"]
    if isinstance(content, str):
        return [content]
    return [block["text"] for block in content if block.get("type") == "text"]


def test_plain_answer(runner: Runner, stack: LocalStack, home: Path, workdir: Path) -> None:
    prompt = "-v --model x \"double\" 'single' $HOME ${PATH} $(id) `whoami` \\ |&;<>\nsecond line ünï 🚀"
    with FakeAnthropic(script=[Reply.text("Hello from the fake API")]) as api:
        handle = runner.submit(prompt, cwd=str(workdir), env=task_env(stack, claude_env(api.url, home)))
        result = result_of(handle)
        main_requests = api.main_requests
    assert result.success, result.error
    assert result.exit_code == 0 and not result.timed_out
    assert result.output == "Hello from the fake API"
    assert result.agent["result"] == "Hello from the fake API"
    assert result.agent["name"] == "claude" and result.agent["is_error"] is False
    assert isinstance(result.agent["total_cost_usd"], float) and result.agent["total_cost_usd"] > 0
    assert isinstance(result.agent["session_id"], str) and result.agent["session_id"]
    assert result.agent["num_turns"] == 1 and result.agent["cwd"] == str(workdir)
    # The prompt reached the model exactly as submitted: no shell, no option parsing.
    assert len(main_requests) == 1 and prompt in user_texts(main_requests[0])
    # The task's log holds the raw stream-json, ending with the result event.
    outputs = "".join(e["data"] for e in handle.events(timeout=30) if e["type"] == "output" and e["stream"] == "stdout")
    events = [json.loads(line) for line in outputs.splitlines() if line.startswith("{")]
    assert events[0]["type"] == "system" and events[0]["subtype"] == "init"
    assert events[-1]["type"] == "result" and events[-1]["session_id"] == result.agent["session_id"]


def test_json_schema_gives_the_validated_object_as_structured_output(
    runner: Runner, stack: LocalStack, home: Path, workdir: Path
) -> None:
    """json_schema becomes --json-schema: the CLI offers the model its StructuredOutput tool, validates the
    object it returns, and the task's result carries it as structured_output."""
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    seen_tools: list[list[str]] = []

    def script(body: dict[str, Any]) -> Reply:
        seen_tools.append([tool["name"] for tool in body.get("tools", [])])
        return Reply.tool_use("StructuredOutput", {"name": "cc-execute"})

    with FakeAnthropic(script) as api:
        handle = runner.submit(
            "Name this project.", json_schema=schema, cwd=str(workdir), env=task_env(stack, claude_env(api.url, home))
        )
        result = result_of(handle)
    assert result.success, result.error
    assert result.structured_output == {"name": "cc-execute"}
    assert "StructuredOutput" in seen_tools[0]


def test_a_prompt_too_long_for_argv_goes_through_stdin(
    runner: Runner, stack: LocalStack, home: Path, workdir: Path
) -> None:
    """Linux refuses one argv string over 128 KiB; a 300 KiB prompt reaches the model whole, via stdin."""
    prompt = "Summarise this log.\n" + "".join(f"line {n:06d} of the build log\n" for n in range(10_000))
    assert len(prompt.encode()) > 128 * 1024
    with FakeAnthropic(script=[Reply.text("Summarised")]) as api:
        handle = runner.submit(prompt, cwd=str(workdir), env=task_env(stack, claude_env(api.url, home)))
        result = result_of(handle)
        main_requests = api.main_requests
    assert result.success, result.error
    assert result.output == "Summarised"
    assert len(main_requests) == 1 and prompt.strip() in "".join(user_texts(main_requests[0]))


def test_allowed_write_creates_the_file_in_cwd(runner: Runner, stack: LocalStack, home: Path, workdir: Path) -> None:
    script = [Reply.tool_use("Write", {"file_path": "hello.txt", "content": "hi there\n"}), Reply.text("written")]
    with FakeAnthropic(script=script) as api:
        handle = runner.submit(
            "Write hello.txt", tools=["Write"], cwd=str(workdir), env=task_env(stack, claude_env(api.url, home))
        )
        result = result_of(handle)
        main_requests = api.main_requests
    assert result.success, result.error
    assert (workdir / "hello.txt").read_text() == "hi there\n"  # a relative path: the task ran in its cwd
    assert result.output == "written"
    assert result.agent["permission_denials"] == [] and result.agent["num_turns"] == 2
    tool_result = main_requests[1]["messages"][-1]["content"][0]
    assert tool_result["type"] == "tool_result" and not tool_result.get("is_error")


def test_write_without_permission_is_denied_and_reported(
    runner: Runner, stack: LocalStack, home: Path, workdir: Path
) -> None:
    script = [Reply.tool_use("Write", {"file_path": "hello.txt", "content": "hi there\n"}), Reply.text("gave up")]
    with FakeAnthropic(script=script) as api:
        handle = runner.submit(
            "Write hello.txt",
            permission_mode="default",
            cwd=str(workdir),
            env=task_env(stack, claude_env(api.url, home)),
        )
        result = result_of(handle)
    assert not (workdir / "hello.txt").exists()
    # The CLI exits 0 with is_error false: the task succeeds as the CLI reports it, and the
    # refusal is there for the orchestrator to see.
    assert result.success, result.error
    assert result.output == "gave up"
    denials = result.agent["permission_denials"]
    assert [denial["tool_name"] for denial in denials] == ["Write"]
    assert denials[0]["tool_input"]["file_path"] == str(workdir / "hello.txt")


def test_not_logged_in_fails_with_the_cli_message(runner: Runner, stack: LocalStack, home: Path, workdir: Path) -> None:
    handle = runner.submit("say hello", cwd=str(workdir), env=task_env(stack, not_logged_in_env(home)))
    result = result_of(handle)
    assert result.success is False
    assert result.error is not None and "Not logged in" in result.error
    assert result.exit_code == 1 and result.agent["is_error"] is True
    assert "Not logged in" in result.output


def test_max_turns_reaches_the_cli_and_fails_with_its_reason(
    runner: Runner, stack: LocalStack, home: Path, workdir: Path
) -> None:
    script = [Reply.tool_use("Write", {"file_path": "a.txt", "content": "a"}), Reply.text("never reached")]
    with FakeAnthropic(script=script) as api:
        handle = runner.submit(
            "Write a.txt",
            tools=["Write"],
            max_turns=1,
            cwd=str(workdir),
            env=task_env(stack, claude_env(api.url, home)),
        )
        result = result_of(handle)
    assert result.success is False
    assert result.agent["subtype"] == "error_max_turns"
    assert result.error == "Claude Code reported an error: error_max_turns: Reached maximum number of turns (1)"


def test_timeout_kills_the_cli_and_its_children(
    runner: Runner, stack: LocalStack, home: Path, workdir: Path, token: str
) -> None:
    with FakeAnthropic(script=[Reply.hang(seconds=300)], ping_interval=0.5) as api:
        handle = runner.submit(
            "wait for an answer that never ends",
            timeout=3,
            cwd=str(workdir),
            env=task_env(stack, claude_env(api.url, home)),
        )
        seen: set[int] = set()

        def ended() -> bool:
            seen.update(processes_with(token))  # every process of the run that was ever alive
            return handle.status() in END_STATUSES

        wait_until(ended, timeout=RESULT_WAIT, interval=0.05, what="the task to time out")
        result = result_of(handle)
    assert result.timed_out is True and result.success is False
    assert result.error == "The task timed out after 3 s and was stopped; its whole process tree was killed."
    assert seen, "the CLI process was never seen running"
    # By the time the result is written, the whole tree is gone: nothing to wait for.
    assert {pid for pid in seen if pid_alive(pid)} == set()
    assert processes_with(token) == set()


def test_a_stalled_api_connection_is_stopped_by_idle_timeout(
    runner: Runner, stack: LocalStack, home: Path, workdir: Path, token: str
) -> None:
    """The API accepts the connection and never answers (not even headers): the CLI would wait up to
    API_TIMEOUT_MS per attempt and retry; the task's idle_timeout stops it, saying why, with nothing left."""
    with FakeAnthropic(script=[Reply.hang(seconds=300, pings=False)]) as api:
        handle = runner.submit(
            "wait for an API that never answers",
            idle_timeout=3,
            cwd=str(workdir),
            env=task_env(stack, claude_env(api.url, home)),
        )
        result = result_of(handle)
        asked = len(api.main_requests)
    assert (result.success, result.timed_out, result.cancelled) == (False, True, False)
    assert result.error is not None and result.error.startswith("No output for 3 s: the task was taken for hung")
    assert asked >= 1, "the CLI did reach the stalled API"
    wait_until(lambda: not processes_with(token), 15, what="the CLI's processes to be gone")


def test_timeout_kills_tool_commands_outside_the_cli_process_group(
    runner: Runner, stack: LocalStack, home: Path, workdir: Path, token: str
) -> None:
    # The CLI runs a Bash tool call in a process group of its own; `setsid` leaves even that.
    command = {"command": "setsid sleep 3001 & sleep 3002", "description": "Wait"}
    with FakeAnthropic(script=[Reply.tool_use("Bash", command), Reply.text("never reached")]) as api:
        handle = runner.submit(
            "Run the command",
            tools=["Bash"],
            timeout=10,
            cwd=str(workdir),
            env=task_env(stack, claude_env(api.url, home)),
        )
        seen: dict[int, str] = {}

        def sleeps_running_or_ended() -> bool:
            for pid in processes_with(token):  # a forked shell becomes `sleep` once it execs: keep the latest name
                name = _comm(pid)
                if name != "?" or pid not in seen:
                    seen[pid] = name
            sleeping = [pid for pid, name in seen.items() if name == "sleep" and pid_alive(pid)]
            return len(sleeping) == 2 or handle.status() in END_STATUSES

        wait_until(sleeps_running_or_ended, timeout=RESULT_WAIT, interval=0.05, what="the tool's commands to start")
        assert sorted(seen.values()).count("sleep") == 2, f"the tool's commands never ran: {seen}"
        result = result_of(handle)
    assert result.timed_out is True and result.success is False
    assert {"bash", "sleep"} <= set(seen.values())
    assert {pid for pid in seen if pid_alive(pid)} == set()
    assert processes_with(token) == set()


def _comm(pid: int) -> str:
    """The process's command name, "?" once it is gone."""
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().strip()
    except OSError:
        return "?"


def test_three_tasks_run_one_after_another_each_in_a_fresh_process(
    runner: Runner, stack: LocalStack, home: Path, tmp_path: Path
) -> None:
    markers = [f"seqtask{index}x{uuid.uuid4().hex[:8]}" for index in range(3)]

    def script(body: dict[str, Any]) -> Reply:
        found = [marker for marker in markers if marker in json.dumps(body["messages"])]
        return Reply.text(f"answer for {' '.join(found)}")

    workdirs = [tmp_path / marker for marker in markers]
    for path in workdirs:
        path.mkdir()
    overlaps: list[list[str]] = []
    pids: dict[str, set[int]] = {marker: set() for marker in markers}
    with FakeAnthropic(script=script) as api:
        env = task_env(stack, claude_env(api.url, home))  # one HOME for all: only the process is new
        handles = [
            runner.submit(f"Task {marker}: reply.", cwd=str(path), env=env)
            for marker, path in zip(markers, workdirs, strict=True)
        ]

        def all_ended() -> bool:
            running = {marker: processes_with(marker) for marker in markers}
            for marker, found in running.items():
                pids[marker] |= found
            # A /proc scan is no snapshot: count a task as running only if its processes are
            # still alive after the whole scan, so two counted tasks really were alive together.
            alive = [marker for marker, found in running.items() if any(pid_alive(pid) for pid in found)]
            if len(alive) > 1:
                overlaps.append(alive)
            return all(handle.status() in END_STATUSES for handle in handles)

        wait_until(all_ended, timeout=3 * RESULT_WAIT, interval=0.05, what="the three tasks to end")
        results = [result_of(handle) for handle in handles]
        main_requests = api.main_requests
    for marker, result in zip(markers, results, strict=True):
        assert result.success, result.error
        assert result.output == f"answer for {marker}"  # each conversation saw only its own prompt
    assert overlaps == [], "processes of two tasks were alive at the same time"
    spans = sorted((_time(r.started_at), _time(r.ended_at)) for r in results)
    for (_, end), (next_start, _) in itertools.pairwise(spans):
        assert end <= next_start, f"runs overlap: {spans}"
    sessions = [result.agent["session_id"] for result in results]
    assert len(set(sessions)) == 3 and all(sessions)
    assert len(main_requests) == 3
    # Each conversation starts fresh: no earlier assistant turn was carried over.
    assert all(message["role"] != "assistant" for body in main_requests for message in body["messages"])
    seen = [pids[marker] for marker in markers]
    assert all(seen) and not (seen[0] & seen[1] or seen[1] & seen[2] or seen[0] & seen[2])


def _time(value: str | None) -> datetime:
    assert value is not None
    return datetime.fromisoformat(re.sub(r"Z$", "+00:00", value))


def test_execute_task_via_websocket_returns_a_result_dict(stack: LocalStack, home: Path, workdir: Path) -> None:
    with FakeAnthropic(script=[Reply.text("answer over the wire")]) as api:
        result = execute_task_via_websocket(
            "Say something",
            timeout=120,
            tools=["Read"],
            redis_url=stack.redis_url,
            queue=stack.queue,
            cwd=str(workdir),
            env=task_env(stack, claude_env(api.url, home)),
            wait=RESULT_WAIT,
        )
    assert isinstance(result, dict)
    assert result["success"] is True, result["error"]
    assert result["output"] == "answer over the wire"
    assert result["exit_code"] == 0
    assert result["agent"]["session_id"]
