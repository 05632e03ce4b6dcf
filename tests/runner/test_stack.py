"""The stack file of `ccx up`: trusted only while the process it names is alive and this user's."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import orjson
import pytest

from handler.secretfile import write_private
from runner.config import DEFAULT_REDIS_URL, Settings
from runner.stack import running_stack, stack_file

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
        assert Settings.from_env().redis_url == DEFAULT_REDIS_URL
        ours = {**info, "pid": os.getpid()}
        write_private(stack_file(), orjson.dumps(ours).decode() + "\n")
        assert running_stack() == ours
        assert Settings.from_env().redis_url == ours["redis_url"]
    finally:
        assert squatter.stdin is not None
        squatter.stdin.close()
        squatter.wait(10)
