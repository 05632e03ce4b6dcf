"""The bare-RQ baseline: a plain ``rq.Worker`` with JSONSerializer running a trivial job function.

``python -m bench.rqbase REDIS_URL QUEUE`` serves QUEUE until terminated. The
job function, like cc-execute's, runs a command in a fresh child process and
returns; everything cc-execute adds on top (handler, WebSocket, events,
task record) is what the per-task overhead figure compares against this.
"""

from __future__ import annotations

import subprocess
import sys
import time

from redis import Redis
from rq import Queue, Worker
from rq.job import Job
from rq.results import Result
from rq.serializers import JSONSerializer

JOB_FUNCTION = "bench.rqbase.run_command"


def run_command(argv: list[str]) -> int:
    """The bare job: run ``argv`` and return its exit code."""
    return subprocess.run(argv, stdin=subprocess.DEVNULL, check=False).returncode


def wait_for_rq_result(job: Job, timeout: float) -> Result | None:
    """``job.latest_result``, blocking (RQ 3 XREADs its results stream) in 1 s steps up to ``timeout``.

    Short steps keep each blocking read under the client's socket timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = job.latest_result(timeout=1)
        if result is not None or time.monotonic() >= deadline:
            return result


def main(argv: list[str]) -> int:
    redis_url, queue_name = argv
    import bench.rqbase  # noqa: F401  (imported before forking, like cc-execute's worker does runner.job)

    connection = Redis.from_url(redis_url)
    queue = Queue(queue_name, connection=connection, serializer=JSONSerializer)
    worker = Worker([queue], connection=connection, serializer=JSONSerializer)
    print(f"bare rq worker serving queue '{queue_name}'", flush=True)
    worker.work(logging_level="INFO", with_scheduler=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
