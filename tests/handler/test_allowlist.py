"""The allowlist is about what actually runs: resolution with the handler's PATH, hooks in env refused.

Each bypass that worked before this check existed is tried here against
:meth:`Allowlist.check` and, through a real handler, against ``execute``: the
run is refused with a reason naming what was wrong, and nothing starts.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from handler.allowlist import Allowlist, is_hook_variable, resolve
from handler.protocol import ENV_NOT_ALLOWED, EXECUTABLE_NOT_ALLOWED, EXECUTABLE_NOT_FOUND, ProtocolError
from tests.handler.helpers import arun, serving

pytestmark = pytest.mark.timeout(60)


def fake_program(directory: Path, name: str, marker: Path) -> Path:
    """An executable named ``name`` that, if it ever ran, would create ``marker``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\ntouch {marker}\n")
    path.chmod(0o755)
    return path


def refused(allow: Allowlist, argv0: str, cwd: str | None = None, env: dict | None = None) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        allow.check(argv0, cwd, env)
    return caught.value


def test_a_bare_name_is_resolved_on_the_handlers_path() -> None:
    true = shutil.which("true")
    assert true is not None
    assert Allowlist.parse("true").check("true", None, None) == os.path.abspath(true)


def test_the_basename_trick_is_refused(tmp_path: Path) -> None:
    """``/tmp/x/claude`` is not "claude": the name in the list means the one on the handler's PATH."""
    fake = fake_program(tmp_path / "x", "true", tmp_path / "ran")
    error = refused(Allowlist.parse("true"), str(fake))
    assert error.code == EXECUTABLE_NOT_ALLOWED
    assert str(fake) in error.message and "--allow" in error.message


def test_path_in_the_tasks_env_is_refused_and_never_used_for_lookup(tmp_path: Path) -> None:
    fake_program(tmp_path / "x", "true", tmp_path / "ran")
    error = refused(Allowlist.parse("true"), "true", env={"PATH": str(tmp_path / "x")})
    assert error.code == ENV_NOT_ALLOWED
    assert "PATH" in error.message and "--allow-env PATH" in error.message
    # Even where PATH may be set (allow '*', or --allow-env PATH), lookup uses the handler's own PATH.
    assert Allowlist.parse("*").check("true", None, {"PATH": str(tmp_path / "x")}) == os.path.abspath(
        shutil.which("true") or ""
    )


@pytest.mark.parametrize(
    "name", ["LD_PRELOAD", "LD_LIBRARY_PATH", "NODE_OPTIONS", "PYTHONPATH", "BASH_ENV", "DYLD_INSERT_LIBRARIES"]
)
def test_loader_and_interpreter_hooks_in_env_are_refused_by_name(name: str) -> None:
    error = refused(Allowlist.parse("true"), "true", env={name: "/tmp/evil"})
    assert error.code == ENV_NOT_ALLOWED
    assert f"may not set {name}" in error.message


def test_an_operator_can_permit_one_hook_variable_and_removing_one_is_always_fine() -> None:
    allow = Allowlist.parse("true", ["NODE_OPTIONS"])
    assert allow.check("true", None, {"NODE_OPTIONS": "--max-old-space-size=4096", "LD_PRELOAD": None})
    assert refused(allow, "true", env={"PYTHONPATH": "/x"}).code == ENV_NOT_ALLOWED
    assert not is_hook_variable("ANTHROPIC_API_KEY") and not is_hook_variable("HOME")


def test_a_relative_path_resolves_against_the_tasks_cwd_as_the_exec_does(tmp_path: Path) -> None:
    """``./true`` with a cwd is the file in that cwd, not one in the handler's own directory."""
    task_dir = tmp_path / "task"
    fake = fake_program(task_dir, "true", tmp_path / "ran")
    assert resolve("./true", str(task_dir)) == str(fake)
    error = refused(Allowlist.parse("true"), "./true", cwd=str(task_dir))
    assert error.code == EXECUTABLE_NOT_ALLOWED and str(fake) in error.message
    # Listed by its path, it may run: the same resolution decides.
    assert Allowlist.parse(str(fake)).check("./true", str(task_dir), None) == str(fake)
    missing = refused(Allowlist.parse("*"), "./nothing-here", cwd=str(task_dir))
    assert missing.code == EXECUTABLE_NOT_FOUND and str(task_dir) in missing.message


def test_a_symlink_to_an_allowed_program_runs_the_program_not_the_link(tmp_path: Path) -> None:
    """Matched through a link, the checked file is what runs: re-pointing the link later changes nothing."""
    true = os.path.realpath(shutil.which("true") or "")
    link = tmp_path / "true-link"
    link.symlink_to(true)
    assert Allowlist.parse("true").check(str(link), None, None) == true


def test_the_allowlist_through_a_real_handler_refuses_and_runs_nothing(tmp_path: Path) -> None:
    """Each bypass, sent as ``execute`` to a handler allowing only ``true``: an error naming the cause; no process."""
    marker = tmp_path / "ran"
    fake_dir = tmp_path / "x"
    fake = fake_program(fake_dir, "true", marker)
    attempts = [
        ({"argv": [str(fake)]}, EXECUTABLE_NOT_ALLOWED),
        ({"argv": ["true"], "env": {"PATH": str(fake_dir)}}, ENV_NOT_ALLOWED),
        ({"argv": ["true"], "env": {"LD_PRELOAD": str(fake)}}, ENV_NOT_ALLOWED),
        ({"argv": ["./true"], "cwd": str(fake_dir)}, EXECUTABLE_NOT_ALLOWED),
    ]

    async def scenario() -> None:
        async with serving(allow=Allowlist.parse("true")) as served, await served.client() as client:
            for n, (params, code) in enumerate(attempts):
                exchange = await client.run(n, params.pop("argv"), **params)
                assert exchange.error["code"] == code, exchange.answer
                assert not exchange.notifications("process.started")
            ok = await client.run("ok", ["true"])
            assert ok.result["exit_code"] == 0

    arun(scenario())
    assert not marker.exists()
