"""Private secret files: the handler's token, the dashboard's, the local Redis password.

When no token is configured, the handler makes one and keeps it in a file that
only its user can read (as Jupyter does); the worker, the CLI and the local stack
read it from there, so a local stack needs no manual secret handling. A file that
other users could read, or that is not this user's, and a directory that another
user owns or can write to, are refused with a sentence saying how to fix it, never used.

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

from handler.config import ConfigError, env_value

CONFIG_DIR_VAR = "CCX_CONFIG_DIR"
HANDLER_TOKEN_FILE = "handler.token"
DASHBOARD_TOKEN_FILE = "dashboard.token"
REDIS_PASSWORD_FILE = "redis.password"
MCP_TOKEN_FILE = "mcp.token"
TOKEN_FILE_VAR = "CCX_HANDLER_TOKEN_FILE"
KEPT_DIR = "kept"
"""The handler's outcomes left unread by their worker (handler/kept.py): task output, so private too."""


def default_token_file() -> Path:
    """Where the handler keeps the token it made, and where workers and the CLI look for it."""
    explicit = env_value(TOKEN_FILE_VAR)
    return Path(explicit) if explicit else config_dir() / HANDLER_TOKEN_FILE


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
    # Owned by this user, for root too: a file another user made (or swapped in) holds a secret they chose.
    if info.st_uid != os.geteuid():
        raise ConfigError(
            f"The {what} file {path} belongs to uid {info.st_uid} (mode {stat.S_IMODE(info.st_mode):04o}), not to "
            f"this user (uid {os.geteuid()}): run `chown {os.geteuid()} {path}` if its secret is yours, or remove it "
            "to have a new one made."
        )
    if info.st_mode & 0o077:
        raise ConfigError(
            f"The {what} file {path} can be read by other users (mode {stat.S_IMODE(info.st_mode):04o}): "
            f"run `chmod 600 {path}`, or remove it to have a new one made."
        )


def _check_directory(path: Path, what: str) -> None:
    """Refuse the directory holding a secret file when another user owns it or can write to it: they could
    replace the file (with a secret of their choosing) or remove it. Root's are trusted (root can read anyway)."""
    directory = path.parent
    try:
        info = os.stat(directory)
    except FileNotFoundError:
        return  # made private when the file is first written
    except OSError as exc:
        raise ConfigError(
            f"Cannot look at the directory {directory} of the {what} file ({exc.strerror or exc}): fix its "
            f"permissions, or set {CONFIG_DIR_VAR} to a directory of your own."
        ) from None
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid not in (os.geteuid(), 0):
        raise ConfigError(
            f"The directory {directory} holding the {what} file belongs to uid {info.st_uid} (mode {mode:04o}), "
            f"not to this user (uid {os.geteuid()}): run `chown {os.geteuid()} {directory}` if it is yours, or "
            "remove it to have a private one made."
        )
    if mode & 0o022:
        raise ConfigError(
            f"The directory {directory} holding the {what} file can be written by other users (mode {mode:04o}): "
            f"run `chmod 700 {directory}`, or remove it to have a private one made."
        )


def read_secret(path: Path, what: str = "token") -> str | None:
    """The secret in ``path``, or None when there is no such file; refuses a file others can read or replace."""
    _check_directory(path, what)
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
    _check_directory(path, "secret")
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
