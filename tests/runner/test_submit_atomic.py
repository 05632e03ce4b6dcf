"""An idempotency key and its task are one write: a key never names a task that does not exist."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from runner import keys
from runner.client import Runner
from tests.runner.test_client import IDEMPOTENT_SUBMIT


def _dead_submitters_key(runner: Runner, key: str) -> str:
    """What a submitter of the old code left when it died between claiming the key and writing the task."""
    phantom = str(uuid.uuid4())
    runner.redis.set(keys.idempotency_key(runner.settings.queue, key), phantom, ex=3600)
    return phantom


@pytest.mark.timeout(60)
def test_a_key_left_by_a_dead_submitter_is_taken_over_and_its_task_runs(runner: Runner) -> None:
    key = f"deploy-{uuid.uuid4().hex}"
    phantom = _dead_submitters_key(runner, key)
    handle = runner.submit(agent="command", argv=["echo", "real"], key=key)
    assert handle.id != phantom, "the retry got the id of a task that was never written"
    assert runner.redis.get(keys.idempotency_key(runner.settings.queue, key)) == handle.id.encode()
    assert handle.result(timeout=30).output == "real\n"
    assert runner.submit(agent="command", argv=["echo", "real"], key=key).id == handle.id  # and keeps it


@pytest.mark.timeout(60)
def test_concurrent_retries_after_a_dead_submitter_make_one_task(redis_url: str, queue_name: str) -> None:
    """8 processes find the dead submitter's key at once: one takes it over, all get that one task."""
    runner = Runner(redis_url=redis_url, queue=queue_name)
    key = f"nightly-{uuid.uuid4().hex}"
    phantom = _dead_submitters_key(runner, key)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", IDEMPOTENT_SUBMIT, redis_url, queue_name, key],
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ,
        )
        for _ in range(8)
    ]
    ids = {proc.communicate(timeout=30)[0].strip() for proc in procs}
    assert all(proc.returncode == 0 for proc in procs)
    assert len(ids) == 1 and phantom not in ids
    (task_id,) = ids
    assert [record.id for record in runner.list(10)] == [task_id]
    assert runner.queue.get_job_ids() == [task_id]


def test_the_key_the_record_and_the_job_are_written_together(redis_url: str, queue_name: str) -> None:
    """Each kind of submit with a key (queued, for later, after another) leaves all three, the key held long."""
    runner = Runner(redis_url=redis_url, queue=queue_name)
    first = runner.submit(agent="command", argv=["true"], key="first")
    later = runner.submit(agent="command", argv=["true"], key="later", in_=600)
    after = runner.submit(agent="command", argv=["true"], key="after", after=first.id)
    for key, handle, status in (
        ("first", first, "queued"),
        ("later", later, "scheduled"),
        ("after", after, "deferred"),
    ):
        assert runner.redis.get(keys.idempotency_key(queue_name, key)) == handle.id.encode()
        record, job = runner.get(handle.id), runner.job(handle.id)
        assert record is not None and record.status == status and job is not None
        assert runner.redis.ttl(keys.idempotency_key(queue_name, key)) > 7 * 24 * 3600
    assert runner.job(after.id).get_status() == "deferred"
    assert runner.submit(agent="command", argv=["true"], key="after", after=first.id).id == after.id
