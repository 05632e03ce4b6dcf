"""The one worker of a queue: RQ's forking worker, a Redis lock, and recovery of a dead predecessor.

Tasks run strictly one after another because exactly one worker consumes a
queue and it runs one job at a time. The lock (a key with a TTL, renewed by a
thread) keeps a second worker, from any machine, from starting; when a worker
dies its lock expires and a new one can take over. A task that was running
when its worker died is settled by the next worker before it serves anything
(:func:`recover_abandoned`): it runs again from the front of its queue, as any
interrupted attempt does (:func:`runner.lifecycle.runs_again`), or its end, if
it had reached one, is kept; it is never left "started".
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from typing import Any

import redis
from rq import Queue, Worker
from rq.exceptions import DeserializationError, NoSuchJobError, StopRequested
from rq.job import Job, JobStatus
from rq.job_lifecycle import call_exception_handlers, format_exc_info, record_job_failure
from rq.registry import CanceledJobRegistry, FailedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from runner import clock, hooks, keys, lifecycle, lineup, metrics, queue_state, schedules
from runner.client import JOB_FUNCTION, Runner
from runner.config import PATIENT_RETRIES, Settings, redact_url, redis_client
from runner.errors import LockNotHeld, TaskFailed, TaskRequeued, WorkerLocked
from runner.handler_client import check_transport, tls_context
from runner.job import HORSE, REQUEUE_META, Horse, run_id
from runner.lineup import Reclaimer, fenced_queue_class
from runner.lock import QueueLock, holder_is_dead_here
from runner.reconcile import Reconciler
from runner.relay import handler_answers, warm_up
from runner.spec import TaskResult
from runner.store import TaskStore
from runner.vocabulary import AttemptKind, PauseKind, Status
from runner.webhooks import outbox
from runner.webhooks.delivery import Deliverer

log = logging.getLogger("ccx.worker")

HORSE_DIED = (
    "The process running this task (the worker's work-horse) died before the task finished "
    "(killed, out of memory, or past its time limit); its processes were stopped. See the worker's log."
)
WORKER_DIED = (
    "The worker running this task died (it was killed or crashed) before the task finished; "
    "its processes were stopped. Resubmit the task to run it again."
)


def foreign_call(job: Job) -> str | None:
    """What ``job`` would make this worker call, when that is anything but a task; None for a task.

    Whoever can write to Redis can put any job on the queue, and RQ would import and call whatever it names
    (``os.system`` as well), bypassing the handler's allowlist: only :data:`~runner.client.JOB_FUNCTION`, with
    no callbacks (RQ imports and calls those too), is ours. Decoding is JSON only, so this runs nothing."""
    try:
        function, instance = job.func_name, job.instance
    except DeserializationError:
        return "its data is not an RQ job in JSON"
    if function != JOB_FUNCTION or instance is not None:
        return f"its function is {_shown(function)}" + (" on an object" if instance is not None else "")
    # RQ keeps the names it would import only in private attributes (its properties import them).
    for callback in (job._success_callback_name, job._failure_callback_name, job._stopped_callback_name):
        if callback:
            return f"it names a callback, {_shown(callback)}"
    return None


def _shown(name: object) -> str:
    """A name from a job, fit for one log line (whoever wrote the job chose it)."""
    text = str(name)
    return text if text.isprintable() and len(text) <= 200 else repr(text[:200])


DEQUEUE_TIMEOUT = 5
"""Seconds a blocking dequeue waits. Redis hands a pending dequeue the next job even when its worker is frozen
or cut off; a short wait bounds what such a worker can swallow to the jobs submitted within it, and the next
holder's :class:`~runner.lineup.Reclaimer` puts those back first in line."""
HANDLER_PROBE_EVERY = 2.0
"""Seconds between a waiting worker's looks at a handler it could not reach (a ``handler`` pause)."""


class CcxWorker(Worker):
    """RQ's forking worker, set up for cc-execute: JSON only, one-line failure logs, the queue lock.

    RQ's own machinery (its failure handling in the horse and in the worker, its maintenance of the
    intermediate list) never decides a task's fate here: :mod:`runner.lifecycle` does, against the task's
    run; these hooks only make RQ's records agree with the task's own (:meth:`handle_job_failure`)."""

    lock: QueueLock | None = None
    settings: Settings = Settings()
    store: TaskStore | None = None
    looks: tuple[Reclaimer | Reconciler, ...] = ()
    """What an idle holder looks at now and then: jobs stranded by a previous holder, jobs RQ's tools deleted."""
    _run: str = ""
    """The run id of the job being executed, made before the fork: the horse starts its run under it, and the
    worker ends that run (and only that run) if the horse dies."""
    _dequeuing = False
    _next_probe = 0.0

    def __init__(
        self,
        queues: Any,
        *,
        settings: Settings | None = None,
        lock: QueueLock | None = None,
        store: TaskStore | None = None,
        looks: tuple[Reclaimer | Reconciler, ...] = (),
        **rq_options: Any,
    ) -> None:
        # RQ builds workers of this class too (Worker.all, rq info): hence no required argument of ours.
        super().__init__(queues, **rq_options)
        self.settings = settings if settings is not None else Settings()
        self.lock = lock
        self.store = store
        self.looks = looks

    @property
    def dequeue_timeout(self) -> int:
        # Under a third of the lock's TTL: a frozen holder's pending dequeue is over before a standby serves.
        return max(1, min(DEQUEUE_TIMEOUT, int(self.settings.lock_ttl / 3)))

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        self._dequeuing = True
        try:
            while True:
                try:
                    return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
                except LockNotHeld:
                    self._confirm_lock()
        finally:
            self._dequeuing = False

    def _confirm_lock(self) -> None:
        """The fenced take found the lock not ours: renew it now. Expired while this worker was cut off and
        nobody took it: taken back, go on. Another worker's: stop at once, taking nothing (its thread would
        only notice at its next renewal, and meanwhile every job this worker took would let the new holder run
        the next one first)."""
        held = self.lock.renew() if self.lock is not None else False
        if held is False:
            self._stop_requested = True
            raise StopRequested
        if held is None:  # Redis unreachable: the dequeue will wait it out, then ask again
            time.sleep(1)

    def execute_job(self, job: Job, queue: Queue) -> None:
        foreign = foreign_call(job)
        if foreign is not None:
            # Here, in the worker, never in a work-horse: nothing the job names is imported or called.
            self.refuse(job, queue, foreign)
            return
        if self.lock is not None and self.lock.lost.is_set():
            # Another worker owns the queue now: hand the job back untouched rather than run it twice.
            lineup.hand_back(self.connection, job.id, queue)
            self.request_stop(0, None)
            return
        if queue_state.held(self.connection, queue.name):
            # Held (a usage limit, a backoff, a person): the job goes back to the front, untouched (and out of
            # RQ's intermediate list, whose maintenance would fail it), and this worker waits.
            lineup.hand_back(self.connection, job.id, queue)
            self.wait_while_paused(queue.name)
            return
        self._run = run_id(self.lock.fence if self.lock is not None else None)
        super().execute_job(job, queue)

    def perform_job(self, job: Job, queue: Queue, execution: Any) -> bool:
        # In the work-horse: hand it this worker's settings, fence and run on the job itself (never saved).
        setattr(job, HORSE, Horse(self.settings, self.lock.fence if self.lock is not None else None, self._run))
        return super().perform_job(job, queue, execution)

    def refuse(self, job: Job, queue: Queue, foreign: str) -> None:
        """File a job that is not a task as failed, with one sentence saying why, in RQ's registry and the log."""
        why = (
            f"Job {job.id} is not a cc-execute task ({foreign}); this worker runs only {JOB_FUNCTION}, so it did "
            "not run it: submit tasks with `ccx submit` or Runner.submit, and check who else can write to this Redis."
        )
        log.error("%s", why)
        with self.connection.pipeline() as pipe:
            pipe.lrem(queue.intermediate_queue_key, 0, job.id)
            job.set_status(JobStatus.FAILED, pipeline=pipe)
            job._handle_failure(why, pipeline=pipe, worker_name=self.name)
            pipe.execute()

    def wait_while_paused(self, queue_name: str) -> None:
        """Wait until the queue's pause ends: by its time (ended here, announced) or by a person."""
        announced = False
        last_beat = time.monotonic()
        while not self._stop_requested:
            state = queue_state.get(self.connection, queue_name)
            if not state.paused:
                return
            if not announced:
                log.warning("queue %s is %s", queue_name, state.describe())
                announced = True
            now = time.time()
            if state.kind == PauseKind.HANDLER and self._handler_is_back(queue_name):
                return
            if state.until is not None and now >= state.until:
                if queue_state.resume(
                    self.connection, queue_name, f"the pause ended ({state.reason})", only_if_due=True
                ):
                    log.info("queue %s goes on: the pause ended (%s)", queue_name, state.reason)
                    return
                continue  # a stronger pause came meanwhile (e.g. `ccx pause`): keep waiting
            if time.monotonic() - last_beat > 30:
                self.heartbeat()
                last_beat = time.monotonic()
            time.sleep(min(1.0, max(0.05, (state.until - now) if state.until else 1.0)))

    def _handler_is_back(self, queue_name: str) -> bool:
        """A ``handler`` pause ends when the handler answers again: asked every HANDLER_PROBE_EVERY seconds."""
        if time.monotonic() < self._next_probe:
            return False
        self._next_probe = time.monotonic() + HANDLER_PROBE_EVERY
        if not handler_answers(self.settings):
            return False
        back = "the handler answers again"
        if queue_state.resume(self.connection, queue_name, back, only_kind=PauseKind.HANDLER):
            log.info("queue %s goes on: %s", queue_name, back)
        return True

    def handle_work_horse_killed(self, job: Job, retpid: Any, ret_val: Any, rusage: Any) -> None:
        """The horse died from outside (out of memory, a signal, RQ's timeout kill) before recording an end:
        end its run, and only its run, so a run another worker started meanwhile is never touched."""
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)
        result = TaskResult.failed(job.id, HORSE_DIED)
        if self.store is None or not self._run:
            return
        if lifecycle.end(self.store, result, job.origin, job, self._run):
            log.warning("task %s: its work-horse died (waitpid %s); marked failed", job.id, ret_val)
            return
        record = self.store.get(job.id)
        ours = self.connection.hget(keys.info_key(job.id), "run") == self._run.encode()  # an end keeps its run
        if record is not None and record.result is not None and ours:
            lifecycle.settle_lost_end(self.store, job, record.result)  # it died right at its end

    def handle_job_failure(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: object = None,
        exc_string: str = "",
        execution: object = None,
    ) -> None:
        """Make RQ's records of ``job`` agree with the task's record, whoever calls: the horse (the task did
        not succeed, or goes back in line), the worker (its horse died), or RQ's maintenance (a job stranded).

        * The task ended (or is no task of ours): RQ files it as failed or cancelled, as the record says.
        * Nobody runs it and it has not ended (interrupted, held back, never started): first in line again.
        * Another run holds it (this horse's worker lost the queue), or it succeeded under another run: this
          execution is only cleaned up.
        """
        result, run, status = self.connection.hmget(keys.info_key(job.id), ["result", "run", "status"])
        if status is None or self.store is None or (result is not None and status != Status.FINISHED.encode()):
            super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)  # type: ignore[arg-type]
            if self.store is not None:
                file_in_rq_registry(self.connection, job, queue, self.store)
            return
        with self.connection.pipeline() as pipeline:
            self.cleanup_execution(job, pipeline=pipeline, execution=execution)  # type: ignore[arg-type]
            if result is None and run is None:
                lineup.hand_back(pipeline, job.id, queue)
            pipeline.execute()
        why = job.get_meta(refresh=True).get(REQUEUE_META)
        if why:
            metrics.record_retry(self.connection, queue.name, str(why))
            job.meta.pop(REQUEUE_META, None)
            job.save_meta()

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        """One line for a task that did not succeed (its result says why); a traceback only for our own bugs.

        RQ's version logs every failure as a traceback at ERROR, with the job's arguments (the spec, env
        included) attached to the log record.
        """
        if not isinstance(exc_info[1], (TaskFailed, TaskRequeued)):
            log.error("task %s: internal error in the work-horse:\n%s", job.id, format_exc_info(exc_info))
        call_exception_handlers(self._exc_handlers, job, *exc_info)

    def heartbeat(self, timeout: int | None = None, pipeline: object = None) -> None:
        if self.lock is not None and self.lock.lost.is_set() and not self._stop_requested:
            # Another worker owns the queue now: take no new task. The running one goes on: the
            # handler's fencing stops it if the new worker starts a run, and otherwise its result counts.
            self._stop_requested = True
        if self._stop_requested and self._dequeuing and self.lock is not None and self.lock.lost.is_set():
            raise StopRequested  # RQ's dequeue loop checks no flag: this is how it ends between two dequeues
        super().heartbeat(timeout, pipeline)  # type: ignore[arg-type]
        # Between jobs, now and then: jobs a frozen or cut-off previous holder took go back first in line, and
        # waiting tasks whose RQ job was deleted by RQ's tools end cancelled.
        idle = self._dequeuing and pipeline is None and not (self.lock is not None and self.lock.lost.is_set())
        for look in self.looks if idle else ():
            if look.due():
                with contextlib.suppress(redis.RedisError):
                    look.run()


def _log_failure(job: Job, exc_type: type, exc_value: BaseException, traceback: object) -> bool:
    """Failures are already explained in the task's result: log one line, not a traceback."""
    if not isinstance(exc_value, TaskRequeued):  # the work-horse said why it goes back to the queue
        log.warning("task %s did not succeed: %s", job.id, exc_value)
    return False


def file_in_rq_registry(client: redis.Redis, job: Job, queue: Queue, store: TaskStore) -> None:
    """Put an ended-but-unsuccessful task where RQ's tools look: FailedJobRegistry with its one-line error,
    or CanceledJobRegistry (status ``canceled``) when someone cancelled it while it ran."""
    record = store.get(job.id)
    if record is None or record.result is None or record.result.success:
        return
    if record.result.cancelled:
        with client.pipeline() as pipe:
            FailedJobRegistry(queue=queue).remove(job, pipeline=pipe)
            job.set_status(JobStatus.CANCELED, pipeline=pipe)
            CanceledJobRegistry(queue=queue).add(job, ttl=store.log_ttl, pipeline=pipe)
            # A cancel can end a task its worker has just dequeued, and RQ then PERSISTs the job hash after the
            # end set its TTL: set it again (hash, dependents, dependencies), or the spec would stay forever.
            job.cleanup(ttl=store.log_ttl, pipeline=pipe)
            pipe.execute()
    else:
        # What RQ's default failure handling records (registry entry and a failed Result), but with the
        # task's one-sentence error instead of a traceback.
        with client.pipeline() as pipe:
            job._handle_failure(record.result.error or "The task failed.", pipeline=pipe)
            pipe.execute()


def _wait_for_live_run(client: redis.Redis, job_id: str) -> None:
    """Wait while the task's run lease is renewed, unless the run's worker is provably dead on this host (its
    horse died with it): then the lease is dropped at once, so a worker restarted after a SIGKILL serves within
    seconds instead of waiting out the lease's TTL."""
    waited = False
    while lease := client.get(keys.lease_key(job_id)):
        holder = lease.decode().split(":", 1)[-1]  # a run id is "<fence>:<its worker's process identity>"
        if holder_is_dead_here(holder):
            log.warning("task %s: the worker of its run (%s) is gone from this host; not waiting", job_id, holder)
            client.delete(keys.lease_key(job_id))
            return
        if not waited:
            log.warning("task %s is still running under the previous worker; waiting for it to end", job_id)
            waited = True
        time.sleep(0.5)


def recover_abandoned(client: redis.Redis, queue_name: str, store: TaskStore, settings: Settings) -> list[str]:
    """Deal with tasks a predecessor left 'started', before serving anything.

    A task whose run lease is still renewed is still running (its worker only paused or was cut off):
    wait for it to end, and keep its result. A task whose lease expired was abandoned: it is interrupted
    and runs again from the front of the queue (see :func:`runner.lifecycle.runs_again`), else it fails.
    Called while holding the queue's lock.
    """
    queue = Queue(queue_name, connection=client, serializer=JSONSerializer)
    registry = StartedJobRegistry(queue=queue)
    recovered = []
    # A worker stopped between taking a job (RQ moves it to the intermediate list) and starting it left it
    # there; RQ would fail it only much later. Holding the lock, nothing else can be taking it: put it back
    # at the front, in its order.
    for job_id in reversed(lineup.stranded(client, queue).taken):
        if lineup.hand_back(client, job_id, queue):
            log.warning("task %s had been taken by the previous worker but not started; it is first in line", job_id)
    for entry in client.zrange(registry.key, 0, -1):
        job_id = registry.parse_job_id(entry)
        _wait_for_live_run(client, job_id)
        try:
            job = Job.fetch(job_id, connection=client, serializer=JSONSerializer)
        except NoSuchJobError:
            job = None
        record = store.get(job_id)
        if job is not None and record is not None and record.result is not None:
            lifecycle.settle_lost_end(store, job, record.result)  # its worker may have died right at its end
        elif job is not None and record is not None and record.result is None:
            attempts = store.attempts(job_id)
            run = client.hget(keys.info_key(job_id), "run")  # the handler may keep its outcome: see job.py
            attempts.append(
                {
                    "started_at": record.started_at,
                    "ended_at": clock.now_iso(),
                    "error": WORKER_DIED,
                    "kind": AttemptKind.INTERRUPTED,
                    **({"run": run.decode()} if run else {}),
                }
            )
            if lifecycle.runs_again(attempts, WORKER_DIED, settings) and lifecycle.interrupt(
                store, job_id, queue_name, "", attempts
            ):
                client.zrem(registry.key, entry)
                queue.enqueue_job(job, at_front=True)
                metrics.record_retry(client, queue_name, AttemptKind.INTERRUPTED)
                log.warning("task %s was running when the previous worker died; it runs again", job_id)
                recovered.append(job_id)
                continue
            with client.pipeline() as pipe:
                record_job_failure(job, WORKER_DIED, pipe)
                pipe.execute()
            attempts.pop()
            result = TaskResult.failed(job_id, WORKER_DIED, interrupted=True, attempts=attempts)
            lifecycle.end(store, result, queue_name, job)
            queue.enqueue_dependents(job)  # the after_any ones (RQ's own failure path did not run)
            recovered.append(job_id)
            log.warning("task %s was running when the previous worker died; marked failed", job_id)
        client.zrem(registry.key, entry)
    return recovered


def _stop_before_work(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _holder(client: redis.Redis, store: TaskStore, lock: QueueLock, settings: Settings) -> CcxWorker:
    """The RQ worker of the queue whose ``lock`` this process holds: it takes jobs only while the lock is its own."""
    queue_class = fenced_queue_class(lock.key, lock.owner)
    queue = queue_class(settings.queue, connection=client, serializer=JSONSerializer)
    return CcxWorker(
        [queue],
        queue_class=queue_class,
        connection=client,
        serializer=JSONSerializer,
        exception_handlers=[_log_failure],
        disable_default_exception_handler=True,
        log_job_description=False,  # descriptions hold prompts and argv, which may carry secrets
        job_monitoring_interval=max(1, int(settings.lock_ttl / 3)),
        settings=settings,
        lock=lock,
        store=store,
        looks=(Reclaimer(client, queue), Reconciler(store, settings.queue)),
    )


def _work(worker: CcxWorker, lock: QueueLock, settings: Settings, burst: bool, logging_level: str) -> None:
    """Serve jobs until stopped, with this process's webhook deliveries and schedule ticker (threads of the worker,
    never of a work-horse)."""
    deliveries = Deliverer(settings).start()
    # A worker that lost its lock stops firing schedules at once: its successor's ticker fires them.
    ticker = schedules.Ticker(Runner(settings=settings), serving=lambda: not lock.lost.is_set()).start()
    try:
        worker.work(burst=burst, logging_level=logging_level, with_scheduler=False)
    finally:
        ticker.close()
        deliveries.stop()


def run_worker(
    settings: Settings,
    *,
    standby: bool = False,
    burst: bool = False,
    logging_level: str = "INFO",
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
) -> int:
    """Serve ``settings.queue`` until stopped; returns an exit status.

    With ``metrics_port``, the queue's Prometheus metrics are served from a thread of this process (never the
    work-horses) from before the lock is taken, so a busy port fails at once and a standby worker reports too.
    """
    # Until RQ installs its own handlers in work(), SIGTERM must still unwind through the
    # `finally` below, or the lock would outlive this process by its whole TTL.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop_before_work)
    settings = settings.with_local_token()
    check_transport(settings.handler_url, settings.handler_token, settings.allow_insecure)
    tls_context(settings.handler_url, settings.handler_ca)  # a bad CA file is a bad setting: say so now
    redis_client(settings.redis_url).ping()  # a wrong URL or a Redis that is down is said at once
    # Its own client, quick to give up: a scrape during an outage reports ccx_redis_up 0 instead of hanging.
    metrics_url = (
        metrics.serve(metrics.scrape_client(settings.redis_url), settings.queue, metrics_host, metrics_port)
        if metrics_port is not None
        else ""
    )
    # From here on, outages are waited out (see PATIENT_RETRIES), never a reason to stop serving.
    client = redis_client(settings.redis_url, retries=PATIENT_RETRIES)
    store = TaskStore(client, settings.log_maxlen, settings.log_ttl, settings.idempotency_ttl)
    hooks.register(outbox.LISTENER)  # before the first end (recovery below) and the fork of any work-horse
    lock = QueueLock(client, settings.queue, settings.lock_ttl)
    if standby:
        holder = lock.holder()
        if holder:
            print(f"ccx worker: standing by; queue '{settings.queue}' is served by {holder}.", flush=True)
    lock.acquire(wait=standby)
    try:
        recover_abandoned(client, settings.queue, store, settings)
        worker = _holder(client, store, lock, settings)
        problem = warm_up(settings)
        if problem:
            log.warning(
                "%s The queue holds its tasks until the handler answers (start it with `ccx handler`).", problem
            )
        print(
            f"ccx worker serving queue '{settings.queue}' on {redact_url(settings.redis_url)} via {settings.handler_url}"
            + (f"; metrics on {metrics_url}" if metrics_url else ""),
            flush=True,
        )
        _work(worker, lock, settings, burst, logging_level)
    finally:
        lock.release()
    if lock.lost.is_set():
        raise WorkerLocked(
            f"This worker lost queue '{settings.queue}' to {lock.lost_to or 'another worker'} (it was cut off from "
            f"Redis or paused for longer than CCX_WORKER_LOCK_TTL={settings.lock_ttl:g} s); that worker serves it now."
        )
    return 0
