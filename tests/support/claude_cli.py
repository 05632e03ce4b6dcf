"""Install the real Claude Code CLI for tests and build its offline environment.

Why: cc-execute drives the real ``claude`` binary; tests are only meaningful
against it.  The npm package is large (~400 MB with its native binary), so it
is installed once into a cache the tests own and reused across runs and
processes.  Tests then point the CLI at :class:`~.fake_anthropic.FakeAnthropic`
through the environment returned by :func:`claude_env`.

Environment knobs:

* ``CCX_TEST_CACHE`` – cache root (default ``~/.cache/cc-execute-tests``); the
  CLI lives in ``$CCX_TEST_CACHE/claude-code/<version>/``.
* ``CCX_CLAUDE_CODE_VERSION`` – npm version or tag to install (default
  :data:`DEFAULT_VERSION`, the version these helpers were verified against; a
  pin keeps test results stable when a new CLI is published).  A tag such as
  ``latest`` is resolved once; delete its directory to refresh it.

Failure contract: :func:`ensure_claude_cli` returns ``None`` when the CLI
cannot be had (npm missing, registry unreachable, broken install); the reason
is then available from :func:`unavailable_reason`.  :func:`install_claude_cli`
is the raising variant (:class:`ClaudeCliUnavailable`).
"""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "DEFAULT_VERSION",
    "DUMMY_API_KEY",
    "ClaudeCliUnavailable",
    "cache_root",
    "claude_env",
    "ensure_claude_cli",
    "install_claude_cli",
    "not_logged_in_env",
    "unavailable_reason",
]

PACKAGE = "@anthropic-ai/claude-code"
DEFAULT_VERSION = "2.1.332"
DUMMY_API_KEY = "sk-ant-api03-fake-key-for-offline-tests"
# A loopback port nothing listens on: anything the CLI might send is refused locally.
DEAD_BASE_URL = "http://127.0.0.1:9"
INSTALL_TIMEOUT_S = 900.0
VERSION_TIMEOUT_S = 60.0

_last_reason: str | None = None


class ClaudeCliUnavailable(RuntimeError):
    """The CLI cannot be installed or run here; ``str(exc)`` says why."""


def cache_root() -> Path:
    """Root of the tests' cache (``$CCX_TEST_CACHE`` or ``~/.cache/cc-execute-tests``)."""
    env = os.environ.get("CCX_TEST_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cc-execute-tests"


def _version() -> str:
    return os.environ.get("CCX_CLAUDE_CODE_VERSION") or DEFAULT_VERSION


def _working_binary(prefix: Path) -> Path | None:
    """The first candidate executable under ``prefix`` that answers ``--version``.

    The package's ``bin/claude.exe`` is a placeholder that its postinstall
    script replaces with the native binary; where npm runs no install scripts
    (``ignore-scripts``) the platform package's binary is used directly.
    """
    modules = prefix / "node_modules"
    candidates = [modules / ".bin" / "claude", *sorted(modules.glob("@anthropic-ai/claude-code-*/claude"))]
    for candidate in candidates:
        if not candidate.is_file() or not os.access(candidate, os.X_OK):
            continue
        try:
            proc = subprocess.run(
                [str(candidate), "--version"],
                capture_output=True,
                text=True,
                timeout=VERSION_TIMEOUT_S,
                env={**os.environ, "DISABLE_AUTOUPDATER": "1"},
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if proc.returncode == 0 and "Claude Code" in proc.stdout:
            return candidate
    return None


def install_claude_cli(version: str | None = None, root: Path | None = None) -> Path:
    """Install ``@anthropic-ai/claude-code@version`` once and return its ``claude``.

    A file lock serialises concurrent installers (e.g. pytest-xdist workers or
    two test runs); npm installs into a scratch directory that is renamed into
    place only when it works, so a killed install never leaves a half-usable
    cache behind.  Raises :class:`ClaudeCliUnavailable` with the reason.
    """
    version = version or _version()
    base = (root or cache_root()) / "claude-code"
    target = base / version
    found = _working_binary(target)
    if found:
        return found
    npm = shutil.which("npm")
    if npm is None:
        raise ClaudeCliUnavailable("npm is not installed (needed to install the Claude Code CLI)")
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        found = _working_binary(target)  # another process may have finished meanwhile
        if found:
            return found
        scratch = base / f".{version}.tmp-{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
        scratch.mkdir(parents=True)
        cmd = [
            npm,
            "install",
            "--prefix",
            str(scratch),
            "--no-save",
            "--no-audit",
            "--no-fund",
            "--prefer-online",
            "--loglevel=error",
            f"{PACKAGE}@{version}",
        ]
        env = {**os.environ, "npm_config_update_notifier": "false"}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, env=env)
        except subprocess.TimeoutExpired:
            shutil.rmtree(scratch, ignore_errors=True)
            raise ClaudeCliUnavailable(f"npm install timed out after {INSTALL_TIMEOUT_S:.0f}s") from None
        if proc.returncode != 0:
            shutil.rmtree(scratch, ignore_errors=True)
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            # npm puts the error code and message first, a stack trace and log hint after.
            detail = " | ".join(line.removeprefix("npm error ").strip() for line in lines[:4])
            raise ClaudeCliUnavailable(f"npm install {PACKAGE}@{version} failed (exit {proc.returncode}): {detail}")
        scratch.rename(target)  # the native binary does not care about its directory name
        found = _working_binary(target)
        if found is None:
            raise ClaudeCliUnavailable(f"installed {PACKAGE}@{version} in {target} but no claude binary runs")
        return found


@functools.cache
def _ensure(version: str, root: Path) -> Path | None:
    global _last_reason
    try:
        path = install_claude_cli(version, root)
    except ClaudeCliUnavailable as exc:
        _last_reason = str(exc)
        return None
    _last_reason = None
    return path


def ensure_claude_cli() -> Path | None:
    """Path of a working ``claude`` executable, installing it if needed; ``None`` if impossible.

    Memoised per process, so calling it from every test is cheap.  When it
    returns ``None``, :func:`unavailable_reason` explains why (for a skip).
    """
    return _ensure(_version(), cache_root())


def unavailable_reason() -> str | None:
    """Why the last :func:`ensure_claude_cli` call returned ``None`` (else ``None``)."""
    return _last_reason


def _base_env(home: Path) -> dict[str, str]:
    """The caller's environment minus anything that could leak a real account or route traffic.

    Dropped: ``ANTHROPIC_*`` / ``CLAUDE*`` (keys, base URLs, ``CLAUDECODE``
    set when tests run inside Claude Code, which would change the CLI's
    behaviour), cloud-provider switches, OpenTelemetry, proxies (a proxy
    would receive the loopback requests) and ``XDG_*`` dirs (so everything the
    CLI stores lands under the isolated ``HOME``).
    """
    drop_prefixes = ("ANTHROPIC_", "CLAUDE", "OTEL_", "VERTEX_", "CLOUD_ML_", "AWS_BEARER_TOKEN_BEDROCK", "XDG_")
    drop = {
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "DISABLE_AUTOUPDATER",
        "DISABLE_TELEMETRY",
        "DISABLE_ERROR_REPORTING",
        "API_TIMEOUT_MS",
        "MCP_TIMEOUT",
    }
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(drop_prefixes) and k.upper() not in drop}
    home.mkdir(parents=True, exist_ok=True)
    tmp = home / "tmp"
    tmp.mkdir(exist_ok=True)
    env.update(
        {
            "HOME": str(home),
            # The CLI keeps per-run sockets in $TMPDIR/cc-socks and leaves them when killed.
            "TMPDIR": str(tmp),
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",  # no /api/hello, telemetry, DNS lookups
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
    )
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # As root the CLI refuses --dangerously-skip-permissions / bypassPermissions
        # unless it is told it runs in a sandbox (test machines run as root).
        env["IS_SANDBOX"] = "1"
    return env


def claude_env(fake_url: str, home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Complete environment for an offline CLI run against the fake API at ``fake_url``.

    ``home`` becomes ``$HOME`` (created if missing) so no real login,
    settings or session history is used or touched.  ``extra`` is applied last.
    """
    env = _base_env(home)
    env["ANTHROPIC_BASE_URL"] = fake_url
    env["ANTHROPIC_API_KEY"] = DUMMY_API_KEY
    env.update(extra or {})
    return env


def not_logged_in_env(home: Path) -> dict[str, str]:
    """Environment with no API key and a fresh ``home``: the CLI reports "Not logged in".

    The base URL points at a refused loopback port so that even a future CLI
    that did try the API could not leave the machine.
    """
    env = _base_env(home)
    env["ANTHROPIC_BASE_URL"] = DEAD_BASE_URL
    return env
