"""The agent registry: one small module per agent CLI.

Adding an agent: write a module with an :class:`~runner.agents.base.Agent`
subclass (its argv and, if it prints structured output, a parser) and list it
in ``AGENTS`` below. See docs/agents.md.
"""

from __future__ import annotations

from runner.agents.base import Agent
from runner.agents.claude import ClaudeAgent
from runner.agents.codex import CodexAgent
from runner.agents.command import CommandAgent
from runner.agents.gemini import GeminiAgent

AGENTS: dict[str, Agent] = {agent.name: agent for agent in (ClaudeAgent(), CodexAgent(), GeminiAgent(), CommandAgent())}
DEFAULT_AGENT = "claude"


def get_agent(name: str) -> Agent:
    """The agent called ``name``, or a :class:`~runner.spec.SpecError` listing the known ones."""
    from runner.spec import SpecError

    try:
        return AGENTS[name]
    except KeyError:
        raise SpecError(f"Unknown agent '{name}'. Known agents: {', '.join(AGENTS)}.") from None
