"""Secrets stay secret; a token-protected handler serves only the worker holding its token."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import orjson

from runner import events
from runner.client import Runner
from runner.stack import LocalStack

PY = sys.executable


def test_environment_secrets_never_reach_logs_events_or_results(
    redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    """A task's env value (an API key, say) appears in no log line, event or result unless the task prints it."""
    secret = "sk-test-" + uuid.uuid4().hex
    token = "tok-" + uuid.uuid4().hex
    worker_log = tmp_path / "worker.log"
    with (
        worker_log.open("wb") as log,
        LocalStack(redis_url=redis_url, queue=queue_name, handler_token=token, worker_output=log.fileno()) as stack,
    ):
        client = Runner(redis_url=redis_url, queue=queue_name)
        quiet = client.submit(agent="command", argv=[PY, "-c", "print('working')"], env={"MY_API_KEY": secret})
        failing = client.submit(
            agent="command", argv=["no-such-binary-" + uuid.uuid4().hex[:6]], env={"MY_API_KEY": secret}
        )
        assert quiet.result(timeout=30).success and not failing.result(timeout=30).success
        stored = [fields[b"e"] for h in (quiet, failing) for _, fields in client.redis.xrange(events.log_key(h.id))]
        results = [client.redis.hget(events.info_key(h.id), "result") for h in (quiet, failing)]
        assert stack.handler is not None
    logs = worker_log.read_bytes()
    for blob in (*stored, *results, logs):
        assert secret.encode() not in blob
        assert token.encode() not in blob
    assert orjson.loads(results[0])["output"] == "working\n"


def test_a_worker_with_the_wrong_token_fails_tasks_with_a_clear_error(redis_url: str, queue_name: str) -> None:
    """The handler rejects a worker whose token is wrong; the task says how to fix it."""
    with LocalStack(
        redis_url=redis_url, queue=queue_name, handler_token="right", env={"CCX_HANDLER_TOKEN": "wrong"}
    ) as stack:
        # LocalStack gives the worker the handler's token; override it for the worker only.
        assert stack.worker is not None
        stack.worker.terminate()
        stack.worker.wait(15)
        stack.handler_token = "wrong"
        stack.start_worker(20)
        result = Runner(redis_url=redis_url, queue=queue_name).submit(agent="command", argv=["true"]).result(timeout=30)
    assert result.success is False
    assert "401" in (result.error or "") and "CCX_HANDLER_TOKEN" in (result.error or "")
