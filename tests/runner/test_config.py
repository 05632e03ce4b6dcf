"""The Redis URL's transport: a password goes in clear only to this machine, unless the user says otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from handler.config import ConfigError
from runner.config import Settings
from tests.support.netns import Network

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]


def refusal(host: str) -> str:
    return (
        f"Refusing to send the Redis password over plain redis:// to {host}, where anyone on the network could "
        "read it: use a rediss:// URL (Redis with TLS), or set CCX_ALLOW_INSECURE=1 on a network you trust."
    )


def test_a_redis_password_in_clear_to_another_machine_is_refused_and_only_that() -> None:
    """Settings (every way a URL comes in makes one) refuse a password over redis:// off loopback, wherever the
    URL puts it; loopback, unix sockets, rediss://, no password, or CCX_ALLOW_INSECURE are fine. Nothing connects."""
    refused = {
        "redis://:pw@192.0.2.1:6379/0": "192.0.2.1",
        "redis://user:pw@redis.example.com/0": "redis.example.com",
        "redis://192.0.2.1/0?password=pw": "192.0.2.1",
        "redis://:pw@[2001:db8::1]:6379/0": "2001:db8::1",
    }
    for url, host in refused.items():
        with pytest.raises(ConfigError) as caught:
            Settings(redis_url=url)
        assert str(caught.value) == refusal(host), url
        assert Settings(redis_url=url, allow_insecure=True).redis_url == url
    fine = [
        "redis://:pw@127.0.0.1:6379/0",
        "redis://:pw@127.8.9.10/0",
        "redis://:pw@[::1]:6379/0",
        "redis://:pw@localhost/0",
        "unix:///tmp/redis.sock?password=pw",
        "rediss://:pw@192.0.2.1:6380/0",
        "redis://192.0.2.1:6379/0",
    ]
    assert [Settings(redis_url=url).redis_url for url in fine] == fine


LISTENER = """
import socket, sys
server = socket.create_server((sys.argv[1], 0))
print(server.getsockname()[1], flush=True)
with open(sys.argv[2], "ab") as out:
    while True:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(10)
            try:
                data = conn.recv(65536)
            except OSError:
                data = b""
            out.write(b"connection: " + data + b"\\n")
            out.flush()
"""


@pytest.mark.timeout(120)
def test_ccx_sends_no_redis_password_in_clear_to_another_machine(tmp_path: Path) -> None:
    """Machine B points `ccx list` and `ccx worker` at a listener on machine A with redis://:PASSWORD@A: both exit 2
    with the sentence and A never sees a connection; with CCX_ALLOW_INSECURE=1 the password reaches A in clear
    (what an eavesdropper would read). Network namespaces: nothing leaves this host."""
    with Network() as net:
        a, b = net.machine("a"), net.machine("b")
        capture = tmp_path / "seen-by-a"
        capture.touch()
        listener = subprocess.Popen(
            a.argv(PY, "-c", LISTENER, a.address, str(capture)),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            assert listener.stdout is not None
            port = int(listener.stdout.readline())
            password = uuid.uuid4().hex
            base = {k: v for k, v in os.environ.items() if not k.startswith("CCX_") and k != "REDIS_URL"}
            env = {**base, "CCX_CONFIG_DIR": str(tmp_path), "REDIS_URL": f"redis://:{password}@{a.address}:{port}/0"}
            for command in (["list"], ["worker", "--burst"]):
                done = subprocess.run(
                    b.argv(PY, "-m", "runner.cli", *command), env=env, capture_output=True, text=True, timeout=60,
                    cwd=ROOT,
                )  # fmt: skip
                assert (done.returncode, done.stderr) == (2, f"ccx: {refusal(a.address)}\n"), command
            assert capture.read_bytes() == b"", "no connection was even tried"
            insecure = subprocess.run(
                b.argv(PY, "-m", "runner.cli", "list"), env={**env, "CCX_ALLOW_INSECURE": "1"}, capture_output=True,
                timeout=60, cwd=ROOT,
            )  # fmt: skip
            assert insecure.returncode != 0  # A is no Redis
            assert password.encode() in capture.read_bytes()
        finally:
            listener.kill()
            listener.wait()
