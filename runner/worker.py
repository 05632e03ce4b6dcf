"""The one worker of a queue: RQ's forking worker, a Redis lock, and recovery of a dead predecessor.

Tasks run strictly one after another because exactly one worker consumes a
queue and it runs one job at a time. The lock (a key with a TTL, renewed by a
thread) keeps a second worker, from any machine, from starting; when a worker
dies its lock expires and a new one can take over. A task that was running
when its worker died is ended as failed with a clear error at the next start,
never left "started".
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
import uuid

import redis
from rq import Queue, Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.job_lifecycle import record_job_failure
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from runner import events
from runner.cancel import cancel_dependents
from runner.config import PATIENT_RETRIES, Settings, redact_url, redis_client
from runner.handler_client import check_transport, tls_context
from runner.job import configure, warm_up
from runner.spec import TaskResult
from runner.store import TaskStore

log = logging.getLogger("ccx.worker")

HORSE_DIED = (
    "The process running this task (the worker's work-horse) died before the task finished "
    "(killed, out of memory, or past its time limit); its processes were stopped. See the worker's log."
)
WORKER_DIED = (
    "The worker running this task died (it was killed or crashed) before the task finished; "
    "its processes were stopped. Resubmit the task to run it again."
)

# Renew only if we still own it: never extend another worker's lock.
_RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class WorkerLocked(Exception):
    """Another worker holds the queue's lock."""


def lock_key(queue: str) -> str:
    return f"{events.PREFIX}:worker:{queue}:lock"


class QueueLock:
    """The queue's single-worker lock; a thread renews it every third of its TTL."""

    def __init__(self, client: redis.Redis, queue: str, ttl: float) -> None:
        self.client = client
        self.key = lock_key(queue)
        self.ttl_ms = int(ttl * 1000)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._renew = client.register_script(_RENEW_SCRIPT)
        self._release = client.register_script(_RELEASE_SCRIPT)

    def holder(self) -> str | None:
        value = self.client.get(self.key)
        return value.decode() if value else None

    def acquire(self, wait: bool = False, poll: float = 1.0) -> None:
        while not self.client.set(self.key, self.owner, nx=True, px=self.ttl_ms):
            if not wait:
                raise WorkerLocked(
                    f"Another worker ({self.holder()}) already serves queue '{self.key.split(':')[2]}'; "
                    "only one worker may run per queue. Stop it first, or start this one with --standby to take over when it stops."
                )
            time.sleep(poll)
        self._thread = threading.Thread(target=self._keep, name="ccx-lock", daemon=True)
        self._thread.start()

    def _keep(self) -> None:
        interval = self.ttl_ms / 3000
        while not self._stop.wait(interval):
            try:
                if not self._renew(keys=[self.key], args=[self.owner, self.ttl_ms]):
                    log.error("lost the worker lock %s (another worker took over?); stopping", self.key)
                    self.lost.set()
                    return
            except redis.RedisError as exc:  # Redis restarting: keep trying until the TTL runs out
                log.warning("could not renew the worker lock: %s", exc)

    def release(self) -> None:
        self._stop.set()
        with contextlib.suppress(redis.RedisError):
            self._release(keys=[self.key], args=[self.owner])


class CcxWorker(Worker):
    """RQ's forking worker, set up for cc-execute: JSON only, one-line failure logs, the queue lock."""

    lock: QueueLock | None = None
    settings: Settings = Settings()

    def execute_job(self, job: Job, queue: Queue) -> None:
        if self.lock is not None and self.lock.lost.is_set():
            # Another worker owns the queue now: hand the job back untouched rather than run it twice.
            queue.enqueue_job(job, at_front=True)
            self.request_stop(0, None)
            return
        super().execute_job(job, queue)

    def handle_job_failure(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: object = None,
        exc_string: str = "",
        execution: object = None,
    ) -> None:
        """RQ's failure handling, plus a recorded result when the work-horse itself died.

        A horse killed from outside (out of memory, a signal, RQ's own timeout kill) never
        reaches its own finalize; without this its task would stay "running" forever.
        Finalizing is done at most once, so a result the horse did record is kept.
        """
        super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)  # type: ignore[arg-type]
        store = TaskStore(self.connection, self.settings.log_maxlen, self.settings.log_ttl)
        result = TaskResult(id=job.id, error=HORSE_DIED, ended_at=events.now_iso(), log_key=events.log_key(job.id))
        if store.finalize(result, queue.name):
            log.warning("task %s: its work-horse died (%s); marked failed", job.id, exc_string.strip())
            cancel_dependents(store, job, "failed", include_after_any=False)

    def heartbeat(self, timeout: int | None = None, pipeline: object = None) -> None:
        if self.lock is not None and self.lock.lost.is_set() and not self._stop_requested:
            # Another worker owns the queue now and will run the next task: stop ours at
            # once, or two agents would run at the same time.
            self._stop_requested = True
            if self.horse_pid:
                self.kill_horse()
        super().heartbeat(timeout, pipeline)  # type: ignore[arg-type]


def _log_failure(job: Job, exc_type: type, exc_value: BaseException, traceback: object) -> bool:
    """Failures are already explained in the task's result: log one line, not a traceback."""
    log.warning("task %s did not succeed: %s", job.id, exc_value)
    return False


def recover_abandoned(client: redis.Redis, queue_name: str, store: TaskStore) -> list[str]:
    """End tasks a dead predecessor left 'started': failed, with an error that says so.

    Called while holding the queue's lock, so nothing else can be running them.
    """
    queue = Queue(queue_name, connection=client, serializer=JSONSerializer)
    registry = StartedJobRegistry(queue=queue)
    recovered = []
    for entry in client.zrange(registry.key, 0, -1):
        job_id = registry.parse_job_id(entry)
        try:
            job = Job.fetch(job_id, connection=client, serializer=JSONSerializer)
        except NoSuchJobError:
            job = None
        if job is not None and job.get_status(refresh=True) == JobStatus.STARTED:
            with client.pipeline() as pipe:
                record_job_failure(job, WORKER_DIED, pipe)
                pipe.execute()
            result = TaskResult(id=job_id, error=WORKER_DIED, ended_at=events.now_iso(), log_key=events.log_key(job_id))
            store.finalize(result, queue_name)
            queue.enqueue_dependents(job)
            cancel_dependents(store, job, "failed", include_after_any=False)
            recovered.append(job_id)
            log.warning("task %s was running when the previous worker died; marked failed", job_id)
        client.zrem(registry.key, entry)
    return recovered


def _stop_before_work(signum: int, frame: object) -> None:
    raise SystemExit(0)


def run_worker(settings: Settings, *, standby: bool = False, burst: bool = False, logging_level: str = "INFO") -> int:
    """Serve ``settings.queue`` until stopped; returns an exit status."""
    import runner.job  # noqa: F401  (imported before forking, so each work-horse starts warm)

    # Until RQ installs its own handlers in work(), SIGTERM must still unwind through the
    # `finally` below, or the lock would outlive this process by its whole TTL.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop_before_work)
    settings = settings.with_local_token()
    check_transport(settings.handler_url, settings.handler_token, settings.allow_insecure)
    tls_context(settings.handler_url, settings.handler_ca)  # a bad CA file is a bad setting: say so now
    configure(settings)
    client = redis_client(settings.redis_url, retries=PATIENT_RETRIES)
    client.ping()
    store = TaskStore(client, settings.log_maxlen, settings.log_ttl)
    lock = QueueLock(client, settings.queue, settings.lock_ttl)
    if standby:
        holder = lock.holder()
        if holder:
            print(f"ccx worker: standing by; queue '{settings.queue}' is served by {holder}.", flush=True)
    lock.acquire(wait=standby)
    try:
        recover_abandoned(client, settings.queue, store)
        queue = Queue(settings.queue, connection=client, serializer=JSONSerializer)
        worker = CcxWorker(
            [queue],
            connection=client,
            serializer=JSONSerializer,
            exception_handlers=[_log_failure],
            disable_default_exception_handler=True,
            log_job_description=False,  # descriptions hold prompts and argv, which may carry secrets
            job_monitoring_interval=max(1, int(settings.lock_ttl / 3)),
        )
        worker.lock = lock
        worker.settings = settings
        problem = warm_up(settings)
        if problem:
            log.warning("%s Tasks fail until the handler is up (start it with `ccx handler`).", problem)
        print(
            f"ccx worker serving queue '{settings.queue}' on {redact_url(settings.redis_url)} via {settings.handler_url}",
            flush=True,
        )
        worker.work(burst=burst, logging_level=logging_level, with_scheduler=False)
    finally:
        lock.release()
    return 0
