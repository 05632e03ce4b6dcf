"""Every error a user of cc-execute can meet, in one tree; each class carries the CLI's exit status.

* :class:`UsageError` (exit 2): bad input or a bad setting; the message says what to change.
* :class:`Unavailable` (exit 3): Redis or the handler cannot be reached, or the stack cannot start.
* :class:`Conflict` (exit 3): another worker serves the queue.

Messages are one sentence saying what happened and what to do. The handler package
keeps its own :class:`handler.config.ConfigError` (it does not depend on the runner);
it is a ``ValueError``, and the CLI treats it as a usage error.
"""

from __future__ import annotations

EXIT_TASK_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3


class CcxError(Exception):
    """Base of cc-execute's own errors."""

    exit_status = EXIT_TASK_FAILED


class UsageError(CcxError, ValueError):
    exit_status = EXIT_USAGE


class ConfigError(UsageError):
    """A setting (a flag or a CCX_* variable) the runner cannot use; the message names it and the fix."""


class Unavailable(CcxError, ConnectionError):
    exit_status = EXIT_UNAVAILABLE


class Conflict(CcxError):
    exit_status = EXIT_UNAVAILABLE


class UnknownTask(UsageError, LookupError):
    """No task with this id in this Redis (never submitted here, or expired)."""

    def __init__(self, task_id: str, message: str | None = None) -> None:
        super().__init__(
            message
            or f"No task with id {task_id} is known to this Redis (it may have expired); check the id and --redis-url."
        )
        self.task_id = task_id
