"""The handler's watchdog (handler/watchdog.py): a SIGKILLed handler's runs die at once, not at its restart.

Real processes throughout: ``python -m handler`` on an ephemeral loopback port with a token of
its own, a task started over a real WebSocket that starts a grandchild escaping its process
group and session and ignoring SIGTERM, and a real SIGKILL. Nobody restarts the handler here,
so only the watchdog can stop the task. Every wait has a deadline; whatever a test starts,
its teardown stops by pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.handler.helpers import PY, Client, HandlerProcess, arun, eventually, marked_token
from tests.support.processes import children_of, pid_alive, pids_with_marker, wait_until

pytestmark = pytest.mark.timeout(60)

TASK = r"""
import os, signal, subprocess, sys, time
child_file, grandchild_file, token = sys.argv[1:4]
def write_pid(path):
    with open(path + ".tmp", "w") as handle:
        handle.write(str(os.getpid()))
    os.rename(path + ".tmp", path)
# The grandchild leaves the run's process group and session and shrugs off SIGTERM: only the
# run's marker finds it, only SIGKILL stops it.
GRANDCHILD = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    + "with open(sys.argv[1] + '.tmp', 'w') as h: h.write(str(os.getpid()))\n"
    + "os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n"
    + "time.sleep(1000)\n"
)
subprocess.Popen([sys.executable, "-c", GRANDCHILD, grandchild_file, token], start_new_session=True)
write_pid(child_file)
time.sleep(1000)
"""


def watchdogs_of(handler_pid: int) -> list[int]:
    """The live children of the handler that are its watchdog."""
    found = []
    for pid in children_of(handler_pid):
        with contextlib.suppress(OSError):
            if b"handler.watchdog" in Path(f"/proc/{pid}/cmdline").read_bytes() and pid_alive(pid):
                found.append(pid)
    return found


def read_pid(path: Path) -> int | None:
    return int(path.read_text()) if path.exists() else None


@pytest.fixture
def start_handler(tmp_path: Path) -> Iterator[Callable[..., HandlerProcess]]:
    """Start ``python -m handler`` (ready to serve); teardown stops each, and SIGKILLs any watchdog it left."""
    started: list[HandlerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> HandlerProcess:
        handler = HandlerProcess("--allow", "*", *args, log=tmp_path / f"handler-{len(started)}.log", env=env)
        started.append(handler)
        handler.wait_ready()
        return handler

    try:
        yield start
    finally:
        for handler in started:
            handler.stop()
            # Its watchdog, found by its argv ("--handler-pid <pid>"), should it have outlived it.
            for pid in pids_with_marker(f"--handler-pid\0{handler.proc.pid}\0"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_a_sigkilled_handlers_task_and_its_escaped_grandchild_are_stopped_at_once(
    start_handler: Callable[..., HandlerProcess], tmp_path: Path
) -> None:
    """SIGKILL leaves the handler no chance to stop its runs; its watchdog stops them within the grace
    (1 s here, then SIGKILL for the grandchild that ignores SIGTERM), and exits itself."""
    child_file, grandchild_file = tmp_path / "child.pid", tmp_path / "grandchild.pid"
    handler = start_handler("--grace", "1")
    handler_pid = handler.proc.pid
    dogs = watchdogs_of(handler_pid)

    async def scenario() -> tuple[int, int, float]:
        client = await Client.connect(handler.url, handler.token)
        try:
            await client.execute(1, [PY, "-c", TASK, str(child_file), str(grandchild_file), token])
            started = await client.next_for(1)
            while started.get("method") == "process.queued":
                started = await client.next_for(1)
            assert started.get("method") == "process.started", started
            pids = await eventually(
                lambda: read_pid(child_file) and read_pid(grandchild_file) and (child_file, grandchild_file),
                15,
                what="the task and its grandchild to write their pids",
            )
            child, grandchild = (read_pid(path) or 0 for path in pids)
            assert child == started["params"]["pid"] and pid_alive(grandchild)
            os.kill(handler_pid, signal.SIGKILL)  # not reaped here: a dead handler may stay a zombie a while
            return child, grandchild, time.monotonic()
        finally:
            with contextlib.suppress(Exception):
                await client.close()

    with marked_token() as token:
        child, grandchild, killed_at = arun(scenario())
        wait_until(
            lambda: not pid_alive(child) and not pid_alive(grandchild),
            5,
            what="the dead handler's task and grandchild to be stopped (nobody restarts the handler)",
        )
        assert time.monotonic() - killed_at < 5
    assert dogs, "the handler had no watchdog"
    wait_until(lambda: not any(pid_alive(pid) for pid in dogs), 5, what="the watchdog to exit after its sweep")
    line = f"the handler (pid {handler_pid}) died; stopped 2 process(es) it had started"
    wait_until(lambda: line in handler.log_text(), 5, what="the watchdog's log line")


def test_a_normal_stop_leaves_no_watchdog_behind(start_handler: Callable[..., HandlerProcess]) -> None:
    """SIGTERM: the handler stops its own runs, says goodbye to its watchdog and reaps it before it exits."""
    handler = start_handler()
    dogs = watchdogs_of(handler.proc.pid)
    assert len(dogs) == 1, f"expected one watchdog, found {dogs}"

    async def scenario() -> None:
        async with await Client.connect(handler.url, handler.token) as client:
            assert (await client.run(1, [PY, "-c", "print('hi')"])).output() == "hi\n"

    arun(scenario())
    assert handler.stop() == 0
    wait_until(lambda: not pid_alive(dogs[0]), 5, what="the watchdog to exit with the handler")
    assert "died" not in handler.log_text()


def test_the_watchdog_holds_no_socket_and_no_run_marker(
    start_handler: Callable[..., HandlerProcess], tmp_path: Path
) -> None:
    """A handler started by a run carries that run's marker; its watchdog must not (a sweep would take it
    for a run), nor hold the listening socket or any other descriptor but its pipe and the log."""
    marker = f"CCX_RUN_ID={os.getpid()}-outer-run"
    handler = start_handler(env={"CCX_RUN_ID": marker.split("=", 1)[1]})
    assert marker.encode() in Path(f"/proc/{handler.proc.pid}/environ").read_bytes()
    (dog,) = watchdogs_of(handler.proc.pid)
    assert b"CCX_RUN_ID=" not in Path(f"/proc/{dog}/environ").read_bytes()
    fds = {int(fd): os.readlink(f"/proc/{dog}/fd/{fd}") for fd in os.listdir(f"/proc/{dog}/fd")}
    assert not [target for target in fds.values() if target.startswith("socket:")], fds
    assert fds[0] == fds[1] == os.devnull and fds[2] == str(tmp_path / "handler-0.log"), fds
    assert len(fds) == 4 and sum(target.startswith("pipe:") for target in fds.values()) == 1, fds
    assert os.getsid(dog) == dog != os.getsid(handler.proc.pid)
