"""The Redis URL: there is one only if configured, it has a password (TCP), and that password goes in clear only
to this machine, unless the user says otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest

from handler.config import ConfigError as HandlerConfigError
from handler.secretfile import HANDLER_TOKEN_FILE
from runner.client import Runner
from runner.config import NO_REDIS, Settings, redis_client
from runner.errors import EXIT_USAGE, ConfigError
from runner.stack import terminate
from tests.conftest import no_password
from tests.support.netns import Network
from tests.support.processes import wait_until

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]


def refusal(host: str) -> str:
    return (
        f"Refusing to send the Redis password over plain redis:// to {host}, where anyone on the network could "
        "read it: use a rediss:// URL (Redis with TLS), or set CCX_ALLOW_INSECURE=1 on a network you trust."
    )


def test_a_redis_password_in_clear_to_another_machine_is_refused_and_only_that() -> None:
    """Settings (every way a URL comes in makes one) refuse a password over redis:// off loopback, wherever the
    URL puts it; loopback, unix sockets, rediss://, or CCX_ALLOW_INSECURE are fine. Nothing connects."""
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
    ]
    assert [Settings(redis_url=url).redis_url for url in fine] == fine


def test_a_tcp_redis_url_without_a_password_is_refused_unless_opted_in() -> None:
    """Whoever listens at a Redis URL without a password gets the tasks: Settings refuse it, however the URL comes in
    (constructed, replaced), with one sentence; CCX_INSECURE_REDIS accepts it. A password anywhere in the URL, or a
    unix:// socket (its file's permissions guard it), is fine; the default (no URL) connects nowhere, so it is fine."""
    refused = {
        "redis://127.0.0.1:6379/0": ("127.0.0.1:6379", "redis"),
        "redis://localhost": ("localhost:6379", "redis"),
        "redis://user@127.0.0.1:7000/0": ("127.0.0.1:7000", "redis"),
        "redis://[::1]:7001/0": ("[::1]:7001", "redis"),
        "rediss://redis.example.com:6380/0": ("redis.example.com:6380", "rediss"),
    }
    for url, (where, scheme) in refused.items():
        with pytest.raises(ConfigError) as caught:
            Settings(redis_url=url)
        assert str(caught.value) == no_password(url, where, scheme), url
        with pytest.raises(ConfigError):
            Settings(insecure_redis=True).replace(redis_url=url, insecure_redis=False)
        assert Settings(redis_url=url, insecure_redis=True).redis_url == url
        assert Settings(insecure_redis=True).replace(redis_url=url).redis_url == url
    fine = [
        "redis://:pw@127.0.0.1:6379/0",
        "redis://user:pw@127.0.0.1:6379/0",
        "redis://127.0.0.1:6379/0?password=pw",
        "rediss://:pw@redis.example.com:6380/0",
        "unix:///run/redis/redis.sock",
        "",
    ]
    assert [Settings(redis_url=url).redis_url for url in fine] == fine
    assert Settings().redis_url == "" and Settings().insecure_redis is False


def clean_environment(monkeypatch: pytest.MonkeyPatch, config_dir: Path) -> None:
    """No Redis URL, no opt-in, and a config dir of the test's own (no `ccx up` stack file in it)."""
    for name in ("CCX_REDIS_URL", "REDIS_URL", "CCX_INSECURE_REDIS", "CCX_ALLOW_INSECURE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CCX_CONFIG_DIR", str(config_dir))


def test_every_way_a_url_comes_in_from_the_environment_is_checked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """CCX_REDIS_URL or REDIS_URL without a password: from_env refuses it, CCX_INSECURE_REDIS=1 accepts it; a URL
    given over it (a flag) replaces it unread; a bad opt-in value is one sentence naming the variable."""
    clean_environment(monkeypatch, tmp_path)
    for name in ("CCX_REDIS_URL", "REDIS_URL"):
        monkeypatch.setenv(name, "redis://127.0.0.1:6390/0")
        with pytest.raises(ConfigError) as caught:
            Settings.from_env()
        assert str(caught.value) == no_password("redis://127.0.0.1:6390/0", "127.0.0.1:6390"), name
        assert Settings.from_env(redis_url="redis://:pw@127.0.0.1:6391/0").redis_url == "redis://:pw@127.0.0.1:6391/0"
        monkeypatch.setenv("CCX_INSECURE_REDIS", "1")
        assert Settings.from_env().redis_url == "redis://127.0.0.1:6390/0"
        monkeypatch.delenv("CCX_INSECURE_REDIS")
        monkeypatch.delenv(name)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(redis_url="redis://127.0.0.1:6392/0")
    assert str(caught.value) == no_password("redis://127.0.0.1:6392/0", "127.0.0.1:6392")
    assert Settings.from_env(redis_url="redis://127.0.0.1:6392/0", insecure_redis=True).insecure_redis is True
    monkeypatch.setenv("CCX_INSECURE_REDIS", "perhaps")
    with pytest.raises(ConfigError) as caught:
        Settings.from_env()
    assert str(caught.value) == "CCX_INSECURE_REDIS must be 1 or 0 (true or false), not 'perhaps'."


def test_nothing_configured_is_no_redis_and_connecting_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No URL in the environment and no `ccx up` running: the settings have no Redis (never a default address), and
    a client for it is refused with the one sentence, before any connection."""
    clean_environment(monkeypatch, tmp_path)
    settings = Settings.from_env()
    assert settings.redis_url == ""
    with pytest.raises(ConfigError) as caught:
        redis_client(settings.redis_url)
    assert str(caught.value) == NO_REDIS
    assert NO_REDIS == (
        "No Redis configured: pass --redis-url or set CCX_REDIS_URL, or start a local stack with `ccx up`."
    )


def test_a_setting_the_handlers_helpers_refuse_is_the_runners_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The runner reads numbers, flags and the token file with the handler's helpers, which raise the handler's
    ConfigError (handler/ does not import the runner): the runner's callers get its own, a usage error (exit 2),
    with the same sentence."""
    clean_environment(monkeypatch, tmp_path)
    monkeypatch.delenv("CCX_HANDLER_TOKEN_FILE", raising=False)
    monkeypatch.setenv("CCX_OUTPUT_LIMIT", "lots")
    with pytest.raises(ConfigError) as caught:
        Settings.from_env()
    assert str(caught.value) == "CCX_OUTPUT_LIMIT must be a whole number of at least 1, not 'lots'."
    assert not isinstance(caught.value, HandlerConfigError) and caught.value.exit_status == EXIT_USAGE
    monkeypatch.delenv("CCX_OUTPUT_LIMIT")
    tmp_path.chmod(0o700)
    token_file = tmp_path / HANDLER_TOKEN_FILE
    token_file.write_text("")
    token_file.chmod(0o600)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env().with_local_token()
    assert str(caught.value) == (
        f"The token file {token_file} is empty: put the secret in it, or remove it to have one made."
    )
    assert not isinstance(caught.value, HandlerConfigError)


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


def _first_line(argv: list[str], env: dict[str, str], started: list[subprocess.Popen[bytes]]) -> str:
    """Start a service of the test's own (stopped by the test, by pid) and return the line it prints when ready."""
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    started.append(proc)
    assert proc.stdout is not None
    line = wait_until(lambda: proc.stdout.readline().decode() or proc.poll() is not None, 30, what=argv[2])
    assert isinstance(line, str), f"{argv[2:]} exited with {proc.returncode} before it was ready"
    return line


def test_a_worker_and_the_dashboard_start_from_flags_alone(redis_url: str, queue_name: str, tmp_path: Path) -> None:
    # No CCX_* variable, no REDIS_URL: what the worker and the dashboard need comes from their flags (and, for the
    # handler's token, from the file the handler makes in this machine's config directory, as on any machine).
    env = {name: value for name, value in os.environ.items() if not name.startswith("CCX_") and name != "REDIS_URL"}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "config"))
    started: list[subprocess.Popen[bytes]] = []
    try:
        handler = _first_line([sys.executable, "-m", "handler", "--port", "0", "--allow", "*"], env, started)
        handler_url = handler.split(" listening on ", 1)[1].split()[0]
        worker = _first_line(
            [sys.executable, "-m", "runner.cli", "worker", "--redis-url", redis_url, "--queue", queue_name,
             "--handler-url", handler_url],
            env, started,
        )  # fmt: skip
        assert f"serving queue '{queue_name}'" in worker
        token = uuid.uuid4().hex
        dashboard = _first_line(
            [sys.executable, "-m", "runner.dashboard", "--redis-url", redis_url, "--queue", queue_name,
             "--port", "0", "--token", token],
            env, started,
        )  # fmt: skip
        base = dashboard.split(" on ", 1)[1].split()[0]
        task = Runner(redis_url=redis_url, queue=queue_name).submit(agent="command", argv=["echo", "from flags"])
        assert task.result(timeout=60).output == "from flags\n"
        request = urllib.request.Request(f"{base.rstrip('/')}/api/queue", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            view = json.loads(response.read())
        assert view["queue"] == queue_name
        assert [row["id"] for row in view["recent"]] == [task.id]
    finally:
        for proc in reversed(started):
            terminate(proc)
