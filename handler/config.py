"""The handler's settings: flags and environment variables, checked before binding."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
WS_PATH = "/ws"
HEALTH_PATH = "/healthz"
# The agent CLIs the project supports may always run; operators add to this list.
DEFAULT_ALLOWED = ("claude", "codex", "gemini")


class ConfigError(Exception):
    """A setting that makes the handler refuse to start; the message says what to change."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Allowlist:
    """Which executables ``execute`` may run: bare names match any path's basename, paths match exactly."""

    names: tuple[str, ...] = DEFAULT_ALLOWED
    allow_all: bool = False

    @classmethod
    def parse(cls, value: str | None) -> Allowlist:
        """``None`` means the defaults; ``*`` (the explicit choice) allows everything."""
        extra = [item.strip() for item in (value or "").split(",") if item.strip()]
        if "*" in extra:
            return cls(allow_all=True)
        return cls(names=tuple(dict.fromkeys([*DEFAULT_ALLOWED, *extra])))

    def permits(self, argv0: str) -> bool:
        if self.allow_all:
            return True
        if os.sep in argv0:
            return argv0 in self.names or os.path.basename(argv0) in self.names
        return argv0 in self.names

    def describe(self) -> str:
        return "*" if self.allow_all else ",".join(self.names)


@dataclass(frozen=True)
class HandlerConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = None
    max_concurrent: int = 1
    allow: Allowlist = field(default_factory=Allowlist)
    grace: float = 5.0
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    max_message_bytes: int = 16 * 1024 * 1024

    def check(self) -> None:
        """Refuse settings that would expose command execution or cannot work."""
        if not is_loopback(self.host) and not self.token:
            raise ConfigError(
                f"Refusing to listen on {self.host} without a token: anyone who can reach it could run commands. "
                "Set CCX_HANDLER_TOKEN (or --token), or bind 127.0.0.1."
            )
        if self.max_concurrent < 1:
            raise ConfigError("--max-concurrent must be at least 1.")
        if self.grace < 0:
            raise ConfigError("--grace must not be negative.")


def env_default(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default
