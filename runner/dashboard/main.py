"""``python -m runner.dashboard``: the live dashboard of a queue (see docs/dashboard.md)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from handler.config import ConfigError, parse_port
from handler.secretfile import DASHBOARD_TOKEN_FILE, config_dir, load_or_create
from runner.config import NO_REDIS, Settings, check_redis_url
from runner.dashboard.server import DEFAULT_HOST, DEFAULT_PORT, DashboardConfig, run


def build_parser(prog: str = "python -m runner.dashboard") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Serve the cc-execute dashboard: the queue, each task's output live, submit and cancel."
    )
    parser.add_argument(
        "--host",
        default=os.environ.get("CCX_DASHBOARD_HOST") or DEFAULT_HOST,
        help="address to bind (CCX_DASHBOARD_HOST; default 127.0.0.1; any other needs a token)",
    )
    parser.add_argument("--port", help="port, 0 for any free one (CCX_DASHBOARD_PORT; default 8766)")
    parser.add_argument("--redis-url", help="Redis URL (CCX_REDIS_URL / REDIS_URL; default: a running `ccx up`'s)")
    parser.add_argument(
        "--insecure-redis",
        action="store_true",
        help="use a Redis whose URL has no password (CCX_INSECURE_REDIS)",
    )
    parser.add_argument("--queue", help="queue to show and submit to (CCX_QUEUE; default ccx)")
    parser.add_argument(
        "--token",
        default=os.environ.get("CCX_DASHBOARD_TOKEN") or None,
        help="token the browser presents once, from the login link (…/#token=…) or the login form "
        "(CCX_DASHBOARD_TOKEN); "
        "default: the private file ~/.config/cc-execute/dashboard.token, made if missing",
    )
    parser.add_argument(
        "--tls-cert",
        default=os.environ.get("CCX_DASHBOARD_TLS_CERT") or None,
        help="PEM certificate for https:// (CCX_DASHBOARD_TLS_CERT); needed off loopback",
    )
    parser.add_argument(
        "--tls-key",
        default=os.environ.get("CCX_DASHBOARD_TLS_KEY") or None,
        help="its private key (CCX_DASHBOARD_TLS_KEY)",
    )
    parser.add_argument("--log-level", default=os.environ.get("CCX_LOG_LEVEL", "INFO"), help="logging level")
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m runner.dashboard") -> int:
    args = build_parser(prog).parse_args(argv)
    args.port_given = args.port is not None
    if args.port is None:
        args.port = os.environ.get("CCX_DASHBOARD_PORT") or str(DEFAULT_PORT)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # websockets logs every handshake and request path; an old-style login link (?token=…) carries the token.
    logging.getLogger("websockets").setLevel(logging.ERROR)
    try:
        redis_url = check_redis_url(args.redis_url, "--redis-url") if args.redis_url else None
        if args.insecure_redis:
            os.environ["CCX_INSECURE_REDIS"] = "1"  # as `ccx --insecure-redis` does: the environment owns it
        settings = Settings.from_env(redis_url=redis_url)
        token, source = args.token, "token from --token or CCX_DASHBOARD_TOKEN"
        if not token:
            path = config_dir() / DASHBOARD_TOKEN_FILE
            token, source = load_or_create(path), f"token in {path}"
        config = DashboardConfig(
            host=args.host,
            port=parse_port(args.port, "--port" if args.port_given else "CCX_DASHBOARD_PORT"),
            redis_url=settings.redis_url,
            queue=args.queue or settings.queue,
            token=token,
            token_source=source,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            allow_insecure=settings.allow_insecure,
        )
        if not settings.redis_url:  # after the flags' own checks, so a bad one is named first
            raise ConfigError(NO_REDIS)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    return run(config)
