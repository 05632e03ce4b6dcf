"""Task specs: what is refused at submit time, and what round-trips through JSON."""

from __future__ import annotations

import uuid

import orjson
import pytest

from handler import protocol
from handler.config import HandlerConfig
from handler.protocol import MAX_COLLECT
from runner.errors import SpecError
from runner.handler_client import EXECUTE_ID
from runner.relay import execute_params
from runner.spec import (
    DEFAULT_TIMEOUT,
    MAX_ARG_BYTES,
    MAX_REQUEST_BYTES,
    MAX_TIMEOUT,
    TaskResult,
    TaskSpec,
)


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


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"task": "x", "timeout": 1e18},
            "'timeout' is 1e+18 seconds, more than the 604800 (7 days) a task may have: give at most that, "
            "or split the work into several tasks.",
        ),
        (
            {"task": "x", "timeout": 604800.5},
            "'timeout' is 604800 seconds, more than the 604800 (7 days) a task may have",
        ),
        (
            {"agent": "command", "argv": ["true"], "idle_timeout": 1e18},
            "'idle_timeout' is 1e+18 seconds, more than the 604800 (7 days) a task may have",
        ),
        ({"task": "x", "timeout": float("inf")}, "'timeout' must be a positive number of seconds."),
        ({"task": "x", "idle_timeout": float("nan")}, "'idle_timeout' must be a number of seconds (0: never)."),
    ],
)
def test_timeouts_must_be_finite_and_at_most_a_week(data: dict, message: str) -> None:
    """A timeout of 1e18 s was accepted and then killed the work-horse with a traceback: refused at submit."""
    with pytest.raises(SpecError) as refused:
        TaskSpec.from_dict(data)
    assert str(refused.value).startswith(message)


def test_a_week_is_the_longest_timeout() -> None:
    spec = TaskSpec.from_dict({"task": "x", "timeout": MAX_TIMEOUT, "idle_timeout": MAX_TIMEOUT})
    assert (spec.timeout, spec.idle_timeout) == (604800.0, 604800.0)


def test_a_command_line_argument_the_os_would_refuse_is_refused_at_submit() -> None:
    """Linux caps one argument at 131072 bytes with its NUL ("Argument list too long" at exec): say so at submit."""
    longest = "x" * (MAX_ARG_BYTES - 1)
    assert TaskSpec.from_dict({"agent": "command", "argv": ["echo", longest]}).argv == ["echo", longest]
    for too_long in ("x" * MAX_ARG_BYTES, "é" * (MAX_ARG_BYTES // 2)):  # bytes count, not characters
        with pytest.raises(SpecError) as refused:
            TaskSpec.from_dict({"agent": "command", "argv": ["echo", too_long]})
        assert str(refused.value) == (
            "'argv' element 1 is 131,072 bytes, more than the 131,071 one command-line argument may have "
            "(Linux's MAX_ARG_STRLEN): put that much data in a file and pass its path instead."
        )


def test_an_agents_prompt_on_its_command_line_counts_too() -> None:
    """Codex and Gemini get the prompt as an argument (Claude Code reads a long one from stdin)."""
    prompt = "p" * 200_000
    with pytest.raises(SpecError, match=r"^the task \(the prompt\) is 200,000 bytes, more than the 131,071"):
        TaskSpec.from_dict({"agent": "codex", "task": prompt})
    with pytest.raises(SpecError, match=r"^the task \(the prompt\) is 200,009 bytes"):  # --prompt=…
        TaskSpec.from_dict({"agent": "gemini", "task": prompt})
    assert TaskSpec.from_dict({"agent": "claude", "task": prompt}).task == prompt
    with pytest.raises(SpecError, match=r"^the value of --system-prompt is 200,000 bytes"):
        TaskSpec.from_dict({"agent": "claude", "task": "x", "system_prompt": prompt})


def test_a_command_line_too_long_in_all_is_refused_at_submit() -> None:
    """Each argument may fit and the whole still be too much for exec (ARG_MAX): refused, with 'env' counted."""
    argv = ["echo", *["a" * 100_000] * 11]
    with pytest.raises(SpecError) as refused:
        TaskSpec.from_dict({"agent": "command", "argv": argv})
    assert str(refused.value) == (
        "The command command line and 'env' of this task take 1,100,016 bytes, more than the 1,048,576 a task "
        'may have (the OS refuses long command lines with "Argument list too long"): put the large parts in files '
        "and pass their paths instead."
    )
    fits = ["echo", *["a" * 100_000] * 10]
    assert TaskSpec.from_dict({"agent": "command", "argv": fits}).argv == fits
    with pytest.raises(SpecError, match="take 1,200,020 bytes"):
        TaskSpec.from_dict({"agent": "command", "argv": fits, "env": {"BIG": "b" * 200_000}})


def _accepted(prompt_bytes: int) -> bool:
    try:
        TaskSpec.from_dict({"task": "x" * prompt_bytes})
    except SpecError:
        return False
    return True


def test_the_longest_prompt_accepted_fits_in_one_message_the_handler_reads() -> None:
    """The bound at submit is the handler's own: the longest prompt accepted, sent as the worker sends it (with
    a 1000-character queue name as its fencing key, a run id and the most earlier runs it names), is a message
    of at most the 16 MiB the handler reads; one byte more is refused."""
    low, high = MAX_REQUEST_BYTES - 65536, MAX_REQUEST_BYTES  # accepted, refused
    assert _accepted(low) and not _accepted(high)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if _accepted(middle) else (low, middle)
    spec = TaskSpec.from_dict({"task": "x" * low})
    fence = {"key": "q" * 1000, "token": 2**63 - 1}
    params = execute_params(spec, fence, str(uuid.uuid4()), [str(uuid.uuid4()) for _ in range(MAX_COLLECT)])
    message = protocol.request(protocol.EXECUTE, params.to_params(), EXECUTE_ID)
    assert HandlerConfig.max_message_bytes - 65536 < len(message) <= HandlerConfig.max_message_bytes


def test_text_that_is_not_utf8_is_a_sentence() -> None:
    """A lone surrogate (what Python makes of argv bytes that are not UTF-8) raised UnicodeEncodeError in the
    Claude agent, and a JSON encoding error for a command: no text with one can be sent to the handler."""
    for data in (
        {"task": "caf\udce9"},
        {"agent": "command", "argv": ["echo", "caf\udce9"]},
        {"task": "x", "model": "\udce9"},
    ):
        with pytest.raises(SpecError) as refused:
            TaskSpec.from_dict(data)
        assert str(refused.value) == (
            "The task holds a lone surrogate (such as \\udcff, what decoding bytes that are not UTF-8 leaves), "
            "which cannot be sent to the handler: give its text as UTF-8."
        )
