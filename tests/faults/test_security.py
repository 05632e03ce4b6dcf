"""Secrets stay secret; a token-protected handler serves only the worker holding its token."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import stat
import subprocess
import sys
import threading
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
import redis

from runner import keys
from runner.client import Runner
from runner.config import Settings
from runner.errors import RedisUnavailable
from runner.stack import LocalStack, RedisServer, find_redis_server, free_port, pings, terminate
from tests.handler.helpers import ROOT
from tests.runner import test_dashboard
from tests.runner.test_dashboard import signed, start_dashboard
from tests.support.certs import make_certs
from tests.support.netns import Network
from tests.support.other_user import NOBODY, squat
from tests.support.processes import first_line, redis_with_password, stop_all, wait_until

PY = sys.executable
browser_page = test_dashboard.browser_page  # the dashboard tests' headless Chromium fixture


def test_environment_secrets_never_reach_logs_events_or_results(
    redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    """A task's env value (an API key, say) appears in no log line, event or result unless the task prints it."""
    secret = "sk-test-" + uuid.uuid4().hex
    token = "tok-" + uuid.uuid4().hex
    worker_log = tmp_path / "worker.log"
    with (
        worker_log.open("wb") as log,
        LocalStack(redis_url=redis_url, queue=queue_name, handler_token=token, worker_output=log.fileno()) as stack,
    ):
        client = Runner(redis_url=redis_url, queue=queue_name)
        quiet = client.submit(agent="command", argv=[PY, "-c", "print('working')"], env={"MY_API_KEY": secret})
        failing = client.submit(
            agent="command", argv=["no-such-binary-" + uuid.uuid4().hex[:6]], env={"MY_API_KEY": secret}
        )
        assert quiet.result(timeout=30).success and not failing.result(timeout=30).success
        stored = [fields[b"e"] for h in (quiet, failing) for _, fields in client.redis.xrange(keys.log_key(h.id))]
        results = [client.redis.hget(keys.info_key(h.id), "result") for h in (quiet, failing)]
        assert stack.handler is not None
    logs = worker_log.read_bytes()
    for blob in (*stored, *results, logs):
        assert secret.encode() not in blob
        assert token.encode() not in blob
    assert orjson.loads(results[0])["output"] == "working\n"


def test_a_worker_with_the_wrong_token_fails_tasks_with_a_clear_error(redis_url: str, queue_name: str) -> None:
    """The handler rejects a worker whose token is wrong; the task says how to fix it."""
    with LocalStack(
        redis_url=redis_url, queue=queue_name, handler_token="right", env={"CCX_HANDLER_TOKEN": "wrong"}
    ) as stack:
        # LocalStack gives the worker the handler's token; override it for the worker only.
        assert stack.worker is not None
        stack.worker.terminate()
        stack.worker.wait(15)
        stack.handler_token = "wrong"
        stack.start_worker(20)
        result = Runner(redis_url=redis_url, queue=queue_name).submit(agent="command", argv=["true"]).result(timeout=30)
    assert result.success is False
    assert "401" in (result.error or "") and "CCX_HANDLER_TOKEN" in (result.error or "")


# ---- the embedded Redis ---------------------------------------------------------------------


def test_the_embedded_redis_refuses_a_client_without_its_password(tmp_path: Path) -> None:
    """Another local user who can reach the port but not the password file can neither submit nor read."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        stranger = redis.Redis(port=server.port, socket_timeout=5)
        with pytest.raises(redis.AuthenticationError):
            stranger.ping()
        with pytest.raises(RedisUnavailable, match="refused this client's password"):
            # A client that knows no password, told to try anyway (CCX_INSECURE_REDIS): Redis itself refuses it.
            loose = Settings(redis_url=f"redis://127.0.0.1:{server.port}/0", insecure_redis=True)
            Runner(settings=loose).submit(agent="command", argv=["true"])
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port, password="guess", socket_timeout=5).ping()
        assert redis.Redis.from_url(server.url).ping()
        assert server.password not in " ".join(psutil.Process(server.proc.pid).cmdline()), "never on argv (ps)"  # type: ignore[union-attr]
        assert stat.S_IMODE((tmp_path / "redis").stat().st_mode) == 0o700, "its data (every task) is private"
    finally:
        server.stop()


# ---- TLS ------------------------------------------------------------------------------------


def test_a_task_runs_over_wss_with_the_ca_and_fails_clearly_without_it(
    redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    certs = make_certs(tmp_path / "certs")
    tls = {"CCX_HANDLER_TLS_CERT": str(certs.cert), "CCX_HANDLER_TLS_KEY": str(certs.key)}
    with LocalStack(redis_url=redis_url, queue=queue_name, env={**tls, "CCX_HANDLER_CA": str(certs.ca)}) as stack:
        assert stack.handler_url.startswith("wss://127.0.0.1:")
        runner = Runner(redis_url=redis_url, queue=queue_name)
        result = runner.submit(agent="command", argv=[PY, "-c", "print('over tls')"]).result(timeout=60)
        assert (result.success, result.output) == (True, "over tls\n")
    with LocalStack(redis_url=redis_url, queue=queue_name, env=tls) as stack:
        result = runner.submit(agent="command", argv=["true"]).result(timeout=60)
    assert result.success is False
    assert "presented a certificate this worker does not trust" in (result.error or "")
    assert "CCX_HANDLER_CA" in (result.error or "")


def _tls_redis_server() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server with TLS on PATH (./scripts/test installs Debian's redis-server as root)")
    if b"tls-port" not in subprocess.run([binary, "--help"], capture_output=True, timeout=10).stdout + b"tls-port":
        pytest.skip("redis-server lacks TLS")
    return binary


def test_rediss_works_end_to_end_against_a_tls_redis_server(tmp_path: Path, queue_name: str) -> None:
    """Orchestrator, worker and work-horse all speak rediss:// to a TLS-only redis-server, verifying its CA."""
    binary = _tls_redis_server()
    certs = make_certs(tmp_path / "certs")
    port = free_port()
    password = uuid.uuid4().hex
    data = tmp_path / "redis"
    data.mkdir()
    proc = redis_with_password(
        [binary, "-", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
         "--tls-cert-file", str(certs.cert), "--tls-key-file", str(certs.key), "--tls-ca-cert-file", str(certs.ca),
         "--tls-auth-clients", "no", "--save", "", "--appendonly", "no"],
        password,
    )  # fmt: skip
    url = f"rediss://:{password}@127.0.0.1:{port}/0?ssl_ca_certs={certs.ca}"
    try:
        client = redis.Redis.from_url(url, socket_timeout=5)
        wait_until(lambda: pings(client), 20, what="the TLS redis-server")
        with pytest.raises(redis.ConnectionError):  # plain text to a TLS port
            redis.Redis(port=port, password=password, socket_timeout=3).ping()
        unverified = url.split("?", 1)[0]
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
            redis.Redis.from_url(unverified, socket_timeout=5).ping()
        with LocalStack(redis_url=url, queue=queue_name):
            runner = Runner(redis_url=url, queue=queue_name)
            result = runner.submit(agent="command", argv=[PY, "-c", "print('over rediss')"]).result(timeout=60)
            assert (result.success, result.output) == (True, "over rediss\n")
            events_seen = [e["type"] for e in runner.handle(result.id).events(timeout=10)]
            assert events_seen[-1] == "result"
    finally:
        terminate(proc)


# ---- two machines ---------------------------------------------------------------------------

SUBMIT = """
import sys, orjson
from runner.client import Runner
from runner.errors import RedisUnavailable
runner = Runner(redis_url=sys.argv[1], queue=sys.argv[2])
result = runner.submit(agent="command", argv=["sh", "-c", "echo ran on the handler machine"]).result(timeout=60)
print(orjson.dumps(result.to_dict()).decode())
"""


@pytest.mark.timeout(180)
def test_two_machines_the_token_goes_only_over_tls(tmp_path: Path) -> None:
    """Handler on machine A, Redis and worker on machine B (network namespaces joined by a bridge).

    Plain ws:// to A with a token is refused by the worker before it connects; wss:// with
    the CA runs the task on A; CCX_ALLOW_INSECURE=1 is the explicit way back to ws://.
    """
    with Network() as net:
        a, b = net.machine("a"), net.machine("b")
        certs = make_certs(tmp_path / "certs", hosts=(a.address,))
        token = "tok-" + uuid.uuid4().hex
        base = {**{k: v for k, v in os.environ.items() if not k.startswith("CCX_")}, "CCX_CONFIG_DIR": str(tmp_path)}
        handler = worker = redis_proc = None
        try:
            handler = subprocess.Popen(
                a.argv(PY, "-m", "handler", "--host", a.address, "--port", "0", "--allow", "*",
                       "--tls-cert", str(certs.cert), "--tls-key", str(certs.key)),
                env={**base, "CCX_HANDLER_TOKEN": token}, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL, cwd=ROOT,
            )  # fmt: skip
            wss_url = first_line(handler).split(" listening on ", 1)[1].split()[0]
            assert wss_url.startswith(f"wss://{a.address}:")
            ws_url = "ws://" + wss_url[len("wss://") :]
            password = uuid.uuid4().hex
            redis_port = 6390
            redis_proc = redis_with_password(
                b.argv(find_redis_server(), "-", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                       "--appendonly", "no", "--dir", str(tmp_path)),
                password,
            )  # fmt: skip
            redis_url = f"redis://:{password}@127.0.0.1:{redis_port}/0"
            worker_env = {**base, "CCX_REDIS_URL": redis_url, "CCX_HANDLER_TOKEN": token, "CCX_QUEUE": "remote"}

            refused = subprocess.run(
                b.argv(PY, "-m", "runner.cli", "worker", "--burst"),
                env={**worker_env, "CCX_HANDLER_URL": ws_url}, capture_output=True, text=True, timeout=60, cwd=ROOT,
            )  # fmt: skip
            assert refused.returncode == 2, refused
            assert f"Refusing to send the handler token over plain ws:// to {a.address}" in refused.stderr
            assert "Traceback" not in refused.stderr

            worker = subprocess.Popen(
                b.argv(PY, "-m", "runner.cli", "worker"),
                env={**worker_env, "CCX_HANDLER_URL": wss_url, "CCX_HANDLER_CA": str(certs.ca)},
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, cwd=ROOT,
            )  # fmt: skip
            assert "serving queue 'remote'" in first_line(worker, 60)
            done = subprocess.run(
                b.argv(PY, "-c", SUBMIT, redis_url, "remote"), capture_output=True, text=True, timeout=90, cwd=ROOT,
                env=base,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            result = orjson.loads(done.stdout)
            assert (result["success"], result["output"]) == (True, "ran on the handler machine\n")
        finally:
            stop_all(worker, handler, redis_proc)


# ---- a web page -----------------------------------------------------------------------------

EVIL_PAGE = """<!doctype html><html><body><pre id="log"></pre><script>
const log = (line) => { document.getElementById("log").textContent += line + "\\n"; };
function attack(name, url, message) {
  return new Promise((resolve) => {
    let opened = false;
    try {
      const ws = new WebSocket(url);
      ws.onopen = () => { opened = true; ws.send(JSON.stringify(message)); };
      ws.onmessage = (event) => log(name + " answered " + event.data);
      ws.onclose = (event) => { log(name + (opened ? " opened" : " refused") + " " + event.code); resolve(); };
      setTimeout(() => { try { ws.close(); } catch (e) {} resolve(); }, 5000);
    } catch (e) { log(name + " threw " + e); resolve(); }
  });
}
const params = new URLSearchParams(location.search);
Promise.all([
  attack("handler", params.get("handler"),
         {jsonrpc: "2.0", id: 1, method: "execute", params: {argv: ["sh", "-c", "touch " + params.get("marker")]}}),
  attack("dashboard", params.get("dashboard"),
         {op: "submit", req: 1, spec: {agent: "command", argv: ["sh", "-c", "touch " + params.get("marker")]}}),
]).then(() => log("done"));
</script></body></html>"""


@pytest.mark.timeout(120)
def test_a_web_page_from_another_origin_cannot_run_a_command(
    stack: LocalStack, browser_page: Any, tmp_path: Path
) -> None:
    """A page the user visits opens the handler's and the dashboard's WebSockets, the user being logged in
    to the dashboard in the same browser: both are refused, and nothing runs or is queued."""
    from playwright.sync_api import expect

    marker = tmp_path / "pwned"
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(EVIL_PAGE)
    assert stack.redis_url is not None
    board = start_dashboard(stack.redis_url, stack.queue, tmp_path / "dashboard.log")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        page = browser_page
        page.goto(signed(board, board.url))  # the victim is logged in to the dashboard
        expect(page.locator("#conn")).to_have_text("live")
        live = board.url.replace("http://", "ws://") + "live"
        query = urllib.parse.urlencode({"handler": stack.handler_url, "dashboard": live, "marker": str(marker)})
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/index.html?{query}")
        expect(page.locator("#log")).to_contain_text("done", timeout=30_000)
        text = page.locator("#log").inner_text()
        assert "handler refused" in text and "dashboard refused" in text, text
        assert "answered" not in text, text
    finally:
        server.shutdown()
        server.server_close()
        board.stop()
    runner = Runner(redis_url=stack.redis_url, queue=stack.queue)
    assert runner.list() == [], "nothing was queued"
    assert not marker.exists(), "nothing ran"


@pytest.mark.timeout(120)
def test_a_task_under_ccx_up_finds_none_of_the_stacks_secrets_in_its_environment() -> None:
    """Issue 20, item 8: a task printing its whole environment under the local stack (its own Redis with a
    password, the handler's token, the dashboard's token) finds none of them: it cannot read or submit tasks,
    start runs or drive the dashboard with what it inherited."""
    with LocalStack(dashboard_port=0, worker_output=subprocess.DEVNULL) as stack:
        assert stack.redis is not None and stack.handler_token and stack.dashboard_token
        runner = Runner(redis_url=stack.redis_url, queue=stack.queue)
        result = runner.submit(agent="command", argv=["env"]).result(timeout=60)
        assert result.success and "PATH=" in result.output
        for secret in (stack.redis.password, stack.handler_token, stack.dashboard_token):
            assert secret not in result.output
        names = {line.split("=", 1)[0] for line in result.output.splitlines() if "=" in line}
        assert not names & {"CCX_REDIS_URL", "REDIS_URL", "CCX_HANDLER_TOKEN", "CCX_DASHBOARD_TOKEN"}


def test_a_squatter_on_the_handlers_port_gets_no_token_and_the_task_waits_for_the_handler(
    redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    """The handler is down (a restart, a crash) and another local user takes its port. The worker does not send
    the token there: the squatter gets no connection at all; the queue waits, saying who holds the port and
    what to do. The squatter gone and the handler back on its port, the task runs."""
    token = "tok-" + uuid.uuid4().hex
    env = {"CCX_HANDLER_WAIT": "1"}
    with LocalStack(redis_url=redis_url, queue=queue_name, handler_token=token, env=env) as stack:
        assert stack.handler is not None
        port = int(urllib.parse.urlsplit(stack.handler_url).port or 0)
        terminate(stack.handler)
        squatter = squat(port)
        try:
            client = Runner(redis_url=redis_url, queue=queue_name)
            ran = tmp_path / "ran"
            handle = client.submit(agent="command", argv=[PY, "-c", f"open({str(ran)!r}, 'w').write('ran')"])
            paused = wait_until(lambda: client.queue_state().paused and client.queue_state(), 30, what="the pause")
            assert paused.kind == "handler" and paused.reason.startswith(
                f"The handler address {stack.handler_url} is held by a process of another user, nobody "
                f"(uid {NOBODY}), not by the handler: the token was not sent. Find it with `ss -ltnp 'sport = :{port}'`"
            )
            assert handle.status() == "queued" and not ran.exists()
        finally:
            terminate(squatter)  # type: ignore[arg-type]
        assert squatter.stdout is not None
        heard = squatter.stdout.read()
        assert heard == "", f"the squatter was sent: {heard[:300]!r}"
        stack.handler_port = port
        stack.start_handler(20)
        assert handle.result(timeout=30).success and ran.read_text() == "ran"


def test_a_squatter_on_a_local_redis_port_is_never_sent_the_password() -> None:
    """Redis is down (a restart) and another local user holds its port: no client connects there, so the
    password is never sent; the error names who holds the port and what to do."""
    port = free_port()
    squatter = squat(port)
    try:
        client = Runner(redis_url=f"redis://:secret-pw@127.0.0.1:{port}/0", queue="q")
        with pytest.raises(RedisUnavailable) as raised:
            client.ping()
        assert (
            f"The Redis address 127.0.0.1:{port} is held by a process of another user, nobody (uid {NOBODY}), "
            "not by the Redis: the password was not sent." in str(raised.value)
        )
    finally:
        terminate(squatter)  # type: ignore[arg-type]
    assert squatter.stdout is not None
    heard = squatter.stdout.read()
    assert heard == "", f"the squatter was sent: {heard[:300]!r}"
