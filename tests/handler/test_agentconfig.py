"""An allowed agent CLI is no way around the allowlist (handler/agentconfig.py): a task may not hand it
configuration that runs commands, nor point it (and its API key) at another server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from handler.agentconfig import check_agent_config
from handler.allowlist import Allowlist
from handler.protocol import CONFIG_NOT_ALLOWED, ProtocolError
from tests.handler.helpers import Exchange, arun, serving
from tests.support.claude_cli import ensure_claude_cli, unavailable_reason


@pytest.mark.parametrize(
    ("agent", "argv", "env", "named"),
    [
        ("claude", ["--settings", "/tmp/s.json"], None, "--settings"),
        ("claude", ["--mcp-config={}"], None, "--mcp-config"),
        ("claude", ["--plugin-dir", "/tmp/p"], None, "--plugin-dir"),
        ("claude", ["--agents", "{}"], None, "--agents"),
        ("claude", [], {"CLAUDE_CONFIG_DIR": "/tmp/c"}, "CLAUDE_CONFIG_DIR"),
        ("claude", [], {"HOME": "/tmp/h"}, "HOME"),
        ("claude", [], {"ANTHROPIC_BASE_URL": "http://127.0.0.1:9"}, "ANTHROPIC_BASE_URL"),
        ("claude", [], {"https_proxy": "http://127.0.0.1:9"}, "https_proxy"),
        ("codex", ["exec", "-c", "x=1"], None, "-c"),
        ("codex", ["exec", "-cmodel_provider=x"], None, "-c"),
        ("codex", ["exec", "--profile=evil"], None, "--profile"),
        ("codex", [], {"CODEX_HOME": "/tmp/c"}, "CODEX_HOME"),
        ("gemini", ["-e", "evil"], None, "-e"),
        ("gemini", [], {"GEMINI_CLI_SYSTEM_SETTINGS_PATH": "/tmp/s"}, "GEMINI_CLI_SYSTEM_SETTINGS_PATH"),
    ],
)
def test_configuration_that_runs_commands_is_refused_naming_it(
    agent: str, argv: list[str], env: dict[str, str] | None, named: str
) -> None:
    with pytest.raises(ProtocolError) as refused:
        check_agent_config(agent, [agent, *argv, "--", "the prompt"], env, frozenset())
    assert refused.value.code == CONFIG_NOT_ALLOWED
    assert refused.value.message.startswith("Not allowed: a task may not ") and f" {named} " in refused.value.message


def test_what_is_no_configuration_still_passes() -> None:
    """A prompt after ``--`` is text, a removed variable loads nothing, NO_PROXY routes nothing elsewhere, and an
    operator's --allow-env permits a variable by name."""
    check_agent_config("claude", ["claude", "-p", "--model", "x", "--", "--settings evil"], None, frozenset())
    check_agent_config("claude", ["claude"], {"HOME": None, "NO_PROXY": "*", "MY_VAR": "1"}, frozenset())
    check_agent_config(
        "claude", ["claude"], {"ANTHROPIC_BASE_URL": "http://127.0.0.1:9"}, frozenset({"ANTHROPIC_BASE_URL"})
    )
    check_agent_config("gemini", ["gemini", "--prompt=-e x"], None, frozenset())


def test_the_allowlist_applies_the_rules_to_agents_only_and_not_under_star(tmp_path: Path) -> None:
    claude = tmp_path / "claude"
    claude.write_text("#!/bin/sh\n")
    claude.chmod(0o755)
    attack = [str(claude), "--settings", "{}"]
    with pytest.raises(ProtocolError) as refused:
        Allowlist.parse(str(claude)).check(str(claude), None, None, argv=attack)
    assert refused.value.code == CONFIG_NOT_ALLOWED
    assert Allowlist.parse("*").check(str(claude), None, None, argv=attack) == str(claude)
    assert Allowlist.parse("true").check("true", None, {"HOME": "/x"}, argv=["true", "--settings", "x"])


@pytest.mark.timeout(120)
def test_a_settings_hook_through_an_allowed_claude_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack: with only Claude Code allowed, a task passes --settings whose SessionStart hook runs a command
    (no login, tool or model call needed). Refused with a sentence; the hook's command never runs."""
    claude_bin = ensure_claude_cli()
    if claude_bin is None:
        pytest.skip(f"Claude Code CLI unavailable: {unavailable_reason()}")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # the in-process handler's children inherit it
    monkeypatch.setenv("ANTHROPIC_API_KEY", "dummy")
    proof = tmp_path / "hook-ran"
    hook = {"type": "command", "command": f"touch {proof}"}
    settings = {"hooks": {"SessionStart": [{"hooks": [hook]}]}}
    argv = [str(claude_bin), "-p", "--settings", json.dumps(settings), "--", "hello"]

    async def scenario() -> Exchange:
        async with serving(allow=Allowlist.parse(str(claude_bin))) as served, await served.client() as client:
            return await client.run("attack", argv, within=60, timeout=20)

    exchange = arun(scenario(), 90)
    assert not proof.exists(), "the hook ran a command of the task's choosing"
    assert exchange.error["code"] == CONFIG_NOT_ALLOWED and "--settings" in exchange.error["message"]
