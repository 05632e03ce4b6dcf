"""``python -m runner.dashboard``: the live dashboard of a queue (see docs/dashboard.md).

An entry point: its settings are built here once, flags over environment over defaults (runner/config.py), and
passed down; nothing below reads the environment.
"""

from __future__ import annotations

import argparse
import logging
import sys

from handler.config import ConfigError as HandlerConfigError
from handler.secretfile import DASHBOARD_TOKEN_FILE, config_dir, load_or_create
from runner.config import NO_REDIS, DashboardSettings, Settings, check_redis_url
from runner.dashboard.server import DashboardConfig, run
from runner.errors import ConfigError


def build_parser(prog: str = "python -m runner.dashboard") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Serve the cc-execute dashboard: the queue, each task's output live, submit and cancel."
    )
    parser.add_argument(
        "--host", help="address to bind (CCX_DASHBOARD_HOST; default 127.0.0.1; any other needs a token)"
    )
    parser.add_argument("--port", help="port, 0 for any free one (CCX_DASHBOARD_PORT; default 8766)")
    parser.add_argument("--redis-url", help="Redis URL (CCX_REDIS_URL / REDIS_URL; default: a running `ccx up`'s)")
    parser.add_argument(
        "--insecure-redis",
        action="store_true",
        default=None,
        help="use a Redis whose URL has no password (CCX_INSECURE_REDIS)",
    )
    parser.add_argument("--queue", help="queue to show and submit to (CCX_QUEUE; default ccx)")
    parser.add_argument(
        "--token",
        help="token the browser presents once, from the login link (…/#token=…) or the login form "
        "(CCX_DASHBOARD_TOKEN); "
        "default: the private file ~/.config/cc-execute/dashboard.token, made if missing",
    )
    parser.add_argument("--tls-cert", help="PEM certificate for https:// (CCX_DASHBOARD_TLS_CERT); needed off loopback")
    parser.add_argument("--tls-key", help="its private key (CCX_DASHBOARD_TLS_KEY)")
    parser.add_argument("--log-level", help="logging level (CCX_LOG_LEVEL; default INFO)")
    return parser


def configure(args: argparse.Namespace) -> DashboardConfig:
    """The dashboard's configuration from its flags over the environment; a bad value raises a ConfigError."""
    redis_url = check_redis_url(args.redis_url, "--redis-url") if args.redis_url else None
    settings = Settings.from_env(redis_url=redis_url, queue=args.queue, insecure_redis=args.insecure_redis)
    own = DashboardSettings.from_env(
        host=args.host, port=args.port, token=args.token, tls_cert=args.tls_cert, tls_key=args.tls_key,
        log_level=args.log_level,
    )  # fmt: skip
    token, source = own.token, "token from --token or CCX_DASHBOARD_TOKEN"
    if not token:
        path = config_dir() / DASHBOARD_TOKEN_FILE
        token, source = load_or_create(path), f"token in {path}"
    if not settings.redis_url:  # after the flags' own checks, so a bad one is named first
        raise ConfigError(NO_REDIS)
    logging.basicConfig(level=own.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return DashboardConfig(
        host=own.host,
        port=own.port,
        redis_url=settings.redis_url,
        queue=settings.queue,
        token=token,
        token_source=source,
        tls_cert=own.tls_cert,
        tls_key=own.tls_key,
        allow_insecure=settings.allow_insecure,
    )


def main(argv: list[str] | None = None, prog: str = "python -m runner.dashboard") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        config = configure(args)
    except (ConfigError, HandlerConfigError) as exc:  # the handler's: its secret-file helpers
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    # websockets logs every handshake and request path; an old-style login link (?token=…) carries the token.
    logging.getLogger("websockets").setLevel(logging.ERROR)
    return run(config)
