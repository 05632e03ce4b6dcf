"""The stack file of `ccx up`: trusted only while the process it names is alive and this user's."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import orjson
import pytest
import redis
from redis.connection import parse_url

from handler.config import ConfigError
from handler.secretfile import write_private
from runner.client import Runner
from runner.config import Settings
from runner.stack import LocalStack, running_stack, stack_file
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
