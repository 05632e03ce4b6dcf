"""The whole design in one test: a real Claude Code session orchestrates cc-execute through ``ccx mcp``.

The orchestrator is the real ``claude -p`` with ``--mcp-config`` starting ``ccx mcp`` over stdio; the
model (the fake API) calls ``mcp__ccx__submit_task`` and then ``mcp__ccx__wait_for_result``. The task
runs on a real stack as a second, fresh Claude process, and the orchestrator's final answer quotes it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runner.client import Runner
from runner.stack import LocalStack
from tests.runner.agents import test_claude_real_cli
from tests.runner.agents.test_claude_real_cli import task_env
from tests.support.claude_cli import claude_env
from tests.support.fake_anthropic import FakeAnthropic, Orchestrator, Reply, tool_names

CCX = str(Path(sys.executable).parent / "ccx")
INNER_ANSWER = "The health endpoint returns 200 OK."
DOCS_SNIPPET = Path(__file__).resolve().parents[3] / "docs" / "claude" / "mcp.json"

pytestmark = pytest.mark.timeout(420)


claude_bin = test_claude_real_cli.claude_bin  # the CLI, installed once (a fixture)
stack = test_claude_real_cli.stack  # the shared stack, its worker told where the CLI is (a fixture)


def test_a_claude_session_hands_a_task_to_a_fresh_claude_and_quotes_its_result(
    claude_bin: Path, stack: LocalStack, runner: Runner, tmp_path: Path
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    with FakeAnthropic() as api:
        inner_env = task_env(stack, claude_env(api.url, tmp_path / "inner-home"))
        orchestrator = Orchestrator(
            {
                "task": "Check the health endpoint and say what it returns.",
                "cwd": str(workdir),
                "options": {"env": inner_env},
            },
            inner=Reply.text(INNER_ANSWER),
        )
        api._script_fn = orchestrator
        # The snippet docs/mcp.md gives users, with this venv's ccx and this test's Redis and queue.
        snippet = json.loads(DOCS_SNIPPET.read_text())
        snippet["mcpServers"]["ccx"].update(
            command=CCX, env={"CCX_REDIS_URL": stack.redis_url or "", "CCX_QUEUE": stack.queue}
        )
        config = tmp_path / "mcp.json"
        config.write_text(json.dumps(snippet))
        done = subprocess.run(
            [
                str(claude_bin),
                "-p",
                "Have cc-execute check the health endpoint, then tell me what it found.",
                "--mcp-config",
                str(config),
                "--strict-mcp-config",
                "--allowedTools",
                "mcp__ccx__submit_task,mcp__ccx__wait_for_result",
                "--output-format",
                "json",
            ],
            # The CLI defers MCP tools behind its ToolSearch tool by default; the scripted model calls them directly.
            env=claude_env(api.url, tmp_path / "orchestrator-home", {"ENABLE_TOOL_SEARCH": "false"}),
            cwd=workdir,
            capture_output=True,
            timeout=300,
        )
        turns = api.main_requests
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    answer = json.loads(done.stdout)
    assert answer["result"] == f"The task answered: {INNER_ANSWER}"
    # The inner turn may come before or after the model asks to wait (the wait is what covers it).
    assert [call for call in orchestrator.calls if call != "inner"] == [
        "mcp__ccx__submit_task",
        "mcp__ccx__wait_for_result",
    ]
    assert orchestrator.calls.count("inner") == 1

    # The task ran once, on the stack, as its own Claude process with a clean context and no ccx tools.
    [record] = runner.list(10)
    assert record.status == "finished" and record.result is not None
    assert record.result.output == INNER_ANSWER and record.spec.agent == "claude"
    inner_turns = [turn for turn in turns if "mcp__ccx__submit_task" not in tool_names(turn)]
    assert len(inner_turns) == 1
    assert "Check the health endpoint" in json.dumps(inner_turns[0]["messages"])
    assert "Have cc-execute" not in json.dumps(inner_turns[0]["messages"])
    assert record.result.agent["session_id"] != answer["session_id"]
