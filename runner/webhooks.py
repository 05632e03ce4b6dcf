"""Completion webhooks: a signed JSON POST to a URL when a task ends (and, if asked, when the queue pauses).

Ending a task must never wait on somebody else's HTTP server, and a delivery must survive a worker
restart, so the work is split in two (docs/webhooks.md is the reference):

* :func:`on_end` / :func:`on_pause` run wherever a task ends or a queue pauses (a work-horse, the worker,
  the dashboard, the CLI). When a URL applies (the task's own ``webhook``, else the queue's) they put a
  delivery into the queue's outbox in Redis, in one round trip, and return.
* :class:`Deliverer` runs as threads of the worker's main process. It claims due deliveries from the
  outbox (a sorted set by next-attempt time, so a failing endpoint's retries never hold up the others),
  POSTs them, and reschedules failures with backoff until ``CCX_WEBHOOK_RETRY_FOR`` has passed. A claim
  is a lease, not a removal: a delivery leaves the outbox only once it has succeeded or been given up,
  so a worker that dies mid-delivery sends it again after its restart (at least once; receivers
  deduplicate on ``X-CCX-Delivery``).

Every attempt's outcome is written to the task's record (field ``webhook``), so ``ccx status ID --json``,
the dashboard and ``Runner.get()`` show whether a delivery was made, is being retried, or failed.

Whoever submits a task chooses where the worker connects, so each POST goes only to public addresses
unless ``CCX_WEBHOOK_ALLOW_NETWORKS`` allows others (see "where a POST may go" below).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import http.client
import ipaddress
import logging
import queue as queue_lib
import secrets
import socket
import ssl
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import redis

from handler import __version__
from handler.config import ConfigError
from runner import events
from runner.config import PATIENT_RETRIES, Settings, check_http_url, redis_client
from runner.spec import TaskResult

log = logging.getLogger("ccx.webhooks")

TASK_ENDED = "task.ended"
QUEUE_PAUSED = "queue.paused"
QUEUE_RESUMED = "queue.resumed"

SIGNATURE_HEADER = "X-CCX-Signature"
TIMESTAMP_HEADER = "X-CCX-Timestamp"
EVENT_HEADER = "X-CCX-Event"
DELIVERY_HEADER = "X-CCX-Delivery"

OUTPUT_BYTES = 4096
"""Bytes of the result's output a payload carries (its start, cut at a character boundary)."""

# What a task record's ``webhook`` says.
PENDING = "pending"
RETRYING = "retrying"
DELIVERED = "delivered"
FAILED = "failed"

CLAIM_MARGIN = 30.0
"""Seconds past the POST timeout a claimed delivery stays leased; then another deliverer may take it."""
DELIVERY_THREADS = 4
"""POSTs at once: a receiver that takes its whole timeout holds up only its own thread."""


# --- the payload and its signature -----------------------------------------------------------------


def cut_utf8(text: str, limit: int = OUTPUT_BYTES) -> tuple[str, bool]:
    """The start of ``text`` in at most ``limit`` UTF-8 bytes, never half a character; and whether it was cut."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text, False
    return data[:limit].decode("utf-8", "ignore"), True


def task_payload(result: TaskResult, queue: str) -> dict[str, Any]:
    """What a receiver learns about an ended task: never the spec (its prompt and env may hold secrets)."""
    output, cut = cut_utf8(result.output or "")
    cost = (result.agent or {}).get("total_cost_usd")
    return {
        "event": TASK_ENDED,
        "id": result.id,
        "queue": queue,
        "status": result.status,
        "success": result.success,
        "exit_code": result.exit_code,
        "error": result.error,
        "output": output,
        "output_truncated": cut or result.output_truncated,
        "cost_usd": cost if isinstance(cost, (int, float)) and not isinstance(cost, bool) else None,
        "duration": round(result.duration_ms / 1000, 3) if result.duration_ms is not None else None,
        "ended_at": result.ended_at,
    }


def pause_payload(queue: str, kind: str, reason: str, until: float | None) -> dict[str, Any]:
    return {
        "event": QUEUE_PAUSED,
        "queue": queue,
        "kind": kind,
        "reason": reason,
        "until": events.iso(until) if until else None,
        "at": events.now_iso(),
    }


def resume_payload(queue: str, kind: str, reason: str) -> dict[str, Any]:
    """A lifted pause: ``kind`` is the pause that ended, ``reason`` why it ended (its time came, a person)."""
    return {"event": QUEUE_RESUMED, "queue": queue, "kind": kind, "reason": reason, "at": events.now_iso()}


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 under ``secret`` of ``f"{timestamp}.{body}"``; the timestamp is signed
    too, so a captured request cannot be replayed later with a fresh one."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify(
    secret: str, body: bytes, signature: str, timestamp: str, tolerance: float = 300, now: float | None = None
) -> bool:
    """A receiver's check (the one docs/webhooks.md shows): the signature matches and the timestamp is recent."""
    try:
        sent = int(timestamp)
    except (TypeError, ValueError):
        return False
    recent = abs((time.time() if now is None else now) - sent) <= tolerance
    return recent and hmac.compare_digest(sign(secret, sent, body), signature or "")


def request_headers(event: str, delivery_id: str, secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": f"cc-execute/{__version__}",
        EVENT_HEADER: event,
        DELIVERY_HEADER: delivery_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, timestamp, body),
    }


# --- the queue's setting and secret ------------------------------------------------------------------


@dataclass(frozen=True)
class QueueWebhook:
    """A queue's webhook setting (the secret is read separately, with :func:`queue_secret`)."""

    queue: str
    url: str | None = None
    on_pause: bool = False
    last_delivery: dict[str, Any] | None = None
    """How the last queue event's delivery went (task events are recorded on their task)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def get_queue_webhook(client: redis.Redis, queue: str) -> QueueWebhook:
    url, on_pause, last = client.hmget(events.webhook_config_key(queue), "url", "on_pause", "last_delivery")
    return QueueWebhook(queue, url.decode() if url else None, on_pause == b"1", orjson.loads(last) if last else None)


def set_queue_webhook(client: redis.Redis, queue: str, url: str, on_pause: bool = False) -> QueueWebhook:
    """Every task of ``queue`` without a ``webhook`` of its own reports its end to ``url`` from now on."""
    from runner.spec import SpecError

    try:
        check_http_url(url, "The webhook URL")
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    key = events.webhook_config_key(queue)
    with client.pipeline() as pipe:
        pipe.hset(key, mapping={"url": url, "on_pause": "1" if on_pause else ""})
        pipe.hsetnx(key, "secret", secrets.token_urlsafe(32))
        pipe.execute()
    return get_queue_webhook(client, queue)


def clear_queue_webhook(client: redis.Redis, queue: str) -> bool:
    """No queue webhook any more (True if there was one). The secret stays: tasks' own webhooks use it."""
    with client.pipeline() as pipe:
        pipe.hget(events.webhook_config_key(queue), "url")
        pipe.hdel(events.webhook_config_key(queue), "url", "on_pause")
        had, _ = pipe.execute()
    return bool(had)


def queue_secret(client: redis.Redis, queue: str) -> str:
    """The key every POST of ``queue`` is signed with, made on first use; give it to the receivers."""
    key = events.webhook_config_key(queue)
    with client.pipeline() as pipe:
        pipe.hsetnx(key, "secret", secrets.token_urlsafe(32))
        pipe.hget(key, "secret")
        _, secret = pipe.execute()
    return secret.decode()


# --- into the outbox ---------------------------------------------------------------------------------

# KEYS: the task's record (or the queue's webhook hash for queue events), the queue's webhook hash, the
# delivery, the outbox, the wake list. ARGV: delivery id, body, ttl, event, task id, queue, mode.
# mode 'task': the spec's webhook, else the queue's URL; mode 'pause': the queue's URL if on_pause is set.
# Scores are Redis's clock, so machines whose clocks differ still agree on what is due.
_ENQUEUE_SCRIPT = """
local url = false
if ARGV[7] == 'task' then
  local spec = redis.call('HGET', KEYS[1], 'spec')
  if spec then
    local ok, decoded = pcall(cjson.decode, spec)
    if ok and type(decoded) == 'table' and type(decoded['webhook']) == 'string' and decoded['webhook'] ~= '' then
      url = decoded['webhook']
    end
  end
elseif redis.call('HGET', KEYS[2], 'on_pause') ~= '1' then
  return 0
end
if not url then url = redis.call('HGET', KEYS[2], 'url') end
if not url or url == '' then return 0 end
-- What the record shows: scheme and host, never credentials, path or query (see url_for_log).
local shown = string.match(url, '^[%a][%w+.-]*://[^/?#]*') or ''
shown = string.gsub(shown, '//[^@/]*@', '//')
if #url > #(string.match(url, '^[%a][%w+.-]*://[^/?#]*') or '') + 1 then shown = shown .. '/…' end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('HSET', KEYS[3], 'url', url, 'event', ARGV[4], 'body', ARGV[2], 'task', ARGV[5], 'queue', ARGV[6],
  'created', tostring(now), 'attempts', '0')
redis.call('EXPIRE', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[4], now, ARGV[1])
redis.call('LPUSH', KEYS[5], '1')
redis.call('LTRIM', KEYS[5], 0, 0)
if ARGV[7] == 'task' and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'webhook',
    cjson.encode({url = shown, status = 'pending', attempts = 0, delivery = ARGV[1], event = ARGV[4]}))
end
return 1
"""


def _enqueue(client: Any, queue: str, mode: str, event: str, task_id: str, body: bytes, ttl: int) -> Any:
    """Run the enqueue script on ``client`` (a client: its reply; a pipeline: queued). EVAL, not EVALSHA:
    in a pipeline redis-py would spend a round trip checking that the script is loaded."""
    delivery_id = str(uuid.uuid4())
    record = events.info_key(task_id) if task_id else events.webhook_config_key(queue)
    keys = [
        record,
        events.webhook_config_key(queue),
        events.webhook_delivery_key(delivery_id),
        events.webhook_due_key(queue),
        events.webhook_wake_key(queue),
    ]
    return client.eval(_ENQUEUE_SCRIPT, len(keys), *keys, delivery_id, body, ttl, event, task_id, queue, mode)


def queue_end(pipe: Any, queue: str, result: TaskResult, ttl: int = events.DEFAULT_LOG_TTL) -> None:
    """Add to ``pipe`` the script that queues an ended task's webhook, if one applies (the script decides,
    from the record's spec and the queue's setting). :func:`runner.lifecycle.end` sends it with the end's
    other bookkeeping, in one round trip."""
    _enqueue(pipe, queue, "task", TASK_ENDED, result.id, orjson.dumps(task_payload(result, queue)), ttl)


def on_end(client: redis.Redis, queue: str, result: TaskResult, ttl: int = events.DEFAULT_LOG_TTL) -> bool:
    """Queue an ended task's webhook now, if one applies (True if one did); never raises."""
    try:
        return bool(
            _enqueue(client, queue, "task", TASK_ENDED, result.id, orjson.dumps(task_payload(result, queue)), ttl)
        )
    except redis.RedisError as exc:
        log.warning("task %s: its webhook could not be queued (%s)", result.id, exc)
        return False


def on_pause(client: redis.Redis, queue: str, kind: str, reason: str, until: float | None) -> bool:
    """Called when ``queue`` pauses: queue a ``queue.paused`` POST if the queue's webhook asks for them."""
    try:
        body = orjson.dumps(pause_payload(queue, kind, reason, until))
        return _enqueue(client, queue, "pause", QUEUE_PAUSED, "", body, events.DEFAULT_LOG_TTL)
    except redis.RedisError as exc:
        log.warning("queue %s: its pause webhook could not be queued (%s)", queue, exc)
        return False


def on_resume(client: redis.Redis, queue: str, kind: str, reason: str) -> bool:
    """Called when ``queue``'s pause ends: a ``queue.resumed`` POST, to the same receivers as its pauses
    (so that every ``queue.paused`` they got is followed by its end)."""
    try:
        body = orjson.dumps(resume_payload(queue, kind, reason))
        return _enqueue(client, queue, "pause", QUEUE_RESUMED, "", body, events.DEFAULT_LOG_TTL)
    except redis.RedisError as exc:
        log.warning("queue %s: its resume webhook could not be queued (%s)", queue, exc)
        return False


# --- out of the outbox -------------------------------------------------------------------------------

# KEYS: the outbox. ARGV: lease seconds, most to claim. Leases the due deliveries (their score moves past
# the lease) and returns {Redis now, the next due score or '', ids...}.
_CLAIM_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), id) end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local reply = {tostring(now), nxt[2] or '', tostring(now + tonumber(ARGV[1]))}
for _, id in ipairs(ids) do reply[#reply + 1] = id end
return reply
"""

# KEYS: the delivery, the outbox, the record (task record or queue webhook hash), the wake list.
# ARGV: delivery id, outcome JSON, record field, attempts, next attempt ('' = done: delivered or given up),
# the lease (the score the claim gave it).
# A retry wakes the claimer, which may be waiting for a later one.
_RECORD_SCRIPT = """
-- Only the attempt that holds the delivery's lease records: a stale one (its lease ran out and the
-- delivery was claimed again, or finished) changes nothing, and never brings a delivery back.
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], ARGV[1]) return 0 end
if not score or math.abs(tonumber(score) - tonumber(ARGV[6])) > 0.001 then return 0 end
if ARGV[5] == '' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('DEL', KEYS[1])
else
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
  redis.call('HSET', KEYS[1], 'attempts', ARGV[4])
  redis.call('LPUSH', KEYS[4], '1')
  redis.call('LTRIM', KEYS[4], 0, 0)
end
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('HSET', KEYS[3], ARGV[3], ARGV[2]) end
return 1
"""


@dataclass(frozen=True)
class Delivery:
    """One webhook POST to make, as the outbox holds it."""

    id: str
    url: str
    event: str
    payload: dict[str, Any]
    task_id: str
    queue: str
    created: float
    attempts: int

    @classmethod
    def load(cls, client: redis.Redis, delivery_id: str) -> Delivery | None:
        raw = client.hgetall(events.webhook_delivery_key(delivery_id))
        if not raw or b"url" not in raw:
            return None
        data = {key.decode(): value for key, value in raw.items()}
        return cls(
            id=delivery_id,
            url=data["url"].decode(),
            event=data.get("event", b"").decode(),
            payload=orjson.loads(data.get("body") or b"{}"),
            task_id=data.get("task", b"").decode(),
            queue=data.get("queue", b"").decode(),
            created=float(data.get("created") or 0),
            attempts=int(data.get("attempts") or 0),
        )


@dataclass(frozen=True)
class Response:
    """How one POST went: the HTTP status, or why there was none."""

    status_code: int | None = None
    error: str | None = None
    refused: bool = False
    """The destination was not allowed, so nothing was sent (and it is not tried again)."""

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


# --- where a POST may go ------------------------------------------------------------------------------
#
# Whoever can set a webhook URL chooses where the worker connects, and the task record shows what came back,
# so without a check webhooks probe the worker's own network (its loopback services, the LAN, the cloud
# metadata endpoint). The check runs when a POST is made, on the addresses of that one lookup, and the
# connection goes to a checked address: a name may resolve differently at submit time or on a second lookup.

ALLOW_SETTING = "CCX_WEBHOOK_ALLOW_NETWORKS"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolved = list[tuple[int, tuple[Any, ...]]]
"""What one lookup gave: (address family, socket address) pairs, in the resolver's order."""

METADATA = frozenset(
    ipaddress.ip_address(text) for text in ("169.254.169.254", "fd00:ec2::254", "168.63.129.16", "100.100.100.200")
)
"""Cloud instance-metadata endpoints (most clouds; AWS over IPv6; Azure's WireServer, a public address; Alibaba)."""
_PRIVATE = tuple(ipaddress.ip_network(text) for text in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # Linux takes 0.0.0.0 for this host
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _as_ipv4(address: Address) -> Address:
    """The IPv4 address an IPv6 one carries packets to (mapped, NAT64, 6to4): that is where they end up."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address.sixtofour is not None:
            return address.sixtofour
    return address


def address_kind(address: Address) -> str | None:
    """Why webhooks do not go to ``address`` unless it is allowed ("a loopback address", …); None: public."""
    address = _as_ipv4(address)
    if address in METADATA:
        return "the cloud metadata address"
    if address.is_unspecified or address in _THIS_NETWORK:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if any(address in network for network in _PRIVATE):
        return "a private address"
    if not address.is_global or address.is_reserved or getattr(address, "is_site_local", False):
        return "a reserved address"
    return None


def parse_networks(text: str, name: str = ALLOW_SETTING) -> tuple[str, ...]:
    """``127.0.0.1/32, 10.0.0.0/8 ::1`` as canonical networks; a bad one raises :class:`ConfigError` naming ``name``.

    A host part is dropped (``10.1.2.3/8`` is ``10.0.0.0/8``): operators write networks either way."""
    networks = []
    for item in text.replace(",", " ").split():
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ConfigError(f"{name} must list networks such as 127.0.0.1/32 or 10.0.0.0/8, not {item!r}.") from None
    return tuple(networks)


def resolve(host: str, port: int) -> Resolved:
    """Every address of ``host``: the one lookup a POST makes (tests put a resolver of their own here)."""
    return [(info[0], info[4]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def refusal(host: str, resolved: Resolved, allow: Sequence[Network]) -> str | None:
    """The sentence refusing ``host``, or None to go ahead. Every address must pass, not just one: which of
    them a connection ends up using is not the checker's to choose."""
    for _, sockaddr in resolved:
        address = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])  # no IPv6 zone (fe80::1%eth0)
        kind = address_kind(address)
        if kind is None or any(a in network for a in (address, _as_ipv4(address)) for network in allow):
            continue
        what, target = f"resolves to {address}, {kind}", _as_ipv4(address)  # allowing target allows address
        with contextlib.suppress(ValueError):
            what = f"is {kind}" if ipaddress.ip_address(host) == address else what
        allow_it = f"set {ALLOW_SETTING}={target}/{target.max_prefixlen} on the worker to allow it"
        return f"refused: {host} {what}; {allow_it}."
    return None


def _pinned(resolved: Resolved) -> Callable[..., socket.socket]:
    """http.client's connect function, tied to the checked addresses: it ignores the host it is handed,
    since a second lookup could answer differently (DNS rebinding). Tries them in order, all within
    ``timeout``, as :func:`socket.create_connection` would."""

    def connect(_address: object, timeout: float = 10.0, _source: object = None) -> socket.socket:
        deadline = time.monotonic() + timeout
        error = OSError("the host has no address")
        for family, sockaddr in resolved:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(left)
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
        raise error

    return connect


def _connection(url: str, timeout: float, allow: Sequence[Network]) -> http.client.HTTPConnection | Response:
    """A connection to ``url``'s host that will go only to an address that passed the check, or the
    Response that says why there is none (a refusal says nothing about what is at the address)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:  # e.g. a port that is not a number
        return Response(None, str(exc))
    try:
        resolved = resolve(host, port)
    except OSError as exc:  # socket.gaierror: no such name, or no answer
        return Response(None, f"no address for {host} ({exc.strerror or exc})")
    refused = refusal(host, resolved, allow)
    if refused is not None:
        return Response(None, refused, refused=True)
    # The host stays the name: the Host header, TLS's SNI and the certificate check all use it.
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    conn._create_connection = _pinned(resolved)  # type: ignore[attr-defined]  # what connect() calls
    return conn


def _abort(conn: http.client.HTTPConnection) -> None:
    """The attempt's deadline passed: cut its connection, which ends whatever read or write it is in."""
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def post(url: str, body: bytes, headers: dict[str, str], timeout: float, allow: Sequence[Network] = ()) -> Response:
    """POST ``body``, all of it (connect, send, answer) within ``timeout`` seconds; any answer but a 2xx,
    and any network error, is a failed attempt. A redirect is not followed: it would resend a signed body
    somewhere else. (``timeout`` bounds the whole request, not each read: a receiver that answers a byte
    at a time cannot hold a sender for longer.) A host that resolves to an address that is not public is
    refused before any connection, unless a network of ``allow`` holds that address."""
    conn = _connection(url, timeout, allow)
    if isinstance(conn, Response):
        return conn
    parts = urllib.parse.urlsplit(url)
    # Once the deadline has cut the socket, what http.client makes of the cut depends on where it was
    # (RemoteDisconnected, BadStatusLine('HTTP') for a half-read status line, even a "200" whose headers
    # were cut short), so the attempt's outcome is then the timeout, whatever the request returned or raised.
    # The flag, not the timer thread's liveness: that thread may still be running when the error arrives.
    # A TimeoutError is the same story: the socket's own per-read timeout is the same N s, and on a busy
    # machine it may expire before the timer thread is scheduled.
    expired = threading.Event()

    def expire() -> None:
        expired.set()  # before the cut, so whoever sees the cut finds it set
        _abort(conn)

    timed_out = Response(None, f"no complete answer within {timeout:g} s")
    watchdog = threading.Timer(timeout, expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        conn.request("POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), body, headers)
        answer = conn.getresponse()
        answer.read(65536)
        if expired.is_set():
            return timed_out
        if 200 <= answer.status < 300:
            return Response(answer.status)
        return Response(answer.status, f"HTTP {answer.status} {answer.reason}".strip())
    except Exception as exc:
        if expired.is_set() or isinstance(exc, TimeoutError):
            return timed_out
        if isinstance(exc, (http.client.HTTPException, OSError, ValueError)):
            return Response(None, str(exc) or type(exc).__name__)
        raise
    finally:
        watchdog.cancel()
        conn.close()


def url_for_log(url: str) -> str:
    """Scheme and host only (``https://hooks.example.com/…``): a URL's credentials, path and query often
    are its secret (Slack-style hooks put it in the path), so records and logs never show them."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    with contextlib.suppress(ValueError):
        host += f":{parts.port}" if parts.port else ""
    rest = "/…" if (parts.path not in ("", "/") or parts.query) else ""
    return f"{parts.scheme}://{host}{rest}"


def backoff(attempts: int, first: float, ceiling: float) -> float:
    """Seconds before attempt ``attempts + 1``: ``first``, doubled after each failure, at most ``ceiling``."""
    return min(ceiling, max(0.05, first) * 2 ** min(62, max(0, attempts - 1)))  # (no float overflow)


def dashboard_base(settings: Settings) -> str | None:
    """Where task pages are: CCX_DASHBOARD_URL, else the dashboard of a ``ccx up`` on this Redis."""
    if settings.dashboard_url:
        return settings.dashboard_url.rstrip("/")
    from runner.stack import running_stack

    stack = running_stack() or {}
    url = stack.get("dashboard_url")
    if isinstance(url, str) and url and stack.get("redis_url") == settings.redis_url:
        return url.rstrip("/")
    return None


def body_of(delivery: Delivery, base: str | None) -> bytes:
    """The exact bytes sent and signed: the stored payload with its links to the dashboard."""
    links: dict[str, str] = {}
    if base and delivery.task_id:
        links["task"] = f"{base}/tasks/{delivery.task_id}"
    elif base:
        links["dashboard"] = f"{base}/"
    return orjson.dumps({**delivery.payload, "links": links})


class Deliverer:
    """The queue's webhook deliveries, made by threads of the worker's main process (never a work-horse).

    One thread claims due deliveries and hands them to :data:`DELIVERY_THREADS` senders; it claims only
    as many as there are idle senders, so nothing claimed waits past its lease.
    """

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis | None = None,
        sender: Any = None,
        threads: int = DELIVERY_THREADS,
    ) -> None:
        self.settings = settings
        self.queue = settings.queue
        self.client = client if client is not None else redis_client(settings.redis_url, retries=PATIENT_RETRIES)
        allow = tuple(ipaddress.ip_network(text, strict=False) for text in settings.webhook_allow_networks)
        self.sender = sender if sender is not None else functools.partial(post, allow=allow)
        self.timeout = max(0.1, settings.webhook_timeout)
        self._claim = self.client.register_script(_CLAIM_SCRIPT)
        self._record = self.client.register_script(_RECORD_SCRIPT)
        self._work: queue_lib.Queue[str | None] = queue_lib.Queue()
        self._idle = threads
        self._inflight: set[str] = set()
        self._idle_changed = threading.Condition()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._claim_loop, name="ccx-webhooks", daemon=True)]
        self._threads += [
            threading.Thread(target=self._send_loop, name=f"ccx-webhook-{n}", daemon=True) for n in range(threads)
        ]

    def start(self) -> Deliverer:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop claiming; a POST under way may finish. What is left stays in the outbox for the next worker."""
        self._stop.set()
        for _ in self._threads[1:]:
            self._work.put(None)
        with self._idle_changed:
            self._idle_changed.notify_all()
        self._threads[0].join(timeout)

    def _claim_loop(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                wait = self.dispatch()
                if wait > 0:
                    self.client.blpop([events.webhook_wake_key(self.queue)], timeout=wait)
                failing = False
            except redis.RedisError as exc:
                if not failing:
                    log.warning("queue %s: webhook deliveries wait for Redis (%s)", self.queue, exc)
                failing = True
                self._stop.wait(1.0)
            except Exception as exc:  # a bug here must not end deliveries for good
                log.error("queue %s: webhook deliveries hit an internal error: %r", self.queue, exc)
                self._stop.wait(1.0)

    def dispatch(self) -> float:
        """Hand the due deliveries to idle senders; return how long to wait before looking again."""
        with self._idle_changed:
            while self._idle == 0 and not self._stop.is_set():
                self._idle_changed.wait(1.0)
            free = self._idle
        if self._stop.is_set():
            return 0.0
        reply = self._claim(keys=[events.webhook_due_key(self.queue)], args=[self.timeout + CLAIM_MARGIN, free])
        now, next_due, lease = float(reply[0]), reply[1], reply[2].decode()
        ids = [item.decode() for item in reply[3:]]
        with self._idle_changed:
            # One in flight per delivery: one whose lease ran out while it is still being sent waits.
            ids = [delivery_id for delivery_id in ids if delivery_id not in self._inflight]
            self._inflight.update(ids)
            self._idle -= len(ids)
        for delivery_id in ids:
            self._work.put(f"{delivery_id} {lease}")
        if len(ids) == free:
            return 0.0  # perhaps more are due
        if not next_due:
            return 1.0
        return min(1.0, max(0.01, float(next_due) - now))

    def _send_loop(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            delivery_id, lease = item.split(" ", 1)
            try:
                self.attempt(delivery_id, lease)
            except redis.RedisError as exc:  # the lease runs out and it is claimed again
                log.warning("webhook delivery %s: Redis failed during it (%s); it is tried again", delivery_id, exc)
            except Exception as exc:
                log.error("webhook delivery %s: internal error: %r", delivery_id, exc)
            finally:
                with self._idle_changed:
                    self._inflight.discard(delivery_id)
                    self._idle += 1
                    self._idle_changed.notify_all()

    def attempt(self, delivery_id: str, lease: str = "") -> dict[str, Any] | None:
        """POST one delivery once and record the outcome; return what was recorded (None: nothing to do)."""
        delivery = Delivery.load(self.client, delivery_id)
        if delivery is None:  # expired, or finished by another deliverer meanwhile
            self.client.zrem(events.webhook_due_key(self.queue), delivery_id)
            return None
        body = body_of(delivery, dashboard_base(self.settings))
        secret = queue_secret(self.client, delivery.queue or self.queue)
        headers = request_headers(delivery.event, delivery.id, secret, body, int(time.time()))
        response = self.sender(delivery.url, body, headers, self.timeout)
        seconds, micros = self.client.time()
        now = seconds + micros / 1e6
        return self._outcome(delivery, response, now, lease)

    def _lease_of(self, delivery_id: str) -> str:
        """The delivery's current score, for an attempt made outside :meth:`dispatch` (tests, tools)."""
        score = self.client.zscore(events.webhook_due_key(self.queue), delivery_id)
        return repr(score) if score is not None else "-1"

    def _outcome(self, delivery: Delivery, response: Response, now: float, lease: str = "") -> dict[str, Any]:
        attempts = delivery.attempts + 1
        delay = backoff(attempts, self.settings.webhook_backoff, self.settings.webhook_backoff_max)
        if response.ok:
            status, next_at = DELIVERED, None
        elif response.refused or now + delay - delivery.created > self.settings.webhook_retry_for:
            # A refused destination is given up at once: a retry would only probe the address again.
            status, next_at = FAILED, None
        else:
            status, next_at = RETRYING, now + delay
        outcome: dict[str, Any] = {
            "url": url_for_log(delivery.url),
            "event": delivery.event,
            "delivery": delivery.id,
            "status": status,
            "attempts": attempts,
            "last_status_code": response.status_code,
            "last_error": None if response.ok else response.error,
            "last_attempt_at": events.iso(now),
            "delivered_at": events.iso(now) if response.ok else None,
            "next_attempt_at": events.iso(next_at) if next_at else None,
        }
        record = events.info_key(delivery.task_id) if delivery.task_id else events.webhook_config_key(self.queue)
        self._record(
            keys=[
                events.webhook_delivery_key(delivery.id),
                events.webhook_due_key(self.queue),
                record,
                events.webhook_wake_key(self.queue),
            ],
            args=[
                delivery.id,
                orjson.dumps(outcome),
                "webhook" if delivery.task_id else "last_delivery",
                attempts,
                "" if next_at is None else repr(next_at),
                lease or self._lease_of(delivery.id),
            ],
        )
        if status == FAILED:
            what = f"task {delivery.task_id}" if delivery.task_id else f"queue {self.queue}"
            log.warning(
                "webhook %s for %s to %s failed after %d attempt(s) over %.0f s (last: %s); given up",
                delivery.event,
                what,
                url_for_log(delivery.url),
                attempts,
                now - delivery.created,
                response.error,
            )
        return outcome
