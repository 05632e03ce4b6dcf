"""``python -m handler`` / ``ccx handler``: start the WebSocket handler."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from handler.config import DEFAULT_HOST, DEFAULT_PORT, Allowlist, ConfigError, HandlerConfig, env_default


def build_parser(prog: str = "ccx handler") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run the cc-execute handler: a WebSocket server that runs each task as a fresh process.",
    )
    parser.add_argument(
        "--host",
        default=env_default("CCX_HANDLER_HOST", DEFAULT_HOST),
        help="address to bind (CCX_HANDLER_HOST; default 127.0.0.1)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(env_default("CCX_HANDLER_PORT", str(DEFAULT_PORT)) or DEFAULT_PORT),
        help="port, 0 for any free one (CCX_HANDLER_PORT; default 8765)",
    )
    parser.add_argument(
        "--token",
        default=env_default("CCX_HANDLER_TOKEN"),
        help="bearer token clients must send (CCX_HANDLER_TOKEN); required off loopback",
    )
    parser.add_argument(
        "--max-concurrent",
        type=int,
        default=1,
        help="processes running at once; others wait in arrival order (default 1)",
    )
    parser.add_argument(
        "--allow",
        default=env_default("CCX_ALLOWED_COMMANDS"),
        help="comma-separated executables allowed besides claude,codex,gemini; '*' allows any (CCX_ALLOWED_COMMANDS)",
    )
    parser.add_argument(
        "--grace", type=float, default=5.0, help="seconds between SIGTERM and SIGKILL when stopping a run (default 5)"
    )
    parser.add_argument(
        "--log-level", default=env_default("CCX_LOG_LEVEL", "INFO"), help="logging level (CCX_LOG_LEVEL; default INFO)"
    )
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m handler") -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("websockets").setLevel(
        max(logging.WARNING, logging.getLogger().level)
    )  # one line per request is noise
    config = HandlerConfig(
        host=args.host,
        port=args.port,
        token=args.token or None,
        max_concurrent=args.max_concurrent,
        allow=Allowlist.parse(args.allow),
        grace=args.grace,
    )
    from handler.server import run_forever

    try:
        asyncio.run(run_forever(config))
    except ConfigError as exc:
        print(f"ccx handler: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ccx handler: could not listen on {config.host}:{config.port}: {exc.strerror or exc}.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
