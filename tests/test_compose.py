"""docker-compose.yml and the Dockerfile, checked by structure (no Docker engine runs here)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from click.testing import CliRunner

from runner.cli import main as ccx

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
