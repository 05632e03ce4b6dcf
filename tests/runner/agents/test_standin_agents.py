"""Codex and Gemini through the whole pipeline, played by stand-in executables.

The real CLIs need accounts, so a small script takes their place: it records
the argv it was started with and prints a JSONL sample in the tool's
documented event format (the samples of ``test_agents``), then exits with the
code it is told. What is under test is everything around it: the worker
picking the binary from ``CCX_CODEX_BIN`` / ``CCX_GEMINI_BIN``, the argv
reaching the process unchanged, the output streaming through the handler and
the agent's parser building the result.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.client import Runner
from runner.stack import LocalStack
from tests.runner.agents.test_agents import AWKWARD_PROMPTS, codex_message, codex_run, gemini, gemini_run

RESULT_WAIT = 120.0

pytestmark = pytest.mark.timeout(300)

STAND_IN = f"""#!{sys.executable}
import json, os, sys
with open(os.environ["STANDIN_ARGV_FILE"], "w") as handle:
    json.dump(sys.argv[1:], handle)
with open(os.environ["STANDIN_EVENTS"]) as handle:
    sys.stdout.write(handle.read())
sys.stderr.write("stand-in " + os.path.basename(sys.argv[0]) + " done\\n")
sys.exit(int(os.environ.get("STANDIN_EXIT", "0")))
"""


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    path = tmp_path / "bin"
    path.mkdir()
    for name in ("codex", "gemini"):
        (path / name).write_text(STAND_IN)
        (path / name).chmod(0o755)
    return path


@pytest.fixture
def stack(bin_dir: Path, redis_url: str, queue_name: str, tmp_path: Path) -> Iterator[LocalStack]:
    """The shared ``stack`` fixture, with the worker pointed at the stand-ins."""
    log = (tmp_path / "worker.log").open("wb")
    env = {
        "CCX_WORKER_LOCK_TTL": "3",
        "CCX_CODEX_BIN": str(bin_dir / "codex"),
        "CCX_GEMINI_BIN": str(bin_dir / "gemini"),
    }
    stack = LocalStack(redis_url=redis_url, queue=queue_name, worker_output=log.fileno(), env=env)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
        log.close()


def stand_in_env(tmp_path: Path, events: str, exit_code: int = 0) -> dict[str, str | None]:
    (tmp_path / "events.jsonl").write_text(events)
    return {
        "STANDIN_ARGV_FILE": str(tmp_path / "argv.json"),
        "STANDIN_EVENTS": str(tmp_path / "events.jsonl"),
        "STANDIN_EXIT": str(exit_code),
    }


def recorded_argv(tmp_path: Path) -> list[str]:
    return json.loads((tmp_path / "argv.json").read_text())


def test_codex_stand_in_success(runner: Runner, tmp_path: Path) -> None:
    prompt = AWKWARD_PROMPTS[0] + "\n" + AWKWARD_PROMPTS[4]
    events = codex_run(codex_message("The repo has README.md and src/."))
    handle = runner.submit(prompt, agent="codex", model="gpt-5-codex", env=stand_in_env(tmp_path, events))
    result = handle.result(timeout=RESULT_WAIT)
    assert result.success, result.error
    assert result.output == "The repo has README.md and src/."
    assert result.agent["name"] == "codex" and result.agent["session_id"] == "0199a213-81c0-7800-8aa1-bbab2a035a53"
    assert result.stderr == "stand-in codex done\n"
    assert recorded_argv(tmp_path) == [
        "exec",
        "--json",
        "--skip-git-repo-check",
        "--model",
        "gpt-5-codex",
        "--",
        prompt,
    ]


def test_codex_stand_in_failed_turn(runner: Runner, tmp_path: Path) -> None:
    message = "unexpected status 401 Unauthorized"
    events = codex_run(
        end=[{"type": "error", "message": message}, {"type": "turn.failed", "error": {"message": message}}]
    )
    handle = runner.submit("Do it", agent="codex", env=stand_in_env(tmp_path, events, exit_code=1))
    result = handle.result(timeout=RESULT_WAIT)
    assert result.success is False and result.exit_code == 1
    assert result.error == f"Codex reported an error: {message}"


def test_gemini_stand_in_success(runner: Runner, tmp_path: Path) -> None:
    prompt = AWKWARD_PROMPTS[5]
    events = gemini_run(gemini("message", role="assistant", content="Two files.", delta=True))
    handle = runner.submit(prompt, agent="gemini", tools=["run_shell_command"], env=stand_in_env(tmp_path, events))
    result = handle.result(timeout=RESULT_WAIT)
    assert result.success, result.error
    assert result.output == "Two files."
    assert result.agent["session_id"] == "c7a3b0d2-1f4e" and result.agent["stats"]["tool_calls"] == 1
    assert recorded_argv(tmp_path) == [
        "--output-format", "stream-json", "--allowed-tools", "run_shell_command", f"--prompt={prompt}",
    ]  # fmt: skip


def test_gemini_stand_in_error_result(runner: Runner, tmp_path: Path) -> None:
    error = {"type": "FatalAuthenticationError", "message": "API key not valid."}
    events = gemini_run(status="error", error=error)
    handle = runner.submit("Do it", agent="gemini", env=stand_in_env(tmp_path, events, exit_code=41))
    result = handle.result(timeout=RESULT_WAIT)
    assert result.success is False and result.exit_code == 41
    assert result.error == "Gemini reported an error: API key not valid."
