"""``python -m handler`` / ``ccx handler``: every bad setting is one sentence naming it, exit status 2.

Also the token's origin: without one given, the handler makes one in a private
file (and says where, never what), and ``--no-token`` is loopback-only and warned about.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.handler.helpers import NO_TOKEN, PY, ROOT, Client, HandlerProcess, arun

pytestmark = pytest.mark.timeout(60)


def run_handler(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CCX_") or k == "CCX_CONFIG_DIR"}
    return subprocess.run(
        [PY, "-m", "handler", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**base, **(env or {})},
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--port", "99999"], {}, "--port must be a port number from 0 to 65535 (0: any free one), not '99999'."),
        ([], {"CCX_HANDLER_PORT": "abc"}, "CCX_HANDLER_PORT must be a port number from 0 to 65535"),
        (["--max-concurrent", "0"], {}, "--max-concurrent must be a whole number of at least 1, not '0'."),
        (["--grace", "soon"], {}, "--grace must be a number of seconds at least 0, not 'soon'."),
        (["--allow-origin", "evil.example"], {}, "--allow-origin must list origins such as https://app.example:8443"),
        ([], {"CCX_HANDLER_ALLOWED_ORIGINS": "ftp://x"}, "CCX_HANDLER_ALLOWED_ORIGINS must list origins"),
        (["--tls-cert", "/nonexistent.pem"], {}, "--tls-cert and --tls-key go together"),
        (["--log-level", "LOUD"], {}, "--log-level must be one of DEBUG, INFO, WARNING, ERROR, not 'LOUD'."),
        (["--no-token", "--token", "x"], {}, "--no-token and --token contradict each other"),
        (["--host", "0.0.0.0", "--no-token"], {}, "Refusing to listen on 0.0.0.0 without a token"),
        (["--token-file", "/nonexistent/ccx.token"], {}, "--token-file: /nonexistent/ccx.token does not exist"),
    ],
)
def test_a_bad_setting_is_one_sentence_naming_it_and_exit_2(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    port = [] if "--port" in args or "CCX_HANDLER_PORT" in env else ["--port", "0"]
    done = run_handler(*port, *args, env=env)
    assert done.returncode == 2, done
    assert expected in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "listening" not in done.stdout


def test_unloadable_tls_files_are_named(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("not a certificate\n")
    key.write_text("not a key\n")
    done = run_handler("--port", "0", "--tls-cert", str(cert), "--tls-key", str(key))
    assert done.returncode == 2
    assert f"could not load {cert} with {key}" in done.stderr and "Traceback" not in done.stderr


def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    token_file = tmp_path / "handler.token"
    token_file.write_text("some-token\n")
    token_file.chmod(0o644)
    done = run_handler("--port", "0", env={"CCX_HANDLER_TOKEN_FILE": str(token_file)})
    assert done.returncode == 2
    assert f"The token file {token_file} can be read by other users (mode 0644): run `chmod 600 {token_file}`" in (
        done.stderr
    )


def test_without_a_token_the_handler_makes_one_in_a_private_file_and_requires_it(tmp_path: Path) -> None:
    """As Jupyter does: a random token in a 0600 file; the banner names the file, never the token."""
    token_file = tmp_path / "cfg" / "handler.token"
    env = {"CCX_HANDLER_TOKEN": "", "CCX_HANDLER_TOKEN_FILE": str(token_file)}
    with HandlerProcess("--allow", "true", log=tmp_path / "handler.log", env=env) as handler:
        banner = handler.wait_ready()
        token = token_file.read_text().strip()
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert f"token in {token_file}" in banner and token not in banner

        async def scenario() -> None:
            from websockets.exceptions import InvalidStatus

            with pytest.raises(InvalidStatus):
                await Client.connect(handler.url, NO_TOKEN)
            async with await Client.connect(handler.url, token) as client:
                exchange = await client.run(1, ["true"])
                assert exchange.result["exit_code"] == 0

        arun(scenario())
    assert token not in handler.log_text()


def test_no_token_is_loopback_only_and_warned_about(tmp_path: Path) -> None:
    with HandlerProcess(
        "--no-token", "--allow", "true", log=tmp_path / "handler.log", env={"CCX_HANDLER_TOKEN": ""}
    ) as handler:
        assert "no token" in handler.wait_ready()

        async def scenario() -> None:
            async with await Client.connect(handler.url, NO_TOKEN) as client:
                assert (await client.run(1, ["true"])).result["exit_code"] == 0

        arun(scenario())
        assert "running without a token (--no-token)" in handler.log_text()


def test_runs_never_see_the_handlers_token(tmp_path: Path) -> None:
    """The token lets one start runs; the runs themselves (which may print their env) do not get it."""
    with HandlerProcess("--allow", "*", log=tmp_path / "handler.log") as handler:
        handler.wait_ready()

        async def scenario() -> str:
            async with await Client.connect(handler.url, handler.token) as client:
                return (await client.run(1, ["env"])).output()

        env_text = arun(scenario())
    assert "CCX_RUN_ID=" in env_text and handler.token not in env_text
