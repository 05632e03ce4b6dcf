"""Private secret files: the handler's token, the dashboard's, the local Redis password.

When no token is configured, the handler makes one and keeps it in a file that
only its user can read (as Jupyter does); the worker, the CLI and the local stack
read it from there, so a local stack needs no manual secret handling. A file that
other users could read is refused with a sentence saying how to fix it, never used.

The files live in ``$CCX_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/cc-execute``, else
``~/.config/cc-execute``; the directory is created ``0700`` and each file ``0600``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from handler.config import ConfigError

CONFIG_DIR_VAR = "CCX_CONFIG_DIR"
HANDLER_TOKEN_FILE = "handler.token"
DASHBOARD_TOKEN_FILE = "dashboard.token"
REDIS_PASSWORD_FILE = "redis.password"
MCP_TOKEN_FILE = "mcp.token"


def config_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Where cc-execute keeps its private files for this user."""
    explicit = environ.get(CONFIG_DIR_VAR)
    if explicit:
        return Path(explicit)
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "cc-execute"


def new_secret() -> str:
    """A random secret of 256 bits, URL-safe (it goes into URLs and headers as it is)."""
    return secrets.token_urlsafe(32)


def _check_private(path: Path, info: os.stat_result, what: str) -> None:
    if info.st_mode & 0o077:
        raise ConfigError(
            f"The {what} file {path} can be read by other users (mode {stat.S_IMODE(info.st_mode):04o}): "
            f"run `chmod 600 {path}`, or remove it to have a new one made."
        )
    if info.st_uid != os.geteuid() and os.geteuid() != 0:
        raise ConfigError(f"The {what} file {path} belongs to another user: remove it, or point to your own.")


def read_secret(path: Path, what: str = "token") -> str | None:
    """The secret in ``path``, or None when there is no such file; refuses a file others can read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"Cannot read the {what} file {path} ({exc.strerror or exc}): fix or remove it.") from None
    with os.fdopen(fd, "rb") as handle:
        _check_private(path, os.fstat(handle.fileno()), what)
        value = handle.read().decode(errors="replace").strip()
    if not value:
        raise ConfigError(f"The {what} file {path} is empty: put the secret in it, or remove it to have one made.")
    return value


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, readable only by this user (written aside, then renamed)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def load_or_create(path: Path, what: str = "token") -> str:
    """The secret in ``path``; when there is none, a new one written there, readable only by this user.

    Two processes creating it at once agree: the file is created exclusively and the loser reads the winner's.
    """
    existing = read_secret(path, what)
    if existing is not None:
        return existing
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"Cannot create {path.parent} for the {what} ({exc.strerror or exc}): set {CONFIG_DIR_VAR} to a writable directory."
        ) from None
    value = new_secret()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(value + "\n")
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile: use theirs
            os.link(tmp, path)
    except OSError as exc:
        raise ConfigError(
            f"Cannot write the {what} file {path} ({exc.strerror or exc}): set {CONFIG_DIR_VAR} to a writable directory."
        ) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    found = read_secret(path, what)
    assert found is not None
    return found
