"""The orchestrator API against the real stack: ordering, events, cancel, dependencies."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import orjson
import pytest
import redis

from runner import keys
from runner.client import Runner
from runner.config import NO_REDIS
from runner.errors import ConfigError, RedisUnavailable, SpecError
from runner.vocabulary import EventType
from tests.conftest import no_password, passwordless_redis
from tests.support.processes import pids_with_marker, wait_until

PY = sys.executable


def sleeper(token: str, seconds: float = 1000, before: str = "before") -> list[str]:
    """A child that prints a line, then sleeps; ``token`` in its argv makes it findable."""
    return [PY, "-c", f"import time; print({before!r}, flush=True); time.sleep({seconds})", token]


def test_tasks_from_several_submitters_run_one_at_a_time_in_fifo_order(runner: Runner) -> None:
    """Three submitters, five tasks each: every task runs, none overlap, each submitter's order is kept."""
    handles: dict[int, list[str]] = {}
    lock = threading.Lock()
    order: list[str] = []

    def submit_all(who: int) -> None:
        own = Runner(redis_url=runner.settings.redis_url, queue=runner.settings.queue)
        ids = []
        for n in range(5):
            with lock:  # the global submission order, to compare with the run order
                handle = own.submit(agent="command", argv=[PY, "-c", f"print('{who}-{n}')"])
                order.append(handle.id)
            ids.append(handle.id)
        handles[who] = ids

    threads = [threading.Thread(target=submit_all, args=(who,)) for who in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    results = {task_id: runner.handle(task_id).result(timeout=60) for task_id in order}
    assert all(result.success for result in results.values())
    by_start = sorted(results.values(), key=lambda r: r.started_at or "")
    assert [r.id for r in by_start] == order
    for earlier, later in itertools.pairwise(by_start):
        assert (earlier.ended_at or "") <= (later.started_at or ""), "two tasks overlapped"
    for who, ids in handles.items():
        assert [results[i].output.strip() for i in ids] == [f"{who}-{n}" for n in range(5)]


def test_events_are_identical_whether_read_before_during_or_after_the_run(runner: Runner, tmp_path) -> None:
    """A reader that joins before, during or after the run sees the same complete sequence."""
    token = uuid.uuid4().hex
    go = tmp_path / "go"
    script = (
        "import os, time\n"
        "for i in range(200): print('line', i, flush=True)\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\n"
        f"print('{token}')"
    )
    collected: dict[str, list[dict]] = {}

    def read(name: str) -> None:
        collected[name] = list(handle.events(timeout=60))

    # A blocker keeps the queue busy so the "before" reader really starts before the run.
    blocker = runner.submit(agent="command", argv=sleeper("blocker-" + token, 30))
    wait_until(lambda: runner.get(blocker.id).status == "running", 20, what="blocker running")
    handle = runner.submit(agent="command", argv=[PY, "-c", script])
    readers = [threading.Thread(target=read, args=("before",))]
    readers[0].start()
    runner.cancel(blocker.id)
    wait_until(lambda: "line 199" in "".join(e.get("data", "") for e in _log(runner, handle.id)), 30, what="output")
    assert runner.get(handle.id).status == "running"
    readers.append(threading.Thread(target=read, args=("during",)))
    readers[1].start()
    go.touch()
    for reader in readers:
        reader.join(60)
    collected["after"] = list(handle.events(timeout=10))
    assert collected["before"] == collected["during"] == collected["after"]
    output = [e for e in collected["after"] if e["type"] == "output"]
    assert [e["seq"] for e in output] == list(range(len(output)))
    text = "".join(e["data"] for e in output)
    assert text == "".join(f"line {i}\n" for i in range(200)) + token + "\n"
    assert collected["after"][-1]["result"]["success"] is True


def test_pubsub_subscriber_sees_output_live(runner: Runner, redis_client) -> None:
    """A subscriber to the task channel gets output while the task is still running."""
    token = uuid.uuid4().hex
    pubsub = redis_client.pubsub()
    handle = runner.submit(agent="command", argv=sleeper(token, 1000, before="live-" + token))
    pubsub.subscribe(keys.task_channel(handle.id))
    try:
        # The channel is live-only: the line may have been published before we subscribed, so the
        # log is checked too, and then the live property is asserted: the task is still running.
        def saw_line() -> bool:
            message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            return bool(message and b"live-" + token.encode() in message["data"])

        in_log = lambda: any(e.get("data", "").startswith("live-") for e in _log(runner, handle.id))  # noqa: E731
        wait_until(lambda: saw_line() or in_log(), 30, what="live output")
        assert runner.get(handle.id).status == "running"
        assert pids_with_marker(token), "the child should still be running"
    finally:
        pubsub.close()
        runner.cancel(handle.id)
    result = handle.result(timeout=30)
    assert result.cancelled is True
    wait_until(lambda: not pids_with_marker(token), 10, what="child gone after cancel")


def _log(runner: Runner, task_id: str) -> list[dict]:
    return [orjson.loads(fields[b"e"]) for _, fields in runner.redis.xrange(keys.log_key(task_id))]


def test_cancel_a_queued_task_means_it_never_runs(runner: Runner, tmp_path) -> None:
    """A cancelled queued task ends cancelled and its command never starts."""
    token = uuid.uuid4().hex
    blocker = runner.submit(agent="command", argv=sleeper(token, 30))
    marker = tmp_path / "ran"
    queued = runner.submit(agent="command", argv=["touch", str(marker)])
    assert runner.cancel(queued.id) == "cancelled"
    runner.cancel(blocker.id)
    assert blocker.result(timeout=30).cancelled
    result = queued.result(timeout=10)
    assert result.cancelled is True and result.success is False
    follow_up = runner.submit(agent="command", argv=["true"])
    assert follow_up.result(timeout=30).success  # the queue moved on past the cancelled task
    assert not marker.exists()
    assert runner.get(queued.id).status == "cancelled"


def test_cancel_a_running_task_stops_its_process_and_keeps_its_output(runner: Runner) -> None:
    """Cancelling a running task kills its process tree; what it printed stays in its log."""
    token = uuid.uuid4().hex
    handle = runner.submit(agent="command", argv=sleeper(token, 1000, before="printed-" + token))
    wait_until(lambda: any("printed-" in e.get("data", "") for e in _log(runner, handle.id)), 30, what="first output")
    assert runner.cancel(handle.id) == "cancelling"
    result = handle.result(timeout=30)
    assert result.cancelled is True and result.success is False
    assert "cancelled" in (result.error or "")
    assert f"printed-{token}" in result.output
    wait_until(lambda: not pids_with_marker(token), 10, what="process gone")


def test_after_runs_only_once_the_predecessor_succeeded(runner: Runner, tmp_path) -> None:
    """`after=` waits for its predecessor; a failed predecessor cancels it unless after_any."""
    first = runner.submit(agent="command", argv=[PY, "-c", "import time; time.sleep(0.5)"])
    second = runner.submit(agent="command", argv=["true"], after=first.id)
    assert runner.get(second.id).status == "deferred"
    a, b = first.result(timeout=30), second.result(timeout=30)
    assert a.success and b.success
    assert (a.ended_at or "") <= (b.started_at or "")

    failing = runner.submit(agent="command", argv=["false"])
    skipped = runner.submit(agent="command", argv=["touch", str(tmp_path / "skipped")], after=failing.id)
    anyway = runner.submit(agent="command", argv=["touch", str(tmp_path / "anyway")], after=failing.id, after_any=True)
    assert failing.result(timeout=30).success is False
    skipped_result = skipped.result(timeout=30)
    assert skipped_result.cancelled and failing.id in (skipped_result.error or "")
    assert anyway.result(timeout=30).success
    assert (tmp_path / "anyway").exists() and not (tmp_path / "skipped").exists()


def test_failures_are_explained_in_one_sentence(runner: Runner) -> None:
    """Exit codes, timeouts and missing executables end with a clear error, never exit 0."""
    exited = runner.submit(agent="command", argv=[PY, "-c", "import sys; sys.stderr.write('boom\\n'); sys.exit(3)"])
    timed = runner.submit(agent="command", argv=[PY, "-c", "import time; time.sleep(60)"], timeout=1)
    missing = runner.submit(agent="command", argv=["no-such-command-" + uuid.uuid4().hex[:6]])
    r = exited.result(timeout=30)
    assert (
        (r.success, r.exit_code) == (False, 3) and "exited with code 3" in (r.error or "") and "boom" in (r.error or "")
    )
    r = timed.result(timeout=30)
    assert r.success is False and r.timed_out is True and r.exit_code != 0 and "timed out after 1 s" in (r.error or "")
    r = missing.result(timeout=30)
    assert r.success is False and "not found" in (r.error or "").lower()


def test_long_output_keeps_the_tail_in_the_result_and_everything_in_the_log(
    redis_url: str, queue_name: str, tmp_path
) -> None:
    """Output beyond the bound: the result keeps the tail and says where the full log is."""
    from runner.stack import LocalStack

    with LocalStack(redis_url=redis_url, queue=queue_name, env={"CCX_OUTPUT_LIMIT": "1000"}) as stack:
        client = Runner(redis_url=redis_url, queue=queue_name)
        handle = client.submit(agent="command", argv=[PY, "-c", "print('x' * 5000 + 'END')"])
        result = handle.result(timeout=30)
        assert result.output_truncated is True
        assert len(result.output) == 1000 and result.output.endswith("END\n")
        assert result.log_key == keys.log_key(handle.id)
        full = "".join(e["data"] for e in handle.events(timeout=10) if e["type"] == "output")
        assert full == "x" * 5000 + "END\n"
        assert stack.worker is not None


def test_bad_spec_is_rejected_at_submit_time(runner: Runner) -> None:
    """Missing or wrong fields fail at submit with a message naming the field; nothing is queued."""
    before = len(runner.queue)
    with pytest.raises(SpecError, match="argv"):
        runner.submit(agent="command")
    with pytest.raises(SpecError, match="timeout"):
        runner.submit("do it", timeout=-1)
    with pytest.raises(SpecError, match="Unknown agent 'nope'"):
        runner.submit("do it", agent="nope")
    with pytest.raises(SpecError, match="Unknown task field"):
        runner.submit("do it", colour="blue")
    assert len(runner.queue) == before


def test_redis_down_is_one_clear_error() -> None:
    """Submitting to a Redis that is not there fails at once with the URL (its password hidden) and what to do."""
    client = Runner(redis_url="redis://:secret@127.0.0.1:1/0", queue="nowhere")
    with pytest.raises(RedisUnavailable, match=r"redis://:\*\*\*@127.0.0.1:1/0.*start it"):
        client.submit(agent="command", argv=["true"])


def test_a_runner_refuses_a_redis_without_a_password_and_sends_it_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`Runner(redis_url="redis://127.0.0.1:PORT")` to a real Redis that lets anyone in: ConfigError with the
    sentence, and that Redis never sees a connection from it; with CCX_INSECURE_REDIS=1 the same Runner works."""
    monkeypatch.delenv("CCX_INSECURE_REDIS", raising=False)
    with passwordless_redis() as port:
        url = f"redis://127.0.0.1:{port}/0"
        observer = redis.Redis(port=port)  # one connection, counted once
        before = observer.info("stats")["total_connections_received"]
        with pytest.raises(ConfigError) as caught:
            Runner(redis_url=url, queue="anyone")
        assert str(caught.value) == no_password(url, f"127.0.0.1:{port}")
        assert observer.info("stats")["total_connections_received"] == before, "nothing connected"
        monkeypatch.setenv("CCX_INSECURE_REDIS", "1")
        opted_in = Runner(redis_url=url, queue="anyone")
        opted_in.ping()
        assert observer.info("stats")["total_connections_received"] == before + 1
        opted_in.redis.close()
        observer.close()


def test_runner_from_env_with_nothing_configured_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No CCX_REDIS_URL or REDIS_URL and no running `ccx up` (a config dir of its own): one sentence, no default."""
    for name in ("CCX_REDIS_URL", "REDIS_URL", "CCX_INSECURE_REDIS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CCX_CONFIG_DIR", str(tmp_path))
    with pytest.raises(ConfigError) as caught:
        Runner.from_env()
    assert str(caught.value) == NO_REDIS


def test_list_and_get_show_status(runner: Runner) -> None:
    """runner.list() shows the queue's tasks newest first with their status."""
    done = runner.submit(agent="command", argv=["true"])
    done.result(timeout=30)
    listed = runner.list()
    assert listed[0].id == done.id and listed[0].status == "finished"
    assert runner.get("no-such-task") is None


def test_after_a_task_that_already_ended_badly_never_waits_forever(runner: Runner, tmp_path) -> None:
    """`after=` a task that already failed: cancelled at once (or run, with after_any); never stuck deferred."""
    failed = runner.submit(agent="command", argv=["false"])
    assert failed.result(timeout=30).success is False
    wait_until(lambda: runner.job(failed.id).get_status() == "failed", 10, what="RQ to file the failure")
    skipped = runner.submit(agent="command", argv=["touch", str(tmp_path / "skipped")], after=failed.id)
    anyway = runner.submit(agent="command", argv=["echo", "anyway"], after=failed.id, after_any=True)
    result = skipped.result(timeout=10)
    assert result.cancelled and failed.id in (result.error or "")
    assert anyway.result(timeout=30).output == "anyway\n"
    assert not (tmp_path / "skipped").exists()

    # One meaning for after_any: after a finished or failed task. A cancelled one cancels every dependent,
    # whether it was cancelled while queued or while running, and whether the dependent came before or after.
    blocker = runner.submit(agent="command", argv=[sys.executable, "-c", "import time; time.sleep(600)"])
    queued_then_cancelled = runner.submit(agent="command", argv=["true"])
    early = runner.submit(agent="command", argv=["true"], after=queued_then_cancelled.id, after_any=True)
    assert runner.cancel(queued_then_cancelled.id) == "cancelled"
    late = runner.submit(agent="command", argv=["true"], after=queued_then_cancelled.id, after_any=True)
    assert early.result(timeout=10).cancelled and late.result(timeout=10).cancelled
    wait_until(lambda: runner.get(blocker.id).status == "running", 30, what="the blocker to run")  # type: ignore[union-attr]
    dependent = runner.submit(agent="command", argv=["true"], after=blocker.id, after_any=True)
    assert runner.cancel(blocker.id) == "cancelling"
    assert blocker.result(timeout=30).cancelled
    # The worst moment: RQ has filed the job as canceled, and so would enqueue an after_any dependent at once.
    wait_until(lambda: runner.job(blocker.id).get_status() == "canceled", 30, what="RQ to file the cancel")
    late_after_running = runner.submit(agent="command", argv=["true"], after=blocker.id, after_any=True)
    assert dependent.result(timeout=30).cancelled and late_after_running.result(timeout=30).cancelled


def test_result_and_events_of_an_unknown_id_raise_the_same_error(redis_url: str, queue_name: str) -> None:
    """Neither waits forever on an id this Redis never saw: both raise UnknownTask (a usage error, exit 2)."""
    from runner.errors import EXIT_USAGE, UnknownTask

    runner = Runner(redis_url=redis_url, queue=queue_name)
    handle = runner.handle("no-such-task")
    with pytest.raises(UnknownTask, match="No task with id no-such-task") as from_result:
        handle.result(timeout=30)
    with pytest.raises(UnknownTask, match="No task with id no-such-task"):
        list(handle.events(timeout=30))
    assert from_result.value.exit_status == EXIT_USAGE


def test_a_dependent_is_queued_not_deferred_once_its_predecessor_succeeded(runner: Runner) -> None:
    gate = runner.submit(agent="command", argv=["true"])
    # The dependent waits behind a slow task, so its status can be seen between its release and its start.
    blocker = runner.submit(agent="command", argv=[sys.executable, "-c", "import time; time.sleep(3)"])
    dependent = runner.submit(agent="command", argv=["echo", "after"], after=gate.id)
    assert gate.result(timeout=30).success
    wait_until(lambda: runner.get(blocker.id).status == "running", 30, what="the slow task")  # type: ignore[union-attr]
    assert runner.get(dependent.id).status == "queued"  # type: ignore[union-attr]
    assert dependent.result(timeout=30).output == "after\n"


def test_a_reader_of_a_trimmed_log_is_told_how_much_is_gone(redis_url: str, queue_name: str) -> None:
    """With CCX_LOG_MAXLEN small, the log keeps only its newest entries; events() starts with a gap event
    saying how many output frames are gone, and `ccx follow` prints a notice instead of starting silently mid-way."""
    from runner.stack import LocalStack

    # Lines a millisecond apart: hundreds of frames even when a busy machine coalesces several into one,
    # so Redis's approximate trimming (whole nodes of 100 entries) surely drops the first ones.
    code = "import sys, time\nfor i in range(2500):\n    print(i, flush=True)\n    time.sleep(0.001)"
    with LocalStack(redis_url=redis_url, queue=queue_name, env={"CCX_LOG_MAXLEN": "10"}):
        runner = Runner(redis_url=redis_url, queue=queue_name)
        handle = runner.submit(agent="command", argv=[sys.executable, "-c", code])
        assert handle.result(timeout=60).success
        seen = list(handle.events(timeout=10))
        outputs = [e for e in seen if e["type"] == EventType.OUTPUT]
        assert seen[0]["type"] == EventType.GAP
        assert seen[0]["missing"] == outputs[0]["seq"] > 0
        assert [e["seq"] for e in outputs] == list(range(outputs[0]["seq"], outputs[-1]["seq"] + 1))
        followed = subprocess.run(
            [sys.executable, "-m", "runner.cli", "follow", handle.id, "--redis-url", redis_url, "--queue", queue_name],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert followed.returncode == 0
        assert f"[{seen[0]['missing']:,} earlier output frame(s) are no longer in the task's log" in followed.stderr
        assert followed.stdout.endswith("2499\n")


def test_a_task_quiet_for_longer_than_its_idle_timeout_is_stopped_as_hung(runner: Runner) -> None:
    """No output for idle_timeout seconds: the run is stopped (its tree killed) with a sentence saying so;
    output before the silence is kept; a task that keeps printing is never stopped by it."""
    token = uuid.uuid4().hex
    code = "import time; print('before the silence', flush=True); time.sleep(600)"
    handle = runner.submit(agent="command", argv=[sys.executable, "-c", code, token], idle_timeout=1.5)
    result = handle.result(timeout=60)
    assert (result.success, result.timed_out, result.cancelled) == (False, True, False)
    assert result.error == (
        "No output for 1.5 s: the task was taken for hung and stopped, its whole process tree killed; "
        "give it a larger idle_timeout if it may be quiet that long."
    )
    assert result.output == "before the silence\n"
    wait_until(lambda: not pids_with_marker(token), 15, what="the hung task's process to be gone")
    chatty = "import time\nfor i in range(30):\n    print(i, flush=True)\n    time.sleep(0.1)"
    assert (
        runner.submit(agent="command", argv=[sys.executable, "-c", chatty], idle_timeout=1.5).result(timeout=60).success
    )


IDEMPOTENT_SUBMIT = """
import sys
from runner.client import Runner
runner = Runner(redis_url=sys.argv[1], queue=sys.argv[2])
print(runner.submit(agent="command", argv=["echo", "once"], key=sys.argv[3]).id)
"""


def test_submits_with_one_idempotency_key_make_one_task(redis_url: str, queue_name: str) -> None:
    """8 concurrent submitters (processes) with the same key get the same task, which runs once; the key
    still returns it after it ended, for the idempotency window (CCX_IDEMPOTENCY_TTL), and once the window
    has passed the same key makes a new task."""
    from runner.stack import LocalStack

    runner = Runner(redis_url=redis_url, queue=queue_name)
    key = f"nightly-{uuid.uuid4().hex}"
    name = f"ccx:idem:{queue_name}:{key}"
    # An hour's window: a submit "just after the end" is one however long the machine takes to get there.
    with LocalStack(redis_url=redis_url, queue=queue_name, env={"CCX_IDEMPOTENCY_TTL": "3600"}):
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", IDEMPOTENT_SUBMIT, redis_url, queue_name, key], stdout=subprocess.PIPE, text=True
            )
            for _ in range(8)
        ]
        ids = {proc.communicate(timeout=60)[0].strip() for proc in procs}
        assert len(ids) == 1 and all(proc.returncode == 0 for proc in procs)
        (task_id,) = ids
        assert runner.handle(task_id).result(timeout=30).output == "once\n"
        assert [r.id for r in runner.list(10)] == [task_id], "exactly one task was queued"
        assert runner.submit(agent="command", argv=["echo", "once"], key=key).id == task_id, "just ended"
        # Held for a week and more while the task could wait and run; from its end, for the window only.
        assert 0 < runner.redis.ttl(name) <= 3600, "after its end the key lives for the idempotency window"
    # A one-second window (the worker's setting applies it at the end): wait until it has passed, then submit.
    short = f"hourly-{uuid.uuid4().hex}"
    with LocalStack(redis_url=redis_url, queue=queue_name, env={"CCX_IDEMPOTENCY_TTL": "1"}):
        first = runner.submit(agent="command", argv=["echo", "once"], key=short)
        assert first.result(timeout=30).output == "once\n"
        wait_until(lambda: not runner.redis.exists(f"ccx:idem:{queue_name}:{short}"), 30, what="the window to pass")
        again = runner.submit(agent="command", argv=["echo", "once"], key=short)
        assert again.id != first.id and again.result(timeout=30).output == "once\n"
        assert [r.id for r in runner.list(10)] == [again.id, first.id, task_id]
    runner.redis.close()


def test_a_submit_that_fails_half_way_leaves_its_key_free(redis_url: str, queue_name: str) -> None:
    """A key never names a task that was not queued: not after a refused `after`, nor after Redis
    failed between the record and the job (a retry then queues the task for real)."""
    runner = Runner(redis_url=redis_url, queue=queue_name)
    with pytest.raises(ValueError, match="no such task"):
        runner.submit(agent="command", argv=["true"], key="k1", after="no-such-task")
    assert not runner.redis.exists(f"ccx:idem:{queue_name}:k1")

    def broken(*args: object, **kwargs: object) -> None:
        raise redis.ConnectionError("Connection reset by peer")

    real = runner.queue.enqueue_call
    runner.queue.enqueue_call = broken  # type: ignore[method-assign]
    with pytest.raises(redis.ConnectionError):
        runner.submit(agent="command", argv=["true"], key="k2")
    runner.queue.enqueue_call = real  # type: ignore[method-assign]
    assert not runner.redis.exists(f"ccx:idem:{queue_name}:k2")
    assert runner.list(10) == []  # no record stands for a task that was never queued
    retried = runner.submit(agent="command", argv=["true"], key="k2")
    assert runner.get(retried.id) is not None and runner.queue.get_job_ids() == [retried.id]


def test_a_key_outlives_the_wait_of_a_task_for_later(redis_url: str, queue_name: str) -> None:
    runner = Runner(redis_url=redis_url, queue=queue_name)
    runner.submit(agent="command", argv=["true"], key="later", in_=30 * 86400)
    assert runner.redis.ttl(f"ccx:idem:{queue_name}:later") > 30 * 86400


def test_the_api_and_the_mcp_tool_refuse_out_of_range_input_alike(redis_url: str, queue_name: str) -> None:
    """The same checks behind Runner.submit, the MCP submit_task tool and the budget: one sentence, nothing queued."""
    from runner.errors import UsageError
    from runner.mcp import tools

    runner = Runner(redis_url=redis_url, queue=queue_name)
    command = {"agent": "command", "argv": ["true"]}
    for spec, in_seconds, message in (
        ({**command, "timeout": 1e18}, None, "'timeout' is 1e+18 seconds, more than the 604800 (7 days)"),
        ({**command, "idle_timeout": 1e9}, None, "'idle_timeout' is 1e+09 seconds, more than the 604800 (7 days)"),
        (command, 1e20, "'in' is 1e+20 seconds, further ahead than the 31622400 (366 days)"),
        ({**command, "argv": ["echo", "x" * 131072]}, None, "'argv' element 1 is 131,072 bytes, more than the 131,071"),
    ):
        with pytest.raises(SpecError) as refused:
            runner.submit(spec, in_=in_seconds)
        assert str(refused.value).startswith(message)
        with pytest.raises(UsageError) as refused_by_tool:
            tools.submit_task(runner, spec, None, False, None, in_seconds=in_seconds)
        assert str(refused_by_tool.value) == str(refused.value)
    with pytest.raises(SpecError, match=r"^'at' is 9999-01-01T00:00:00Z, further ahead than the 366 days"):
        tools.submit_task(runner, command, None, False, None, at="9999-01-01T00:00:00Z")
    for budget in (float("nan"), float("inf"), 0, -1):
        with pytest.raises(UsageError, match=r"^The budget must be a number of dollars above 0, such as 20, not "):
            runner.set_budget(budget)
    runner.set_budget(20)
    assert runner.costs()["budget_per_day"] == 20.0
    assert len(runner.queue) == 0 and runner.list(10) == []


def test_a_prompt_longer_than_the_handler_reads_is_refused_at_submit(redis_url: str, queue_name: str) -> None:
    """A 17 MB prompt was queued, then its run died on an internal error ('NoneType' … call_soon) when the
    handler closed the connection on its 16 MiB message limit: it is one sentence at submit now, with the
    prompt's size and the limit, and nothing is queued."""
    runner = Runner(redis_url=redis_url, queue=queue_name)
    prompt = "x" * (17 * 1024 * 1024)
    with pytest.raises(SpecError) as refused:
        runner.submit(prompt)
    # (The request's size counts the agent's command line, whose path to `claude` differs between machines.)
    assert re.fullmatch(
        r"The task \(the prompt\) is 17,825,792 bytes, which makes a 17,825,\d{3}-byte request to the handler, "
        r"more than the 16,711,680 it reads \(16 MiB less room for the rest of the message\): put most of the "
        r"text in a file and have the agent read it from there\.",
        str(refused.value),
    ), str(refused.value)
    # Under 16 MiB, but not once JSON has escaped it: 6 bytes (\u0001) for each of its 3 MB.
    with pytest.raises(SpecError, match=r"^The task \(the prompt\) is 3,000,000 bytes, which makes a 18,000,"):
        runner.submit("\x01" * 3_000_000)
    assert len(runner.queue) == 0 and runner.list(10) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"in_": 1e308}, "'in' is 1e+308 seconds, further ahead than the 31622400 (366 days) a task may wait"),
        ({"in_": float("inf")}, "'in' must be a number of seconds from now (0 or more)."),
        ({"in_": float("nan")}, "'in' must be a number of seconds from now (0 or more)."),
        ({"in_": 10**400}, "'in' must be a number of seconds from now (0 or more)."),
        ({"at": 10**400}, "'at' must be a datetime, an ISO 8601 time or epoch seconds."),
        ({"timeout": 10**400}, "'timeout' must be a positive number of seconds."),
        ({"idle_timeout": 10**400}, "'idle_timeout' must be a number of seconds (0: never)."),
        ({"max_budget_usd": 10**400}, "'max_budget_usd' must be a positive number of dollars."),
    ],
    ids=["in-1e308", "in-inf", "in-nan", "in-10e400", "at-10e400", "timeout", "idle-timeout", "budget"],
)
def test_numbers_beyond_a_float_are_a_sentence_not_an_overflow_error(
    options: dict, message: str, redis_url: str, queue_name: str
) -> None:
    """An int too large for a float (Python and JSON allow 10**400) made math.isfinite raise OverflowError."""
    runner = Runner(redis_url=redis_url, queue=queue_name)
    with pytest.raises(SpecError) as refused:
        runner.submit(agent="command", argv=["true"], **options)
    assert str(refused.value).startswith(message)
    assert len(runner.queue) == 0


def test_a_budget_beyond_a_float_is_a_sentence(redis_url: str, queue_name: str) -> None:
    from runner.errors import UsageError

    runner = Runner(redis_url=redis_url, queue=queue_name)
    with pytest.raises(UsageError) as refused:
        runner.set_budget(10**400)
    assert str(refused.value) == (
        "The budget must be a number of dollars above 0, such as 20, not inf; to have no budget, remove it "
        "(`ccx budget --off`)."
    )
