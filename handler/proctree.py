"""Finding and killing every process a run started, including escapees.

A process group is not enough: agent CLIs start tool commands with ``setsid``,
``nohup ... &`` or a double fork, which leave the group and get re-parented to
init. Every run therefore carries a marker variable in its environment
(inherited by all descendants unless one deliberately clears its environment),
and the tree is found by scanning ``/proc`` for the marker as well as for
plain descendants by parent pid. Linux only, which is where the handler runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import time
import uuid

MARKER_VAR = "CCX_RUN_ID"
_PROC = "/proc"
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: signal.Signals) -> bool:
    """Have the kernel send ``sig`` to this process when its parent dies (even by SIGKILL): what a worker's
    work-horse and a stack's parts use so that nothing they run outlives them. False if the parent was already
    gone (this process now belongs to init)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    return os.getppid() != 1


def new_run_token() -> str:
    """A fresh marker value: ``<handler pid>-<random>``, so a later handler can tell whose runs are orphans."""
    return f"{os.getpid()}-{uuid.uuid4().hex}"


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:  # the process ended, or is not ours to read
        return b""


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, parent pid, process group, session) of a process, or None once it is gone."""
    raw = _read(f"{_PROC}/{pid}/stat")
    if not raw:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rfind(b")") + 2 :].split()
    return fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[3])


def _last_pid() -> int | None:
    try:
        with open(f"{_PROC}/sys/kernel/ns_last_pid", "rb") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return None


def _candidates(root_pid: int | None, recent_only: bool) -> list[int]:
    """Pids worth a look. With ``recent_only``, only those allocated since ``root_pid`` was.

    Everything a run starts is forked after its root, so its pid lies in the cyclic
    interval [root_pid, last allocated pid] (pids wrap at pid_max, 32768 by default).
    The kernel's last-pid counter is read after listing /proc, so every listed pid was
    allocated before it. Only sound while the run is too short for pids to go all the
    way round, so callers pass ``recent_only`` for short runs alone.
    """
    pids = [int(name) for name in os.listdir(_PROC) if name.isdigit()]
    last = _last_pid() if recent_only and root_pid is not None else None
    if last is None or root_pid is None:
        return pids
    if last >= root_pid:
        return [pid for pid in pids if root_pid <= pid <= last]
    return [pid for pid in pids if pid >= root_pid or pid <= last]


def find_run_processes(run_token: str, root_pid: int | None = None, recent_only: bool = False) -> set[int]:
    """Pids of live processes marked with ``run_token``, descending from ``root_pid``, or in
    its process group or session (the run's root starts both).

    ``recent_only`` (for runs of a few seconds) looks only at pids allocated since
    ``root_pid``: a trivial run then costs a handful of reads instead of two per process.
    """
    marker = f"{MARKER_VAR}={run_token}\0".encode()
    me = os.getpid()
    found: set[int] = set()
    children: dict[int, list[int]] = {}
    for pid in _candidates(root_pid, recent_only):
        if pid == me:
            continue
        stat = _stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            continue
        children.setdefault(stat[1], []).append(pid)
        if root_pid is not None and root_pid in (stat[2], stat[3]):
            found.add(pid)
            continue
        environ = _read(f"{_PROC}/{pid}/environ")
        if environ.startswith(marker) or b"\0" + marker in environ:
            found.add(pid)
    if root_pid is not None:
        stack = [root_pid]
        while stack:
            for child in children.get(stack.pop(), ()):
                if child not in found:
                    found.add(child)
                    stack.append(child)
    return found


def _signal_all(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:  # pid reused by another user's process since the scan
            pass


def is_alive(pid: int) -> bool:
    """True while ``pid`` exists and has not exited (a zombie, not yet reaped by its parent, has)."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


async def kill_run(run_token: str, pgid: int | None, grace: float, recent_only: bool = False) -> int:
    """SIGTERM the whole tree, wait up to ``grace`` seconds, then SIGKILL what is left.

    Returns how many processes were signalled. Survivors of SIGTERM are looked
    up again before SIGKILL, so processes forked during the grace period die too.
    """
    if pgid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    pids = find_run_processes(run_token, pgid, recent_only)
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    delay = 0.005
    while time.monotonic() < deadline:
        pids = {pid for pid in pids if is_alive(pid)}
        if not pids and (pgid is None or not is_alive(pgid)):
            break
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)
    signalled = len(pids)
    # Final sweep: anything still marked (including children forked meanwhile) is killed outright.
    for _ in range(3):
        if pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        survivors = find_run_processes(run_token, pgid, recent_only)
        if not survivors:
            break
        signalled += len(survivors)
        _signal_all(survivors, signal.SIGKILL)
        await asyncio.sleep(0.01)
    return signalled


def find_orphans(owner: int | None = None) -> dict[int, str]:
    """Marked processes whose handler is gone (it was killed before it could stop them): pid → token.

    A handler that has exited counts as gone even while it is a zombie its parent has not reaped yet.
    With ``owner``, only the runs of the handler whose pid that was.
    """
    prefix = f"{MARKER_VAR}=".encode()
    orphans: dict[int, str] = {}
    for name in os.listdir(_PROC):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        environ = _read(f"{_PROC}/{name}/environ")
        start = environ.find(prefix)
        if start < 0 or (start > 0 and environ[start - 1] != 0):
            continue
        token = environ[start + len(prefix) : environ.find(b"\0", start)].decode(errors="replace")
        handler = token.split("-", 1)[0]
        if not handler.isdigit() or (owner is not None and int(handler) != owner):
            continue
        if not is_alive(int(handler)) and is_alive(int(name)):
            orphans[int(name)] = token
    return orphans


async def kill_orphans(grace: float, owner: int | None = None) -> int:
    """Stop every run left behind by a handler that died (only by handler ``owner`` if given);
    returns how many processes were found."""
    orphans = find_orphans(owner)
    for token in set(orphans.values()):
        await kill_run(token, None, grace)
    return len(orphans)
