"""Settings shared by the runner's parts, read from the environment, and the Redis client factory."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.connection import parse_url
from redis.retry import Retry

from handler.config import ConfigError as HandlerConfigError
from handler.config import is_loopback, parse_flag, parse_int, parse_port, parse_seconds
from handler.secretfile import config_dir, default_token_file, read_secret
from runner import events
from runner.errors import ConfigError
from runner.listener import redis_guard

NO_REDIS = "No Redis configured: pass --redis-url or set CCX_REDIS_URL, or start a local stack with `ccx up`."
"""Said by whatever needs Redis when none is configured; there is no default address (see :class:`Settings`)."""
DEFAULT_QUEUE = "ccx"
DEFAULT_HANDLER_URL = "ws://127.0.0.1:8765/ws"


@contextmanager
def _handler_parsing() -> Iterator[None]:
    """Around calls of the handler's parsing helpers (handler/config.py, handler/secretfile.py): they raise the
    handler's ConfigError, since handler/ does not import the runner; past here the runner raises only its own."""
    try:
        yield
    except HandlerConfigError as exc:
        raise ConfigError(str(exc)) from None


def _env(*names: str, default: str | None = None) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return default


def _named(*names: str) -> tuple[str | None, str]:
    """The first set variable of ``names``, and its name (for messages)."""
    for name in names:
        value = os.environ.get(name)
        if value:
            return value, name
    return None, names[0]


def check_redis_url(url: str, name: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"{name} must be a redis://, rediss:// or unix:// URL (e.g. redis://127.0.0.1:6379/0), not {redact_url(url)!r}."
        )
    return url


def check_redis_transport(url: str, allow_insecure: bool = False) -> None:
    """Refuse to send a Redis password in clear to another machine: raise :class:`ConfigError` saying what to do.

    The rule of :func:`runner.handler_client.check_transport` for the handler's token: whoever holds the
    password can run tasks. Checked on the URL alone, before any connection is made."""
    if urlsplit(url).scheme != "redis" or allow_insecure:
        return
    try:
        options = parse_url(url)  # redis-py's own reading: the password may be in the query too
    except ValueError:
        return  # not a URL redis-py can use: connecting says so, and sends nothing
    host = options.get("host") or "localhost"  # redis-py's default host
    if options.get("password") and not is_loopback(host):
        raise ConfigError(
            f"Refusing to send the Redis password over plain redis:// to {host}, where anyone on the network could "
            "read it: use a rediss:// URL (Redis with TLS), or set CCX_ALLOW_INSECURE=1 on a network you trust."
        )


def check_redis_password(url: str, insecure_redis: bool = False) -> None:
    """Refuse a Redis reached over TCP without a password: raise :class:`ConfigError` saying what to do.

    Any local user can bind a free port; a Redis that lets anyone in may be theirs, and would receive every task
    sent to it (secrets included) and hand its own jobs to a worker, which runs them as this user. A ``unix://``
    socket is guarded by its file's permissions, so it needs none. Checked on the URL alone, before any connection."""
    if insecure_redis or urlsplit(url).scheme not in ("redis", "rediss"):
        return
    try:
        options = parse_url(url)  # redis-py's own reading: the password may be in the query too
    except ValueError:
        return  # not a URL redis-py can use: connecting says so, and sends nothing
    if options.get("password"):
        return
    host = options.get("host") or "localhost"  # redis-py's defaults
    where = f"{f'[{host}]' if ':' in host else host}:{options.get('port') or 6379}"
    raise ConfigError(
        f"Refusing to use the Redis at {redact_url(url)}: its URL has no password, so whoever listens on {where} "
        "(any user of that machine can bind a free port) would get every task sent there, secrets included, and "
        "could plant jobs for a worker to run as you; give that Redis a password (`requirepass`, then "
        f"{urlsplit(url).scheme}://:PASSWORD@{where}/0), or use `ccx up`, which makes one, "
        "or set CCX_INSECURE_REDIS=1 (or pass --insecure-redis) to use it anyway."
    )


def check_handler_url(url: str, name: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConfigError(f"{name} must be a ws:// or wss:// URL such as ws://127.0.0.1:8765/ws, not {url!r}.")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError(f"{name} has a bad port: {url!r}; use e.g. ws://127.0.0.1:8765/ws.") from None
    return url


def check_http_url(url: str, name: str) -> str:
    """An http(s) URL with a host (a webhook receiver, the dashboard); a bad one raises :class:`ConfigError`."""
    parts = urlsplit(url)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    clean = url.isprintable() and not any(ch.isspace() for ch in url)
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok or not clean:
        raise ConfigError(f"{name} must be an http:// or https:// URL such as https://example.com/hook, not {url!r}.")
    return url


def default_handler_token() -> str | None:
    """The token the handler on this machine made for itself (its private file), if there is one."""

    return read_secret(default_token_file())


@dataclass(frozen=True)
class Settings:
    redis_url: str = ""
    """Empty: none configured. There is no default address: whoever listens on 127.0.0.1:6379 without a password
    could be any local user. Whatever connects says :data:`NO_REDIS` (:func:`redis_client`); ``ccx run`` starts
    its embedded stack instead."""
    queue: str = DEFAULT_QUEUE
    handler_url: str = DEFAULT_HANDLER_URL
    handler_token: str | None = field(default=None, repr=False)
    handler_ca: str | None = None
    """A CA bundle (PEM) that signs the handler's certificate, for ``wss://``; default: the system store."""
    allow_insecure: bool = False
    """Send the handler's token over plain ``ws://``, and the Redis password over plain ``redis://``, to a host
    that is not this machine (CCX_ALLOW_INSECURE)."""
    insecure_redis: bool = False
    """Use a Redis whose TCP URL has no password (CCX_INSECURE_REDIS, ``--insecure-redis``): see
    :func:`check_redis_password`."""
    output_limit: int = 1_000_000
    """Characters of output kept in a result (the tail); the full output stays in the task's log."""
    log_maxlen: int = events.DEFAULT_LOG_MAXLEN
    log_ttl: int = events.DEFAULT_LOG_TTL
    lock_ttl: float = 30.0
    """Seconds the worker's lock outlives its last renewal: how soon a crashed worker can be replaced."""
    interrupted_retries: int = 1
    """Times a task interrupted by the infrastructure (handler or worker stopping or dying) runs again."""
    handler_wait: float = 30.0
    """Seconds a task waits for an unreachable handler (e.g. restarting) before its attempt is interrupted."""
    idempotency_ttl: int = 3600
    """Seconds after a task ends during which a submit with its idempotency key still returns it."""
    pause_margin: float = 5.0
    """Seconds past a usage limit's reset time before the queue goes on: clocks differ by seconds, not minutes
    (a limit met again right after is backed off by the policy, so a short margin costs no loop)."""
    limit_backoff: float = 60.0
    """First pause (seconds) after a 429 with no reset time; doubled each consecutive time."""
    limit_backoff_max: float = 3600.0
    retry_backoff: float = 30.0
    """First wait (seconds) before a task that hit a transient API error runs again; doubled each retry."""
    dashboard_url: str | None = None
    """The dashboard's base URL for links in webhooks (CCX_DASHBOARD_URL); None: a running ``ccx up``'s, if any."""
    webhook_retry_for: float = 3600.0
    """Seconds a webhook delivery is retried before it is given up (CCX_WEBHOOK_RETRY_FOR)."""
    webhook_backoff: float = 1.0
    """Seconds before a failed webhook delivery is tried again, doubled each time (CCX_WEBHOOK_BACKOFF)."""
    webhook_backoff_max: float = 60.0
    webhook_timeout: float = 10.0
    """Seconds a webhook receiver has to answer one POST (CCX_WEBHOOK_TIMEOUT)."""
    webhook_allow_networks: tuple[str, ...] = ()
    agent_binaries: tuple[tuple[str, str], ...] = ()
    """Executables that replace an agent's default, by agent name, from ``CCX_<AGENT>_BIN`` (e.g. CCX_CLAUDE_BIN)."""
    """Networks webhooks may reach although not public, e.g. ``127.0.0.1/32`` (CCX_WEBHOOK_ALLOW_NETWORKS)."""

    def __post_init__(self) -> None:
        # Here, so every way a URL comes in (environment, stack file, flags, Runner(redis_url=...)) is checked, on
        # the URL alone, before anything connects; the default (no URL) never connects, so it passes.
        check_redis_transport(self.redis_url, self.allow_insecure)
        check_redis_password(self.redis_url, self.insecure_redis)

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Settings from the environment, ``overrides`` (e.g. flags; None: not given) over it; a bad value raises
        :class:`ConfigError` naming the variable.

        The Redis URL: ``overrides['redis_url']``, else CCX_REDIS_URL or REDIS_URL, else a running ``ccx up``'s,
        else none (""). A URL that is overridden is not read, so a flag wins over a variable it replaces."""
        given = {name: value for name, value in overrides.items() if value is not None}
        if "redis_url" not in given:
            given["redis_url"] = _redis_url_from_env()
        with _handler_parsing():
            values = _values_from_env()
        return cls(**{**values, **given})

    def agent_binary(self, agent: str) -> str | None:
        """The executable set for ``agent`` (:attr:`agent_binaries`), if any."""
        return dict(self.agent_binaries).get(agent)

    def with_local_token(self) -> Settings:
        """With the token file of this machine's handler when no token was given (the worker's case)."""
        if self.handler_token:
            return self
        with _handler_parsing():
            token = default_handler_token()
        return self.replace(handler_token=token)

    def replace(self, **changes: object) -> Settings:
        """These settings with the given fields changed (None values are ignored: "not given")."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


DEFAULT_DASHBOARD_HOST = "127.0.0.1"
DEFAULT_DASHBOARD_PORT = 8766
DEFAULT_LOG_LEVEL = "INFO"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def log_level(given: str | None = None, name: str = "--log-level") -> str:
    """The logging level: ``given`` (a flag), else CCX_LOG_LEVEL, else INFO; an unknown one raises
    :class:`ConfigError` naming where it came from."""
    level, name = (given, name) if given else (_env("CCX_LOG_LEVEL", default=DEFAULT_LOG_LEVEL), "CCX_LOG_LEVEL")
    if str(level).upper() not in LOG_LEVELS:
        raise ConfigError(f"{name} must be one of {', '.join(LOG_LEVELS)}, not {level!r}.")
    return str(level).upper()


@dataclass(frozen=True)
class DashboardSettings:
    """The dashboard's own settings (the queue and Redis are :class:`Settings`'): see docs/dashboard.md."""

    host: str = DEFAULT_DASHBOARD_HOST
    """Any address but loopback needs a token and TLS (runner/dashboard/server.py says so at start)."""
    port: int = DEFAULT_DASHBOARD_PORT
    port_source: str = "the default"
    """Where the port came from, for the sentence when it is taken."""
    token: str | None = field(default=None, repr=False)
    """None: the private token file, made if missing."""
    tls_cert: str | None = None
    tls_key: str | None = None
    log_level: str = DEFAULT_LOG_LEVEL

    @classmethod
    def from_env(cls, **flags: Any) -> DashboardSettings:
        """Flags (None: not given) over CCX_DASHBOARD_* (and CCX_LOG_LEVEL) over the defaults."""
        values: dict[str, Any] = {
            name: value
            for name, variable in (
                ("host", "CCX_DASHBOARD_HOST"),
                ("token", "CCX_DASHBOARD_TOKEN"),
                ("tls_cert", "CCX_DASHBOARD_TLS_CERT"),
                ("tls_key", "CCX_DASHBOARD_TLS_KEY"),
            )
            if (value := flags.get(name) or _env(variable))
        }
        port, source = (flags.get("port"), "--port") if flags.get("port") is not None else _named("CCX_DASHBOARD_PORT")
        if port is not None:
            with _handler_parsing():
                values.update(port=parse_port(str(port), source), port_source=source)
        return cls(**values, log_level=log_level(flags.get("log_level")))


def parse_networks(text: str, name: str = "CCX_WEBHOOK_ALLOW_NETWORKS") -> tuple[str, ...]:
    """``127.0.0.1/32, 10.0.0.0/8 ::1`` as canonical networks; a bad one raises :class:`ConfigError` naming ``name``.

    A host part is dropped (``10.1.2.3/8`` is ``10.0.0.0/8``): operators write networks either way."""
    networks = []
    for item in text.replace(",", " ").split():
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ConfigError(f"{name} must list networks such as 127.0.0.1/32 or 10.0.0.0/8, not {item!r}.") from None
    return tuple(networks)


AGENT_BINARY = re.compile(r"CCX_([A-Z0-9]+)_BIN")


def _agent_binaries() -> tuple[tuple[str, str], ...]:
    """``CCX_<AGENT>_BIN`` variables (empty: unset), by agent name, whichever agents exist (runner/agents/)."""
    return tuple(
        sorted((found.group(1).lower(), value) for name, value in os.environ.items()
               if value and (found := AGENT_BINARY.fullmatch(name)))
    )  # fmt: skip


def _redis_url_from_env() -> str:
    """CCX_REDIS_URL or REDIS_URL, else the running ``ccx up`` stack's URL, else "" (none: see :class:`Settings`)."""
    redis_url, redis_name = _named("CCX_REDIS_URL", "REDIS_URL")
    if redis_url is not None:
        return check_redis_url(redis_url, redis_name)
    return _running_stack_redis_url() or ""


_PARSED: tuple[tuple[str, str, Any], ...] = (
    # (field, variable, parser): each default lives once, in Settings; a variable that is not set leaves it.
    ("queue", "CCX_QUEUE", lambda value, name: value),
    ("handler_token", "CCX_HANDLER_TOKEN", lambda value, name: value),
    ("handler_ca", "CCX_HANDLER_CA", lambda value, name: value),
    ("handler_url", "CCX_HANDLER_URL", lambda value, name: check_handler_url(value, name)),
    ("output_limit", "CCX_OUTPUT_LIMIT", lambda value, name: parse_int(value, name, 1)),
    ("log_maxlen", "CCX_LOG_MAXLEN", lambda value, name: parse_int(value, name, 1)),
    ("log_ttl", "CCX_LOG_TTL", lambda value, name: parse_int(value, name, 1)),
    ("lock_ttl", "CCX_WORKER_LOCK_TTL", lambda value, name: parse_seconds(value, name, positive=True)),
    ("interrupted_retries", "CCX_INTERRUPTED_RETRIES", lambda value, name: parse_int(value, name, 0)),
    ("idempotency_ttl", "CCX_IDEMPOTENCY_TTL", lambda value, name: parse_int(value, name, 1)),
    ("handler_wait", "CCX_HANDLER_WAIT", parse_seconds),
    ("pause_margin", "CCX_PAUSE_MARGIN", parse_seconds),
    ("limit_backoff", "CCX_LIMIT_BACKOFF", parse_seconds),
    ("limit_backoff_max", "CCX_LIMIT_BACKOFF_MAX", parse_seconds),
    ("retry_backoff", "CCX_RETRY_BACKOFF", parse_seconds),
    ("webhook_retry_for", "CCX_WEBHOOK_RETRY_FOR", parse_seconds),
    ("webhook_backoff", "CCX_WEBHOOK_BACKOFF", parse_seconds),
    ("webhook_backoff_max", "CCX_WEBHOOK_BACKOFF_MAX", parse_seconds),
    ("webhook_timeout", "CCX_WEBHOOK_TIMEOUT", parse_seconds),
    ("allow_insecure", "CCX_ALLOW_INSECURE", parse_flag),
    ("insecure_redis", "CCX_INSECURE_REDIS", parse_flag),
    ("dashboard_url", "CCX_DASHBOARD_URL", lambda value, name: check_http_url(value, name)),
    ("webhook_allow_networks", "CCX_WEBHOOK_ALLOW_NETWORKS", parse_networks),
)


def _values_from_env() -> dict[str, Any]:
    """The fields of :class:`Settings` the CCX_* variables set (all but the Redis URL), checked; an empty
    variable counts as not set."""
    values = {name: parse(value, variable) for name, variable, parse in _PARSED if (value := _env(variable))}
    binaries = _agent_binaries()
    return {**values, "agent_binaries": binaries} if binaries else values


STACK_FILE = "stack.json"
"""While ``ccx up`` runs, where it says how to reach it (a private file: the Redis URL holds the password)."""


def stack_file() -> Path:
    return config_dir() / STACK_FILE


def _running_stack_redis_url() -> str | None:
    """The Redis URL of the ``ccx up`` running on this machine for this user, if one is running."""
    url = (running_stack() or {}).get("redis_url")
    return url if isinstance(url, str) else None


def running_stack() -> dict[str, object] | None:
    """What the stack file of a running ``ccx up`` says (written by :func:`runner.stack.write_stack_file`), if one is running."""
    try:
        text = read_secret(stack_file(), "stack")
        info = orjson.loads(text) if text else None
    except (ValueError, OSError):  # unreadable or not ours: as if no stack ran
        return None
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int):
        return None
    return info if _runs_as_this_user(info["pid"]) else None


def _runs_as_this_user(pid: int) -> bool:
    """True while ``pid`` lives and runs as this user. A stale stack file's pid may have been reused by another
    user's process, which may also squat the old Redis port: trusting it would send that user our password."""
    if pid <= 0:  # 0 and negatives name process groups, not a process
        return False
    try:
        os.kill(pid, 0)
    except (OSError, OverflowError):  # gone, or another user's (the signal is refused), or no pid at all
        return False
    try:
        return os.stat(f"/proc/{pid}").st_uid == os.geteuid()  # root may signal anyone: ask who owns it
    except FileNotFoundError:
        # Gone since, or a system without /proc (macOS), where the signal's answer is all there is.
        return not os.path.isdir("/proc/self")


PATIENT_RETRIES = 1800
"""Retries (backoff capped at 2 s: about an hour in all) for the worker side: it waits out a Redis
restart, outage or partition instead of failing the task that runs (whose output then waits in the pipes)."""
SOCKET_TIMEOUT = 30.0
"""Seconds a reply may take: a half-open connection (a partition) fails and is retried, never hangs."""
QUICK_RETRIES = 2
"""Retries for orchestrator calls: a Redis that is down is reported at once, not after a long wait."""


def configured(url: str) -> str:
    """``url``, where one is configured; else raise :class:`ConfigError` with :data:`NO_REDIS`."""
    if not url:
        raise ConfigError(NO_REDIS)
    return url


def redis_client(url: str, retries: int = QUICK_RETRIES) -> redis.Redis:
    """A bytes-returning client that retries through short outages (no URL: :data:`NO_REDIS`)."""
    return redis.Redis.from_url(
        configured(url),
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=retries),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        socket_connect_timeout=5,
        socket_timeout=SOCKET_TIMEOUT,
        health_check_interval=30,
        driver_info=None,  # skip CLIENT SETINFO: two round trips per new connection
        **redis_guard(url),  # the password goes only to a loopback listener of this user's (runner/listener.py)
    )


def async_redis_client(url: str) -> redis.asyncio.Redis:

    return redis.asyncio.Redis.from_url(
        configured(url),
        retry=AsyncRetry(ExponentialBackoff(cap=2.0, base=0.05), retries=PATIENT_RETRIES),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        socket_connect_timeout=5,
        socket_timeout=SOCKET_TIMEOUT,
        driver_info=None,
        **redis_guard(url, asynchronous=True),
    )


def redact_url(url: str) -> str:
    """``url`` with any password replaced, for messages and logs."""

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"
    return urlunsplit(parts._replace(netloc=netloc))
