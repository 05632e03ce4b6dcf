"""The service commands, each a long-running process: ``ccx worker``, ``handler``, ``dashboard``, ``mcp`` and
``up`` (all of them at once, in the foreground)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path

import click
import redis

from handler.__main__ import main as handler_main
from handler.config import parse_port
from handler.secretfile import DASHBOARD_TOKEN_FILE, MCP_TOKEN_FILE, config_dir, load_or_create
from runner.cli.helpers import (
    cli_settings,
    fail,
    friendly_errors,
    insecure_redis_option,
    pass_runner,
    queue_option,
    redis_option,
)
from runner.client import Runner
from runner.config import check_handler_url, redact_url
from runner.dashboard import main as dashboard_main
from runner.dashboard.server import login_url
from runner.errors import EXIT_UNAVAILABLE, ConfigError, WorkerLocked
from runner.stack import LocalStack, default_data_dir, stack_for_up, supervise
from runner.worker import run_worker

PORT = click.IntRange(0, 65535)


def _log_level() -> str:
    level = os.environ.get("CCX_LOG_LEVEL", "INFO").upper()
    if not isinstance(logging.getLevelName(level), int):
        raise ConfigError(f"CCX_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, not {level!r}.")
    return level


@click.command()
@click.option("--standby", is_flag=True, help="if another worker serves the queue, wait and take over when it stops.")
@click.option("--burst", is_flag=True, help="stop when the queue is empty.")
@redis_option
@queue_option
@click.option(
    "--handler-url",  # CCX_HANDLER_URL is read by Settings, which name it in their messages
    help="handler WebSocket URL (CCX_HANDLER_URL; default ws://127.0.0.1:8765/ws).",
)
@click.option(
    "--metrics-port", metavar="PORT", help="serve Prometheus metrics on this port (0: any free one; default: none)."
)
@click.option(
    "--metrics-host", metavar="HOST", default="127.0.0.1", show_default=True, help="address the metrics are served on."
)
@friendly_errors
def worker(
    standby: bool,
    burst: bool,
    redis_url: str | None,
    queue: str | None,
    handler_url: str | None,
    metrics_port: str | None,
    metrics_host: str,
) -> None:
    """Run the one worker of a queue (refuses to start if another serves it)."""
    level = _log_level()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Not pass_runner: the worker asks Redis itself, patiently, and says so in its own words below.
    settings = cli_settings(
        redis_url, queue, handler_url=check_handler_url(handler_url, "--handler-url") if handler_url else None
    )
    port = parse_port(metrics_port, "--metrics-port") if metrics_port is not None else None
    try:
        sys.exit(
            run_worker(
                settings,
                standby=standby,
                burst=burst,
                logging_level=level,
                metrics_port=port,
                metrics_host=metrics_host,
            )
        )
    except WorkerLocked as exc:
        fail(str(exc), EXIT_UNAVAILABLE)
    except redis.RedisError as exc:
        fail(
            f"Redis is unreachable at {redact_url(settings.redis_url)} ({exc}): start it (e.g. `ccx up`) or set REDIS_URL.",
            EXIT_UNAVAILABLE,
        )


@click.command()
@click.option("--http", "http_mode", is_flag=True, help="serve streamable HTTP instead of stdio.")
@click.option("--host", default="127.0.0.1", show_default=True, help="with --http: address to bind.")
@click.option("--port", default="8767", show_default=True, help="with --http: port (0: any free one).")
@click.option(
    "--token", envvar="CCX_MCP_TOKEN", help="with --http: bearer token (CCX_MCP_TOKEN; default: the file mcp.token)."
)
@click.option("--tls-cert", help="with --http: certificate file (PEM), to serve https.")
@click.option("--tls-key", help="with --http: private key file (PEM).")
@pass_runner(ping=False)  # Redis is checked per call (the server outlives outages); Runner says at once if none
def mcp(
    http_mode: bool,
    host: str,
    port: str,
    token: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    runner: Runner,
) -> None:
    """Serve the cc-execute tools over MCP, for a Claude Code session to drive: `claude mcp add ccx -- ccx mcp`.

    Tools: submit_task, task_status, wait_for_result, read_output, cancel_task, list_tasks, queue_status
    (docs/mcp.md)."""
    # Here, not at the top: it loads pydantic and the tools' schemas (over 100 ms), which no other command needs.
    from runner.mcp import server

    if not http_mode:
        server.main_stdio_banner()
        sys.exit(server.run_stdio(runner))
    config = server.HttpConfig(
        host=host,
        port=parse_port(port, "--port"),
        token=token or load_or_create(config_dir() / MCP_TOKEN_FILE),
        token_hint="the token ccx mcp was given" if token else f"the token is in {config_dir() / MCP_TOKEN_FILE}",
        tls_cert=tls_cert,
        tls_key=tls_key,
        allow_insecure=runner.settings.allow_insecure,
    )
    sys.exit(server.run_http(runner, config))


@click.command(context_settings={"ignore_unknown_options": True, "help_option_names": []}, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def handler(args: tuple[str, ...]) -> None:
    """Run the handler (WebSocket server that runs each task as a fresh process); see `ccx handler --help`."""
    sys.exit(handler_main(list(args), prog="ccx handler"))


@click.command(context_settings={"ignore_unknown_options": True, "help_option_names": []}, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def dashboard(args: tuple[str, ...]) -> None:
    """Serve the live dashboard of a queue (default http://127.0.0.1:8766/); see `ccx dashboard --help`."""
    sys.exit(dashboard_main(list(args), prog="ccx dashboard"))


def _stop_on_signals() -> threading.Event:
    """An event SIGINT and SIGTERM set (saying so once), for ``ccx up`` to stop in order."""
    stopping = threading.Event()

    def stop_requested(*_: object) -> None:
        if not stopping.is_set():
            click.echo("stopping: a running task is interrupted and runs again when the stack is back…", err=True)
        stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop_requested)
    return stopping


def _print_banner(stack: LocalStack, data_dir: Path, stack_path: Path) -> None:
    """What ``ccx up`` runs and where (stdout, aligned), and where its secrets are (stderr)."""
    secrets_dir = config_dir()
    rows = [
        ("redis", redact_url(stack.redis_url or ""), f"embedded, data in {data_dir}" if stack.redis else ""),
        ("handler", stack.handler_url, f"allow: {stack.allow}"),
        ("worker", f"queue '{stack.queue}'", ""),
    ]
    if stack.dashboard_url:
        # The login link carries the token: only for a terminal, never into a log or a pipe.
        on_terminal = sys.stdout.isatty()
        login = login_url(stack.dashboard_url, stack.dashboard_token or "") if on_terminal else stack.dashboard_url
        rows.append(("dashboard", login, "" if on_terminal else f"token in {secrets_dir / DASHBOARD_TOKEN_FILE}"))
    width = max(len(name) for name, _, _ in rows)
    for name, where, note in rows:
        click.echo(f"{name:<{width}}  {where}" + (f"  ({note})" if note else ""))
    click.echo(
        f"secrets in {secrets_dir} (mode 600); clients on this machine find the stack through {stack_path}",
        err=True,
    )
    if stack.allow == "*":
        click.echo(
            "note: the handler may run any executable ('--allow *'): fine for a one-user machine, since only "
            "holders of its token can reach it; use --allow to narrow it.",
            err=True,
        )


@click.command()
@click.option("--redis-url", envvar=["CCX_REDIS_URL", "REDIS_URL"], help="use this Redis instead of an embedded one.")
@insecure_redis_option
@click.option("--redis-port", type=PORT, default=6379, show_default=True, help="port of the embedded Redis.")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    help="where the embedded Redis keeps its data (default ~/.local/share/cc-execute).",
)
@click.option("--handler-port", type=PORT, default=8765, show_default=True)
@click.option(
    "--token", envvar="CCX_HANDLER_TOKEN", help="handler token (CCX_HANDLER_TOKEN; default: the handler's token file)."
)
@click.option(
    "--allow",
    default="*",
    show_default=True,
    help="executables the handler may run ('*' = any; the stack binds loopback only).",
)
@click.option(
    "--dashboard-port",
    type=click.IntRange(-1, 65535),
    default=8766,
    show_default=True,
    help="port of the live dashboard (-1: none).",
)
@queue_option
@friendly_errors
def up(
    redis_url: str | None,
    redis_port: int,
    data_dir: Path | None,
    handler_port: int,
    token: str | None,
    allow: str,
    dashboard_port: int,
    queue: str | None,
) -> None:
    """Run the local stack in the foreground: Redis, the handler, one worker and the dashboard. Ctrl-C stops it all.

    Every part needs a secret, kept in private files (mode 600) under
    ~/.config/cc-execute and made on first use: the embedded Redis's password,
    the handler's token, the dashboard's token. Clients on this machine find
    them there; nothing needs to be copied by hand.
    """
    data_dir = data_dir or default_data_dir()
    if redis_url:  # the stack's worker (and every client finding it through the stack file) would refuse a bad one
        redis_url = cli_settings(redis_url, queue).redis_url
    stack = stack_for_up(
        redis_url=redis_url,
        redis_port=redis_port,
        data_dir=data_dir,
        handler_port=handler_port,
        handler_token=token,
        allow=allow,
        queue=queue or "ccx",
        dashboard_port=None if dashboard_port < 0 else dashboard_port,
    )

    def ready(stack_path: Path) -> None:
        _print_banner(stack, data_dir, stack_path)
        click.echo("ready — submit with `ccx run ...`; Ctrl-C stops everything.", err=True)

    supervise(stack, _stop_on_signals(), on_ready=ready, on_stopped=lambda: click.echo("stopped.", err=True))


COMMANDS = (worker, handler, dashboard, mcp, up)
