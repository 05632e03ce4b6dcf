"""The agent registry: one small module per agent CLI.

Adding an agent: write a module with an :class:`~runner.agents.base.Agent`
subclass (its argv and, if it prints structured output, a parser and a
transcript) and list it in ``AGENTS`` below. See docs/agents.md.
"""

from __future__ import annotations

from runner.agents.base import Agent
from runner.agents.claude import ClaudeAgent
from runner.agents.codex import CodexAgent
from runner.agents.command import CommandAgent
from runner.agents.gemini import GeminiAgent
from runner.errors import SpecError

AGENTS: dict[str, Agent] = {agent.name: agent for agent in (ClaudeAgent(), CodexAgent(), GeminiAgent(), CommandAgent())}
DEFAULT_AGENT = ClaudeAgent.name
"""The agent of a task whose spec names none: a fresh Claude Code process."""


def agent_names(quote: str = "", last: str = " or ") -> str:
    """The agents in words, for help texts: ``claude, codex, gemini or command``."""
    names = [f"{quote}{name}{quote}" for name in AGENTS]
    return ", ".join(names[:-1]) + last + names[-1]


def get_agent(name: str) -> Agent:
    """The agent called ``name``, or a :class:`~runner.errors.SpecError` listing the known ones."""
    try:
        return AGENTS[name]
    except KeyError:
        raise SpecError(f"Unknown agent '{name}'. Known agents: {', '.join(AGENTS)}.") from None
