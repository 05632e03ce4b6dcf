"""What a run may execute: ``argv[0]`` resolved as the exec will see it, checked against the allowlist.

The rules (docs/security.md):

* ``argv[0]`` is resolved with the handler's own ``PATH``, never one from the
  task's ``env``; a relative path (``./tool``, ``bin/tool``) is resolved against
  the task's ``cwd``, exactly as the exec would.
* An allowlist entry that is a bare name means "that name as found on the
  handler's PATH"; an entry with a slash is that path. A resolved ``argv[0]``
  matches an entry when both are the same file (symlinks followed); when the
  match holds only through a symlink, the symlink's target is what is executed,
  so swapping the link afterwards changes nothing.
* While the allowlist is not ``*``, a task's ``env`` may not set ``PATH`` or a
  loader or interpreter hook (``LD_PRELOAD``, ``NODE_OPTIONS``, ``BASH_ENV``…):
  each would let an allowed program run something else. ``--allow-env`` lets
  an operator permit one by name.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from handler.agentconfig import agent_of, check_agent_config
from handler.protocol import ENV_NOT_ALLOWED, EXECUTABLE_NOT_ALLOWED, EXECUTABLE_NOT_FOUND, ProtocolError

DEFAULT_ALLOWED = ("claude", "codex", "gemini")
"""The agent CLIs the project supports may always run; operators add to this list."""

HOOK_VARIABLES = frozenset(
    {
        "PATH",
        "NODE_OPTIONS",
        "NODE_PATH",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "PYTHONHOME",
        "PYTHONUSERBASE",
        "PYTHONEXECUTABLE",
        "BASH_ENV",
        "ENV",
        "SHELLOPTS",
        "BASHOPTS",
        "PS4",
        "PROMPT_COMMAND",
        "PERL5LIB",
        "PERL5OPT",
        "PERLLIB",
        "RUBYLIB",
        "RUBYOPT",
        "GCONV_PATH",
        "JAVA_TOOL_OPTIONS",
        "JDK_JAVA_OPTIONS",
        "_JAVA_OPTIONS",
        "GIT_EXEC_PATH",
        "GIT_SSH_COMMAND",
        "GIT_CONFIG_GLOBAL",
        "GIT_CONFIG_SYSTEM",
    }
)
"""Variables that change which code an allowed program loads or runs."""
HOOK_PREFIXES = ("LD_", "DYLD_", "BASH_FUNC_", "GIT_CONFIG_")


def is_hook_variable(name: str) -> bool:
    return name in HOOK_VARIABLES or name.startswith(HOOK_PREFIXES)


def resolve(argv0: str, cwd: str | None, path: str | None = None) -> str:
    """The absolute path that running ``argv0`` from ``cwd`` executes, looked up on the handler's PATH."""
    if os.sep in argv0:
        candidate = os.path.join(cwd or os.getcwd(), argv0)
        candidate = os.path.abspath(candidate)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
        where = f" (from the working directory {cwd})" if cwd and not os.path.isabs(argv0) else ""
        raise ProtocolError(
            EXECUTABLE_NOT_FOUND, f"Executable not found: '{argv0}'{where} does not exist or is not executable."
        )
    found = shutil.which(argv0, path=path if path is not None else os.environ.get("PATH", os.defpath))
    if found is None:
        raise ProtocolError(
            EXECUTABLE_NOT_FOUND,
            f"Executable not found: '{argv0}' is not on the handler's PATH; install it or give its full path.",
        )
    return os.path.abspath(found)


@dataclass(frozen=True)
class Allowlist:
    """Which executables ``execute`` may run, and which hook variables a task may still set."""

    names: tuple[str, ...] = DEFAULT_ALLOWED
    allow_all: bool = False
    allowed_env: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, value: str | None, allowed_env: Iterable[str] = ()) -> Allowlist:
        """``None`` means the defaults; ``*`` (the explicit choice) allows everything."""
        extra = [item.strip() for item in (value or "").split(",") if item.strip()]
        env = frozenset(name.strip() for item in allowed_env for name in item.split(",") if name.strip())
        if "*" in extra:
            return cls(allow_all=True, allowed_env=env)
        return cls(names=tuple(dict.fromkeys([*DEFAULT_ALLOWED, *extra])), allowed_env=env)

    def describe(self) -> str:
        return "*" if self.allow_all else ",".join(self.names)

    def _entries(self) -> list[str]:
        """Each entry as a path on this machine now (an agent CLI installed later is found then)."""
        found = []
        for name in self.names:
            if os.sep in name:
                found.append(os.path.abspath(name))
            else:
                located = shutil.which(name)
                if located is not None:
                    found.append(os.path.abspath(located))
        return found

    def check(
        self, argv0: str, cwd: str | None, env: Mapping[str, str | None] | None, *, argv: Sequence[str] = ()
    ) -> str:
        """The path to execute for ``argv0``, or a :class:`ProtocolError` saying why it may not run; with the run's
        whole ``argv``, an agent CLI's flags and variables are checked too (handler/agentconfig.py)."""
        executable = self._check_executable(argv0, cwd, env)
        agent = None if self.allow_all else agent_of(argv0, executable)
        if agent is not None:
            check_agent_config(agent, argv, env, self.allowed_env)
        return executable

    def _check_executable(self, argv0: str, cwd: str | None, env: Mapping[str, str | None] | None) -> str:
        if not self.allow_all:
            for name, value in (env or {}).items():
                if value is not None and is_hook_variable(name) and name not in self.allowed_env:
                    raise ProtocolError(
                        ENV_NOT_ALLOWED,
                        f"Environment variable not allowed: a task may not set {name}, since it changes what an "
                        f"allowed program runs; the operator can permit it with --allow-env {name}.",
                    )
        executable = resolve(argv0, cwd)
        if self.allow_all:
            return executable
        real = os.path.realpath(executable)
        for entry in self._entries():
            if entry == executable:
                return executable
            if os.path.realpath(entry) == real:
                return real  # matched through a symlink: run the file that was checked, not the link
        raise ProtocolError(
            EXECUTABLE_NOT_ALLOWED,
            f"Executable not allowed: '{argv0}' (resolved to {executable}) is not in the handler's allowlist; "
            "the operator can add it with --allow / CCX_ALLOWED_COMMANDS.",
        )
