"""Plain commands: run ``argv`` exactly as given; stdout is the output, exit 0 is success."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runner.agents.base import Agent
from runner.errors import SpecError

if TYPE_CHECKING:
    from runner.spec import TaskSpec


class CommandAgent(Agent):
    name = "command"
    display_name = "Command"
    install_hint = "install it on the handler's machine or give its full path"

    options = frozenset({"argv"})
    default_idle_timeout = None  # a build or a test suite may be quiet for long
    default_retries = 0  # which exit codes are transient, only the submitter knows (retry_on_exit_codes)

    def check_required(self, spec: TaskSpec) -> None:
        if not spec.argv:
            raise SpecError("The command agent needs 'argv', a non-empty list of strings (e.g. ['echo', 'hello']).")

    def argv(self, spec: TaskSpec) -> list[str]:
        return list(spec.argv or [])

    def not_found_message(self, argv0: str) -> str:
        return f"Command not found: '{argv0}' is not on the handler's PATH; {self.install_hint}."
