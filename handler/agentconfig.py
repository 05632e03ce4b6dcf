"""What a task may tell an allowed agent CLI: nothing that makes it run or load a program of the task's choice.

Allowing ``claude`` (or ``codex``, ``gemini``) must not mean allowing everything:
each CLI reads configuration that runs commands before any login, tool or model
call (Claude Code's ``SessionStart`` hooks in a ``--settings`` file, an
``--mcp-config`` stdio server, plugins; Codex's ``-c``/profiles; Gemini's
extensions), finds that configuration through its home (``HOME``,
``CLAUDE_CONFIG_DIR``, ``CODEX_HOME``…), and sends the handler machine's API key
wherever its base URL or proxy points. So while the allowlist is not ``*``, a run
of an agent CLI may carry none of those flags (before ``--``) nor set any of those
variables; the operator pins what the agent needs in the handler's own
environment and home instead, or allows everything with ``*``. ``--allow-env``
still permits a variable by name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from handler.protocol import CONFIG_NOT_ALLOWED, ProtocolError


@dataclass(frozen=True)
class AgentRules:
    flags: frozenset[str]
    """Options whose value is configuration that can run a program (``--x v`` and ``--x=v`` alike)."""
    env: frozenset[str]
    """Variables that point the agent at configuration, or its API key at another server."""


COMMON_ENV = frozenset(
    {
        "HOME",
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
        "XDG_STATE_HOME",
        "NODE_EXTRA_CA_CERTS",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
    }
)
"""Every agent finds its configuration under its home, and trusts what its CA variables say."""

RULES = {
    "claude": AgentRules(
        flags=frozenset({"--settings", "--mcp-config", "--plugin-dir", "--agents", "--setting-sources"}),
        env=frozenset(
            {
                "CLAUDE_CONFIG_DIR",
                "ANTHROPIC_BASE_URL",
                "ANTHROPIC_BEDROCK_BASE_URL",
                "ANTHROPIC_VERTEX_BASE_URL",
                "ANTHROPIC_FOUNDRY_BASE_URL",
            }
        ),
    ),
    "codex": AgentRules(
        flags=frozenset({"-c", "--config", "-p", "--profile", "--enable"}),
        env=frozenset({"CODEX_HOME", "OPENAI_BASE_URL", "OPENAI_API_BASE"}),
    ),
    "gemini": AgentRules(
        flags=frozenset({"-e", "--extensions", "--proxy"}),
        env=frozenset(
            {
                "GEMINI_CLI_HOME",
                "GEMINI_CLI_SYSTEM_SETTINGS_PATH",
                "GEMINI_CLI_SYSTEM_DEFAULTS_PATH",
                "GOOGLE_GEMINI_BASE_URL",
                "CODE_ASSIST_ENDPOINT",
            }
        ),
    ),
}


def agent_of(argv0: str, executable: str) -> str | None:
    """Which agent CLI a run starts, by the name it is called by or the file it resolves to."""
    for path in (argv0, executable, os.path.realpath(executable)):
        name = os.path.basename(path)
        if name in RULES:
            return name
    return None


def _is_refused_variable(name: str, rules: AgentRules) -> bool:
    # Any proxy variable, in either case, routes the agent's requests (and its API key) elsewhere.
    upper = name.upper()
    return name in COMMON_ENV or name in rules.env or (upper.endswith("_PROXY") and upper != "NO_PROXY")


def _refused_flag(arg: str, rules: AgentRules) -> str | None:
    flag = arg.split("=", 1)[0]
    if flag in rules.flags:
        return flag
    # A short option glued to its value (``-cmodel=x``), as clap-style parsers accept.
    if len(arg) > 2 and arg[0] == "-" and arg[1] != "-" and arg[:2] in rules.flags:
        return arg[:2]
    return None


def check_agent_config(
    agent: str, argv: Sequence[str], env: Mapping[str, str | None] | None, allowed_env: frozenset[str]
) -> None:
    """Raise a :class:`ProtocolError` naming the first flag or variable that would let ``agent`` run a program
    of the task's choosing, or send its API key to a server of the task's choosing."""
    rules = RULES[agent]
    for name, value in (env or {}).items():
        if value is not None and name not in allowed_env and _is_refused_variable(name, rules):
            raise ProtocolError(
                CONFIG_NOT_ALLOWED,
                f"Not allowed: a task may not set {name} for {agent}, since it points the agent at configuration "
                f"that can run commands, or its API key at another server; the operator can permit it with "
                f"--allow-env {name}, or set it in the handler's own environment.",
            )
    for arg in argv[1:]:
        if arg == "--":
            break  # the prompt follows: text, never an option
        flag = _refused_flag(arg, rules)
        if flag is not None:
            raise ProtocolError(
                CONFIG_NOT_ALLOWED,
                f"Not allowed: a task may not pass {flag} to {agent}, since it loads configuration that can run "
                "commands; the operator can pin it in the handler's own configuration of the agent, or allow "
                "everything with --allow '*'.",
            )
