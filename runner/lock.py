"""What stops two agents of one queue at once: the queue lock, its fencing token, and each run's lease.

* **The queue lock** (``ccx:worker:<queue>:lock``, a key with a TTL) says which
  worker serves a queue. A thread renews it; the renewal has its own connection
  with short socket timeouts, so a partition or a Redis outage never blocks it.
  When the lock expired while this worker was cut off and nobody took it
  meanwhile, the worker takes it back; only another holder is a real conflict.
* **The fencing token** (``ccx:worker:<queue>:fence``) grows with every
  acquisition, in the same Lua call. Every run carries it to the handler, which
  refuses a run of the queue with an older token and stops the runs it has with
  one, and ``mark_started`` refuses a stale token. So a worker that was paused or
  partitioned past its lock's TTL cannot start an agent next to its successor's,
  whatever the network or the workers' clocks do.
* **Redis losing its data** (no persistence, a failover to an empty replica, a
  new REDIS_URL) must not restart the tokens below those the handler has seen: a
  token is the counter plus one or Redis' clock in milliseconds, whichever is
  more, so it keeps growing as long as Redis' clock does not go back. A holder
  whose lock and fence vanished takes both back with its own token and says so.
* **The run lease** (``ccx:task:<id>:lease``) is renewed by the process that
  relays the run (the work-horse), not by the worker. A task is taken for
  abandoned only once its lease has expired; a new lock holder waits for a live
  lease to end before it starts anything, so the real result of a run whose
  worker merely paused is kept.
* **A dead predecessor in this PID namespace** is taken over at once instead of
  after the TTL. A holder names its host, boot id, PID namespace and pid
  (:func:`process_identity`); only when the first three are ours does its pid mean
  anything here, so a live worker that merely shares our host name (containers of
  one pod, ``network_mode: host``) or a holder in the old ``host:pid:nonce`` form is
  waited out (:func:`holder_is_dead_here`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from typing import NamedTuple

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from runner import keys
from runner.errors import WorkerLocked

log = logging.getLogger("ccx.worker")


# KEYS: lock, fence. ARGV: owner, ttl_ms. Returns the new fencing token, or 0 when the lock is held.
# The token is the counter plus one, or Redis' clock in milliseconds when that is more: a counter that Redis
# lost (no persistence, an empty replica, a new REDIS_URL) starts again above every token issued before it,
# each of which was at most its own issue time (plus the few taken within one millisecond). Milliseconds
# (~1.8e12) are exact in Lua's doubles (2^53) and in '%d'. Redis >= 5 replicates a script by its effects, so
# TIME before a write is allowed.
_ACQUIRE = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
local count = redis.call('INCR', KEYS[2])
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if ms <= count then return count end
redis.call('SET', KEYS[2], string.format('%d', ms))
return ms
"""
# KEYS: lock, fence. ARGV: owner, ttl_ms, fence. 1: renewed; 2: had expired, nobody took it, taken back;
# 3: Redis lost its data (the fence is gone or went back), nobody took it since, taken back with our token;
# 0: lost. Fences only grow, so a fence below ours means lost writes, not a rival: any worker taking the queue
# after the loss gets a token above ours (see _ACQUIRE) and the lock with it.
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
local fence = tonumber(redis.call('GET', KEYS[2]) or '0')
local ours = tonumber(ARGV[3])
if not holder and fence > ours then return 0 end
local outcome = 1
if fence < ours then
  redis.call('SET', KEYS[2], ARGV[3])
  outcome = 3
elseif not holder then
  outcome = 2
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return outcome
"""
# KEYS: lock. ARGV: the value to delete (only if it is still that).
_DELETE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# KEYS: lease, the task's record. ARGV: run id, ttl_ms. Renews the run lease only while the run is still
# the task's current one; a lease that expired while Redis was unreachable is taken again.
RENEW_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if not holder and redis.call('HGET', KEYS[2], 'run') == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
"""


class Holder(NamedTuple):
    """Who holds a lock or a lease: ``host@boot_id/pidns:pid:nonce`` (see :func:`process_identity`)."""

    host: str
    boot_id: str
    pid_namespace: str
    pid: int
    nonce: str

    def __str__(self) -> str:
        return f"{self.host}@{self.boot_id}/{self.pid_namespace}:{self.pid}:{self.nonce}"


_UNKNOWN = "unknown"


def _boot_id() -> str:
    # Tells this boot of the kernel from any other, so a rebooted host (or another machine with our host
    # name) never matches a holder written before.
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip() or _UNKNOWN
    except OSError:
        return _UNKNOWN


def _pid_namespace() -> str:
    # The inode of our PID namespace: unique among the namespaces alive on this boot, so two containers
    # sharing a host name (one pod, hostNetwork, ``network_mode: host``) never look alike. Not cached: a
    # forked child may live in another namespace than its parent (``unshare(CLONE_NEWPID)``).
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return _UNKNOWN


def process_identity(nonce: str | None = None) -> str:
    """This process as a lock or lease holder: ``host@boot_id/pidns:pid:nonce``.

    ``nonce`` (random when omitted, never containing ``:``) tells apart holders of one process. Give the
    string to :func:`holder_is_dead_here` to learn whether its process is provably gone.
    """
    nonce = uuid.uuid4().hex[:8] if nonce is None else nonce
    if ":" in nonce:
        raise ValueError(f"a holder's nonce cannot contain ':' (got {nonce!r})")
    return str(Holder(socket.gethostname(), _boot_id(), _pid_namespace(), os.getpid(), nonce))


def parse_holder(holder: str) -> Holder | None:
    """The parts of a :func:`process_identity` string; None for anything else (the old ``host:pid:nonce`` too)."""
    where, _, rest = holder.partition(":")
    pid, _, nonce = rest.partition(":")
    host, _, namespace = where.partition("@")
    boot_id, _, pid_namespace = namespace.partition("/")
    if not (host and boot_id and pid_namespace and pid.isdigit() and nonce) or ":" in nonce:
        return None
    return Holder(host, boot_id, pid_namespace, int(pid), nonce)


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def _proc_is_ours() -> bool:
    # A /proc mounted for another PID namespace (a container given the host's, ``unshare -p`` without
    # remounting) would answer for the wrong pids: judge nothing then.
    try:
        return os.readlink("/proc/self") == str(os.getpid())
    except OSError:
        return False


def holder_is_dead_here(holder: str) -> bool:
    """True only when ``holder`` provably names a process that is gone, so its lock may be taken at once.

    That takes the holder's host name, boot id and PID namespace all equal to ours (its pid then means the
    same process as in our /proc), and its pid gone or our own. Our own pid is no live rival: either this
    very process (a lock object it dropped) or the last tenant of a namespace inode the kernel reused, which
    it does only once every process of the old namespace is gone. Anything else, the old ``host:pid:nonce``
    without a namespace included, is waited out (its TTL), as is everything when our identity is unknown.
    """
    theirs = parse_holder(holder)
    ours = parse_holder(process_identity())
    if theirs is None or ours is None or _UNKNOWN in (ours.boot_id, ours.pid_namespace):
        return False
    if (theirs.host, theirs.boot_id, theirs.pid_namespace) != (ours.host, ours.boot_id, ours.pid_namespace):
        return False
    return theirs.pid == ours.pid or (_proc_is_ours() and not _pid_alive(theirs.pid))


class QueueLock:
    """The queue's single-worker lock with its fencing token; a thread renews it every third of its TTL."""

    def __init__(self, client: redis.Redis, queue: str, ttl: float) -> None:
        # Its own connection, with timeouts: a renewal must fail fast, never hang on a dead link.
        kwargs = dict(client.connection_pool.connection_kwargs)
        kwargs.update(
            socket_timeout=max(ttl / 4, 0.5), socket_connect_timeout=max(ttl / 4, 0.5), retry=Retry(NoBackoff(), 0)
        )
        kwargs.pop("retry_on_error", None)
        pool_class = client.connection_pool.connection_class
        self.client = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool_class, **kwargs))
        self.queue = queue
        self.key = keys.lock_key(queue)
        self.fence_key = keys.fence_key(queue)
        self.ttl = ttl
        self.ttl_ms = int(ttl * 1000)
        self.owner = process_identity()
        self.fence = 0
        self.lost = threading.Event()
        self.lost_to: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._acquire = self.client.register_script(_ACQUIRE)
        self._renew = self.client.register_script(_RENEW)
        self._delete_if = self.client.register_script(_DELETE_IF)

    def holder(self) -> str | None:
        value = self.client.get(self.key)
        return value.decode() if value else None

    def try_acquire(self) -> bool:
        """Take the lock if it is free, or held by a dead worker of this host; sets :attr:`fence`."""
        fence = int(self._acquire(keys=[self.key, self.fence_key], args=[self.owner, self.ttl_ms]))
        if not fence:
            holder = self.holder()
            if holder and holder_is_dead_here(holder) and self._delete_if(keys=[self.key], args=[holder]):
                log.warning("the previous worker of queue '%s' (%s) is gone; taking over now", self.queue, holder)
                fence = int(self._acquire(keys=[self.key, self.fence_key], args=[self.owner, self.ttl_ms]))
        self.fence = fence or self.fence
        return bool(fence)

    def acquire(self, wait: bool = False, poll: float = 1.0) -> None:
        """Take the lock; with ``wait``, stand by (through Redis outages too) until it can be taken."""
        while True:
            try:
                if self.try_acquire():
                    break
                if not wait:
                    raise WorkerLocked(
                        f"Another worker ({self.holder()}) already serves queue '{self.queue}'; only one worker may "
                        "run per queue. Stop it first, or start this one with --standby to take over when it stops."
                    )
            except redis.RedisError as exc:
                if not wait:
                    raise
                log.warning("standing by: Redis is unreachable (%s); trying again", exc)
            time.sleep(poll)
        self._thread = threading.Thread(target=self._keep, name="ccx-lock", daemon=True)
        self._thread.start()

    def _keep(self) -> None:
        while not self._stop.wait(self.ttl / 3) and self.renew() is not False:
            pass

    def renew(self) -> bool | None:
        """Renew the lock now: True while it is ours, False once it is lost (:attr:`lost` is set, and said),
        None when Redis could not be reached (the next renewal that gets through decides). The thread calls
        it every third of the TTL; the worker also calls it when it finds it may no longer hold the queue."""
        try:
            outcome = self._renew(keys=[self.key, self.fence_key], args=[self.owner, self.ttl_ms, str(self.fence)])
        except redis.RedisError as exc:
            # Cut off from Redis: the run goes on; the handler's fencing keeps us safe if another worker
            # takes over meanwhile.
            log.warning("could not renew the worker lock (%s); the running task goes on", exc)
            return None
        if outcome == 2:
            log.warning("the worker lock had expired while Redis was unreachable; nobody took it, taken back")
        elif outcome == 3:
            log.error(
                "Redis lost its data (the fence of queue '%s' is gone or went back: a restart without "
                "persistence, a failover to an empty or lagging replica, or a flush); nobody took the queue "
                "since, so this worker took its lock back with fencing token %d and goes on serving, but the "
                "tasks recorded before the loss are gone",
                self.queue,
                self.fence,
            )
        elif not outcome:
            if not self.lost.is_set():  # the thread and the worker may both find out: say it once
                self.lost_to = self._holder_or_none()
                log.error(
                    "lost the lock of queue '%s' to %s (this worker was cut off or paused longer than its TTL)",
                    self.queue,
                    self.lost_to or "another worker",
                )
                self.lost.set()
            return False
        return True

    def _holder_or_none(self) -> str | None:
        try:
            return self.holder()
        except redis.RedisError:
            return None

    def release(self) -> None:
        self._stop.set()
        with contextlib.suppress(redis.RedisError):
            self._delete_if(keys=[self.key], args=[self.owner])
