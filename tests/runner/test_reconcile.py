"""RQ's own tools against a real stack (runner/reconcile.py): `rq empty` ends the waiting tasks cancelled with a
sentence; `rq requeue` of a failed task is refused, and the task's record stays true."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runner.client import Runner
from runner.reconcile import JOB_DELETED, LOOK_EVERY
from tests.support.processes import wait_until

RQ = str(Path(sys.executable).with_name("rq"))


def _rq(runner: Runner, *args: str) -> str:
    done = subprocess.run(
        [RQ, *args, "-u", runner.settings.redis_url, "--serializer", "json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.timeout(120)
def test_rq_empty_ends_the_waiting_tasks_cancelled_with_a_sentence(runner: Runner) -> None:
    """Emptying the queue with RQ's CLI (what rq-dashboard's Empty does) deletes the jobs: the tasks can never
    run, and at the worker's next look they end cancelled, saying how, instead of staying `queued` forever."""
    runner.pause("hold while the queue is emptied")
    first = runner.submit(agent="command", argv=["echo", "one"])
    second = runner.submit(agent="command", argv=["echo", "two"], after=first.id)
    _rq(runner, "empty", runner.settings.queue)
    runner.resume()
    result = first.result(timeout=LOOK_EVERY + 30)
    assert (result.status, result.error) == ("cancelled", JOB_DELETED)
    after_it = second.result(timeout=10)  # its predecessor's list of dependents went with the job: settled all the same
    assert (after_it.status, after_it.error) == (
        "cancelled",
        f"Not run: it was to run after task {first.id}, which was cancelled; submit it with after_any to run regardless.",
    )
    after = runner.submit(agent="command", argv=["echo", "still serving"])
    assert after.result(timeout=30).output == "still serving\n"


@pytest.mark.timeout(90)
def test_rq_requeue_of_a_failed_task_is_refused_and_its_record_stays_true(runner: Runner, tmp_path: Path) -> None:
    """`rq requeue` puts a failed task's job back in the queue: the worker does not run it again, says why in
    one sentence, and the record keeps its one end."""
    marker = tmp_path / "runs"
    code = f"open({str(marker)!r}, 'a').write('ran\\n'); raise SystemExit(1)"
    handle = runner.submit(agent="command", argv=[sys.executable, "-c", code])
    failed = handle.result(timeout=30)
    assert failed.success is False
    _rq(runner, "requeue", "--queue", runner.settings.queue, handle.id)
    worker_log = tmp_path / "worker.log"  # the `stack` fixture's
    wait_until(lambda: f"task {handle.id} had already ended (failed)" in worker_log.read_text(), 30, what="refusal")
    assert "resubmit it (ccx submit) to run it again" in worker_log.read_text()
    again = runner.get(handle.id)
    assert again is not None and again.result == failed
    assert marker.read_text() == "ran\n"


@pytest.mark.parametrize("succeeded", [True, False], ids=["finished", "failed"])
def test_an_idle_look_settles_a_chain_an_end_left_waiting(redis_url: str, queue_name: str, succeeded: bool) -> None:
    """An end recorded without settling its chain (its process died right after, or Redis lost its last second):
    the idle worker's next look settles it as the end would have, in the task records and in RQ's queue."""
    from rq import Queue
    from rq.serializers import JSONSerializer

    from runner import lifecycle
    from runner.reconcile import Reconciler
    from runner.spec import TaskResult

    runner = Runner(redis_url=redis_url, queue=queue_name)
    first = runner.submit(agent="command", argv=["true"]).id
    plain = runner.submit(agent="command", argv=["true"], after=first).id
    anyway = runner.submit(agent="command", argv=["true"], after=first, after_any=True).id
    queue = Queue(queue_name, connection=runner.redis, serializer=JSONSerializer)
    assert queue.pop_job_id() == first
    assert lifecycle.start(runner.store, first, queue_name, "1:a", None, 5000).code == 1
    end = TaskResult(id=first, success=True) if succeeded else TaskResult(id=first, error="exit 1")
    assert runner.store.finalize(end, queue_name, "1:a")  # the end, and nothing after it
    assert [runner.get(t).status for t in (plain, anyway)] == ["deferred", "deferred"]  # type: ignore[union-attr]

    Reconciler(runner.store, queue_name).run()

    expected = ["queued", "queued"] if succeeded else ["cancelled", "queued"]
    assert [runner.get(t).status for t in (plain, anyway)] == expected  # type: ignore[union-attr]
    assert sorted(queue.get_job_ids()) == sorted([plain, anyway] if succeeded else [anyway])
