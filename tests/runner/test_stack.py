"""The stack of `ccx up`: its stack file, trusted only while the process it names is alive and this user's; how
it is watched; and the embedded Redis's password."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import pytest
import redis
from redis.connection import parse_url

from handler.secretfile import write_private
from runner.client import Runner
from runner.config import Settings, running_stack, stack_file
from runner.errors import ConfigError
from runner.stack import (
    LocalStack,
    StackError,
    stack_for_up,
    supervise,
    terminate,
)
from tests.conftest import no_password

NOBODY = 65534


@pytest.mark.timeout(30)
def test_a_stack_file_whose_pid_is_another_users_process_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ccx up` died and its pid now belongs to another user's process (who may squat its Redis port): the file
    says nothing, so no client sends the stack's password there; with a live pid of ours it is used."""
    if os.geteuid() != 0:
        pytest.skip("running a process as another user (nobody) needs root")
    monkeypatch.setenv("CCX_CONFIG_DIR", str(tmp_path))
    squatter = subprocess.Popen(
        ["cat"], user=NOBODY, group=NOBODY, extra_groups=[], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
    )  # lives until its stdin closes
    try:
        assert os.stat(f"/proc/{squatter.pid}").st_uid == NOBODY
        info = {"pid": squatter.pid, "redis_url": "redis://:stack-password@127.0.0.1:6399/0", "queue": "ccx"}
        write_private(stack_file(), orjson.dumps(info).decode() + "\n")
        assert running_stack() is None
        assert Settings.from_env().redis_url == ""  # no Redis configured: never a default address
        ours = {**info, "pid": os.getpid()}
        write_private(stack_file(), orjson.dumps(ours).decode() + "\n")
        assert running_stack() == ours
        assert Settings.from_env().redis_url == ours["redis_url"]
    finally:
        assert squatter.stdin is not None
        squatter.stdin.close()
        squatter.wait(10)


def test_a_running_stack_that_names_a_redis_without_a_password_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stack file is one more way a URL comes in: one without a password is refused like any other (a `ccx up`
    of ours always writes one with its password), unless CCX_INSECURE_REDIS=1."""
    for name in ("CCX_REDIS_URL", "REDIS_URL", "CCX_INSECURE_REDIS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CCX_CONFIG_DIR", str(tmp_path))
    url = "redis://127.0.0.1:6399/0"
    write_private(stack_file(), orjson.dumps({"pid": os.getpid(), "redis_url": url, "queue": "ccx"}).decode() + "\n")
    with pytest.raises(ConfigError) as caught:
        Settings.from_env()
    assert str(caught.value) == no_password(url, "127.0.0.1:6399")
    monkeypatch.setenv("CCX_INSECURE_REDIS", "1")
    assert Settings.from_env().redis_url == url


@pytest.mark.timeout(120)
def test_the_embedded_stack_redis_has_a_password_of_its_own(tmp_path: Path, queue_name: str) -> None:
    """`LocalStack()` (what `ccx run` starts with nothing configured) runs Redis with a random password: its URL
    carries it, a client without it is refused, and a task runs through it."""
    with LocalStack(queue=queue_name) as stack:
        options = parse_url(stack.redis_url or "")
        assert len(options.get("password") or "") >= 32
        stranger = redis.Redis(port=options["port"], socket_timeout=5)
        with pytest.raises(redis.AuthenticationError):
            stranger.ping()
        stranger.close()
        runner = Runner(redis_url=stack.redis_url, queue=queue_name)
        assert runner.submit(agent="command", argv=["echo", "own"]).result(timeout=60).output == "own\n"
        runner.redis.close()


def test_watching_the_stack_names_the_part_that_exited_and_ends_when_asked() -> None:
    """`ccx up` watches its children: the first that exits ends the watch, by name and exit code; asked to stop,
    the watch returns."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    quitter = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    stack = LocalStack(handler=sleeper, worker=quitter)
    try:
        with pytest.raises(StackError, match=r"^The worker exited unexpectedly \(code 3\); stopping the stack\.$"):
            stack.watch(threading.Event())
        stopping = threading.Event()
        stopping.set()
        stack.worker = None
        stack.watch(stopping)  # returns at once: nothing to wait for
    finally:
        terminate(sleeper)


@pytest.mark.timeout(30)
def test_a_stack_that_cannot_start_is_not_announced_and_leaves_no_stack_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ccx up` on a busy Redis port: supervise raises the one sentence, never says ready or stopped, and no client
    finds a stack file pointing at it."""
    monkeypatch.setenv("CCX_CONFIG_DIR", str(tmp_path / "config"))
    said: list[str] = []
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        stack = stack_for_up(
            redis_url=None,
            redis_port=port,
            data_dir=tmp_path / "data",
            handler_port=0,
            handler_token=None,
            allow="*",
            queue="ccx",
            dashboard_port=None,
        )
        with pytest.raises(StackError, match=f"Port {port} for the embedded Redis is in use"):
            supervise(
                stack,
                threading.Event(),
                on_ready=lambda path: said.append(f"ready {path}"),
                on_stopped=lambda: said.append("stopped"),
            )
    assert said == []
    assert not stack_file().exists()
