"""The handler's watchdog: when the handler dies, however it dies, the runs it started die too.

Why: a handler that stops normally stops every run itself (``Handler.stop_all``), but one
killed with SIGKILL (or by the OOM killer, or a crash) cannot. Its runs, each in a session of
its own, used to keep running until a restarted handler swept them
(:func:`handler.proctree.kill_orphans` at start). Meanwhile a task's process could finish its
work with nobody left to record the outcome, and the worker ran the task a second time: a task
that "ended twice". The project's rule is "no orphans: whatever a task starts is gone when it
ends, however it ends", so the handler starts this small process as it starts serving.

How: the watchdog is a fresh interpreter (not a fork of the asyncio process) that holds the
read end of a pipe whose write end only the handler holds (close-on-exec, so no run inherits
it). Whatever kills the handler, the kernel closes that write end: the watchdog reads EOF at
once, waits for the handler to have exited, and stops every run the handler had started,
found by their ``CCX_RUN_ID`` marker (``<handler pid>-<random>``), with SIGTERM, then SIGKILL
after the handler's grace, just as a restarted handler would. On a normal stop the handler
first writes one byte (a goodbye): it has stopped its runs itself, so the watchdog just exits.
Either way the watchdog exits on its own; it never outlives the handler by more than a sweep.

The watchdog holds none of the handler's descriptors (no listening socket, no client, no run's
pipe; its stdout and stdin are /dev/null, its stderr is the handler's log), runs in a session
of its own (a Ctrl-C meant for the handler does not kill it first), and carries no
``CCX_RUN_ID`` (no sweep takes it for a run). It is a plain child of the handler: the handler
only ever waits for the pids of its own runs, so the watchdog never confuses their bookkeeping.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import select
import subprocess
import sys
import time

from handler import proctree

log = logging.getLogger("ccx.handler.watchdog")

GOODBYE = b"."
"""Written by the handler on a normal stop, before it closes the pipe: there is nothing to sweep."""
READY = b"watching\n"
"""Printed by the watchdog once it is watching, so the handler knows it started."""
START_TIMEOUT = 10.0
"""Seconds the handler waits for the watchdog to say it is watching."""
EXITED_TIMEOUT = 5.0
"""Seconds the watchdog waits, after EOF, for the handler to have exited (it closes its files first)."""


class Watchdog:
    """The handler's end: the watchdog process and the write end of its pipe."""

    def __init__(self, proc: subprocess.Popen[bytes], write_fd: int) -> None:
        self.proc = proc
        self._write_fd = write_fd

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def stop(self, timeout: float = 5.0) -> None:
        """A normal stop (the runs are stopped already): say goodbye, close the pipe, reap the watchdog."""
        if self._write_fd >= 0:
            fd, self._write_fd = self._write_fd, -1
            with contextlib.suppress(OSError):  # the watchdog is gone already: nothing to tell it
                os.write(fd, GOODBYE)
            os.close(fd)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:  # waits for this pid only, like the runs' own reaping
            if time.monotonic() > deadline:
                log.warning("the watchdog (pid %d) did not exit after the goodbye; killing it", self.proc.pid)
                self.proc.kill()
                self.proc.wait()
                break
            await asyncio.sleep(0.01)


def _environment() -> dict[str, str]:
    """The handler's environment without the run marker (and the token, should it still be there)."""
    env = dict(os.environ)
    env.pop(proctree.MARKER_VAR, None)  # a handler started by a run carries its marker: the watchdog must not
    env.pop("CCX_HANDLER_TOKEN", None)
    return env


def _said_ready(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Whether the watchdog printed :data:`READY`, then closed its stdout, within ``timeout`` seconds."""
    assert proc.stdout is not None
    said = b""
    deadline = time.monotonic() + timeout
    with proc.stdout:
        while len(said) <= len(READY):
            if not select.select([proc.stdout], [], [], max(deadline - time.monotonic(), 0))[0]:
                return False
            chunk = os.read(proc.stdout.fileno(), 64)
            if not chunk:  # EOF: it keeps no pipe to the handler but the watched one
                break
            said += chunk
    return said == READY


def start(grace: float, timeout: float = START_TIMEOUT) -> Watchdog | None:
    """Start the watchdog of this process; None, with a warning, if it cannot start (serving goes on:
    a restarted handler still sweeps what a dead one left). Blocks until the watchdog is watching,
    a fraction of a second, once, before the handler serves."""
    read_fd, write_fd = os.pipe()  # both close-on-exec: no run, no other child inherits either end
    argv = [sys.executable, "-m", "handler.watchdog", "--handler-pid", str(os.getpid())]
    argv += ["--fd", str(read_fd), "--grace", repr(grace)]
    try:
        proc = subprocess.Popen(
            argv,
            pass_fds=(read_fd,),
            close_fds=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            env=_environment(),
            start_new_session=True,
        )
    except (OSError, ValueError) as exc:
        os.close(write_fd)
        log.warning("could not start the watchdog (%s): a SIGKILLed handler would leave its runs running", exc)
        return None
    finally:
        os.close(read_fd)
    if not _said_ready(proc, timeout):
        proc.kill()
        proc.wait()
        os.close(write_fd)
        log.warning(
            "the watchdog did not start (exit status %s): a SIGKILLed handler would leave its runs running",
            proc.returncode,
        )
        return None
    log.info("watchdog started (pid %d)", proc.pid)
    return Watchdog(proc, write_fd)


# --------------------------------------------------------------------------- the watchdog process


def _wait_exited(pid: int, timeout: float) -> bool:
    """Wait for ``pid`` to have exited (a zombie counts); False if it still runs after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while proctree.is_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return True


def watch(fd: int, handler_pid: int, grace: float) -> int:
    """Block until the handler says goodbye or dies; after a death, stop its runs. Returns the exit status."""
    said = os.read(fd, 1)  # EOF (b"") once no process holds the write end: the handler is gone
    os.close(fd)
    if said:
        return 0  # a normal stop: the handler stopped its runs itself
    if not _wait_exited(handler_pid, EXITED_TIMEOUT):
        log.warning(
            "the handler (pid %d) closed the watchdog's pipe but still runs; leaving its runs to it", handler_pid
        )
        return 1
    stopped = asyncio.run(proctree.kill_orphans(grace, owner=handler_pid))
    log.warning("the handler (pid %d) died; stopped %d process(es) it had started", handler_pid, stopped)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m handler.watchdog", description="Stop a handler's runs as soon as the handler dies."
    )
    parser.add_argument("--handler-pid", type=int, required=True, help="the handler to watch")
    parser.add_argument("--fd", type=int, required=True, help="read end of the pipe only the handler writes to")
    parser.add_argument("--grace", type=float, required=True, help="seconds between SIGTERM and SIGKILL")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    ready = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # keep no pipe to the handler but the watched one; it reads READY up to EOF
    os.close(devnull)
    os.write(ready, READY)
    os.close(ready)
    return watch(args.fd, args.handler_pid, args.grace)


if __name__ == "__main__":
    sys.exit(main())
