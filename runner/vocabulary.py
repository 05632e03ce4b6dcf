"""The words cc-execute writes into Redis and onto the wire, defined once: statuses, event types, attempt and
pause kinds, what a cancel did. Below everything: it imports nothing of the project.

Each is a :class:`~enum.StrEnum`, so a member is the very string stored, published and shown (``Status.FAILED
== "failed"``), and JSON, Redis and f-strings take it as it is. docs/events.md is the reference.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """A task's status: its record's ``status``, and the type of the lifecycle event that sets it."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    """Submitted for later (``at``/``in``): it joins the line when due."""
    DEFERRED = "deferred"
    """Waits for the task it was submitted ``after``."""
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"


END_STATUSES = (Status.FINISHED, Status.FAILED, Status.CANCELLED)
STATUSES = tuple(Status)


class EventType(StrEnum):
    """The type of an event in a task's log and channel, or of a queue's event on the lifecycle channel (where
    a task's events are typed by the :class:`Status` they set)."""

    STARTED = "started"
    OUTPUT = "output"
    RESULT = "result"
    GAP = "gap"
    """Made by readers, never stored: ``missing`` output frames were trimmed from the log (CCX_LOG_MAXLEN)."""
    PAUSED = "paused"
    RESUMED = "resumed"


class AttemptKind(StrEnum):
    """Why an attempt did not end its task, besides the :class:`PauseKind` a policy decision names."""

    INTERRUPTED = "interrupted"
    """Ended by the infrastructure (a handler or worker stopping or dying); the task runs again."""
    STALE = "stale"
    """Refused by the handler as a stale worker's run (a newer worker serves the queue)."""


class PauseKind(StrEnum):
    """Why a queue holds (its state's ``kind``); see runner/queue_state.py for their order of strength."""

    USAGE_LIMIT = "usage_limit"
    BACKOFF = "backoff"
    RETRY = "retry"
    CREDENTIALS = "credentials"
    MANUAL = "manual"
    BUDGET = "budget"
    HANDLER = "handler"
    """The handler could not be reached: the queue waits for it, and its worker ends the pause once it answers."""


class CancelOutcome(StrEnum):
    """What a cancel did (:func:`runner.lifecycle.cancel`)."""

    CANCELLED = "cancelled"
    """The task had not started: it never will."""
    CANCELLING = "cancelling"
    """The task runs: its process tree is being stopped, and its result will say it was cancelled."""
    ALREADY_ENDED = "ended"
    """The task had ended already: nothing changed."""
