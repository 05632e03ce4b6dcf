"""The agent layer without Redis or processes: argv building, output parsing, spec errors, transcript lines.

Each agent turns a :class:`~runner.spec.TaskSpec` into an argv list and reads
its run's output frames with a parser. The frames fed here have the shapes the
tools really print: Claude Code's stream-json (as captured from the real CLI),
and the JSONL event formats Codex (``codex exec --json``) and Gemini
(``gemini --output-format stream-json``) document.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterable
from typing import Any

import pytest

from handler.process import child_environment
from handler.protocol import STDERR, STDOUT, ExecuteResult
from runner.agents import AGENTS, get_agent
from runner.agents.base import Outcome, OutputParser
from runner.agents.claude import ClaudeAgent, ClaudeParser, describe_claude_event
from runner.agents.codex import CodexAgent
from runner.agents.command import CommandAgent
from runner.agents.gemini import GeminiAgent
from runner.client import Runner
from runner.config import Settings
from runner.errors import SpecError
from runner.relay import execute_params
from runner.render import Renderer
from runner.spec import DEFAULT_TIMEOUT, TaskSpec

LIMIT = 1_000_000
SESSION = "8a1c3f0e-5b2d-4e61-9a7f-0c4d2e6b1a93"

# Prompts that a shell, or an option parser, would change or misread.
AWKWARD_PROMPTS = [
    "-p --dangerously-skip-permissions",
    "--help",
    "--",
    "It's a \"quoted\" 'prompt'",
    "echo $HOME ${PATH} $(rm -rf /) `whoami` \\n; | & > /tmp/x",
    "first line\nsecond line\n\n  indented third\n",
    "  leading and trailing spaces  ",
    "ünïcødé → 日本語 🚀",
]


def make_spec(**fields: Any) -> TaskSpec:
    return TaskSpec.from_dict({"task": "Fix the failing test", **fields})


def ended(
    exit_code: int | None = 0, signal: int | None = None, timed_out: bool = False, cancelled: bool = False
) -> ExecuteResult:
    return ExecuteResult(exit_code, signal, timed_out, cancelled, 1234.5, 0, 0)


def run_parser(
    parser: OutputParser, stdout: Iterable[str] = (), stderr: str = "", result: ExecuteResult | None = None
) -> Outcome:
    for frame in stdout:
        parser.feed(STDOUT, frame)
    if stderr:
        parser.feed(STDERR, stderr)
    return parser.finish(result or ended())


def jsonl(*events: dict[str, Any]) -> str:
    # Like the CLIs (JSON.stringify, serde_json): UTF-8 text as is, not \u escapes.
    return "".join(json.dumps(event, ensure_ascii=False) + "\n" for event in events)


def value_after(argv: list[str], flag: str) -> str:
    """The value of ``flag`` (``--flag value`` or ``--flag=value``), which must occur exactly once and before
    the prompt's ``--``."""
    joined = [i for i, arg in enumerate(argv) if arg.startswith(flag + "=")]
    assert argv.count(flag) + len(joined) == 1, argv
    index = argv.index(flag) if flag in argv else joined[0]
    assert index < argv.index("--"), f"{flag} must come before the prompt: {argv}"
    return argv[index + 1] if argv[index] == flag else argv[index].split("=", 1)[1]


# ----------------------------------------------------------------- Claude Code stream-json samples


def claude_init(**overrides: Any) -> dict[str, Any]:
    return {
        "type": "system",
        "subtype": "init",
        "cwd": "/work/project",
        "session_id": SESSION,
        "tools": ["Task", "Bash", "Edit", "Read", "Write"],
        "mcp_servers": [],
        "model": "claude-sonnet-4-5",
        "permissionMode": "default",
        "apiKeySource": "ANTHROPIC_API_KEY",
        "claude_code_version": "2.1.332",
        "uuid": "4a3f6c2e-0000-4000-8000-000000000001",
        **overrides,
    }


def claude_assistant(*content: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "assistant",
        "message": {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": list(content),
            "stop_reason": None,
            "usage": {"input_tokens": 2567, "output_tokens": 12},
        },
        "parent_tool_use_id": None,
        "session_id": SESSION,
        "uuid": "4a3f6c2e-0000-4000-8000-000000000002",
    }


def claude_tool_result(content: Any, is_error: bool = False) -> dict[str, Any]:
    block: dict[str, Any] = {"tool_use_id": "toolu_01", "type": "tool_result", "content": content}
    if is_error:
        block["is_error"] = True
    return {
        "type": "user",
        "message": {"role": "user", "content": [block]},
        "parent_tool_use_id": None,
        "session_id": SESSION,
        "uuid": "4a3f6c2e-0000-4000-8000-000000000003",
    }


def claude_result(**overrides: Any) -> dict[str, Any]:
    return {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "duration_ms": 2870,
        "duration_api_ms": 2511,
        "num_turns": 2,
        "result": "Created hello.py.",
        "stop_reason": "end_turn",
        "session_id": SESSION,
        "total_cost_usd": 0.010388,
        "usage": {
            "input_tokens": 2567,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 28,
            "service_tier": "standard",
        },
        "modelUsage": {"claude-sonnet-4-5": {"inputTokens": 2567, "outputTokens": 28, "costUSD": 0.010388}},
        "permission_denials": [],
        "uuid": "4a3f6c2e-0000-4000-8000-000000000004",
        **overrides,
    }


def claude_run(*extra: dict[str, Any], result: dict[str, Any] | None = None) -> str:
    return jsonl(
        claude_init(),
        claude_assistant(
            {"type": "text", "text": "I'll create it."},
            {"type": "tool_use", "id": "toolu_01", "name": "Write", "input": {"file_path": "hello.py"}},
        ),
        claude_tool_result("File created successfully at: hello.py"),
        *extra,
        result if result is not None else claude_result(),
    )


# ------------------------------------------------------------------------------- Claude argv


def test_claude_argv_defaults_end_with_the_prompt_after_double_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CCX_CLAUDE_BIN", raising=False)
    argv = ClaudeAgent().argv(make_spec())
    assert argv == ["claude", "-p", "--output-format", "stream-json", "--verbose", "--", "Fix the failing test"]


@pytest.mark.parametrize(
    ("field", "value", "flag", "expected"),
    [
        ("tools", ["Write", "Edit", "Bash(git log:*)"], "--allowedTools", "Write,Edit,Bash(git log:*)"),
        ("tools", "Read, Grep", "--allowedTools", "Read,Grep"),
        ("disallowed_tools", ["Bash", "WebFetch"], "--disallowedTools", "Bash,WebFetch"),
        ("permission_mode", "acceptEdits", "--permission-mode", "acceptEdits"),
        ("model", "claude-opus-4-1", "--model", "claude-opus-4-1"),
        ("max_turns", 7, "--max-turns", "7"),
        (
            "append_system_prompt",
            "Be terse.\nNever use $HOME.",
            "--append-system-prompt",
            "Be terse.\nNever use $HOME.",
        ),
        ("mcp_config", "/etc/ccx/mcp servers.json", "--mcp-config", "/etc/ccx/mcp servers.json"),
        ("resume", SESSION, "--resume", SESSION),
        ("resume", "-starts-with-a-dash", "--resume", "-starts-with-a-dash"),
        ("fallback_model", "claude-sonnet-4-5", "--fallback-model", "claude-sonnet-4-5"),
        ("effort", "high", "--effort", "high"),
        ("settings", '{"hooks": {}}', "--settings", '{"hooks": {}}'),
        ("system_prompt", "You are terse.", "--system-prompt", "You are terse."),
        ("session_id", SESSION, "--session-id", SESSION),
        ("max_budget_usd", 2.5, "--max-budget-usd", "2.5"),
        ("json_schema", {"type": "object"}, "--json-schema", '{"type":"object"}'),
    ],
)
def test_claude_argv_maps_each_option_to_its_flag(field: str, value: Any, flag: str, expected: str) -> None:
    argv = ClaudeAgent().argv(make_spec(**{field: value}))
    assert value_after(argv, flag) == expected
    assert argv[-2:] == ["--", "Fix the failing test"]


def test_claude_argv_with_every_option_at_once() -> None:
    spec = make_spec(
        tools=["Write"],
        disallowed_tools=["Bash"],
        permission_mode="plan",
        model="m",
        max_turns=2,
        append_system_prompt="extra",
        mcp_config="mcp.json",
        resume=SESSION,
    )
    argv = ClaudeAgent().argv(spec)
    expected = {
        "--allowedTools": "Write",
        "--disallowedTools": "Bash",
        "--permission-mode": "plan",
        "--model": "m",
        "--max-turns": "2",
        "--append-system-prompt": "extra",
        "--mcp-config": "mcp.json",
        "--resume": SESSION,
    }
    assert {flag: value_after(argv, flag) for flag in expected} == expected
    assert argv[-2:] == ["--", "Fix the failing test"]


def test_claude_argv_bare_add_dirs_and_extra_args() -> None:
    argv = ClaudeAgent().argv(make_spec(bare=True, add_dirs=["/srv/a", "/srv/b"], extra_args=["--strict-mcp-config"]))
    options = argv[: argv.index("--")]
    assert "--bare" in options and "--strict-mcp-config" in options
    assert [a for a in options if a.startswith("--add-dir")] == ["--add-dir=/srv/a", "--add-dir=/srv/b"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"effort": "extreme"}, "'effort' must be one of low, medium, high, xhigh, max."),
        ({"session_id": "abc"}, "'session_id' must be a UUID"),
        ({"max_budget_usd": 0}, "'max_budget_usd' must be a positive number of dollars."),
        ({"json_schema": "object"}, "'json_schema' must be a JSON Schema object"),
        (
            {"extra_args": ["--output-format", "text"]},
            "'extra_args' may not contain --output-format: the runner sets it.",
        ),
        ({"extra_args": ["--", "another prompt"]}, "'extra_args' may not contain --: the runner sets it."),
        ({"extra_args": ["prompt"]}, "'extra_args' must start with a flag"),
        ({"idle_timeout": -1}, "'idle_timeout' must be a number of seconds (0: never)."),
    ],
)
def test_bad_claude_options_are_refused_at_submit_naming_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as refused:
        TaskSpec.from_dict({"task": "x", **fields})
    assert message in str(refused.value)


def test_claude_only_options_are_refused_for_other_agents() -> None:
    with pytest.raises(SpecError, match="json_schema"):
        TaskSpec.from_dict({"agent": "command", "argv": ["true"], "json_schema": {"type": "object"}})


def test_claude_argv_leaves_out_unset_options() -> None:
    argv = ClaudeAgent().argv(make_spec(tools=[], disallowed_tools=[]))
    for flag in ("--allowedTools", "--disallowedTools", "--permission-mode", "--model", "--max-turns", "--resume"):
        assert flag not in argv


@pytest.mark.parametrize("prompt", AWKWARD_PROMPTS)
def test_claude_prompt_is_one_unchanged_argv_element(prompt: str) -> None:
    argv = ClaudeAgent().argv(make_spec(task=prompt, tools=["Write", "Edit"]))
    assert argv[-1] == prompt
    assert argv.index("--") == len(argv) - 2  # the first `--` ends the options; the prompt follows it
    assert argv[:-1] == ClaudeAgent().argv(make_spec(tools=["Write", "Edit"]))[:-1]  # the options do not change


def test_claude_env_removes_claudecode_and_keeps_the_spec_env(monkeypatch: pytest.MonkeyPatch) -> None:
    agent = ClaudeAgent()
    assert agent.env(make_spec()) == {"CLAUDECODE": None}
    changes = agent.env(make_spec(env={"ANTHROPIC_API_KEY": "sk-test", "HTTPS_PROXY": None}))
    assert changes == {"CLAUDECODE": None, "ANTHROPIC_API_KEY": "sk-test", "HTTPS_PROXY": None}
    # The handler merges these over its own environment, a None value removing the variable.
    monkeypatch.setenv("CLAUDECODE", "1")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    child = child_environment(changes, "run-token")
    assert "CLAUDECODE" not in child and "HTTPS_PROXY" not in child
    assert child["ANTHROPIC_API_KEY"] == "sk-test"


@pytest.mark.parametrize(
    ("agent", "variable", "default"),
    [
        (ClaudeAgent(), "CCX_CLAUDE_BIN", "claude"),
        (CodexAgent(), "CCX_CODEX_BIN", "codex"),
        (GeminiAgent(), "CCX_GEMINI_BIN", "gemini"),
    ],
)
def test_binary_variable_overrides_the_executable(
    monkeypatch: pytest.MonkeyPatch, agent: Any, variable: str, default: str
) -> None:
    def runs() -> str:
        """The executable of the worker's execute request, with the settings a worker builds at its start."""
        settings = Settings.from_env()
        spec = make_spec(agent=agent.name)
        return execute_params(spec, binary=settings.agent_binary(agent.name)).argv[0]

    monkeypatch.delenv(variable, raising=False)
    assert runs() == default
    monkeypatch.setenv(variable, "/opt/agents/bin/my cli")
    assert runs() == "/opt/agents/bin/my cli"
    monkeypatch.setenv(variable, "")  # empty means unset
    assert runs() == default


def test_not_found_messages_say_how_to_install() -> None:
    claude = ClaudeAgent().not_found_message("claude")
    assert "Claude Code CLI not found ('claude')" in claude
    assert "npm install -g @anthropic-ai/claude-code" in claude and "CCX_CLAUDE_BIN" in claude
    assert "npm install -g @openai/codex" in CodexAgent().not_found_message("codex")
    assert "'frobnicate' is not on the handler's PATH" in CommandAgent().not_found_message("frobnicate")


# ------------------------------------------------------------------------------- Codex, Gemini, command argv


def test_codex_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CCX_CODEX_BIN", raising=False)
    agent = CodexAgent()
    assert agent.argv(make_spec(agent="codex")) == [
        "codex", "exec", "--json", "--skip-git-repo-check", "--", "Fix the failing test",
    ]  # fmt: skip
    assert agent.argv(make_spec(agent="codex", model="gpt-5-codex", resume="0199a213-81c0")) == [
        "codex", "exec", "--json", "--skip-git-repo-check",
        "--model", "gpt-5-codex", "resume", "0199a213-81c0", "--", "Fix the failing test",
    ]  # fmt: skip


@pytest.mark.parametrize("prompt", AWKWARD_PROMPTS)
def test_codex_prompt_is_one_unchanged_argv_element(prompt: str) -> None:
    argv = CodexAgent().argv(make_spec(agent="codex", task=prompt))
    assert argv[-1] == prompt and argv.index("--") == len(argv) - 2
    assert argv[:-1] == CodexAgent().argv(make_spec(agent="codex"))[:-1]


def test_gemini_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CCX_GEMINI_BIN", raising=False)
    agent = GeminiAgent()
    assert agent.argv(make_spec(agent="gemini")) == [
        "gemini", "--output-format", "stream-json", "--prompt=Fix the failing test",
    ]  # fmt: skip
    spec = make_spec(
        agent="gemini", model="gemini-2.5-pro", tools=["read_file", "run_shell_command(git)"], resume="latest"
    )
    assert agent.argv(spec) == [
        "gemini", "--output-format", "stream-json", "--model", "gemini-2.5-pro",
        "--allowed-tools", "read_file,run_shell_command(git)", "--resume", "latest", "--prompt=Fix the failing test",
    ]  # fmt: skip


@pytest.mark.parametrize("prompt", AWKWARD_PROMPTS)
def test_gemini_prompt_is_one_unchanged_argv_element(prompt: str) -> None:
    argv = GeminiAgent().argv(make_spec(agent="gemini", task=prompt))
    assert argv[-1] == f"--prompt={prompt}"
    assert argv[:-1] == GeminiAgent().argv(make_spec(agent="gemini"))[:-1]


def test_command_agent_runs_argv_exactly() -> None:
    argv = ["sh", "-c", 'echo "$1" `x`', "--", "-n $HOME\nnext"]
    spec = TaskSpec.from_dict({"agent": "command", "argv": argv, "env": {"A": "1", "B": None}})
    agent = get_agent("command")
    assert agent.argv(spec) == argv and agent.argv(spec) is not spec.argv
    assert agent.env(spec) == {"A": "1", "B": None}


def test_command_parser_uses_stdout_and_the_exit_code() -> None:
    agent = CommandAgent()
    outcome = run_parser(agent.parser(LIMIT), ["hel", "lo\n"], stderr="just a warning\n")
    assert (outcome.success, outcome.output, outcome.error) == (True, "hello\n", None)
    outcome = run_parser(agent.parser(LIMIT), ["partial"], stderr="step 1\nfatal: no such file\n\n", result=ended(3))
    assert not outcome.success and outcome.output == "partial"
    assert outcome.error == "The command exited with code 3. Last error output: fatal: no such file"
    outcome = run_parser(agent.parser(LIMIT), result=ended(None, signal=9))
    assert outcome.error == "The command was killed by signal 9."
    assert not run_parser(agent.parser(LIMIT), result=ended(0, timed_out=True)).success


def test_output_keeps_only_the_tail_within_the_limit() -> None:
    parser = CommandAgent().parser(10)
    outcome = run_parser(parser, ["0123456789", "abcdef"])
    assert outcome.output == "6789abcdef" and parser.stdout.truncated


# ------------------------------------------------------------------------------- Claude parser


def test_claude_parser_reads_init_and_result() -> None:
    outcome = run_parser(ClaudeParser(LIMIT), [claude_run()])
    assert outcome.success and outcome.error is None
    assert outcome.output == "Created hello.py."
    info = outcome.info
    assert info["name"] == "claude"
    assert info["session_id"] == SESSION and info["model"] == "claude-sonnet-4-5"
    assert info["tools"] == ["Task", "Bash", "Edit", "Read", "Write"]
    assert info["result"] == "Created hello.py." and info["is_error"] is False and info["subtype"] == "success"
    assert info["num_turns"] == 2 and info["total_cost_usd"] == 0.010388 and info["duration_ms"] == 2870
    assert info["usage"]["output_tokens"] == 28 and info["permission_denials"] == []
    assert "modelUsage" not in info  # only the documented fields are copied


def test_claude_parser_reassembles_multi_megabyte_lines_split_anywhere() -> None:
    big_text = "".join(f'line {i}: {"x" * 90} "quoted" \\ ünï 🚀\n' for i in range(30_000))  # ~3.3 MB
    answer = "The answer is " + "y" * 2_000_000 + " — done."
    stream = (
        "Warning: a non-JSON line before the stream\n"
        + claude_run(
            claude_assistant({"type": "text", "text": big_text}),
            claude_tool_result([{"type": "text", "text": big_text}]),
            result=claude_result(result=answer),
        )
        + "a trailing non-JSON line\n"
    )
    assert len(stream) > 8_000_000
    rng = random.Random(1234)
    cuts = {rng.randrange(1, len(stream)) for _ in range(600)}
    # Also cut right at and right after every line break: the edge cases of a line splitter.
    newline = stream.find("\n")
    while newline != -1:
        cuts.update((newline, newline + 1))
        newline = stream.find("\n", newline + 1)
    bounds = sorted(cut for cut in cuts if 0 < cut < len(stream))
    frames = [stream[a:b] for a, b in zip([0, *bounds], [*bounds, len(stream)], strict=True)]
    assert len(frames) > 600 and "".join(frames) == stream

    parser = ClaudeParser(16 * 1024 * 1024)
    result_end = stream.index("\n", stream.index('{"type": "result"')) + 1
    fed, result_seen_at = 0, None
    for frame in frames:
        parser.feed(STDOUT, frame)
        fed += len(frame)
        if result_seen_at is None and parser.result is not None:
            result_seen_at = fed
    assert result_seen_at is not None and result_seen_at >= result_end  # never parsed from a partial line
    outcome = parser.finish(ended())
    assert outcome.success, outcome.error
    assert outcome.output == answer
    assert outcome.info["session_id"] == SESSION
    assert parser.stdout.text() == stream  # the raw stream, non-JSON lines included, is kept as is


def test_claude_parser_reads_a_last_line_without_newline() -> None:
    stream = claude_run().rstrip("\n")
    outcome = run_parser(ClaudeParser(LIMIT), [stream[:100], stream[100:]])
    assert outcome.success and outcome.output == "Created hello.py."


def test_claude_parser_keeps_non_json_lines_as_output() -> None:
    lines = 'Some CLI notice\n{not json at all\n[1, 2, 3]\n"a json string"\n   \n'
    outcome = run_parser(ClaudeParser(LIMIT), [lines, jsonl(claude_init())])
    assert not outcome.success
    assert outcome.output.startswith(lines)  # without a result the raw output is what the task produced
    assert outcome.info["session_id"] == SESSION
    # With a result, stray lines do not disturb the parse.
    outcome = run_parser(ClaudeParser(LIMIT), [lines, claude_run(), "bye\n"])
    assert outcome.success and outcome.output == "Created hello.py."


def test_claude_parser_ignores_json_on_stderr() -> None:
    parser = ClaudeParser(LIMIT)
    parser.feed(STDERR, jsonl(claude_result()))
    outcome = parser.finish(ended())
    assert not outcome.success and "without a result event" in (outcome.error or "")


@pytest.mark.parametrize(
    ("exit_code", "result", "success", "error"),
    [
        (0, claude_result(), True, None),
        # An API failure: the CLI says subtype "success" but is_error true.
        (
            0,
            claude_result(is_error=True, result="API Error: 500 Internal server error", total_cost_usd=0),
            False,
            "Claude Code reported an error: API Error: 500 Internal server error",
        ),
        (
            1,
            claude_result(is_error=True, result="Not logged in \u00b7 Please run /login", num_turns=1),
            False,
            "Claude Code reported an error: Not logged in \u00b7 Please run /login",
        ),
        (
            1,
            {**claude_result(subtype="error_max_turns", is_error=True, errors=["Reached maximum number of turns (1)"])}
            | {"result": None},
            False,
            "Claude Code reported an error: error_max_turns: Reached maximum number of turns (1)",
        ),
        (
            0,
            {k: v for k, v in claude_result(subtype="error_during_execution").items() if k != "result"},
            False,
            "Claude Code reported an error: error_during_execution",
        ),
        # A clean result but a failing exit code is not a success either.
        (2, claude_result(), False, "Claude Code exited with code 2. Last error output: something broke"),
    ],
)
def test_claude_success_needs_exit_zero_and_no_error(
    exit_code: int, result: dict[str, Any], success: bool, error: str | None
) -> None:
    stream = jsonl(claude_init(), claude_assistant({"type": "text", "text": "hi"}), result)
    outcome = run_parser(ClaudeParser(LIMIT), [stream], stderr="something broke\n", result=ended(exit_code))
    assert outcome.success is success
    assert outcome.error == error
    assert outcome.info["is_error"] is result["is_error"]
    if isinstance(result.get("result"), str):
        assert outcome.output == result["result"]


def test_claude_error_subtype_keeps_its_errors_in_info() -> None:
    result = claude_result(subtype="error_max_turns", is_error=True, errors=["Reached maximum number of turns (1)"])
    del result["result"]
    outcome = run_parser(ClaudeParser(LIMIT), [jsonl(claude_init(), result)], result=ended(1))
    assert outcome.info["errors"] == ["Reached maximum number of turns (1)"]
    assert outcome.info["subtype"] == "error_max_turns"


def test_claude_permission_denials_are_reported_but_do_not_fail_the_run() -> None:
    denial = {"tool_name": "Write", "tool_use_id": "toolu_01", "tool_input": {"file_path": "/w/hello.txt"}}
    stream = claude_run(result=claude_result(result="I could not write the file.", permission_denials=[denial]))
    outcome = run_parser(ClaudeParser(LIMIT), [stream])
    assert outcome.success  # what the CLI reports (exit 0, is_error false)
    assert outcome.info["permission_denials"] == [denial]


def test_claude_run_without_result_event_fails_saying_so() -> None:
    stream = jsonl(claude_init(), claude_assistant({"type": "text", "text": "Working on it"}))
    outcome = run_parser(ClaudeParser(LIMIT), [stream], stderr="Error: socket hang up\n", result=ended(0))
    assert not outcome.success
    assert outcome.error is not None
    assert outcome.error.startswith("Claude Code ended without a result event (it exited with code 0.")
    assert "socket hang up" in outcome.error and outcome.error.endswith("see the task log.")
    assert outcome.output == stream and outcome.info["session_id"] == SESSION
    killed = run_parser(ClaudeParser(LIMIT), [stream], result=ended(None, signal=9))
    assert killed.error == "Claude Code ended without a result event (it was killed by signal 9); see the task log."
    empty = run_parser(ClaudeParser(LIMIT), [], result=ended(0))
    assert not empty.success and "without a result event" in (empty.error or "")


@pytest.mark.parametrize("how", ["timed_out", "cancelled"])
def test_claude_stopped_run_fails_without_its_own_error(how: str) -> None:
    # The job explains a timeout or a cancellation itself; the parser only must not call it a success.
    stream = jsonl(claude_init())
    outcome = run_parser(ClaudeParser(LIMIT), [stream], result=ended(None, signal=15, **{how: True}))
    assert not outcome.success and outcome.error is None
    assert outcome.info["session_id"] == SESSION


# ------------------------------------------------------------------------------- Codex parser

CODEX_THREAD = "0199a213-81c0-7800-8aa1-bbab2a035a53"


def codex_run(*middle: dict[str, Any], end: Iterable[dict[str, Any]] | None = None) -> str:
    usage = {"input_tokens": 24763, "cached_input_tokens": 24448, "output_tokens": 122}
    return jsonl(
        {"type": "thread.started", "thread_id": CODEX_THREAD},
        {"type": "turn.started"},
        {"type": "item.completed", "item": {"id": "item_0", "type": "reasoning", "text": "**Listing the files**"}},
        {
            "type": "item.started",
            "item": {
                "id": "item_1",
                "type": "command_execution",
                "command": "bash -lc ls",
                "aggregated_output": "",
                "exit_code": None,
                "status": "in_progress",
            },
        },
        {
            "type": "item.completed",
            "item": {
                "id": "item_1",
                "type": "command_execution",
                "command": "bash -lc ls",
                "aggregated_output": "README.md\nsrc\n",
                "exit_code": 0,
                "status": "completed",
            },
        },
        *middle,
        *(end if end is not None else [{"type": "turn.completed", "usage": usage}]),
    )


def codex_message(text: str, item_id: str = "item_2") -> dict[str, Any]:
    return {"type": "item.completed", "item": {"id": item_id, "type": "agent_message", "text": text}}


def test_codex_parser_success() -> None:
    stream = codex_run(codex_message("Thinking out loud.", "item_2"), codex_message("The repo has README.md and src/."))
    outcome = run_parser(
        CodexAgent().parser(LIMIT), [stream[:37], stream[37:]], stderr="Reading prompt from stdin...\n"
    )
    assert outcome.success and outcome.error is None
    assert outcome.output == "The repo has README.md and src/."  # the last agent message
    assert outcome.info == {
        "name": "codex",
        "session_id": CODEX_THREAD,
        "usage": {"input_tokens": 24763, "cached_input_tokens": 24448, "output_tokens": 122},
    }


def test_codex_turn_failed_fails_with_its_message() -> None:
    message = "unexpected status 401 Unauthorized: Missing bearer authentication in header"
    stream = codex_run(
        end=[{"type": "error", "message": message}, {"type": "turn.failed", "error": {"message": message}}]
    )
    outcome = run_parser(CodexAgent().parser(LIMIT), [stream], result=ended(1))
    assert not outcome.success
    assert outcome.error == f"Codex reported an error: {message}"


def test_codex_retried_stream_errors_do_not_fail_a_completed_turn() -> None:
    retry = "Reconnecting... 1/5 (stream disconnected before completion: error sending request)"
    stream = codex_run({"type": "error", "message": retry}, codex_message("Recovered and done."))
    outcome = run_parser(CodexAgent().parser(LIMIT), [stream])
    assert outcome.success, outcome.error
    assert outcome.output == "Recovered and done."
    assert outcome.info["errors"] == [retry]


def test_codex_error_without_a_completed_turn_fails() -> None:
    stream = codex_run(end=[{"type": "error", "message": "stream disconnected: retry limit reached"}])
    outcome = run_parser(CodexAgent().parser(LIMIT), [stream], result=ended(1))
    assert outcome.error == "Codex reported an error: stream disconnected: retry limit reached"
    # Even had it exited 0, a run whose last word is an error is no success.
    assert not run_parser(CodexAgent().parser(LIMIT), [stream], result=ended(0)).success


def test_codex_without_a_final_message_or_with_a_bad_exit_fails() -> None:
    outcome = run_parser(CodexAgent().parser(LIMIT), [codex_run()])
    assert not outcome.success and outcome.error == "Codex ended without a final answer; see the task log."
    stream = codex_run(codex_message("done"))
    outcome = run_parser(CodexAgent().parser(LIMIT), [stream], stderr="panic: boom\n", result=ended(101))
    assert outcome.error == "Codex exited with code 101. Last error output: panic: boom"
    assert outcome.output == "done"


# ------------------------------------------------------------------------------- Gemini parser


def gemini(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "timestamp": "2025-10-10T12:00:00.000Z", **fields}


GEMINI_STATS = {
    "total_tokens": 250,
    "input_tokens": 50,
    "output_tokens": 200,
    "cached": 0,
    "input": 50,
    "duration_ms": 3000,
    "tool_calls": 1,
}


def gemini_run(*middle: dict[str, Any], status: str = "success", **result: Any) -> str:
    return jsonl(
        gemini("init", session_id="c7a3b0d2-1f4e", model="gemini-2.5-pro"),
        gemini("message", role="user", content="List the files here"),
        gemini("message", role="assistant", content="I'll list ", delta=True),
        gemini("message", role="assistant", content="the files.", delta=True),
        gemini("tool_use", tool_name="run_shell_command", tool_id="run_shell_command-1", parameters={"command": "ls"}),
        gemini("tool_result", tool_id="run_shell_command-1", status="success", output="a.txt\nb.txt"),
        *middle,
        gemini("result", status=status, stats=GEMINI_STATS, **result),
    )


def test_gemini_parser_success_answer_is_the_last_turns_text() -> None:
    stream = gemini_run(
        gemini("message", role="assistant", content="There are two files: ", delta=True),
        gemini("message", role="assistant", content="a.txt and b.txt.", delta=True),
    )
    frames = [stream[i : i + 50] for i in range(0, len(stream), 50)]
    outcome = run_parser(GeminiAgent().parser(LIMIT), frames)
    assert outcome.success and outcome.error is None
    assert outcome.output == "There are two files: a.txt and b.txt."
    assert outcome.info == {
        "name": "gemini",
        "session_id": "c7a3b0d2-1f4e",
        "model": "gemini-2.5-pro",
        "stats": GEMINI_STATS,
    }


def test_gemini_single_turn_joins_its_deltas() -> None:
    stream = jsonl(
        gemini("init", session_id="s1", model="gemini-2.5-flash"),
        gemini("message", role="assistant", content="Paris is the ", delta=True),
        gemini("message", role="assistant", content="capital of France.", delta=True),
        gemini("result", status="success", stats=GEMINI_STATS),
    )
    assert run_parser(GeminiAgent().parser(LIMIT), [stream]).output == "Paris is the capital of France."


def test_gemini_warnings_are_kept_but_do_not_fail() -> None:
    warning = gemini("error", severity="warning", message="Loop detected, stopping execution")
    stream = gemini_run(warning, gemini("message", role="assistant", content="Stopped early.", delta=True))
    outcome = run_parser(GeminiAgent().parser(LIMIT), [stream])
    assert outcome.success and outcome.output == "Stopped early."
    assert outcome.info["errors"] == [{"severity": "warning", "message": "Loop detected, stopping execution"}]


def test_gemini_error_result_fails_with_its_message() -> None:
    stream = jsonl(
        gemini("init", session_id="s1", model="gemini-2.5-pro"),
        gemini(
            "result",
            status="error",
            error={"type": "FatalAuthenticationError", "message": "API key not valid. Please pass a valid API key."},
            stats=GEMINI_STATS,
        ),
    )
    outcome = run_parser(GeminiAgent().parser(LIMIT), [stream], result=ended(41))
    assert outcome.error == "Gemini reported an error: API key not valid. Please pass a valid API key."


def test_gemini_error_result_without_details_uses_the_error_event() -> None:
    invalid = gemini("error", severity="error", message="Model stream ended with an empty response.")
    outcome = run_parser(GeminiAgent().parser(LIMIT), [gemini_run(invalid, status="error")])
    assert outcome.error == "Gemini reported an error: Model stream ended with an empty response."


def test_gemini_error_event_without_a_result_fails() -> None:
    stream = jsonl(gemini("init", session_id="s1", model="m"), gemini("error", severity="error", message="quota"))
    outcome = run_parser(GeminiAgent().parser(LIMIT), [stream], result=ended(1))
    assert outcome.error == "Gemini reported an error: quota"


def test_gemini_without_an_answer_fails() -> None:
    outcome = run_parser(GeminiAgent().parser(LIMIT), ["Loaded cached credentials.\n"])
    assert outcome.error == "Gemini ended without a final answer; see the task log."
    assert outcome.output == "Loaded cached credentials.\n"


# ------------------------------------------------------------------------------- specs and agents


def test_unknown_agent_lists_the_known_ones() -> None:
    with pytest.raises(SpecError) as caught:
        TaskSpec.from_dict({"task": "x", "agent": "cursor"})
    assert str(caught.value) == "Unknown agent 'cursor'. Known agents: claude, codex, gemini, command."
    with pytest.raises(SpecError, match="Unknown agent 'Claude'"):
        get_agent("Claude")
    assert set(AGENTS) == {"claude", "codex", "gemini", "command"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (["not", "an", "object"], "A task spec must be a JSON object."),
        ({"task": "x", "prompt": "y", "tool": ["Write"]}, "Unknown task field(s): prompt, tool. Known fields: "),
        ({"task": 42}, "'task' must be a string (the prompt)."),
        ({"task": "   \n"}, "The claude agent needs a non-empty 'task' (the prompt)."),
        ({"task": ""}, "The claude agent needs a non-empty 'task'"),
        ({"task": "x", "agent": ""}, "'agent' must name an agent."),
        ({"task": "x", "tools": ["Write", 3]}, "'tools' must be a list of strings."),
        ({"task": "x", "disallowed_tools": {"Bash": True}}, "'disallowed_tools' must be a list of strings."),
        ({"task": "x", "timeout": 0}, "'timeout' must be a positive number of seconds."),
        ({"task": "x", "timeout": -5}, "'timeout' must be a positive number"),
        ({"task": "x", "timeout": "30"}, "'timeout' must be a positive number"),
        ({"task": "x", "timeout": True}, "'timeout' must be a positive number"),
        ({"task": "x", "timeout": float("inf")}, "'timeout' must be a positive number"),
        ({"task": "x", "timeout": float("nan")}, "'timeout' must be a positive number"),
        ({"task": "x", "max_turns": 0}, "'max_turns' must be a positive integer."),
        ({"task": "x", "max_turns": 2.5}, "'max_turns' must be a positive integer."),
        ({"task": "x", "max_turns": True}, "'max_turns' must be a positive integer."),
        ({"task": "x", "cwd": ["/tmp"]}, "'cwd' must be a string."),
        ({"task": "x", "model": 4}, "'model' must be a string."),
        ({"task": "x", "permission_mode": False}, "'permission_mode' must be a string."),
        ({"task": "x", "env": {"A=B": "1"}}, "'env' must map variable names to strings (or null to remove one)."),
        ({"task": "x", "env": {"A": 1}}, "'env' must map variable names"),
        ({"task": "x", "env": {"": "1"}}, "'env' must map variable names"),
        ({"task": "x", "env": ["A=1"]}, "'env' must map variable names"),
        ({"task": "x", "metadata": ["tag"]}, "'metadata' must be an object."),
        ({"agent": "command"}, "The command agent needs 'argv', a non-empty list of strings"),
        ({"agent": "command", "argv": []}, "The command agent needs 'argv'"),
        ({"agent": "command", "argv": "echo hi"}, "'argv' must be a list of strings."),
        ({"agent": "command", "argv": ["echo", None]}, "'argv' must be a list of strings."),
    ],
)
def test_bad_specs_raise_spec_error_with_a_clear_message(data: Any, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        TaskSpec.from_dict(data)
    assert str(caught.value).startswith(message), str(caught.value)


def test_valid_spec_is_normalised_and_round_trips() -> None:
    spec = TaskSpec.from_dict({"task": "x", "tools": " Write, Edit ,", "timeout": None, "max_turns": 3, "env": None})
    assert spec.tools == ["Write", "Edit"] and spec.timeout == DEFAULT_TIMEOUT and spec.env is None
    spec = TaskSpec.from_dict({"task": "x", "timeout": 5})
    assert isinstance(spec.timeout, float) and spec.timeout == 5.0
    assert TaskSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_submit_rejects_a_bad_spec_before_contacting_redis() -> None:
    runner = Runner(redis_url="redis://:unused@127.0.0.1:9/0", queue="never-used")  # nothing listens there
    try:
        with pytest.raises(SpecError, match="Unknown agent 'nope'"):
            runner.submit("x", agent="nope")
        with pytest.raises(SpecError, match="'max_turns' must be a positive integer"):
            runner.submit("x", max_turns=-1)
    finally:
        runner.redis.close()


# ------------------------------------------------------------------------------- transcript lines


def test_describe_init_assistant_and_tool_calls() -> None:
    assert describe_claude_event(claude_init()) == [f"● session {SESSION} · model claude-sonnet-4-5"]
    long_command = "pytest   -q\n" + "tests/test_something.py " * 10
    event = claude_assistant(
        {"type": "thinking", "thinking": "hmm"},
        {"type": "text", "text": "I'll run the tests.\n"},
        {"type": "tool_use", "id": "t1", "name": "Write", "input": {"content": "x", "file_path": "/w/app.py"}},
        {"type": "tool_use", "id": "t2", "name": "Bash", "input": {"command": long_command}},
        {"type": "tool_use", "id": "t3", "name": "TodoWrite", "input": {"todos": []}},
    )
    text, write, bash, todo = describe_claude_event(event)
    assert (text, write, todo) == ("I'll run the tests.", "→ Write(/w/app.py)", "→ TodoWrite()")
    assert bash.startswith("→ Bash(pytest -q tests/test_something.py tests/") and bash.endswith("…)")
    assert len(bash) == len("→ Bash()") + 120  # whitespace collapsed, then cut to 120 characters


def test_describe_tool_results() -> None:
    assert describe_claude_event(claude_tool_result("File created\n  at /w/app.py")) == [
        "  ← File created at /w/app.py"
    ]
    listed = claude_tool_result([{"type": "text", "text": "3 passed"}, {"type": "image"}, "junk"])
    assert describe_claude_event(listed) == ["  ← 3 passed"]
    failed = claude_tool_result("Claude requested permissions to write, but you haven't granted it yet.", True)
    assert describe_claude_event(failed) == [
        "  ✗ Claude requested permissions to write, but you haven't granted it yet."
    ]
    user_text = {"type": "user", "message": {"role": "user", "content": "the prompt itself"}}
    assert describe_claude_event(user_text) == []


def test_describe_results() -> None:
    assert describe_claude_event(claude_result()) == ["✓ Created hello.py. · $0.0104 · 2 turns"]
    assert describe_claude_event(claude_result(num_turns=1, total_cost_usd=None)) == ["✓ Created hello.py. · 1 turn"]
    failed = claude_result(subtype="error_max_turns", is_error=True, errors=["Reached maximum number of turns (1)"])
    del failed["result"]
    assert describe_claude_event(failed) == [
        "✗ error_max_turns: Reached maximum number of turns (1) · $0.0104 · 2 turns"
    ]
    not_logged_in = claude_result(
        is_error=True, result="Not logged in · Please run /login", total_cost_usd=0, num_turns=1
    )
    assert describe_claude_event(not_logged_in) == ["✗ Not logged in · Please run /login · $0.0000 · 1 turn"]


@pytest.mark.parametrize(
    "event",
    [
        {"type": "system", "subtype": "hook_response", "hook_name": "SessionStart"},
        {"type": "stream_event", "event": {"type": "ping"}},
        {"type": "assistant"},
        {"type": "assistant", "message": "not an object"},
        {"type": "assistant", "message": {"content": None}},
        {"type": "assistant", "message": {"content": 7}},
        {"type": "user", "message": {"content": [None, 3, "x"]}},
        {},
    ],
)
def test_describe_uninteresting_or_malformed_events_gives_nothing(event: dict[str, Any]) -> None:
    assert describe_claude_event(event) == []


def test_describe_tool_use_with_malformed_input() -> None:
    event = claude_assistant({"type": "tool_use", "name": "Read", "input": "file_path=/etc/passwd"})
    assert describe_claude_event(event) == ["→ Read()"]


def test_renderer_turns_split_frames_into_a_transcript() -> None:
    stream = "plain notice\n" + claude_run()
    out, err = io.StringIO(), io.StringIO()
    renderer = Renderer("claude", out=out, err=err)
    for index in range(0, len(stream), 7):
        renderer.event({"type": "output", "stream": STDOUT, "data": stream[index : index + 7]})
    renderer.event({"type": "output", "stream": STDERR, "data": "a warning\n"})
    renderer.event({"type": "started"})
    renderer.finish()
    assert out.getvalue().splitlines() == [
        "plain notice",
        f"● session {SESSION} · model claude-sonnet-4-5",
        "I'll create it.",
        "→ Write(hello.py)",
        "  ← File created successfully at: hello.py",
        "✓ Created hello.py. · $0.0104 · 2 turns",
    ]
    assert err.getvalue() == "a warning\n"


def test_only_claude_has_a_transcript_and_a_terminal_gets_every_line_whole() -> None:
    assert [name for name, agent in AGENTS.items() if agent.transcript() is not None] == ["claude"]
    event = claude_assistant({"type": "tool_use", "name": "Write", "input": {"file_path": "a.py"}})
    line = json.dumps(event) + "\n"
    bounded = get_agent("claude").transcript()
    whole = get_agent("claude").transcript(max_line_chars=None, max_plain_chars=None)
    assert bounded is not None and whole is not None
    assert [bounded.feed(line[:9]), bounded.feed(line[9:])] == [[], ["→ Write(a.py)"]]
    assert bounded.step("→ Write(a.py)") and bounded.step("● session s") and not bounded.step("plain")
    assert bounded.feed("p" * 5000 + "\n") == ["p" * 4000 + "…"]
    assert whole.feed("p" * 5000 + "\n") == ["p" * 5000]
    assert whole.feed("q" * 2_000_000) == [] and whole.flush() == ["q" * 2_000_000]
