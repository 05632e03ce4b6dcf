"""``python -m handler`` / ``ccx handler``: start the WebSocket handler."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from handler.config import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    Allowlist,
    ConfigError,
    HandlerConfig,
    env_value,
    parse_int,
    parse_origin,
    parse_port,
    parse_seconds,
    scrub_stack_secrets,
)
from handler.secretfile import KEPT_DIR, TOKEN_FILE_VAR, config_dir, default_token_file, load_or_create, read_secret
from handler.server import run_forever


def build_parser(prog: str = "ccx handler") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run the cc-execute handler: a WebSocket server that runs each task as a fresh process.",
    )
    add = parser.add_argument
    add("--host", help=f"address to bind (CCX_HANDLER_HOST; default {DEFAULT_HOST})")
    add("--port", help=f"port, 0 for any free one (CCX_HANDLER_PORT; default {DEFAULT_PORT})")
    add(
        "--token",
        help="bearer token clients must send (CCX_HANDLER_TOKEN); without one, the token file is used "
        "(made if missing). Prefer the variable or the file: a flag is visible to other users in `ps`",
    )
    add("--token-file", help=f"the private token file ({TOKEN_FILE_VAR}; default ~/.config/cc-execute/handler.token)")
    add("--no-token", action="store_true", help="accept clients without a token (loopback only; warns)")
    add("--max-concurrent", help="processes running at once; others wait in arrival order (default 1)")
    add(
        "--allow",
        help="comma-separated executables allowed besides claude,codex,gemini; '*' allows any (CCX_ALLOWED_COMMANDS)",
    )
    add(
        "--allow-env",
        action="append",
        default=[],
        help="a loader or interpreter variable (e.g. NODE_OPTIONS) tasks may still set (CCX_HANDLER_ALLOWED_ENV; repeatable)",
    )
    add(
        "--allow-origin",
        action="append",
        default=[],
        help="a browser origin allowed to connect, e.g. https://app.example (CCX_HANDLER_ALLOWED_ORIGINS; repeatable)",
    )
    add("--tls-cert", help="PEM certificate: serve wss:// (CCX_HANDLER_TLS_CERT)")
    add("--tls-key", help="PEM private key of --tls-cert (CCX_HANDLER_TLS_KEY)")
    add("--grace", help="seconds between SIGTERM and SIGKILL when stopping a run (default 5)")
    add("--log-level", help="logging level (CCX_LOG_LEVEL; default INFO)")
    return parser


def _pick(flag_value: str | None, flag: str, variable: str | None) -> tuple[str | None, str]:
    """The flag's value if given, else the variable's; with the name the user knows it by."""
    if flag_value is not None:
        return flag_value, flag
    if variable is not None:
        return env_value(variable), variable
    return None, flag


def config_from_args(args: argparse.Namespace) -> HandlerConfig:
    """Every setting checked, each error naming the flag or variable it came from."""
    host = _pick(args.host, "--host", "CCX_HANDLER_HOST")[0] or DEFAULT_HOST
    port_text, port_name = _pick(args.port, "--port", "CCX_HANDLER_PORT")
    port = parse_port(port_text, port_name) if port_text is not None else DEFAULT_PORT
    max_text = _pick(args.max_concurrent, "--max-concurrent", None)[0]
    max_concurrent = parse_int(max_text, "--max-concurrent", 1) if max_text is not None else 1
    grace_text = _pick(args.grace, "--grace", None)[0]
    grace = parse_seconds(grace_text, "--grace") if grace_text is not None else 5.0
    origins_text = ",".join(args.allow_origin) or env_value("CCX_HANDLER_ALLOWED_ORIGINS") or ""
    origin_name = "--allow-origin" if args.allow_origin else "CCX_HANDLER_ALLOWED_ORIGINS"
    origins = frozenset(parse_origin(item, origin_name) for item in origins_text.split(",") if item.strip())
    allowed_env = args.allow_env or [env_value("CCX_HANDLER_ALLOWED_ENV") or ""]
    tls_cert = _pick(args.tls_cert, "--tls-cert", "CCX_HANDLER_TLS_CERT")[0]
    tls_key = _pick(args.tls_key, "--tls-key", "CCX_HANDLER_TLS_KEY")[0]

    token, token_name = _pick(args.token, "--token", "CCX_HANDLER_TOKEN")
    source = f"token from {token_name}" if token else ""
    if token is not None and not token.strip():
        raise ConfigError(f"{token_name} is empty: give a token, or leave it unset to use the token file.")
    if args.no_token and token:
        raise ConfigError(f"--no-token and {token_name} contradict each other: drop one.")
    if not token and not args.no_token:
        path = Path(args.token_file) if args.token_file else default_token_file()
        token = read_secret(path) if args.token_file else load_or_create(path)
        if token is None:
            raise ConfigError(f"--token-file: {path} does not exist; create it (mode 600) or drop the flag.")
        source = f"token in {path}"
    return HandlerConfig(
        host=host,
        port=port,
        token=token.strip() if token else None,
        no_token=args.no_token,
        token_source=source,
        max_concurrent=max_concurrent,
        allow=Allowlist.parse(_pick(args.allow, "--allow", "CCX_ALLOWED_COMMANDS")[0], allowed_env),
        allowed_origins=origins,
        tls_cert=tls_cert,
        tls_key=tls_key,
        grace=grace,
        kept_dir=config_dir() / KEPT_DIR,
    )


def main(argv: list[str] | None = None, prog: str = "python -m handler") -> int:
    args = build_parser(prog).parse_args(argv)
    level_text = (args.log_level or env_value("CCX_LOG_LEVEL") or "INFO").upper()
    if not isinstance(logging.getLevelName(level_text), int):
        print(
            f"{prog}: {'--log-level' if args.log_level else 'CCX_LOG_LEVEL'} must be one of DEBUG, INFO, WARNING, ERROR, not {level_text!r}.",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=level_text, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("websockets").setLevel(
        max(logging.WARNING, logging.getLogger().level)
    )  # one line per request is noise
    try:
        config = config_from_args(args)
        config.check()
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    # The runs inherit this environment: they must not learn the token that lets one start more runs, nor any
    # other secret of the stack (the Redis URL with its password, the dashboard's token).
    scrub_stack_secrets(os.environ)
    try:
        asyncio.run(run_forever(config))
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"{prog}: could not listen on {config.host}:{config.port} ({exc.strerror or exc}); "
            "pick another --port or stop what uses it.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
