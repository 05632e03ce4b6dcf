"""The handler's settings: flags and environment variables, checked before binding.

Every bad value ends in a :class:`ConfigError` whose message names the flag or
variable and what it must be; ``ccx handler`` prints it and exits with status 2.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from handler.allowlist import DEFAULT_ALLOWED, Allowlist

__all__ = ["DEFAULT_ALLOWED", "Allowlist", "ConfigError", "HandlerConfig"]

STACK_SECRETS = frozenset({"CCX_REDIS_URL", "REDIS_URL"})
"""Variables of the stack that hold a secret without saying so in their name (a Redis URL carries its password)."""
SECRET_SUFFIXES = ("_TOKEN", "_PASSWORD", "_SECRET")
"""A ``CCX_`` variable ending so holds a secret (the handler's, dashboard's and MCP tokens, and any to come)."""


def is_stack_secret(name: str) -> bool:
    return name in STACK_SECRETS or (name.startswith("CCX_") and name.endswith(SECRET_SUFFIXES))


def scrub_stack_secrets(environ: dict[str, str] | os._Environ[str]) -> list[str]:
    """Remove the stack's secrets from ``environ`` (the handler's own, which every run inherits): a task must not
    learn what lets it start more runs, read every task in Redis, or drive the dashboard. Returns their names."""
    found = sorted(name for name in environ if is_stack_secret(name))
    for name in found:
        del environ[name]
    return found


def server_tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The server side of TLS from a PEM certificate and its key (None without a certificate), or a sentence."""
    if not cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            f"--tls-cert/--tls-key: could not load {cert} with {key} ({reason}); give a PEM certificate and its "
            "private key."
        ) from None
    return context


DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
WS_PATH = "/ws"
HEALTH_PATH = "/healthz"


class ConfigError(ValueError):
    """A setting that makes a service refuse to start; the message says what to change."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# ----------------------------------------------------------------------------- parsing one setting
# Each takes the text and the name the user knows it by (a flag or a variable), so the message names it.


def parse_port(text: str, name: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError(f"{name} must be a port number from 0 to 65535 (0: any free one), not {text!r}.")
    return port


def parse_int(text: str, name: str, minimum: int = 0) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ConfigError(f"{name} must be a whole number of at least {minimum}, not {text!r}.")
    return value


def parse_seconds(text: str, name: str, minimum: float = 0.0, positive: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value == value and value != float("inf")) or value < minimum or (positive and value <= 0):
        bound = "greater than 0" if positive else f"at least {minimum:g}"
        raise ConfigError(f"{name} must be a number of seconds {bound}, not {text!r}.")
    return value


def parse_flag(text: str, name: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1 or 0 (true or false), not {text!r}.")


def parse_origin(text: str, name: str) -> str:
    """``https://app.example:8443`` as a browser sends it in ``Origin`` (scheme://host[:port], no path)."""
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") or parts.query:
        raise ConfigError(f"{name} must list origins such as https://app.example:8443, not {text!r}.")
    return f"{parts.scheme}://{parts.netloc.lower()}"


def env_value(name: str, environ: Mapping[str, str] = os.environ) -> str | None:
    value = environ.get(name)
    return value if value not in (None, "") else None


@dataclass(frozen=True)
class HandlerConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = None
    """The bearer token every client must send; None only with ``no_token`` (loopback only)."""
    no_token: bool = False
    token_source: str = ""
    """Where the token came from (a flag, a variable, a file path), for the banner; never the token."""
    max_concurrent: int = 1
    allow: Allowlist = field(default_factory=Allowlist)
    allowed_origins: frozenset[str] = frozenset()
    """Browser origins allowed to connect; a request with any other ``Origin`` header is refused."""
    tls_cert: str | None = None
    tls_key: str | None = None
    grace: float = 5.0
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    max_message_bytes: int = 16 * 1024 * 1024
    kept_dir: Path | None = None
    """Where outcomes left unread are kept across a restart (handler/kept.py); None: in memory only."""

    @property
    def scheme(self) -> str:
        return "wss" if self.tls_cert else "ws"

    def check(self) -> None:
        """Refuse settings that would expose command execution or cannot work."""
        if not self.token and not self.no_token:
            raise ConfigError("The handler needs a token: pass --token, set CCX_HANDLER_TOKEN, or use its token file.")
        if self.no_token and not is_loopback(self.host):
            raise ConfigError(
                f"Refusing to listen on {self.host} without a token: anyone who can reach it could run commands. "
                "Drop --no-token (a token is then made for you), or bind 127.0.0.1."
            )
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together: give both, or neither.")
        if self.max_concurrent < 1:
            raise ConfigError("--max-concurrent must be at least 1.")
        if self.grace < 0:
            raise ConfigError("--grace must not be negative.")
