"""The whole path of one task through real Redis, worker, handler and child process."""

from __future__ import annotations

from runner.client import Runner


def test_command_task_runs_and_reports_output(runner: Runner) -> None:
    handle = runner.submit(agent="command", argv=["sh", "-c", "echo hello; echo oops >&2; exit 0"])
    result = handle.result(timeout=30)
    assert result.success is True
    assert result.exit_code == 0
    assert result.output == "hello\n"
    assert result.stderr == "oops\n"
    types = [event["type"] for event in handle.events(timeout=10)]
    assert types[0] == "started" and types[-1] == "result"
