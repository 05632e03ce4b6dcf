"""docker-compose.yml and the Dockerfile, checked by structure (no Docker engine runs here)."""

from __future__ import annotations

import base64
import os
import re
import secrets
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
import yaml
from click.testing import CliRunner

from runner.cli import main as ccx
from runner.client import Runner
from runner.stack import RedisServer, free_port
from tests.support.processes import wait_until

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def code_env_names() -> set[str]:
    """Every environment variable the project's code reads (names are string literals)."""
    names: set[str] = set()
    for path in [*ROOT.glob("runner/**/*.py"), *ROOT.glob("handler/**/*.py")]:
        names |= set(re.findall(r"\"((?:CCX|REDIS)_[A-Z_]+|REDIS_URL)\"", path.read_text()))
    return names


def test_the_stack_has_redis_handler_worker_and_dashboard() -> None:
    assert set(SERVICES) >= {"redis", "handler", "worker", "dashboard"}
    assert "--appendonly" in SERVICES["redis"]["command"]
    assert any(volume.endswith(":/data") for volume in SERVICES["redis"]["volumes"])


def test_ccx_services_run_real_subcommands() -> None:
    for name in ("handler", "worker", "dashboard"):
        command = SERVICES[name]["command"]
        result = CliRunner().invoke(ccx, [command[0], "--help"])
        assert result.exit_code == 0, f"{name}: `ccx {command[0]}` is not a ccx command"


def test_environment_variables_are_the_ones_the_code_reads() -> None:
    known = code_env_names()
    for name in ("handler", "worker", "dashboard"):
        for variable in SERVICES[name].get("environment", {}):
            if variable.startswith(("CCX_", "REDIS_")):
                assert variable in known, f"{name} sets {variable}, which the code never reads"


def test_health_checks_and_start_order() -> None:
    assert "healthcheck" in SERVICES["redis"] and "healthcheck" in SERVICES["handler"]
    assert "/healthz" in " ".join(SERVICES["handler"]["healthcheck"]["test"])
    depends = SERVICES["worker"]["depends_on"]
    assert depends["redis"]["condition"] == depends["handler"]["condition"] == "service_healthy"


def test_only_loopback_ports_are_published_and_the_exposed_handler_needs_a_token() -> None:
    for service in SERVICES.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port
    assert "CCX_HANDLER_TOKEN" in SERVICES["handler"]["environment"]
    assert "--requirepass" in SERVICES["redis"]["command"], "Redis needs a password"
    assert "${CCX_REDIS_PASSWORD" in SERVICES["worker"]["environment"]["REDIS_URL"]
    assert "--json" in " ".join(SERVICES["rq-dashboard"]["command"])  # rq-dashboard must read our JSON jobs
    assert "six" in " ".join(SERVICES["rq-dashboard"]["command"])  # it imports six without declaring it
    assert "CCX_DASHBOARD_TOKEN" in SERVICES["dashboard"]["environment"]


def test_the_image_installs_the_project_and_the_claude_cli() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "@anthropic-ai/claude-code" in dockerfile and "pip install" in dockerfile
    assert 'ENTRYPOINT ["ccx"]' in dockerfile


def test_every_service_comes_back_by_itself() -> None:
    """A crash or a host reboot must not leave the queue without its worker (or Redis, or the handler)."""
    for name, service in SERVICES.items():
        assert service.get("restart") in ("unless-stopped", "always"), f"{name} has no restart policy"


@pytest.mark.timeout(120)
def test_the_compose_rq_dashboard_wants_a_login_cannot_empty_the_queue_and_hides_the_password(
    tmp_path: Path,
) -> None:
    """The rq-dashboard service run as compose configures it (its flags and environment, against a real Redis
    with a password): a request without the login gets 401 (a DNS-rebinding page or another local user reads
    nothing); with it, emptying the queue is refused and the task stays; the password is on no command line."""
    service = SERVICES["rq-dashboard"]
    argv = shlex.split(service["command"][-1].split("&& exec ", 1)[1])
    assert argv[0] == "rq-dashboard" and "--disable-delete" in argv
    server = RedisServer(tmp_path / "redis").start()
    try:
        password, token, port = server.password, secrets.token_hex(16), free_port()
        env = {name: _compose_value(value, password, token) for name, value in service["environment"].items()}
        env["RQ_DASHBOARD_REDIS_URL"] = server.url  # `redis:6379` is compose's network; this is that Redis here
        runner = Runner(redis_url=server.url, queue="ccx")
        task = runner.submit(agent="command", argv=["true"])
        flags = [*argv[1:-4], "--bind", "127.0.0.1", "--port", str(port)]  # compose's 0.0.0.0:9181, on loopback
        dashboard = subprocess.Popen(
            [sys.executable, "-c", "from rq_dashboard.cli import main; main()", *flags],
            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until(lambda: _status(base + "/0/data/queues.json") == 401, 60, what="rq-dashboard to answer")
            login = "Basic " + base64.b64encode(f"ccx:{token}".encode()).decode()
            assert _status(base + "/0/data/queues.json", login) == 200
            emptied = _status(base + "/queue/ccx/queued/empty", login, method="POST", body=True)
            assert emptied == (200, {"status": "DISABLED"})
            assert [i.decode() for i in runner.redis.lrange("rq:queue:ccx", 0, -1)] == [task.id]
            assert password not in " ".join(psutil.Process(dashboard.pid).cmdline())
        finally:
            dashboard.terminate()
            dashboard.wait(10)
            runner.redis.close()
    finally:
        server.stop()


def _compose_value(value: str, password: str, token: str) -> str:
    value = re.sub(r"\$\{CCX_REDIS_PASSWORD[^}]*\}", password, value)
    return re.sub(r"\$\{CCX_DASHBOARD_TOKEN[^}]*\}", token, value)


def _status(url: str, auth: str = "", method: str = "GET", body: bool = False) -> Any:
    request = urllib.request.Request(url, method=method, headers={"Authorization": auth} if auth else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return (reply.status, orjson.loads(reply.read())) if body else reply.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0
