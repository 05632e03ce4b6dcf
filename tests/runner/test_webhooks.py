"""Completion webhooks: the payload and its signature, the outbox and its retries, and a real stack POSTing
to a real HTTP receiver (a finished, a failed and a cancelled task, a flaky and a dead endpoint)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from runner import clock, keys
from runner.client import Runner
from runner.config import Settings
from runner.errors import ConfigError, SpecError
from runner.spec import TaskResult, TaskSpec
from runner.store import TaskStore
from runner.vocabulary import Status
from runner.webhooks import destination, http_post, outbox, queue_setting
from runner.webhooks.delivery import Deliverer, backoff, url_for_log
from runner.webhooks.payload import QUEUE_RESUMED, cut_utf8, request_headers, sign, task_payload, verify
from tests.conftest import running_stack
from tests.runner.test_cli import ccx, clean_env
from tests.support.certs import make_certs
from tests.support.processes import wait_until

LOOPBACK = ("127.0.0.1/32",)
"""The receivers here listen on 127.0.0.1, which webhooks reach only when the operator allows it."""
LOOPBACK_NETWORKS = tuple(ipaddress.ip_network(text) for text in LOOPBACK)


def verify_as_documented(secret: str, body: bytes, headers: Any) -> bool:
    """The receiver's check exactly as docs/webhooks.md shows it (written out, not payload.verify)."""
    timestamp = headers["X-CCX-Timestamp"]
    expected = "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - int(timestamp)) < 300
    return fresh and hmac.compare_digest(expected, headers["X-CCX-Signature"])


# --- the payload and the signature ---------------------------------------------------------------


def test_the_output_is_cut_at_4096_bytes_never_inside_a_character() -> None:
    assert cut_utf8("hi\n") == ("hi\n", False)
    text = "é" * 3000  # two bytes each: the cut falls inside the 2049th
    cut, truncated = cut_utf8(text)
    assert truncated and cut == "é" * 2048 and len(cut.encode()) == 4096
    cut, truncated = cut_utf8("a" + "€" * 2000)  # three bytes each, after one
    assert truncated and len(cut.encode()) <= 4096 and cut == "a" + "€" * 1365


def test_a_task_payload_has_the_outcome_and_no_part_of_the_spec() -> None:
    result = TaskResult(
        id="t1",
        success=False,
        exit_code=3,
        output="x" * 5000,
        error="The command exited with status 3.",
        duration_ms=1234.5,
        ended_at="2026-01-01T00:00:00.000Z",
        agent={"total_cost_usd": 0.25},
        metadata={"api_key": "secret"},
    )
    payload = task_payload(result, "q")
    assert payload == {
        "event": "task.ended",
        "id": "t1",
        "queue": "q",
        "status": Status.FAILED,
        "success": False,
        "exit_code": 3,
        "error": "The command exited with status 3.",
        "output": "x" * 4096,
        "output_truncated": True,
        "cost_usd": 0.25,
        "duration": 1.234,
        "ended_at": "2026-01-01T00:00:00.000Z",
    }
    assert task_payload(TaskResult(id="t2", cancelled=True), "q")["status"] == Status.CANCELLED
    assert task_payload(TaskResult(id="t3", success=True, output_truncated=True), "q")["output_truncated"]


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body_and_verifies_only_unchanged() -> None:
    body, secret, now = b'{"id":"t1"}', "s3cret", 1_700_000_000
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(secret, now, body) == f"sha256={expected}"
    headers = request_headers("task.ended", "d-1", secret, body, now)
    assert headers["X-CCX-Event"] == "task.ended" and headers["X-CCX-Delivery"] == "d-1"
    assert headers["Content-Type"] == "application/json" and headers["User-Agent"].startswith("cc-execute/")
    sig, stamp = headers["X-CCX-Signature"], headers["X-CCX-Timestamp"]
    assert verify(secret, body, sig, stamp, now=now + 10)
    assert not verify(secret, body + b" ", sig, stamp, now=now)
    assert not verify("other", body, sig, stamp, now=now)
    assert not verify(secret, body, sig, str(now + 1), now=now)  # the timestamp is signed too
    assert not verify(secret, body, sig, stamp, now=now + 301)  # a replay, later
    assert not verify(secret, body, sig, "not a number", now=now)


def test_backoff_doubles_up_to_its_ceiling() -> None:
    assert [backoff(n, 1, 60) for n in (1, 2, 3, 4, 7, 8, 20, 5000)] == [1, 2, 4, 8, 60, 60, 60, 60]


def test_logs_and_records_name_the_endpoint_without_its_credentials_path_or_query() -> None:
    # A Slack-style hook keeps its secret in the path, others in the query or the credentials.
    assert url_for_log("https://u:pw@hooks.example:8443/in?token=abc") == "https://hooks.example:8443/…"
    assert url_for_log("https://hooks.slack.example/services/T0/B0/XYZSECRET") == "https://hooks.slack.example/…"
    assert url_for_log("http://127.0.0.1:9000/") == "http://127.0.0.1:9000"


@pytest.mark.parametrize("bad", ["ftp://example.com/x", "example.com/hook", "http://", "http://a b/", 42])
def test_a_bad_webhook_in_a_spec_is_one_sentence_naming_it(bad: object) -> None:
    with pytest.raises(SpecError, match=r"^'webhook' must be an http:// or https:// URL[^\n]*\.$"):
        TaskSpec.from_dict({"agent": "command", "argv": ["true"], "webhook": bad})
    assert TaskSpec.from_dict({"agent": "command", "argv": ["true"], "webhook": "https://h.example/x"}).webhook


# --- the outbox and the deliverer, on a real Redis, with a scripted sender -----------------------------


def _record_with_spec(client: redis.Redis, task_id: str, **spec: Any) -> None:
    client.hset(keys.info_key(task_id), mapping={"spec": orjson.dumps(TaskSpec(**spec).to_dict()), "id": task_id})


def _due(client: redis.Redis, queue: str) -> list[str]:
    return [item.decode() for item in client.zrange(keys.webhook_due_key(queue), 0, -1)]


def _end(client: redis.Redis, queue: str, result: TaskResult) -> bool:
    """What :func:`runner.lifecycle.end` does for the webhook once the end is recorded: the outbox's script in the
    end's bookkeeping pipeline; True if a delivery was queued."""
    with client.pipeline(transaction=False) as pipe:
        outbox.task_ended(pipe, queue, result)
        (queued,) = pipe.execute()
    return bool(queued)


def test_nothing_is_queued_without_a_url_and_a_tasks_own_url_wins(redis_client: redis.Redis, queue_name: str) -> None:
    _record_with_spec(redis_client, "plain")
    assert not _end(redis_client, queue_name, TaskResult(id="plain", success=True))
    assert _due(redis_client, queue_name) == []

    queue_setting.set_queue_webhook(redis_client, queue_name, "http://queue.example/hook")
    _record_with_spec(redis_client, "own", webhook="http://own.example/hook")
    assert _end(redis_client, queue_name, TaskResult(id="own", success=True))
    assert _end(redis_client, queue_name, TaskResult(id="plain", success=True))
    urls = {}
    for delivery_id in _due(redis_client, queue_name):
        delivery = outbox.Delivery.load(redis_client, delivery_id)
        assert delivery is not None and delivery.attempts == 0 and delivery.payload["event"] == "task.ended"
        urls[delivery.task_id] = delivery.url
    assert urls == {"own": "http://own.example/hook", "plain": "http://queue.example/hook"}
    pending = orjson.loads(redis_client.hget(keys.info_key("own"), "webhook"))
    assert pending["status"] == outbox.PENDING and pending["url"] == "http://own.example/…"  # never its path
    record = TaskStore(redis_client).get("own")  # what `ccx status ID --json` and Runner.get() show
    assert record is not None and record.to_dict()["webhook"] == pending


def test_pauses_are_sent_only_when_the_queue_asks(redis_client: redis.Redis, queue_name: str) -> None:
    assert not outbox.queue_paused(redis_client, queue_name, "manual", "deploy", None)
    queue_setting.set_queue_webhook(redis_client, queue_name, "http://queue.example/hook")
    assert not outbox.queue_paused(redis_client, queue_name, "manual", "deploy", None)
    queue_setting.set_queue_webhook(redis_client, queue_name, "http://queue.example/hook", on_pause=True)
    assert outbox.queue_paused(redis_client, queue_name, "usage_limit", "five-hour limit", 1_800_000_000.0)
    (delivery_id,) = _due(redis_client, queue_name)
    delivery = outbox.Delivery.load(redis_client, delivery_id)
    assert delivery is not None and delivery.event == "queue.paused" and delivery.task_id == ""
    assert delivery.payload["kind"] == "usage_limit" and delivery.payload["until"] == clock.iso(1_800_000_000.0)


def test_the_secret_is_made_once_and_clearing_the_url_keeps_it(redis_client: redis.Redis, queue_name: str) -> None:
    secret = queue_setting.queue_secret(redis_client, queue_name)
    assert len(secret) == 43 and queue_setting.queue_secret(redis_client, queue_name) == secret  # 32 bytes, base64
    queue_setting.set_queue_webhook(redis_client, queue_name, "https://h.example/x", on_pause=True)
    assert queue_setting.get_queue_webhook(redis_client, queue_name).on_pause
    assert queue_setting.clear_queue_webhook(redis_client, queue_name)
    assert queue_setting.get_queue_webhook(redis_client, queue_name).url is None
    assert queue_setting.queue_secret(redis_client, queue_name) == secret
    with pytest.raises(SpecError):
        queue_setting.set_queue_webhook(redis_client, queue_name, "not a url")


@dataclass
class ScriptedSender:
    """Answers each POST with the next status of ``answers`` (then 200), remembering what it got."""

    answers: list[int | None]
    calls: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)

    def __call__(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> http_post.Response:
        self.calls.append((url, body, headers))
        code = self.answers.pop(0) if self.answers else 200
        return http_post.Response(code, None if code and code < 300 else f"HTTP {code}" if code else "refused")


def _deliver_all(deliverer: Deliverer, queue: str, client: redis.Redis) -> None:
    """Attempt every queued delivery once, as if each were due now."""
    for delivery_id in _due(client, queue):
        deliverer.attempt(delivery_id)


def test_a_failed_attempt_is_retried_with_backoff_and_recorded(redis_client: redis.Redis, queue_name: str) -> None:
    settings = Settings(queue=queue_name, webhook_backoff=5, webhook_retry_for=3600, dashboard_url="http://d.example/")
    sender = ScriptedSender([500, None])
    deliverer = Deliverer(settings, client=redis_client, sender=sender)
    _record_with_spec(redis_client, "t", webhook="http://own.example/hook")
    _end(redis_client, queue_name, TaskResult(id="t", success=True, output="hi\n"))
    (delivery_id,) = _due(redis_client, queue_name)

    outcome = deliverer.attempt(delivery_id)
    assert outcome is not None and outcome["status"] == outbox.RETRYING and outcome["last_status_code"] == 500
    score = redis_client.zscore(keys.webhook_due_key(queue_name), delivery_id)
    assert score is not None and score > time.time() + 3  # next try in about 5 s, not now
    deliverer.attempt(delivery_id)
    record = orjson.loads(redis_client.hget(keys.info_key("t"), "webhook"))
    assert record["status"] == outbox.RETRYING and record["attempts"] == 2 and record["last_error"] == "refused"
    outcome = deliverer.attempt(delivery_id)
    assert outcome is not None and outcome["status"] == outbox.DELIVERED and outcome["attempts"] == 3
    assert _due(redis_client, queue_name) == [] and not redis_client.exists(keys.webhook_delivery_key(delivery_id))

    bodies = [body for _, body, _ in sender.calls]
    assert bodies[0] == bodies[1] == bodies[2]  # the same body every time; only the timestamp changes
    assert {headers["X-CCX-Delivery"] for _, _, headers in sender.calls} == {delivery_id}
    assert orjson.loads(bodies[0])["links"] == {"task": "http://d.example/tasks/t"}
    secret = queue_setting.queue_secret(redis_client, queue_name)
    assert all(verify_as_documented(secret, body, headers) for _, body, headers in sender.calls)


def test_a_delivery_is_given_up_after_its_retry_window(redis_client: redis.Redis, queue_name: str) -> None:
    settings = Settings(queue=queue_name, webhook_backoff=10, webhook_retry_for=15)
    deliverer = Deliverer(settings, client=redis_client, sender=ScriptedSender([503, 503, 503]))
    queue_setting.set_queue_webhook(redis_client, queue_name, "http://down.example/hook")
    _record_with_spec(redis_client, "t")
    _end(redis_client, queue_name, TaskResult(id="t"))
    _deliver_all(deliverer, queue_name, redis_client)  # then 10 s: still inside 15 s
    assert orjson.loads(redis_client.hget(keys.info_key("t"), "webhook"))["status"] == outbox.RETRYING
    _deliver_all(deliverer, queue_name, redis_client)  # then 20 s: past the window, so it ends here
    record = orjson.loads(redis_client.hget(keys.info_key("t"), "webhook"))
    assert record["status"] == outbox.FAILED and record["attempts"] == 2 and record["last_status_code"] == 503
    assert _due(redis_client, queue_name) == []


def test_a_claim_is_a_lease_another_deliverer_cannot_take_until_it_expires(
    redis_client: redis.Redis, queue_name: str
) -> None:
    settings = Settings(queue=queue_name)
    sender = ScriptedSender([])
    first = Deliverer(settings, client=redis_client, sender=sender, threads=1)
    second = Deliverer(settings, client=redis_client, sender=sender, threads=1)
    queue_setting.set_queue_webhook(redis_client, queue_name, "http://h.example/hook")
    _record_with_spec(redis_client, "t")
    _end(redis_client, queue_name, TaskResult(id="t"))
    first.dispatch()  # claimed and handed to a sender thread, which is not running here
    assert first._work.qsize() == 1
    second.dispatch()
    assert second._work.qsize() == 0
    assert redis_client.zscore(keys.webhook_due_key(queue_name), _due(redis_client, queue_name)[0]) > time.time()


# --- a real stack and a real receiver ------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: Any
    """The request's headers, looked up without regard to case (HTTP's rule; urllib sends X-Ccx-Signature)."""
    body: bytes
    at: float


class Receiver:
    """A local HTTP server that records every POST and answers each path with its scripted statuses."""

    def __init__(self, scripts: dict[str, list[int]], tls: ssl.SSLContext | None = None) -> None:
        self.scripts = scripts
        self.requests: list[Received] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.requests.append(Received(self.path, self.headers, body, time.monotonic()))
                    script = receiver.scripts.get(self.path, [])
                    code = script.pop(0) if len(script) > 1 else (script[0] if script else 200)
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def got(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def task_posts(self, task_id: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if orjson.loads(r.body).get("id") == task_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    # /flaky: 500 twice, then 200; /down: 500 for ever; anything else: 200.
    server = Receiver({"/flaky": [500, 500, 200], "/down": [500]})
    yield server
    server.close()


def _webhook_state(runner: Runner, task_id: str, status: str) -> dict[str, Any] | None:
    record = runner.get(task_id)
    hook = record.webhook if record is not None else None
    return hook if hook and hook["status"] == status else None


STACK_ENV = {
    "CCX_WEBHOOK_BACKOFF": "0.2",
    "CCX_WEBHOOK_BACKOFF_MAX": "0.4",
    "CCX_WEBHOOK_RETRY_FOR": "8",
    "CCX_DASHBOARD_URL": "http://dash.example:8766/",
    "CCX_WEBHOOK_ALLOW_NETWORKS": ",".join(LOOPBACK),  # the receiver is on loopback: the operator allows it
}
"""The real stack's worker: quick retries, given up after 8 s, links to a fixed dashboard."""


def test_a_real_stack_posts_a_signed_webhook_per_ended_task_and_retries(
    redis_url: str, queue_name: str, tmp_path: Path, receiver: Receiver
) -> None:
    with running_stack(redis_url, queue_name, tmp_path / "worker.log", **STACK_ENV) as stack:
        runner = Runner(redis_url=stack.redis_url, queue=queue_name)
        queue_setting.set_queue_webhook(runner.redis, queue_name, f"{receiver.url}/hook", on_pause=True)
        secret = queue_setting.queue_secret(runner.redis, queue_name)

        finished = runner.submit(agent="command", argv=["python3", "-c", "print('hi')"])
        failed = runner.submit(agent="command", argv=["python3", "-c", "import sys; sys.exit(3)"])
        assert failed.result(timeout=60).exit_code == 3
        # A queued task cancelled (as the dashboard's API does) while the queue is paused: it never runs.
        runner.pause("holding for the test")
        cancelled = runner.submit(agent="command", argv=["python3", "-c", "print('never')"])
        assert runner.cancel(cancelled.id) == "cancelled"
        runner.resume()
        flaky = runner.submit(agent="command", argv=["true"], webhook=f"{receiver.url}/flaky")
        down = runner.submit(agent="command", argv=["true"], webhook=f"{receiver.url}/down")
        after_down = runner.submit(agent="command", argv=["python3", "-c", "print('next')"])

        for handle in (finished, failed, cancelled, after_down):
            wait_until(lambda h=handle: receiver.task_posts(h.id), 60, what=f"the webhook of {handle.id}")
        hook = wait_until(lambda: _webhook_state(runner, flaky.id, "delivered"), 60, what="the flaky delivery")
        assert hook["attempts"] == 3 and hook["last_status_code"] == 200 and hook["delivered_at"]
        assert len(receiver.got("/flaky")) == 3
        gave_up = wait_until(lambda: _webhook_state(runner, down.id, "failed"), 60, what="the dead endpoint given up")
        assert gave_up["attempts"] == len(receiver.got("/down")) >= 2  # one per POST it got: none lost or doubled
        assert gave_up["last_status_code"] == 500 and gave_up["last_error"]

        # Every POST is signed; one each for the ended tasks; each payload says how its task ended.
        assert all(verify_as_documented(secret, r.body, r.headers) for r in receiver.requests)
        seen = {}
        for handle, status in ((finished, "finished"), (failed, "failed"), (cancelled, "cancelled")):
            (post,) = receiver.task_posts(handle.id)
            payload = orjson.loads(post.body)
            assert post.headers["X-CCX-Event"] == "task.ended" and post.path == "/hook"
            assert payload["status"] == status and payload["queue"] == queue_name
            assert payload["links"] == {"task": f"http://dash.example:8766/tasks/{handle.id}"}
            assert "spec" not in payload and "task" not in payload and "env" not in payload
            seen[status] = payload
            assert _webhook_state(runner, handle.id, "delivered")["attempts"] == 1
        assert seen["finished"]["output"] == "hi\n" and seen["finished"]["success"] is True
        assert seen["failed"]["exit_code"] == 3 and seen["failed"]["success"] is False
        assert seen["cancelled"]["exit_code"] is None
        assert len({r.headers["X-CCX-Delivery"] for r in receiver.got("/flaky")}) == 1  # retries of one delivery
        (paused,) = [r for r in receiver.got("/hook") if r.headers["X-CCX-Event"] == "queue.paused"]
        assert orjson.loads(paused.body)["reason"] == "holding for the test"

        # The dead endpoint held up neither the queue nor the other deliveries: the next task ran and was
        # delivered while the dead one was still being retried.
        assert after_down.result(timeout=10).success
        (next_post,) = receiver.task_posts(after_down.id)
        assert next_post.at < receiver.got("/down")[-1].at
        runner.redis.close()


# --- the command line ---------------------------------------------------------------------------------


def test_ccx_webhook_set_show_clear(redis_url: str) -> None:
    queue = f"test-{uuid.uuid4().hex[:12]}"
    env = clean_env(CCX_REDIS_URL=redis_url, CCX_QUEUE=queue)
    done = ccx("webhook", "set", "https://hooks.example/in", "--on-pause", env=env)
    assert done.returncode == 0, done.stderr
    assert "https://hooks.example/in" in done.stdout
    shown = ccx("webhook", "show", "--json", env=env)
    data = orjson.loads(shown.stdout)
    assert data["url"] == "https://hooks.example/in" and data["on_pause"] is True and "secret" not in data
    assert data["secret_in"] == f"Redis hash {keys.webhook_config_key(queue)}, field secret"
    secret = ccx("webhook", "show", "--secret", env=env).stdout.strip()
    client = redis.Redis.from_url(redis_url)
    assert secret == queue_setting.queue_secret(client, queue)
    text = ccx("webhook", "show", env=env).stdout
    assert "https://hooks.example/in" in text and secret not in text
    assert ccx("webhook", "clear", env=env).returncode == 0
    assert orjson.loads(ccx("webhook", "show", "--json", env=env).stdout)["url"] is None
    bad = ccx("webhook", "set", "hooks.example", env=env)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    client.close()


def test_a_bad_webhook_flag_is_one_sentence_and_exit_2(redis_url: str, queue_name: str) -> None:
    env = clean_env(CCX_REDIS_URL=redis_url, CCX_QUEUE=queue_name)
    done = ccx("submit", "--agent", "command", "--webhook", "ftp://x", "--", "true", env=env)
    assert done.returncode == 2, done
    assert done.stderr.strip().splitlines() == [
        "ccx: 'webhook' must be an http:// or https:// URL such as https://example.com/hook, not 'ftp://x'."
    ]


def test_a_delivery_queued_while_no_worker_runs_is_sent_once_one_starts(
    redis_client: redis.Redis, redis_url: str, queue_name: str, receiver: Receiver
) -> None:
    queue_setting.set_queue_webhook(redis_client, queue_name, f"{receiver.url}/hook")
    _record_with_spec(redis_client, "t")
    _end(redis_client, queue_name, TaskResult(id="t", success=True))  # nobody delivers yet
    assert receiver.requests == []
    settings = Settings(redis_url=redis_url, queue=queue_name, webhook_allow_networks=LOOPBACK)
    deliverer = Deliverer(settings).start()
    try:
        (post,) = wait_until(lambda: receiver.task_posts("t"), 20, what="the delivery after the start")
        assert verify_as_documented(queue_setting.queue_secret(redis_client, queue_name), post.body, post.headers)
        wait_until(lambda: _due(redis_client, queue_name) == [], 10, what="the outbox emptied")
    finally:
        deliverer.stop()
        deliverer.client.close()


def test_a_stale_attempt_neither_overwrites_the_outcome_nor_brings_a_delivery_back(
    redis_client: redis.Redis, queue_name: str
) -> None:
    """An attempt whose lease ran out (the delivery was claimed again, and delivered) records nothing."""
    settings = Settings(queue=queue_name)
    deliverer = Deliverer(settings, client=redis_client, sender=ScriptedSender([500]))
    queue_setting.set_queue_webhook(redis_client, queue_name, "http://q.example/hook")
    _record_with_spec(redis_client, "t")
    _end(redis_client, queue_name, TaskResult(id="t", success=True))
    (delivery_id,) = _due(redis_client, queue_name)
    stale_lease = "12345.0"  # not the delivery's score: the lease it was sent under has passed
    outcome = deliverer.attempt(delivery_id, stale_lease)
    assert outcome is not None and outcome["status"] == outbox.RETRYING  # what it would have said…
    record = orjson.loads(redis_client.hget(keys.info_key("t"), "webhook"))
    assert record["status"] == outbox.PENDING and record["attempts"] == 0  # …but the record is untouched
    assert redis_client.hget(keys.webhook_delivery_key(delivery_id), "attempts") == b"0"

    ok = Deliverer(settings, client=redis_client, sender=ScriptedSender([200]))
    assert ok.attempt(delivery_id)["status"] == outbox.DELIVERED  # type: ignore[index]
    deliverer.attempt(delivery_id, stale_lease)  # the old attempt reports late: the delivery is gone
    assert not redis_client.exists(keys.webhook_delivery_key(delivery_id))
    assert _due(redis_client, queue_name) == []
    assert orjson.loads(redis_client.hget(keys.info_key("t"), "webhook"))["status"] == outbox.DELIVERED


def test_a_receiver_that_answers_a_byte_at_a_time_gets_the_whole_timeout_not_more() -> None:
    """The timeout bounds a whole POST, so a trickling receiver cannot hold a sender thread."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 1000:
                if stop.wait(0.2):
                    return
                with contextlib.suppress(OSError):
                    conn.sendall(bytes([byte]))

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        answer = http_post.post(
            f"http://127.0.0.1:{server.getsockname()[1]}/hook", b"{}", {}, timeout=1.0, allow=LOOPBACK_NETWORKS
        )
    finally:
        stop.set()
        server.close()
    elapsed = time.monotonic() - started
    assert not answer.ok and answer.error == "no complete answer within 1 s"
    assert elapsed < 5, elapsed  # 1 s, plus a loaded machine's slack; without the bound it would take minutes
    thread.join(5)


@pytest.mark.parametrize(
    "partial",
    [
        b"",  # http.client: RemoteDisconnected
        b"HTTP",  # BadStatusLine('HTTP')
        b"HTTP/1.1 200 OK\r\nX-Slow: x",  # headers cut short: http.client takes it for a whole 200
    ],
)
def test_a_post_cut_by_its_deadline_reports_the_timeout_whatever_http_client_made_of_the_cut(
    partial: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic, not by timing: the receiver sends ``partial`` and stalls, and the deadline's thread is
    held alive after cutting the socket (as on a busy machine, where it is not scheduled to finish), so
    the sender sees http.client's own error for the cut, or even a 200, while the timer is still running."""
    real_abort, released = http_post._abort, threading.Event()

    def abort_and_linger(conn: Any) -> None:
        real_abort(conn)
        released.wait(10)

    monkeypatch.setattr(http_post, "_abort", abort_and_linger)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def stall() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(partial)
            released.wait(10)

    thread = threading.Thread(target=stall, daemon=True)
    thread.start()
    try:
        answer = http_post.post(
            f"http://127.0.0.1:{server.getsockname()[1]}/hook", b"{}", {}, timeout=0.5, allow=LOOPBACK_NETWORKS
        )
    finally:
        released.set()
        server.close()
    thread.join(5)
    assert answer == http_post.Response(None, "no complete answer within 0.5 s")


def test_a_resumed_queue_is_sent_only_when_the_queue_asks_for_pauses(
    redis_client: redis.Redis, queue_name: str
) -> None:
    queue_setting.set_queue_webhook(redis_client, queue_name, "http://queue.example/hook")
    assert not outbox.queue_resumed(redis_client, queue_name, "manual", "resumed by hand")
    queue_setting.set_queue_webhook(redis_client, queue_name, "http://queue.example/hook", on_pause=True)
    assert outbox.queue_resumed(redis_client, queue_name, "usage_limit", "the pause ended (five-hour usage limit)")
    (delivery_id,) = _due(redis_client, queue_name)
    delivery = outbox.Delivery.load(redis_client, delivery_id)
    assert delivery is not None and delivery.event == QUEUE_RESUMED == "queue.resumed"
    assert delivery.task_id == "" and delivery.payload["queue"] == queue_name
    assert delivery.payload["kind"] == "usage_limit" and delivery.payload["at"]
    assert delivery.payload["reason"] == "the pause ended (five-hour usage limit)"


# --- where webhooks may go: no probing the worker's own network (SSRF) -------------------------------------

ALLOW = "CCX_WEBHOOK_ALLOW_NETWORKS"


@dataclass
class NetworkGuard:
    """What this process tried: every connection (by address) and every lookup a DNS server would answer."""

    connects: list[tuple[Any, ...]] = field(default_factory=list)
    lookups: list[str] = field(default_factory=list)


@pytest.fixture
def guard(monkeypatch: pytest.MonkeyPatch) -> NetworkGuard:
    """Records connections and fails any but to 127.0.0.1, and fails any lookup that is not of a literal
    address: a refusal must come before connecting, and no test may reach another address, not even through
    a bug (or through the code from before the check, which these tests are also run against)."""
    seen = NetworkGuard()
    real_connect, real_connect_ex, real_getaddrinfo = (
        socket.socket.connect,
        socket.socket.connect_ex,
        socket.getaddrinfo,
    )

    def checked(address: Any) -> None:
        seen.connects.append(address)
        if not isinstance(address, tuple) or address[0] != "127.0.0.1":
            raise AssertionError(f"a connection to {address!r} was attempted")

    def connect(sock: socket.socket, address: Any) -> None:
        checked(address)
        real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        checked(address)
        return real_connect_ex(sock, address)

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            real_getaddrinfo(host, port, flags=socket.AI_NUMERICHOST)
        except socket.gaierror:
            seen.lookups.append(host)
            raise AssertionError(f"a lookup of {host!r} was made") from None
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return seen


def _allow_it(address: str) -> str:
    return f"set {ALLOW}={address} on the worker to allow it."


@pytest.mark.parametrize(
    ("host", "sentence"),
    [
        ("127.0.0.1", f"refused: 127.0.0.1 is a loopback address; {_allow_it('127.0.0.1/32')}"),
        ("[::1]", f"refused: ::1 is a loopback address; {_allow_it('::1/128')}"),
        ("2130706433", f"refused: 2130706433 resolves to 127.0.0.1, a loopback address; {_allow_it('127.0.0.1/32')}"),
        ("0x7f.1", f"refused: 0x7f.1 resolves to 127.0.0.1, a loopback address; {_allow_it('127.0.0.1/32')}"),
        ("10.1.2.3", f"refused: 10.1.2.3 is a private address; {_allow_it('10.1.2.3/32')}"),
        ("172.16.0.1", f"refused: 172.16.0.1 is a private address; {_allow_it('172.16.0.1/32')}"),
        ("192.168.1.1", f"refused: 192.168.1.1 is a private address; {_allow_it('192.168.1.1/32')}"),
        ("[fd12::1]", f"refused: fd12::1 is a private address; {_allow_it('fd12::1/128')}"),
        (
            "169.254.169.254",
            f"refused: 169.254.169.254 is the cloud metadata address; {_allow_it('169.254.169.254/32')}",
        ),
        ("[fd00:ec2::254]", f"refused: fd00:ec2::254 is the cloud metadata address; {_allow_it('fd00:ec2::254/128')}"),
        ("169.254.1.1", f"refused: 169.254.1.1 is a link-local address; {_allow_it('169.254.1.1/32')}"),
        ("[fe80::1]", f"refused: fe80::1 is a link-local address; {_allow_it('fe80::1/128')}"),
        ("0.0.0.0", f"refused: 0.0.0.0 is an unspecified address; {_allow_it('0.0.0.0/32')}"),
        ("[::]", f"refused: :: is an unspecified address; {_allow_it('::/128')}"),
        ("224.0.0.1", f"refused: 224.0.0.1 is a multicast address; {_allow_it('224.0.0.1/32')}"),
        ("[ff02::1]", f"refused: ff02::1 is a multicast address; {_allow_it('ff02::1/128')}"),
        ("240.0.0.1", f"refused: 240.0.0.1 is a reserved address; {_allow_it('240.0.0.1/32')}"),
        ("100.64.0.1", f"refused: 100.64.0.1 is a reserved address; {_allow_it('100.64.0.1/32')}"),
        # IPv6 forms of IPv4 addresses are judged by where their packets go.
        ("[::ffff:10.1.2.3]", f"refused: ::ffff:10.1.2.3 is a private address; {_allow_it('10.1.2.3/32')}"),
        ("[64:ff9b::7f00:1]", f"refused: 64:ff9b::7f00:1 is a loopback address; {_allow_it('127.0.0.1/32')}"),
    ],
)
def test_a_webhook_to_an_address_that_is_not_public_is_refused_before_connecting(
    host: str, sentence: str, guard: NetworkGuard
) -> None:
    for scheme in ("http", "https"):
        answer = http_post.post(f"{scheme}://{host}:9/hook?t=1", b"{}", {}, timeout=2.0)
        assert answer == http_post.Response(None, sentence, refused=True)
    assert guard.connects == [] and guard.lookups == []


def test_public_addresses_pass_the_check_and_an_allowed_network_lets_its_addresses_through() -> None:
    public = ["93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]
    assert [destination.address_kind(ipaddress.ip_address(text)) for text in public] == [None] * 5
    resolved = [(socket.AF_INET, ("10.1.2.3", 80)), (socket.AF_INET6, ("::ffff:10.1.2.4", 80, 0, 0))]
    assert destination.refusal("h.test", resolved, [ipaddress.ip_network("10.1.2.0/24")]) is None
    assert destination.refusal("h.test", resolved, [ipaddress.ip_network("10.1.2.3/32")]) == (
        f"refused: h.test resolves to ::ffff:a01:204, a private address; {_allow_it('10.1.2.4/32')}"
    )


def test_a_name_is_refused_when_any_of_its_addresses_is_not_allowed(
    guard: NetworkGuard, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name whose answer mixes an allowed address with a private one is refused: which of them a connection
    would use is not the sender's to choose."""
    answer = [(socket.AF_INET, ("127.0.0.1", 9)), (socket.AF_INET, ("10.1.2.3", 9))]
    monkeypatch.setattr(http_post, "resolve", lambda host, port: answer if (host, port) == ("mixed.test", 9) else [])
    got = http_post.post("http://mixed.test:9/hook", b"{}", {}, timeout=2.0, allow=LOOPBACK_NETWORKS)
    expected = f"refused: mixed.test resolves to 10.1.2.3, a private address; {_allow_it('10.1.2.3/32')}"
    assert got == http_post.Response(None, expected, refused=True)
    assert guard.connects == [] and guard.lookups == []


def test_a_name_is_looked_up_once_and_the_post_goes_to_the_address_that_was_checked(
    guard: NetworkGuard, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name's server answers an allowed address to the check and a private one after.
    The POST must go to the checked address, with no second lookup, and still name the host."""
    lookups: list[str] = []

    def rebinding(host: str, port: int) -> destination.Resolved:
        lookups.append(host)
        address = "127.0.0.1" if len(lookups) == 1 else "10.9.9.9"
        return [(socket.AF_INET, (address, port))]

    monkeypatch.setattr(http_post, "resolve", rebinding)
    url = f"http://rebind.test:{receiver.port}/hook"
    answer = http_post.post(url, b'{"id":"t"}', {"Content-Type": "application/json"}, 5.0, allow=LOOPBACK_NETWORKS)
    assert answer == http_post.Response(200)
    assert lookups == ["rebind.test"] and guard.lookups == []
    assert guard.connects == [("127.0.0.1", receiver.port)]
    (post,) = receiver.got("/hook")
    assert post.headers["Host"] == f"rebind.test:{receiver.port}" and post.body == b'{"id":"t"}'


def test_https_to_the_checked_address_still_verifies_the_certificate_for_the_name(
    guard: NetworkGuard, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection goes to the checked address, but TLS's server name and certificate check use the URL's
    host: a certificate for hooks.test (and not for 127.0.0.1) is accepted for it, and refused for another."""
    certs = make_certs(tmp_path, hosts=("hooks.test",))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.cert, certs.key)
    names: list[str | None] = []
    context.sni_callback = lambda _sock, name, _context: names.append(name)  # type: ignore[assignment,misc]
    server = Receiver({}, tls=context)
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.ca))  # what ssl.create_default_context() trusts
    monkeypatch.setattr(http_post, "resolve", lambda host, port: [(socket.AF_INET, ("127.0.0.1", port))])
    try:
        good = http_post.post(f"https://hooks.test:{server.port}/hook", b"{}", {}, 5.0, allow=LOOPBACK_NETWORKS)
        bad = http_post.post(f"https://other.test:{server.port}/hook", b"{}", {}, 5.0, allow=LOOPBACK_NETWORKS)
    finally:
        server.close()
    assert good == http_post.Response(200)
    assert names == ["hooks.test", "other.test"] and guard.lookups == []
    (post,) = server.requests
    assert post.headers["Host"] == f"hooks.test:{server.port}"
    assert not bad.ok and bad.status_code is None and not bad.refused
    assert "certificate is not valid for 'other.test'" in (bad.error or ""), bad.error


def test_cancelling_a_task_cannot_probe_the_workers_network_until_the_operator_allows_it(
    redis_url: str, queue_name: str, receiver: Receiver, guard: NetworkGuard, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe: a task whose webhook names a local port, cancelled at once, would report that port's answer.
    Refused, the record says so in one sentence and nothing else; it is not retried; nothing connects."""
    monkeypatch.delenv(ALLOW, raising=False)
    runner = Runner(redis_url=redis_url, queue=queue_name)
    probe = runner.submit(agent="command", argv=["true"], webhook=f"{receiver.url}/admin?x=1")
    assert runner.cancel(probe.id) == "cancelled"
    settings = Settings.from_env().replace(redis_url=redis_url, queue=queue_name)
    (delivery_id,) = _due(runner.redis, queue_name)
    outcome = Deliverer(settings, client=runner.redis).attempt(delivery_id)
    record = runner.get(probe.id)
    assert record is not None and record.webhook == outcome
    assert {key: value for key, value in outcome.items() if not key.endswith("_at") or value is None} == {
        "url": f"{receiver.url}/…",
        "event": "task.ended",
        "delivery": delivery_id,
        "status": outbox.FAILED,
        "attempts": 1,
        "last_status_code": None,
        "last_error": f"refused: 127.0.0.1 is a loopback address; {_allow_it('127.0.0.1/32')}",
        "delivered_at": None,
        "next_attempt_at": None,
    }
    assert _due(runner.redis, queue_name) == [] and receiver.requests == []
    assert ("127.0.0.1", receiver.port) not in guard.connects

    # The operator opts in on the worker: the same webhook is delivered.
    monkeypatch.setenv(ALLOW, "127.0.0.1/32")
    settings = Settings.from_env().replace(redis_url=redis_url, queue=queue_name)
    allowed = runner.submit(agent="command", argv=["true"], webhook=f"{receiver.url}/admin?x=1")
    assert runner.cancel(allowed.id) == "cancelled"
    (delivery_id,) = _due(runner.redis, queue_name)
    delivered = Deliverer(settings, client=runner.redis).attempt(delivery_id)
    assert delivered is not None and delivered["status"] == outbox.DELIVERED
    (post,) = receiver.task_posts(allowed.id)
    assert post.path == "/admin?x=1"
    runner.redis.close()


def test_the_allowed_networks_setting_is_read_by_the_worker_and_a_bad_one_is_one_sentence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ALLOW, raising=False)
    assert Settings.from_env().webhook_allow_networks == ()
    monkeypatch.setenv(ALLOW, "127.0.0.1/32, 10.0.0.0/8 ::1,192.168.1.7/24")
    assert Settings.from_env().webhook_allow_networks == ("127.0.0.1/32", "10.0.0.0/8", "::1/128", "192.168.1.0/24")
    for bad in ("10.0.0.0/33", "localhost"):
        monkeypatch.setenv(ALLOW, f"127.0.0.1/32,{bad}")
        with pytest.raises(ConfigError) as caught:
            Settings.from_env()
        assert str(caught.value) == f"{ALLOW} must list networks such as 127.0.0.1/32 or 10.0.0.0/8, not {bad!r}."
