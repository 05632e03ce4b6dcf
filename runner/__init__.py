"""cc-execute runner: orchestrators submit agent tasks to an RQ queue; one worker runs them in order.

The public API: :class:`Runner`, :class:`TaskHandle`, :class:`TaskSpec`,
:class:`TaskResult` and :func:`execute_task_via_websocket`.
"""

from handler import __version__
from runner.client import Runner, TaskHandle, execute_task_via_websocket
from runner.errors import RedisUnavailable, SpecError
from runner.spec import TaskResult, TaskSpec

__all__ = [
    "RedisUnavailable",
    "Runner",
    "SpecError",
    "TaskHandle",
    "TaskResult",
    "TaskSpec",
    "__version__",
    "execute_task_via_websocket",
]
