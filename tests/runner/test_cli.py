"""``ccx`` through its real entry point, as a subprocess, the way people use it."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
import tty
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis

from runner import schedules
from runner.cli.tasks import needs_embedded_stack
from runner.client import Runner
from runner.config import NO_REDIS, Settings
from runner.stack import LocalStack, free_port
from tests.conftest import no_password, passwordless_redis
from tests.support.processes import wait_until

CCX = [sys.executable, "-m", "runner.cli"]


def marked_processes(marker: str) -> list[int]:
    """Live processes whose environment carries ``marker`` (everything a ccx command started inherits it)."""
    needle = f"CCX_TEST_MARKER={marker}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as handle:
                environ = handle.read()
            with open(f"/proc/{name}/stat", "rb") as handle:
                state = handle.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ and state != b"Z":
            found.append(int(name))
    return found


def ccx(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CCX, *args], capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL
    )


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCX_") and k != "REDIS_URL"}
    env.update(extra)
    return env


def test_run_on_a_machine_with_no_redis_uses_an_embedded_stack_and_leaves_nothing(tmp_path: Path) -> None:
    """`ccx run --agent command -- echo hello` with nothing configured: prints hello, exits 0, leaves no process.
    Whatever listens on 127.0.0.1:6379 is never asked (it could be any local user's Redis)."""
    marker = uuid.uuid4().hex
    env = clean_env(CCX_TEST_MARKER=marker, HOME=str(tmp_path))
    proc = ccx("run", "--agent", "command", "--", "echo", "hello", env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hello\n"
    assert "✓ finished" in proc.stderr
    wait_until(lambda: not marked_processes(marker), 15, what="every process ccx started to be gone")


def test_run_exit_status_follows_the_task(tmp_path: Path) -> None:
    """A failing task makes `ccx run` exit 1 and say why."""
    env = clean_env(HOME=str(tmp_path))
    proc = ccx("run", "--agent", "command", "--", sys.executable, "-c", "import sys; sys.exit(4)", env=env)
    assert proc.returncode == 1
    assert "exited with code 4" in proc.stderr


def test_errors_are_one_sentence_with_a_non_zero_status(redis_url: str) -> None:
    """Unreachable Redis, unknown task id, bad options: one line on stderr, no traceback."""
    down = ccx("status", "abc", "--redis-url", f"redis://:pw@127.0.0.1:{free_port()}/0", env=clean_env())
    assert down.returncode == 3 and "Redis is unreachable" in down.stderr and "Traceback" not in down.stderr
    unknown = ccx("status", "no-such-id", "--redis-url", redis_url, env=clean_env())
    assert unknown.returncode == 2 and "No task with id no-such-id" in unknown.stderr
    bad = ccx("submit", "--agent", "command", "--redis-url", redis_url, env=clean_env())
    assert bad.returncode == 2 and "argv" in bad.stderr and "Traceback" not in bad.stderr
    assert len(down.stderr.strip().splitlines()) == 1


def unconfigured_env(home: Path) -> dict[str, str]:
    """No Redis URL, no opt-in, and a home of its own (so no `ccx up` stack file is found)."""
    env = clean_env(HOME=str(home))
    env.pop("XDG_CONFIG_HOME", None)
    return env


def test_with_nothing_configured_submit_mcp_and_list_say_so_in_one_sentence(tmp_path: Path) -> None:
    """No --redis-url, CCX_REDIS_URL or REDIS_URL and no `ccx up` running: the worker's sentence and exit 2, from
    every command that needs Redis; no default address is tried."""
    env = unconfigured_env(tmp_path)
    for args in (["submit", "--agent", "command", "--", "true"], ["mcp"], ["list"], ["status"]):
        done = ccx(*args, env=env)
        assert (done.returncode, done.stdout, done.stderr) == (2, "", f"ccx: {NO_REDIS}\n"), args


def test_run_brings_its_own_stack_only_when_nothing_is_configured_and_never_uses_a_redis_without_a_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ccx run` decides on the settings alone: an embedded stack exactly when no Redis is configured. A configured
    URL without a password (flag or environment) is refused in one sentence, exit 2, and that Redis gets nothing;
    `ccx submit --insecure-redis` is the explicit way to use it."""
    for name in ("CCX_REDIS_URL", "REDIS_URL", "CCX_INSECURE_REDIS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CCX_CONFIG_DIR", str(tmp_path / "config"))
    assert needs_embedded_stack(Settings.from_env())
    assert not needs_embedded_stack(Settings.from_env(redis_url="redis://:pw@127.0.0.1:1/0"))
    env = unconfigured_env(tmp_path)
    with passwordless_redis() as port:
        url = f"redis://127.0.0.1:{port}/0"
        refusal = f"ccx: {no_password(url, f'127.0.0.1:{port}')}\n"
        task = ["--agent", "command", "--", "echo", "hi"]
        by_flag = ccx("run", "--redis-url", url, *task, env=env)
        by_env = ccx("run", *task, env={**env, "REDIS_URL": url})
        for done in (by_flag, by_env):
            assert (done.returncode, done.stdout, done.stderr) == (2, "", refusal)
        observer = redis.Redis(port=port)
        assert observer.dbsize() == 0, "nothing was written to that Redis"
        opted_in = ccx("submit", "--redis-url", url, "--insecure-redis", "--queue", "open", *task, env=env)
        assert opted_in.returncode == 0, opted_in.stderr
        assert observer.lrange("rq:queue:open", 0, -1) == [opted_in.stdout.strip().encode()]
        observer.close()


@pytest.fixture
def ccx_up(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """`ccx up` in the foreground on free ports; yields the Redis URL and an env for other ccx commands."""
    with running_up(tmp_path) as (_, url, env):
        yield url, env


@contextlib.contextmanager
def running_up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, dict[str, str]]]:
    """`ccx up` started, its banner checked; yields the process, the Redis URL and an env for other commands;
    stops it with SIGINT at the end (if it still runs) and checks it left nothing behind."""
    marker = uuid.uuid4().hex
    port = free_port()
    env = clean_env(CCX_TEST_MARKER=marker, HOME=str(tmp_path), CCX_QUEUE="cli-" + marker[:8])
    proc = subprocess.Popen(
        [
            *CCX,
            "up",
            "--redis-port",
            str(port),
            "--handler-port",
            "0",
            "--dashboard-port",
            "0",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("redis"), proc.stderr.read() if proc.poll() is not None else first  # type: ignore[union-attr]
        lines = [first] + [proc.stdout.readline() for _ in range(3)]
        assert [line.split()[0] for line in lines] == ["redis", "handler", "worker", "dashboard"], lines
        assert len({line.index(line.split()[1]) for line in lines}) == 1, f"the banner's columns align: {lines}"
        env["TEST_DASHBOARD_URL"] = lines[3].split()[1]
        secrets_dir = tmp_path / ".config" / "cc-execute"
        assert f"(token in {secrets_dir / 'dashboard.token'})" in lines[3]
        env["TEST_DASHBOARD_TOKEN"] = (secrets_dir / "dashboard.token").read_text().strip()
        password = (secrets_dir / "redis.password").read_text().strip()
        assert password not in "".join(lines), "the banner shows the Redis URL without its password"
        # No REDIS_URL: the other commands find the stack through its private stack file.
        yield proc, f"redis://:{password}@127.0.0.1:{port}/0", env
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    wait_until(lambda: not marked_processes(marker), 15, what="`ccx up` to stop everything it started")


def test_up_then_submit_follow_result_list_cancel_from_other_processes(ccx_up: tuple[str, dict[str, str]]) -> None:
    """The stack from `ccx up` serves submit/follow/result/status/list/cancel run as separate commands."""
    _, env = ccx_up
    submitted = ccx("submit", "--agent", "command", "--", sys.executable, "-c", "print('from-cli')", env=env)
    assert submitted.returncode == 0, submitted.stderr
    task_id = submitted.stdout.strip()
    followed = ccx("follow", task_id, "--json", env=env)
    assert followed.returncode == 0, followed.stderr
    lines = [orjson.loads(line) for line in followed.stdout.splitlines()]
    assert lines[0]["type"] == "started" and lines[-1]["type"] == "result"
    assert "".join(e["data"] for e in lines if e["type"] == "output") == "from-cli\n"
    result = ccx("result", task_id, "--json", env=env)
    assert result.returncode == 0 and orjson.loads(result.stdout)["output"] == "from-cli\n"
    assert ccx("status", task_id, env=env).stdout.strip() == "finished"

    long = ccx(
        "submit", "--agent", "command", "--json", "--", sys.executable, "-c", "import time; time.sleep(600)", env=env
    )
    long_id = orjson.loads(long.stdout)["id"]
    wait_until(lambda: ccx("status", long_id, env=env).stdout.strip() == "running", 30, what="task running")
    listed = orjson.loads(ccx("list", "--json", env=env).stdout)
    assert [t["id"] for t in listed][:2] == [long_id, task_id]
    cancelled = ccx("cancel", long_id, env=env)
    assert cancelled.returncode == 0 and "stopping" in cancelled.stdout
    waited = ccx("result", long_id, "--wait", "30", "--json", env=env)
    assert waited.returncode == 1 and orjson.loads(waited.stdout)["cancelled"] is True
    request = urllib.request.Request(
        env["TEST_DASHBOARD_URL"] + "api/queue", headers={"Authorization": f"Bearer {env['TEST_DASHBOARD_TOKEN']}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert long_id in response.read().decode()  # the dashboard `ccx up` started serves this queue


def test_every_command_has_help() -> None:
    """Each subcommand answers --help."""
    for command in (
        "run",
        "submit",
        "follow",
        "result",
        "status",
        "list",
        "cancel",
        "worker",
        "handler",
        "dashboard",
        "up",
    ):
        proc = ccx(command, "--help")
        assert proc.returncode == 0 and "usage" in proc.stdout.lower(), command


def test_up_secrets_are_private_and_a_client_without_them_is_refused(ccx_up: tuple[str, dict[str, str]]) -> None:
    """The embedded Redis wants the password `ccx up` keeps in a 0600 file; without it, one sentence and exit 3."""
    url, env = ccx_up
    secrets_dir = Path(env["HOME"]) / ".config" / "cc-execute"
    for name in ("redis.password", "handler.token", "dashboard.token", "stack.json"):
        assert (secrets_dir / name).stat().st_mode & 0o077 == 0, name
    without = "redis://" + url.split("@", 1)[1]
    refused = ccx("list", "--redis-url", without, "--insecure-redis", env=env)  # past our own refusal: Redis's
    assert refused.returncode == 3 and "refused this client's password" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (
            ["up", "--redis-port", "99999"],
            {},
            "Invalid value for '--redis-port': 99999 is not in the range 0<=x<=65535.",
        ),
        (
            ["list"],
            {"CCX_WORKER_LOCK_TTL": "abc"},
            "CCX_WORKER_LOCK_TTL must be a number of seconds greater than 0, not 'abc'.",
        ),
        (["list"], {"CCX_OUTPUT_LIMIT": "lots"}, "CCX_OUTPUT_LIMIT must be a whole number of at least 1, not 'lots'."),
        (["list"], {"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL must be a redis://, rediss:// or unix:// URL"),
        (["worker"], {"CCX_HANDLER_URL": "http://h:1/ws"}, "CCX_HANDLER_URL must be a ws:// or wss:// URL"),
        (
            ["worker"],
            {"CCX_ALLOW_INSECURE": "maybe"},
            "CCX_ALLOW_INSECURE must be 1 or 0 (true or false), not 'maybe'.",
        ),
        (
            ["handler", "--port", "99999"],
            {},
            "--port must be a port number from 0 to 65535 (0: any free one), not '99999'.",
        ),
        (["handler"], {"CCX_HANDLER_PORT": "abc"}, "CCX_HANDLER_PORT must be a port number from 0 to 65535"),
        (["dashboard"], {"CCX_DASHBOARD_PORT": "-5"}, "CCX_DASHBOARD_PORT must be a port number from 0 to 65535"),
    ],
)
def test_a_bad_setting_is_one_sentence_naming_it_with_exit_2(
    args: list[str], env: dict[str, str], expected: str, tmp_path: Path
) -> None:
    done = ccx(*args, env=clean_env(HOME=str(tmp_path), **env))
    assert done.returncode == 2, done
    assert expected in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    # Flag values click checks itself come with click's usage lines around the one sentence.
    assert len(done.stderr.strip().splitlines()) == (4 if "Invalid value" in expected else 1), done.stderr


def test_a_second_up_on_a_busy_port_says_so_in_one_sentence(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        done = ccx(
            "up", "--redis-port", str(port), "--data-dir", str(tmp_path / "data"), env=clean_env(HOME=str(tmp_path))
        )
    assert done.returncode == 3
    assert done.stderr.strip().splitlines() == [
        f"ccx: Port {port} for the embedded Redis is in use: is another `ccx up` running? Stop it, or pick another "
        "port with --redis-port."
    ]


def test_submit_after_a_failed_task_cancel_of_an_ended_one_and_list(ccx_up: tuple[str, dict[str, str]]) -> None:
    _, env = ccx_up
    failed = ccx("submit", "--agent", "command", "--", "false", env=env).stdout.strip()
    assert ccx("result", failed, "--wait", "30", env=env).returncode == 1
    after = ccx("submit", "--agent", "command", "--after", failed, "--", "true", env=env)
    assert after.returncode == 1
    dependent = after.stdout.strip()
    assert after.stderr.strip() == (
        f"ccx: Task {dependent} was cancelled at once. Not run: it was to run after task {failed}, which failed; "
        "submit it with after_any to run regardless."
    )
    again = ccx("cancel", failed, env=env)
    assert again.returncode == 1
    assert again.stderr.strip() == f"ccx: Task {failed} had already ended (failed); there was nothing to cancel."
    listed = ccx("list", env={**env, "COLUMNS": "120"})
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "AGENT", "SUBMITTED", "ENDED", "TASK"]
    assert [line.split()[0] for line in lines[1:]] == [dependent, failed]
    assert all(len(line) <= 120 for line in lines)
    assert " s ago" in lines[2] and lines[2].rstrip().endswith("false")
    only_failed = ccx("list", "--status", "failed", env=env).stdout.splitlines()
    assert [line.split()[0] for line in only_failed[1:]] == [failed]
    bad = ccx("list", "--status", "sleeping", env=env)
    assert bad.returncode == 2 and "Unknown status 'sleeping'" in bad.stderr


def test_sigint_to_up_alone_says_it_is_stopping_and_does_not_wait_for_the_task(tmp_path: Path) -> None:
    """SIGINT sent to the `ccx up` process (not Ctrl-C in its terminal): it says so at once and stops within a
    few seconds even while a task runs; the task is interrupted, not lost."""
    with running_up(tmp_path) as (proc, _, env):
        long = ccx("submit", "--agent", "command", "--", "sleep", "600", env=env).stdout.strip()
        wait_until(lambda: ccx("status", long, env=env).stdout.strip() == "running", 30, what="the task to run")
        began = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        took = time.monotonic() - began
        assert proc.stderr is not None
        err = proc.stderr.read()
    assert "stopping: a running task is interrupted and runs again when the stack is back" in err
    assert took < 15, f"`ccx up` took {took:.1f} s to stop"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["submit", "--timeout", "1e18", "--agent", "command", "--", "true"],
            "ccx: 'timeout' is 1e+18 seconds, more than the 604800 (7 days) a task may have: give at most that, "
            "or split the work into several tasks.",
        ),
        (
            ["submit", "--idle-timeout", "1e18", "--agent", "command", "--", "true"],
            "ccx: 'idle_timeout' is 1e+18 seconds, more than the 604800 (7 days) a task may have",
        ),
        (
            ["submit", "--in", "1e20", "--agent", "command", "--", "true"],
            "ccx: 'in' is 1e+20 seconds, further ahead than the 31622400 (366 days) a task may wait: give a "
            "shorter delay, or add a cron schedule for work that far off.",
        ),
        (
            ["submit", "--at", "9999-01-01T00:00:00Z", "--agent", "command", "--", "true"],
            "ccx: 'at' is 9999-01-01T00:00:00Z, further ahead than the 366 days a task may wait",
        ),
        (
            ["budget", "nan"],
            "ccx: The budget must be a number of dollars above 0, such as 20, not nan; to have no budget, remove "
            "it (`ccx budget --off`).",
        ),
        (["budget", "inf"], "ccx: The budget must be a number of dollars above 0, such as 20, not inf;"),
        (["budget", "0"], "ccx: The budget must be a number of dollars above 0, such as 20, not 0.0;"),
        (
            ["schedule", "add", "0 0 31 2 *", "--agent", "command", "--", "true"],
            "ccx: '0 0 31 2 *' never fires: no date matches it (such as 31 February, or the 31st of a 30-day "
            "month); change its day-of-month or month field, e.g. '0 0 L 2 *' for the last day of February.",
        ),
        (
            ["schedule", "add", "0 3 * * 9", "--agent", "command", "--", "true"],
            "ccx: '0 3 * * 9' is not a cron expression: its day-of-week field '9' is not valid;",
        ),
    ],
    ids=["timeout", "idle-timeout", "in", "at", "budget-nan", "budget-inf", "budget-0", "cron-31-feb", "cron-field"],
)
def test_out_of_range_input_is_one_sentence_with_exit_2(args: list[str], message: str, redis_url: str) -> None:
    """Numbers that parse but make no sense (1e18 s, 1e20 s ahead, a NaN budget, 31 February) are refused
    when given, in one line saying what is wrong and what to do; nothing is queued or set."""
    queue = f"cli-{uuid.uuid4().hex[:8]}"
    proc = ccx(*args, env=clean_env(CCX_REDIS_URL=redis_url, CCX_QUEUE=queue))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(message) and proc.stderr.count("\n") == 1, proc.stderr
    status = ccx("status", "--json", env=clean_env(CCX_REDIS_URL=redis_url, CCX_QUEUE=queue))
    state = orjson.loads(status.stdout)
    assert state["queued"] == 0 and "budget_per_day" not in state["costs"]


def ccx_on_a_terminal(*args: str, env: dict[str, str], timeout: float = 60) -> tuple[int, str, str]:
    """`ccx ARGS` with its stdout on a pseudo-terminal (raw mode: bytes reach it unchanged) and its stderr on a
    pipe; returns its exit status, what the terminal received and its stderr."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    try:
        proc = subprocess.Popen([*CCX, *args], stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    finally:
        os.close(slave)
    received = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"`ccx {' '.join(args)}` did not end within {timeout:g} s"
            if not select.select([master], [], [], remaining)[0]:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's last writer closed it
                break
            if not chunk:
                break
            received += chunk
        _, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, received.decode(), stderr.decode()


# Output that acts on a terminal: the window title (OSC 0), the clipboard (OSC 52), the screen (CSI 2J).
HOSTILE = "\x1b]0;owned\x07\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2Jtext\n"
SHOWN = "\\x1b]0;owned\\x07\\x1b]52;c;cm0gLXJmIH4=\\x07\\x1b[2Jtext\n"
HOSTILE_TASK = [sys.executable, "-c", f"import sys; sys.stdout.write({HOSTILE!r}); sys.stderr.write({HOSTILE!r})"]


def test_output_on_a_terminal_shows_its_escapes_and_raw_passes_them(stack: LocalStack, runner: Runner) -> None:
    """`ccx follow` / `ccx run` / `ccx result` on a terminal write the task's escapes as visible text; with
    --raw, or to a pipe, the bytes are the task's own (its stderr here goes to a pipe: raw)."""
    env = stack.child_env()
    task_id = runner.submit({"agent": "command", "argv": HOSTILE_TASK}).id
    assert runner.handle(task_id).result(timeout=60).success
    status, screen, err = ccx_on_a_terminal("follow", task_id, env=env)
    assert (status, screen) == (0, SHOWN) and err.startswith(HOSTILE), err
    status, screen, err = ccx_on_a_terminal("follow", task_id, "--raw", env=env)
    assert (status, screen) == (0, HOSTILE) and err.startswith(HOSTILE), err
    piped = ccx("follow", task_id, env=env)
    assert (piped.returncode, piped.stdout) == (0, HOSTILE)
    assert ccx_on_a_terminal("result", task_id, env=env)[1] == SHOWN
    assert ccx_on_a_terminal("result", task_id, "--raw", env=env)[1] == HOSTILE
    status, screen, err = ccx_on_a_terminal("run", "--agent", "command", "--", *HOSTILE_TASK, env=env)
    assert (status, screen) == (0, SHOWN), err
    status, screen, err = ccx_on_a_terminal("run", "--raw", "--agent", "command", "--", *HOSTILE_TASK, env=env)
    assert (status, screen) == (0, HOSTILE), err


def test_titles_in_list_status_and_schedules_are_always_escaped(redis_url: str, queue_name: str) -> None:
    """A task's title or a pause's reason is anyone's text: escaped on a terminal and in a pipe alike."""
    runner = Runner(redis_url=redis_url, queue=queue_name)  # no worker: the task stays queued
    try:
        runner.submit({"agent": "command", "argv": ["echo", "\x1b]0;owned\x07\x1b[2J"]})
        schedules.add(runner.redis, queue_name, "0 3 * * *", {"agent": "command", "argv": ["echo", "\x1b]0;x\x07"]})
    finally:
        runner.redis.close()
    env = clean_env(CCX_REDIS_URL=redis_url, CCX_QUEUE=queue_name, COLUMNS="200")
    listed = ccx("list", env=env)
    assert listed.stdout.splitlines()[1].endswith("  echo \\x1b]0;owned\\x07\\x1b[2J"), listed.stdout
    status, screen, _ = ccx_on_a_terminal("list", env=env)
    assert status == 0 and screen.splitlines()[1].endswith("  echo \\x1b]0;owned\\x07\\x1b[2J"), screen
    paused = ccx("pause", "--reason", "deploy \x1b]52;c;eA==\x07", env=env)
    assert paused.stdout == f"queue '{queue_name}': paused — deploy \\x1b]52;c;eA==\\x07\n", paused.stdout
    status, screen, _ = ccx_on_a_terminal("status", env=env)
    assert screen.splitlines()[0] == f"queue '{queue_name}': paused — deploy \\x1b]52;c;eA==\\x07", screen
    assert ccx("schedule", "list", env=env).stdout.splitlines()[1].endswith("  echo \\x1b]0;x\\x07")
