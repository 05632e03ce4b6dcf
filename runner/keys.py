"""Every name cc-execute uses in Redis, defined once: its own keys and channels, and RQ's, taken from RQ's classes.

Below everything: it imports nothing of the project. Whoever reads or writes a key names it through a function
here, so a newcomer finds every key, what it holds and who writes it in one page (docs/events.md lists them too).
"""

from __future__ import annotations

from rq import Queue
from rq.job import Job
from rq.registry import DeferredJobRegistry, StartedJobRegistry

PREFIX = "ccx"
LIFECYCLE_CHANNEL = f"{PREFIX}:events"
"""Every task's lifecycle changes and every queue's pauses and resumes (see docs/events.md)."""


def log_key(task_id: str) -> str:
    return f"{PREFIX}:task:{task_id}:log"


def task_channel(task_id: str) -> str:
    return f"{PREFIX}:task:{task_id}"


def info_key(task_id: str) -> str:
    return f"{PREFIX}:task:{task_id}:info"


def done_key(task_id: str) -> str:
    """A stream that gets one entry when the task ends: result waiters block on it, not on the output log."""
    return f"{PREFIX}:task:{task_id}:done"


def cancel_key(task_id: str) -> str:
    """A flag key and, with the same name, the pub/sub channel a running task listens on."""
    return f"{PREFIX}:task:{task_id}:cancel"


def lease_key(task_id: str) -> str:
    """The run lease: set (with a TTL) by the work-horse relaying the run, renewed while it runs."""
    return f"{PREFIX}:task:{task_id}:lease"


def lock_key(queue: str) -> str:
    """The queue's single-worker lock (value ``host:pid:nonce``)."""
    return f"{PREFIX}:worker:{queue}:lock"


def fence_key(queue: str) -> str:
    """The queue's fencing token: one more with every lock acquisition."""
    return f"{PREFIX}:worker:{queue}:fence"


def queue_state_key(queue: str) -> str:
    """The queue's pause (hash: kind, reason, until, since, backoff_level); absent: not paused."""
    return f"{PREFIX}:queue:{queue}:state"


def costs_key(queue: str) -> str:
    """The queue's spend in USD as the agents reported it (hash: ``total``, ``day:YYYY-MM-DD``)."""
    return f"{PREFIX}:queue:{queue}:costs"


def metrics_key(queue: str) -> str:
    """The queue's Prometheus counters (hash; see runner/metrics.py): kept, like the costs, so they never go back."""
    return f"{PREFIX}:queue:{queue}:metrics"


def idempotency_key(queue: str, key: str) -> str:
    """An orchestrator's idempotency key: the id of the task submitted with it (see Runner.submit)."""
    return f"{PREFIX}:idem:{queue}:{key}"


def webhook_config_key(queue: str) -> str:
    """The queue's webhook (hash: ``url``, ``on_pause``, ``secret``, ``last_delivery``; see runner/webhooks/)."""
    return f"{PREFIX}:queue:{queue}:webhook"


def webhook_due_key(queue: str) -> str:
    """The queue's webhook outbox: delivery ids by the time of their next attempt (sorted set)."""
    return f"{PREFIX}:queue:{queue}:webhooks"


def webhook_wake_key(queue: str) -> str:
    """A one-item list the queue's deliverer blocks on: pushed when a delivery joins the outbox."""
    return f"{PREFIX}:queue:{queue}:webhooks:wake"


def webhook_delivery_key(delivery_id: str) -> str:
    """One delivery (hash: ``url``, ``event``, ``body``, ``task``, ``queue``, ``created``, ``attempts``)."""
    return f"{PREFIX}:webhook:{delivery_id}"


def scheduled_key(queue: str) -> str:
    """The queue's tasks for later that have not joined the line yet: ids by due time (sorted set)."""
    return f"{PREFIX}:queue:{queue}:scheduled"


def schedules_key(queue: str) -> str:
    """The queue's recurring tasks (hash: schedule id → JSON; see runner/schedules.py)."""
    return f"{PREFIX}:queue:{queue}:schedules"


def index_key(queue: str) -> str:
    """The queue's tasks by submission time (sorted set); a task leaves it when its record expires."""
    return f"{PREFIX}:tasks:{queue}"


def index_expiry_key(queue: str) -> str:
    """When each ended task of the queue expires (sorted set: id by epoch seconds), so its index entry goes too.

    The index is scored by submission time, which says nothing of when a task's record expires: a task for
    later (``in_`` up to a year) or one behind a long line may still be waiting long after its submission.
    Each end trims both sets of the tasks whose time has come (see runner/store.py).
    """
    return f"{PREFIX}:tasks:{queue}:expiry"


# RQ's own key names, taken from RQ (no connection needed to know them).


def rq_queue_key(queue: str) -> str:
    """RQ's list of the queue's waiting job ids, in the order the worker takes them."""
    return Queue.redis_queue_namespace_prefix + queue


def rq_started_key(queue: str) -> str:
    """RQ's registry of the queue's executing jobs (members ``<job id>:<execution id>``)."""
    return StartedJobRegistry.key_template.format(queue)


def rq_deferred_key(queue: str) -> str:
    """RQ's registry of jobs waiting for the task they were submitted ``after``."""
    return DeferredJobRegistry.key_template.format(queue)


def rq_job_key(task_id: str) -> str:
    """RQ's hash of one job (its status, its serialized call, its dependencies)."""
    key = Job.key_for(task_id)
    return key.decode() if isinstance(key, bytes) else key
