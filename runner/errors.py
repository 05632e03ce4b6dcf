"""Every error a user of cc-execute can meet, in one tree; each class carries the CLI's exit status.

Catch a branch to catch everything under it (``except Unavailable`` is "Redis or the handler cannot be
reached"), as with httpx's ``HTTPError``. The tree::

    CcxError                      exit 1: the task (or the request) failed
    ├── UsageError                exit 2: bad input or a bad setting (also a ValueError)
    │   ├── ConfigError           a flag or a CCX_* variable the runner cannot use
    │   ├── SpecError             a task spec that cannot run
    │   ├── UnknownTask           no such task in this Redis (also a LookupError)
    │   ├── DashboardError        the dashboard cannot start with these settings
    │   └── BadCursor             an MCP ``read_output`` cursor this server never handed out
    ├── Unavailable               exit 3: something the runner needs cannot be reached (also a ConnectionError)
    │   ├── RedisUnavailable      Redis cannot be reached or refuses this client
    │   ├── HandlerUnavailable    the handler cannot be reached, refused us, or went away mid-run
    │   │   └── HandlerUnreachable    no connection opened: nothing ran, trying again later is safe
    │   │       └── HandlerImpostor   another user's process holds the handler's loopback port
    │   └── StackError            a part of the local stack could not start
    ├── Conflict                  exit 3: another worker serves the queue
    │   └── WorkerLocked          another worker holds the queue's lock
    └── HandlerError              the handler answered ``execute`` with a JSON-RPC error (it has a ``code``)

``LockNotHeld``, ``TaskFailed`` and ``TaskRequeued``, at the end, are the runner's signals to RQ, not errors a
user meets: they stay outside the tree, so no ``except CcxError`` swallows one.

Messages are one sentence saying what happened and what to do. The handler package keeps its own
:class:`handler.config.ConfigError` (it does not depend on the runner); the runner turns it into its own
:class:`ConfigError` where it calls the handler's parsing helpers (runner/config.py), and the CLI treats any
left over as a usage error.
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


class SpecError(UsageError):
    """A task spec that cannot run; the message names the field and what it must be."""


class UnknownTask(UsageError, LookupError):
    """No task with this id in this Redis (never submitted here, or expired)."""

    def __init__(self, task_id: str, message: str | None = None) -> None:
        super().__init__(
            message
            or f"No task with id {task_id} is known to this Redis (it may have expired); check the id and --redis-url."
        )
        self.task_id = task_id


class Unavailable(CcxError, ConnectionError):
    exit_status = EXIT_UNAVAILABLE


class RedisUnavailable(Unavailable):
    """Redis cannot be reached; the message names the URL and what to do."""


class HandlerUnavailable(Unavailable):
    """The handler could not be reached, refused us, or went away mid-run."""


class HandlerUnreachable(HandlerUnavailable):
    """No connection could be opened: nothing ran, so trying again later is safe."""


class HandlerImpostor(HandlerUnreachable):
    """Another user's process holds the handler's loopback port: the token was not sent. The handler is not
    there, so, as for a handler that cannot be reached, the queue waits for it."""


class Conflict(CcxError):
    exit_status = EXIT_UNAVAILABLE


class HandlerError(CcxError):
    """The handler answered ``execute`` with a JSON-RPC error: it was reached, so this is no
    :class:`Unavailable`; the task could not run (exit 1). ``code`` is the error's, from handler/protocol.py."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class WorkerLocked(Conflict):
    """Another worker holds the queue's lock."""


class StackError(Unavailable):
    """A part of the stack could not start; the message says which and why."""


class DashboardError(UsageError):
    """The dashboard cannot start; the message says what to change."""


class BadCursor(UsageError):
    """``since_seq`` is not a cursor this module handed out."""


# The runner's own signals to RQ inside a worker or its work-horse: never met by a user, so outside the tree.


class LockNotHeld(Exception):
    """The worker went to take a job and found the queue lock not its own (lost, or expired while cut off)."""


class TaskFailed(Exception):
    """Raised after the result is recorded, so RQ files the job as failed (and dependents wait or are cancelled)."""


class TaskRequeued(Exception):
    """Raised when the task goes back to the front of its queue (interrupted, or this worker is stale)."""
