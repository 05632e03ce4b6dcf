"""Task specs: what is refused at submit time, and what round-trips through JSON."""

from __future__ import annotations

import orjson
import pytest

from runner.spec import DEFAULT_TIMEOUT, SpecError, TaskResult, TaskSpec


def test_a_spec_round_trips_through_json() -> None:
    spec = TaskSpec.from_dict({"task": "do it", "tools": ["Write"], "timeout": 5, "metadata": {"ticket": 7}})
    again = TaskSpec.from_dict(orjson.loads(orjson.dumps(spec.to_dict())))
    assert again == spec and again.timeout == 5.0


def test_a_missing_timeout_gets_the_finite_default() -> None:
    assert TaskSpec.from_dict({"task": "x", "timeout": None}).timeout == DEFAULT_TIMEOUT


def test_tools_may_be_given_as_a_comma_separated_string() -> None:
    assert TaskSpec.from_dict({"task": "x", "tools": "Write, Edit"}).tools == ["Write", "Edit"]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"task": "x\0y"}, "NUL"),
        ({"agent": "command", "argv": ["echo", "a\0b"]}, "NUL"),
        ({"task": "x", "env": {"KEY": "a\0b"}}, "NUL"),
        ({"task": "x", "cwd": "/tmp\0"}, "NUL"),
    ],
)
def test_nul_characters_are_refused_at_submit_time(data: dict, field: str) -> None:
    """An OS command line cannot carry NUL: say so at submit, not as a vague failure at run time."""
    with pytest.raises(SpecError, match=field):
        TaskSpec.from_dict(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"agent": "command", "argv": ["true"], "tools": ["Write"]},
            r"command agent does not use 'tools'.*\(claude, gemini\)",
        ),
        (
            {"agent": "codex", "task": "x", "permission_mode": "plan"},
            r"codex agent does not use 'permission_mode'.*\(claude\)",
        ),
        ({"agent": "gemini", "task": "x", "max_turns": 3}, r"gemini agent does not use 'max_turns'"),
        ({"agent": "claude", "task": "x", "argv": ["ls"]}, r"claude agent does not use 'argv'.*\(command\)"),
    ],
)
def test_an_option_the_agent_would_ignore_is_refused(data: dict, message: str) -> None:
    """Nobody should believe a restriction (e.g. allowed tools) holds when the agent ignores it."""
    with pytest.raises(SpecError, match=message):
        TaskSpec.from_dict(data)


def test_result_status_names_the_outcome() -> None:
    assert TaskResult(id="a", success=True).status == "finished"
    assert TaskResult(id="a", cancelled=True).status == "cancelled"
    assert TaskResult(id="a", timed_out=True).status == "failed"
    assert TaskResult.from_dict({"id": "a", "unknown": 1}).id == "a"
