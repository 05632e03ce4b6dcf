"""The live dashboard, end to end in a real headless Chromium against the real stack.

A real Redis, handler and worker (the ``stack`` fixture, or a LocalStack of the
test's own), the dashboard as its own process (``python -m runner.dashboard``),
and Debian's Chromium driven by Playwright. Nothing waits by sleeping: every
wait is a Playwright expectation or ``wait_until`` with a timeout.

Also: the token check at unit level, and ``python -m tests.runner.test_dashboard
--screenshots docs/images`` to retake the screenshots in docs/dashboard.md.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import re
import selectors
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from websockets.datastructures import Headers

from runner import clock, keys
from runner.agents.claude import ClaudeTranscript as Transcript
from runner.client import Runner
from runner.dashboard import auth as auth_module
from runner.dashboard import logview
from runner.dashboard.auth import (
    AUTH_FIRST,
    CLOSE_NO_AUTH,
    CLOSE_SESSION_ENDED,
    CLOSE_WRONG_TOKEN,
    NOT_VALID,
    SESSION_ENDED,
    UNAUTHORIZED,
    WRONG_TOKEN,
    Auth,
    Kind,
    Verdict,
    token_matches,
)
from runner.dashboard.server import LIVE_PATH, DashboardConfig, login_url
from runner.errors import DashboardError
from runner.follow.aio import read_page
from runner.stack import LocalStack
from runner.vocabulary import PauseKind
from tests.support.processes import pids_with_marker, wait_until
from tests.support.rawhttp import WEBSOCKET_UPGRADE, send_twice

PY = sys.executable
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI_TIMEOUT_MS = 20_000

# A stand-in for the Claude Code CLI: prints a stream-json session (the documented event shapes),
# pausing before the end until the file STANDIN_GO exists (if set), with STANDIN_DELAY seconds
# between events; both only for prompts containing STANDIN_WAIT_FOR, if that is set.
CLAUDE_STANDIN = f"""#!{PY}
import json, os, sys, time
prompt = sys.argv[-1]
waits = os.environ.get("STANDIN_WAIT_FOR", "") in prompt
def emit(event):
    print(json.dumps(event), flush=True)
    time.sleep(float(os.environ.get("STANDIN_DELAY", "0")) if waits else 0)
emit({{"type": "system", "subtype": "init", "session_id": "5f1c9a2e-demo", "model": "claude-sonnet-4-5",
      "tools": ["Write", "Edit", "Bash"], "cwd": os.getcwd(), "permissionMode": "acceptEdits"}})
emit({{"type": "assistant", "message": {{"content": [{{"type": "text", "text": "I'll start with the app, then test it."}}]}}}})
emit({{"type": "assistant", "message": {{"content": [{{"type": "tool_use", "id": "t1", "name": "Write",
      "input": {{"file_path": "app.py", "content": "from fastapi import FastAPI\\n" * 40}}}}]}}}})
emit({{"type": "user", "message": {{"content": [{{"type": "tool_result", "tool_use_id": "t1",
      "content": "File created successfully at: app.py"}}]}}}})
emit({{"type": "assistant", "message": {{"content": [{{"type": "tool_use", "id": "t2", "name": "Bash",
      "input": {{"command": "python -m pytest -q", "description": "Run the tests"}}}}]}}}})
emit({{"type": "user", "message": {{"content": [{{"type": "tool_result", "tool_use_id": "t2", "content": "3 passed in 0.41s"}}]}}}})
go = os.environ.get("STANDIN_GO")
if waits:
    while go and not os.path.exists(go):
        time.sleep(0.05)
emit({{"type": "assistant", "message": {{"content": [{{"type": "text", "text": "All three tests pass."}}]}}}})
emit({{"type": "result", "subtype": "success", "is_error": False, "result": "Done: " + prompt[:60],
      "num_turns": 4, "total_cost_usd": 0.0412, "duration_ms": 8123, "session_id": "5f1c9a2e-demo"}})
"""


# ---- helpers and fixtures ------------------------------------------------------------------


@dataclass
class Dashboard:
    proc: subprocess.Popen[bytes]
    url: str
    token: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_dashboard(redis_url: str, queue: str, log_path: Path, *extra: str, timeout: float = 30) -> Dashboard:
    """``python -m runner.dashboard --port 0`` with a token of its own (in its environment, as ``ccx up``
    gives it); its first stdout line names its address."""
    log = log_path.open("ab")
    token = "dash-" + uuid.uuid4().hex
    proc = subprocess.Popen(
        [PY, "-m", "runner.dashboard", "--port", "0", "--redis-url", redis_url, "--queue", queue, *extra],
        stdout=subprocess.PIPE,
        stderr=log,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "CCX_DASHBOARD_TOKEN": token},
    )
    log.close()
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        ready = selector.select(timeout)
    line = proc.stdout.readline().decode() if ready else ""
    if not line.startswith(("ccx dashboard on http://", "ccx dashboard on https://")):
        proc.kill()
        proc.wait()
        raise AssertionError(f"the dashboard did not start: {line!r}; log: {log_path.read_text()[-2000:]}")
    return Dashboard(proc, line.split(" on ", 1)[1].split()[0], token)


def signed(board: Dashboard, url: str) -> str:
    """``url`` as a login link (the token in its fragment): the page swaps the token for a session and drops it
    from the address."""
    return login_url(url, board.token)


@pytest.fixture
def dashboard(stack: LocalStack, tmp_path: Path) -> Iterator[Dashboard]:
    assert stack.redis_url is not None
    board = start_dashboard(stack.redis_url, stack.queue, tmp_path / "dashboard.log")
    yield board
    board.stop()


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[Any]:
    """A page of a fresh headless Chromium (its own user-data-dir); fails the test on any JavaScript error."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's Chromium is not installed at /usr/bin/chromium (apt-get install -y chromium)")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=UI_TIMEOUT_MS)
    errors: list[str] = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 860},
        )
        try:
            context.set_default_timeout(UI_TIMEOUT_MS)
            page = context.pages[0] if context.pages else context.new_page()
            page.on("pageerror", lambda error: errors.append(str(error)))
            yield page
        finally:
            context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


def submit_from_page(
    page: Any, agent: str, *, task: str = "", argv: str = "", tools: str = "", timeout: str = ""
) -> None:
    page.select_option("#f-agent", agent)
    if agent == "command":
        page.fill("#f-argv", argv)
    else:
        page.fill("#f-task", task)
        page.fill("#f-tools", tools)
    page.fill("#f-timeout", timeout)
    page.click("#f-submit")


def task_url(board: Dashboard, task_id: str) -> str:
    return f"{board.url}tasks/{task_id}"


def write_script(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


# ---- end to end in the browser -------------------------------------------------------------


@pytest.mark.timeout(180)
def test_submit_from_the_page_then_output_streams_live_and_replays_after_reload(
    runner: Runner, dashboard: Dashboard, browser_page: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    go = tmp_path / "go"
    token = uuid.uuid4().hex[:12]
    script = write_script(
        tmp_path / "job.py",
        "import os, sys, time\n"
        "for i in range(1, 4): print('step', i, flush=True)\n"
        "print('oops on stderr', file=sys.stderr, flush=True)\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.02)\n"
        "print('all done', sys.argv[1], flush=True)\n",
    )
    page.goto(signed(dashboard, dashboard.url))
    expect(page.locator("#conn")).to_have_text("live")
    submit_from_page(page, "command", argv=f"{PY} {script} {token}", timeout="120")
    expect(page.locator("#submit-ok")).to_contain_text("Submitted")
    href = page.locator("#submit-ok a").get_attribute("href") or ""
    task_id = href.rsplit("/", 1)[-1]
    assert runner.get(task_id) is not None

    # It appears in the queue view as running, pushed from ccx:events.
    row = page.locator(f'#running [data-task-id="{task_id}"]')
    expect(row).to_be_visible()
    expect(row).to_contain_text(token)
    row.locator("a.title").click()
    expect(page).to_have_url(task_url(dashboard, task_id))

    # Its output arrives while it runs (it cannot end before `go` exists).
    output = page.locator("#output")
    expect(output).to_contain_text("step 3")
    # Shown as stderr; its newline may arrive in a frame of its own (a span of its own).
    expect(output.locator(".err", has_text="oops on stderr")).to_be_visible()
    expect(page.locator("#task-status")).to_have_text("running")
    assert runner.get(task_id).status == "running"

    # A reload replays the log so far, then keeps streaming.
    page.reload()
    expect(output).to_contain_text("step 1")
    expect(output).to_contain_text("step 3")
    expect(page.locator("#task-status")).to_have_text("running")
    go.touch()
    expect(output).to_contain_text(f"all done {token}")
    expect(page.locator("#task-status")).to_have_text("finished")
    expect(page.locator("#result-card")).to_be_visible()
    expect(page.locator("#result-facts")).to_contain_text("exit 0")
    expect(page.locator("#result-output")).to_contain_text(f"all done {token}")
    expect(page.locator("#cancel")).to_be_hidden()

    # Back in the queue view it is listed as ended, with its duration and exit status.
    page.locator(".crumbs a").click()
    recent = page.locator(f'#recent [data-task-id="{task_id}"]')
    expect(recent).to_contain_text("finished")
    expect(recent).to_contain_text("exit 0")
    expect(recent).to_contain_text(re.compile(r"\d (ms|s)\b"))  # its duration


@pytest.mark.timeout(180)
def test_cancel_a_running_task_from_its_page(runner: Runner, dashboard: Dashboard, browser_page: Any) -> None:
    from playwright.sync_api import expect

    page = browser_page
    marker = f"dash-cancel-{uuid.uuid4().hex[:10]}"
    handle = runner.submit(
        agent="command", argv=[PY, "-c", "import time; print('sleeping', flush=True); time.sleep(600)", marker]
    )
    page.goto(signed(dashboard, task_url(dashboard, handle.id)))
    expect(page.locator("#output")).to_contain_text("sleeping")
    expect(page.locator("#task-status")).to_have_text("running")
    assert pids_with_marker(marker), "the task's process should be running"
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#cancel").click()
    expect(page.locator("#task-status")).to_have_text("cancelled")
    expect(page.locator("#result-facts")).to_contain_text("cancelled")
    expect(page.locator("#result-error")).to_contain_text("cancelled")
    assert runner.get(handle.id).status == "cancelled"
    wait_until(lambda: not pids_with_marker(marker), 20, what="the cancelled task's process to exit")


@pytest.mark.timeout(180)
def test_queue_view_orders_queued_tasks_and_cancels_one(
    runner: Runner, dashboard: Dashboard, browser_page: Any
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    marker = f"dash-blocker-{uuid.uuid4().hex[:10]}"
    blocker = runner.submit(
        agent="command",
        argv=[
            PY,
            "-c",
            "import time\nfor i in range(100000):\n    print('tick', i, flush=True); time.sleep(0.05)",
            marker,
        ],
    )
    first = runner.submit(agent="command", argv=["echo", "first-in-line"])
    second = runner.submit(agent="command", argv=["echo", "second-in-line"])
    try:
        page.goto(signed(dashboard, dashboard.url))
        running = page.locator(f'#running [data-task-id="{blocker.id}"]')
        expect(running).to_be_visible()
        expect(running.locator(".prog")).to_contain_text("lines")  # live progress from the job's meta
        queued = page.locator("#queued [data-task-id]")
        expect(queued).to_have_count(2)
        assert [queued.nth(i).get_attribute("data-task-id") for i in range(2)] == [first.id, second.id]
        expect(queued.nth(0)).to_contain_text("#1")
        expect(queued.nth(1)).to_contain_text("#2")

        page.once("dialog", lambda dialog: dialog.accept())
        queued.nth(0).locator("button").click()
        expect(page.locator(f'#recent [data-task-id="{first.id}"]')).to_contain_text("cancelled")
        expect(queued).to_have_count(1)
        expect(queued.nth(0)).to_contain_text("#1")
        assert runner.get(first.id).status == "cancelled"
        assert runner.get(blocker.id).status == "running"
    finally:
        runner.cancel(blocker.id)
    expect(page.locator(f'#recent [data-task-id="{second.id}"]')).to_contain_text("exit 0")
    assert runner.handle(second.id).result(timeout=30).output.strip() == "second-in-line"


@pytest.mark.timeout(120)
def test_invalid_submissions_show_the_spec_error(runner: Runner, dashboard: Dashboard, browser_page: Any) -> None:
    from playwright.sync_api import expect

    page = browser_page
    page.goto(signed(dashboard, dashboard.url))
    expect(page.locator("#conn")).to_have_text("live")
    error = page.locator("#submit-error")
    for agent, fields, message in [
        ("command", {"argv": ""}, "The command agent needs 'argv'"),
        ("claude", {"task": "  "}, "needs a non-empty 'task'"),
        ("command", {"argv": 'echo "unclosed'}, "'argv' is not a valid command line"),
        ("command", {"argv": "echo hi", "timeout": "-5"}, "'timeout' must be a positive number"),
        ("command", {"argv": "echo hi", "timeout": "soon"}, "'timeout' must be a positive number"),
        ("codex", {"task": "hi", "tools": "Write"}, "does not use 'tools'"),
    ]:
        submit_from_page(page, agent, **fields)
        expect(error).to_be_visible()
        expect(error).to_contain_text(message)
        expect(page.locator("#submit-ok")).to_be_hidden()
    assert runner.list() == [], "no invalid task may be queued"


@pytest.mark.timeout(180)
def test_claude_task_shows_a_transcript_with_a_raw_toggle_and_its_cost(
    redis_url: str, queue_name: str, browser_page: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    standin = write_script(tmp_path / "claude", CLAUDE_STANDIN)
    standin.chmod(0o755)
    go = tmp_path / "go"
    with LocalStack(
        redis_url=redis_url,
        queue=queue_name,
        env={"CCX_CLAUDE_BIN": str(standin), "CCX_WORKER_LOCK_TTL": "3"},
        worker_output=subprocess.DEVNULL,
    ) as stack:
        board = start_dashboard(redis_url, queue_name, tmp_path / "dashboard.log")
        runner = Runner(redis_url=stack.redis_url, queue=queue_name)
        try:
            handle = runner.submit(
                "Create a FastAPI app with a health endpoint", env={"STANDIN_GO": str(go), "SECRET_KEY": "hunter2"}
            )
            page.goto(signed(board, task_url(board, handle.id)))
            output = page.locator("#output")
            expect(output).to_contain_text("● session 5f1c9a2e-demo · model claude-sonnet-4-5")
            expect(output).to_contain_text("→ Write(app.py)")
            expect(output).to_contain_text("→ Bash(python -m pytest -q)")
            expect(output).to_contain_text("← 3 passed in 0.41s")
            expect(output).not_to_contain_text('"type"')
            expect(page.locator("#task-status")).to_have_text("running")
            go.touch()
            expect(output).to_contain_text("All three tests pass.")
            expect(output).to_contain_text("✓ Done: Create a FastAPI app")
            expect(page.locator("#task-status")).to_have_text("finished")
            expect(page.locator("#task-facts")).to_contain_text("$0.0412")
            expect(page.locator("#spec-facts")).to_contain_text("SECRET_KEY")  # env names, never values
            assert "hunter2" not in page.content() and str(go) not in page.content()
            page.locator('#mode button[data-mode="raw"]').click()
            expect(output).to_contain_text('{"type": "system", "subtype": "init"')
            page.locator('#mode button[data-mode="transcript"]').click()
            expect(output).not_to_contain_text('"type"')
            page.goto(signed(board, board.url))
            recent = page.locator(f'#recent [data-task-id="{handle.id}"]')
            expect(recent).to_contain_text("$0.0412")
            expect(recent).to_contain_text("claude")
        finally:
            runner.redis.close()
            board.stop()


@pytest.mark.timeout(240)
@pytest.mark.slow
def test_huge_output_stays_bounded_in_the_page_and_older_pages_load(
    runner: Runner, dashboard: Dashboard, browser_page: Any
) -> None:
    """20 MB streamed live: the page keeps up (skipping ahead), holds at most ~1 MB, and can page back."""
    from playwright.sync_api import expect

    page = browser_page
    line_count = 200_000
    script = (
        "import sys\n"
        "w = sys.stdout.write\n"
        f"for i in range({line_count}): w('line %07d ' % i + 'x' * 88 + '\\n')\n"
        "print('the very end', flush=True)\n"
    )
    blocker_marker = f"dash-hold-{uuid.uuid4().hex[:10]}"
    blocker = runner.submit(agent="command", argv=[PY, "-c", "import time; time.sleep(600)", blocker_marker])
    handle = runner.submit(agent="command", argv=[PY, "-c", script])
    page.goto(signed(dashboard, task_url(dashboard, handle.id)))
    expect(page.locator("#task-status")).to_have_text("queued")  # the page follows before the first byte
    runner.cancel(blocker.id)
    output = page.locator("#output")
    expect(page.locator("#task-status")).to_have_text("finished", timeout=120_000)
    expect(output).to_contain_text("the very end")
    held = page.evaluate("document.getElementById('output').textContent.length")
    assert held <= 1_100_000, f"the page holds {held} characters of output"
    assert runner.get(handle.id).status == "finished"

    # Reload: the newest page (~256 KiB), then "load older" pages back, contiguously.
    page.reload()
    expect(output).to_contain_text("the very end")
    first_line = re.compile(r"line (\d{7})")

    def first_shown() -> int:
        match = first_line.search(page.evaluate("document.getElementById('output').textContent.slice(0, 200)"))
        assert match, "the window should start with a numbered line"
        return int(match.group(1))

    start = first_shown()
    assert start > line_count - 10_000  # a page is ~256 KiB, plus at most one frame (<= 512 KiB)
    older = page.locator("#load-older")
    for _ in range(5):
        expect(older).to_be_visible()
        before = first_shown()
        older.click()
        expect(older).to_be_enabled()
        wait_until(lambda before=before: first_shown() < before, 20, what="older lines above")
    text = page.evaluate("document.getElementById('output').textContent")
    numbers = [int(n) for n in first_line.findall(text)]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "the window must be contiguous"
    assert len(text) <= 1_100_000
    # Five pages back fill the window: the newest output was dropped, and live output is paused.
    expect(page.locator("#detached")).to_be_visible()
    page.locator("#jump").click()
    expect(output).to_contain_text("the very end")
    expect(page.locator("#detached")).to_be_hidden()


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """GET ``url`` without following redirects: (status, the JSON body, or the Location header for a 3xx)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=10) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            return exc.code, exc.headers["Location"]
        return exc.code, json.load(exc)


@pytest.mark.timeout(120)
def test_with_a_token_the_browser_must_present_it_once(stack: LocalStack, browser_page: Any, tmp_path: Path) -> None:
    """The form (or the login link) exchanges the token for a session kept in sessionStorage: no cookie, and
    the token is in no address the browser shows or sends."""
    from playwright.sync_api import expect

    page = browser_page
    token = "s3cret-" + uuid.uuid4().hex
    assert stack.redis_url is not None
    board = start_dashboard(stack.redis_url, stack.queue, tmp_path / "dashboard.log", "--token", token)
    try:
        response = page.goto(board.url)  # the shell holds no data: served, and it asks for the token
        assert response is not None and response.status == 200
        expect(page.locator("#token")).to_be_visible()
        expect(page.locator("#queue-view")).to_be_hidden()
        page.fill("#token", "wrong")
        page.press("#token", "Enter")
        expect(page.locator("#login-msg")).to_have_text(WRONG_TOKEN)
        page.fill("#token", token)
        page.press("#token", "Enter")
        expect(page.locator("#conn")).to_have_text("live")  # /live admitted the token, and gave a session
        expect(page.locator("#queue-view")).to_be_visible()
        assert page.url == board.url
        assert page.context.cookies() == [], "the dashboard sets no cookie"
        session = page.evaluate("sessionStorage.getItem('ccx-dashboard-session')")
        assert session and len(session) >= 43 and token not in session

        assert _get(board.url + "api/queue") == (401, {"error": UNAUTHORIZED})
        assert _get(board.url + "api/queue", {"Authorization": "Bearer nope"}) == (401, {"error": NOT_VALID})
        for credential in (token, session):  # scripts send the token; the page sends its session
            status, body = _get(board.url + "api/queue", {"Authorization": f"Bearer {credential}"})
            assert status == 200 and body["queue"] == stack.queue

        # An old-style link (?token=) moves the token to the fragment, where the page takes it; a reload
        # keeps the session (sessionStorage lives as long as the tab).
        assert _get(board.url + "tasks/abc?token=x%20y&z=1") == (303, "/tasks/abc?z=1#token=x+y")
        page.goto(f"{board.url}?token={token}")
        expect(page.locator("#conn")).to_have_text("live")
        assert page.url == board.url
        page.reload()
        expect(page.locator("#conn")).to_have_text("live")
        assert page.evaluate("sessionStorage.getItem('ccx-dashboard-session')")
    finally:
        board.stop()
    log = (tmp_path / "dashboard.log").read_text()
    assert token not in log and session not in log, "neither the token nor a session is ever logged"


@pytest.mark.timeout(120)
def test_a_waiting_task_names_its_predecessor_and_progress_tracks_the_output_shown(
    runner: Runner, dashboard: Dashboard, browser_page: Any, tmp_path: Path
) -> None:
    """A deferred task shows which task it waits for (id and title); the running task's progress on its page
    counts exactly the lines the page shows, even while the task is quiet."""
    from playwright.sync_api import expect

    page = browser_page
    go = tmp_path / "go"
    code = "import os, sys, time\nfor i in range(224):\n    print(f'line {i}')\nsys.stdout.flush()\n"
    code += "while not os.path.exists(sys.argv[1]):\n    time.sleep(0.05)"
    running = runner.submit(agent="command", argv=[PY, "-c", code, str(go)])
    predecessor = runner.submit(agent="command", argv=["echo", "the predecessor"])
    waiting = runner.submit(agent="command", argv=["echo", "the follower"], after=predecessor.id)
    try:
        page.goto(signed(dashboard, dashboard.url))
        row = page.locator(f'#deferred [data-task-id="{waiting.id}"]')
        expect(row).to_contain_text(f"after {predecessor.id[:8]} · echo the predecessor (queued)")
        page.goto(task_url(dashboard, running.id))
        expect(page.locator("#output")).to_contain_text("line 223")
        expect(page.locator("#task-facts")).to_contain_text("224 lines")
    finally:
        go.touch()
    assert waiting.result(timeout=60).output == "the follower\n"


@pytest.mark.timeout(180)
def test_tasks_for_later_and_schedules_show_and_a_task_for_later_cancels_from_the_page(
    runner: Runner, dashboard: Dashboard, browser_page: Any
) -> None:
    """Scheduled tasks (soonest first, with their due time) and recurring schedules (cron, next run, the
    last task) have their sections; a cancel from the page ends a task for later, and one that comes due
    moves to the line, both pushed by their lifecycle events."""
    from playwright.sync_api import expect
    from rq.registry import ScheduledJobRegistry

    from runner import schedules

    page = browser_page
    queue = runner.settings.queue
    page.goto(signed(dashboard, dashboard.url))
    expect(page.locator("#conn")).to_have_text("live")
    for card in ("#scheduled-card", "#schedules-card"):
        expect(page.locator(card)).to_be_hidden()

    marker = f"dash-later-{uuid.uuid4().hex[:10]}"
    blocker = runner.submit(agent="command", argv=[PY, "-c", "import time; time.sleep(600)", marker])
    entry = schedules.add(runner.redis, queue, "0 3 * * *", {"agent": "command", "argv": ["true"]})
    try:
        expect(page.locator(f'#running [data-task-id="{blocker.id}"]')).to_be_visible()
        # From here on only the tasks' `scheduled` events tell the page (adding a schedule announces nothing).
        sooner = runner.submit(agent="command", argv=["echo", "sooner"], in_=3600)
        later = runner.submit(agent="command", argv=["echo", "later"], in_=7200)
        rows = page.locator("#scheduled [data-task-id]")
        expect(rows).to_have_count(2)
        assert [rows.nth(i).get_attribute("data-task-id") for i in range(2)] == [sooner.id, later.id]
        expect(page.locator("#scheduled-count")).to_have_text("(2)")
        due = runner.get(sooner.id).scheduled_for or ""
        expect(rows.nth(0)).to_contain_text("echo sooner")
        expect(rows.nth(0).locator(".when")).to_have_text(
            re.compile(rf"^in (1 h|5\d min) · (\d{{4}}-\d\d-\d\d )?{re.escape(due[11:16])} UTC$")
        )
        expect(rows.nth(1).locator(".when")).to_have_text(re.compile(r"^in (2 h|1 h 5\d min) · "))
        recurring = page.locator(f'#schedules [data-schedule-id="{entry.id}"]')
        expect(recurring).to_contain_text("0 3 * * *")
        expect(recurring).to_contain_text("true")
        expect(recurring.locator(".next")).to_have_text(
            re.compile(rf"^next run in .+ · ({clock.iso(entry.next_at)[:10]} )?03:00 UTC$")
        )
        expect(recurring).to_contain_text("not run yet")
        assert page.locator("#queued [data-task-id]").count() == 0

        # A task for later's own page says when it is due, and can cancel it.
        rows.nth(1).locator("a.title").click()
        expect(page).to_have_url(task_url(dashboard, later.id))
        expect(page.locator("#task-status")).to_have_text("scheduled")
        expect(page.locator("#task-facts")).to_contain_text(re.compile(r"Duein (2 h|1 h 5\d min) · "))
        expect(page.locator("#cancel")).to_be_visible()
        page.locator(".crumbs a").click()
        expect(rows).to_have_count(2)

        # Cancel the sooner one from its row: it ends, leaves the section, and is listed as ended.
        page.once("dialog", lambda dialog: dialog.accept())
        rows.nth(0).locator("button").click()
        expect(page.locator(f'#recent [data-task-id="{sooner.id}"]')).to_contain_text("cancelled")
        expect(rows).to_have_count(1)
        expect(page.locator(f'#scheduled [data-task-id="{sooner.id}"]')).to_have_count(0)
        wait_until(lambda: runner.get(sooner.id).status == "cancelled", 20, what="the task for later to be cancelled")
        # The cancel took it out of the tasks for later, too.
        assert runner.redis.zscore(keys.scheduled_key(queue), sooner.id) is None

        # The later one comes due now: the worker puts it in line (a `queued` event) and the section goes.
        due_now = int(time.time()) - 1
        runner.redis.zadd(ScheduledJobRegistry(queue, connection=runner.redis).key, {later.id: due_now})
        runner.redis.zadd(keys.scheduled_key(queue), {later.id: due_now})
        expect(page.locator(f'#queued [data-task-id="{later.id}"]')).to_be_visible()
        expect(page.locator("#scheduled-card")).to_be_hidden()

        # The schedule fires (as the worker does at 03:00): its row links to the task it submitted.
        [fired] = schedules.fire_due(runner, now=entry.next_at)
    finally:
        runner.cancel(blocker.id)
    last = recurring.locator("a.last")
    expect(last).to_have_attribute("href", f"/tasks/{fired}")
    expect(last).to_contain_text(fired[:8])
    expect(recurring.locator(".next")).to_contain_text(clock.iso(entry.next_at + 86400)[:10])
    assert runner.handle(later.id).result(timeout=60).output == "later\n"
    last.click()
    expect(page).to_have_url(task_url(dashboard, fired))
    expect(page.locator("#task-title")).to_have_text("true")


@pytest.mark.timeout(120)
def test_an_unknown_task_page_shows_only_the_message(dashboard: Dashboard, browser_page: Any) -> None:
    from playwright.sync_api import expect

    page = browser_page
    page.goto(signed(dashboard, task_url(dashboard, str(uuid.uuid4()))))
    expect(page.locator("#task-title")).to_contain_text("No task")
    for hidden in ("#output-card", "#spec-card", "#result-card", "#cancel"):
        expect(page.locator(hidden)).to_be_hidden()
    expect(page.locator("#task-facts")).to_be_empty()


@pytest.mark.timeout(120)
def test_a_paused_queue_shows_a_banner_with_its_reason_and_end_and_the_costs(
    runner: Runner, dashboard: Dashboard, browser_page: Any
) -> None:
    from playwright.sync_api import expect

    from runner import queue_state

    page = browser_page
    page.goto(signed(dashboard, dashboard.url))
    expect(page.locator("#pause")).to_be_hidden()
    until = (int(time.time()) // 86400 + 1) * 86400 + 19 * 3600 + 21 * 60  # 19:21 UTC tomorrow
    queue_state.pause(runner.redis, runner.settings.queue, PauseKind.USAGE_LIMIT, "five-hour usage limit", until)
    expect(page.locator("#pause")).to_have_text("Paused until 19:21 UTC — five-hour usage limit")
    runner.redis.hincrbyfloat(f"ccx:queue:{runner.settings.queue}:costs", f"day:{queue_state.today()}", 1.25)
    runner.redis.hincrbyfloat(f"ccx:queue:{runner.settings.queue}:costs", "total", 3.5)
    runner.set_budget(20)
    runner.pause("maintenance")
    expect(page.locator("#pause")).to_have_text("Paused — maintenance (`ccx resume` to go on)")
    expect(page.locator("#costs")).to_have_text("spent $1.2500 of $20.0000 today · $3.5000 in all")
    runner.resume()
    expect(page.locator("#pause")).to_be_hidden()


# ---- without a browser ---------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_the_dashboard_never_serves_without_a_token(tmp_path: Path, redis_url: str) -> None:
    """No token given: it makes one in a private file and says where (never what); a bad setting is one sentence."""
    with pytest.raises(DashboardError, match="needs a token"):
        DashboardConfig(host="127.0.0.1").check()
    DashboardConfig(host="0.0.0.0", token="t", allow_insecure=True).check()
    env = {k: v for k, v in os.environ.items() if k != "CCX_DASHBOARD_TOKEN"} | {"CCX_CONFIG_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [PY, "-m", "runner.dashboard", "--port", "0", "--redis-url", redis_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        token_file = tmp_path / "dashboard.token"
        assert f"token in {token_file}" in line and token_file.read_text().strip() not in line
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        url = line.split(" on ", 1)[1].split()[0]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + "api/queue", timeout=10)
        assert refused.value.code == 401
    finally:
        proc.terminate()
        proc.wait(15)
    for args, expected in (
        (["--port", "99999"], "--port must be a port number from 0 to 65535"),
        (["--redis-url", "http://x"], "--redis-url must be a redis://, rediss:// or unix:// URL"),
    ):
        done = subprocess.run(
            [PY, "-m", "runner.dashboard", *args], capture_output=True, text=True, timeout=30, env=env
        )
        assert done.returncode == 2 and expected in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.timeout(60)
def test_the_queue_view_has_tasks_for_later_soonest_first_and_the_schedules(redis_url: str, queue_name: str) -> None:
    """Without a worker: the snapshot's ``scheduled`` (by due time, a cancelled one left out) and
    ``schedules``, read in the same two round trips as the rest of the view."""
    import asyncio

    import redis.asyncio

    from runner import schedules
    from runner.dashboard.data import Reader

    runner = Runner(redis_url=redis_url, queue=queue_name)
    try:
        late = runner.submit(agent="command", argv=["echo", "late"], in_=7200)
        soon = runner.submit(agent="command", argv=["echo", "soon"], in_=600)
        dropped = runner.submit(agent="command", argv=["echo", "dropped"], in_=60)
        assert runner.cancel(dropped.id) == "cancelled"
        now = runner.submit(agent="command", argv=["echo", "now"])
        entry = schedules.add(runner.redis, queue_name, "0 3 * * *", {"agent": "command", "argv": ["true"]})

        async def snapshots() -> tuple[dict[str, Any], int, str, dict[str, Any]]:
            client = redis.asyncio.Redis.from_url(redis_url)
            reader = Reader(client, queue_name)
            round_trips = 0
            pipeline = client.pipeline

            def counted(*args: Any, **kwargs: Any) -> Any:
                nonlocal round_trips
                round_trips += 1
                return pipeline(*args, **kwargs)

            try:
                first = await reader.snapshot()  # reads the cancelled task's result summary once
                client.pipeline = counted  # type: ignore[method-assign]
                await reader.snapshot()
                trips = round_trips
                [fired] = await asyncio.to_thread(schedules.fire_due, runner, entry.next_at)
                return first, trips, fired, await reader.snapshot()
            finally:
                await client.aclose()

        view, trips, fired, after_firing = asyncio.run(snapshots())

        assert trips == 2, "the scheduled tasks and the schedules come with the queue's own reads"
        assert [row["id"] for row in view["scheduled"]] == [soon.id, late.id]
        assert view["scheduled_total"] == 2
        for row, handle, name in zip(view["scheduled"], (soon, late), ("soon", "late"), strict=True):
            record = runner.get(handle.id)
            assert record is not None and record.scheduled_for is not None
            assert row["status"] == "scheduled" and row["scheduled_for"] == record.scheduled_for
            assert row["title"] == f"echo {name}"
        ended = [row["id"] for row in view["recent"]]
        assert ended == [dropped.id], "a task for later is never among the ended ones (unless cancelled)"
        assert [row["id"] for row in view["queued"]] == [now.id]
        assert not view["running"] and not view["deferred"]
        assert view["schedules"] == [
            {
                "id": entry.id,
                "cron": "0 3 * * *",
                "agent": "command",
                "title": "true",
                "next_at": clock.iso(entry.next_at),
                "last_at": None,
                "last_task": None,
                "last_status": None,
            }
        ]
        [fired_entry] = after_firing["schedules"]
        assert fired_entry["next_at"] == clock.iso(entry.next_at + 86400)
        assert fired_entry["last_at"] == clock.iso(entry.next_at)
        assert fired_entry["last_task"] == fired and after_firing["queued"][-1]["id"] == fired
        assert fired_entry["last_status"] == "queued"
    finally:
        runner.redis.close()


def _headers(**values: str) -> Headers:
    return Headers({name.replace("_", "-"): value for name, value in values.items()})


def test_token_check() -> None:
    token = "correct horse battery staple"
    auth = Auth(token, "0.0.0.0")
    host = "dash.example:8766"

    # The page's shell is no secret; an old-style login link moves the token to the fragment.
    assert auth.decide("/", _headers(Host=host), Kind.PAGE).verdict is Verdict.ALLOW
    moved = auth.decide(f"/tasks/abc?token={token.replace(' ', '+')}&x=1", _headers(Host=host), Kind.PAGE)
    assert (moved.verdict, moved.location) == (Verdict.REDIRECT, "/tasks/abc?x=1#token=correct+horse+battery+staple")

    # The API: a bearer token or session, never a cookie (not even one holding the token).
    assert auth.decide("/api/queue", _headers(Host=host), Kind.API).reason == UNAUTHORIZED
    for cookie in (f"ccx_dashboard_8766={token}", f"session={token}"):
        assert auth.decide("/api/queue", _headers(Host=host, Cookie=cookie), Kind.API).verdict is Verdict.LOGIN
    assert auth.decide("/api/queue", _headers(Host=host, Authorization=f"Bearer {token}"), Kind.API).with_token
    refused = auth.decide("/api/queue", _headers(Host=host, Authorization="Bearer nope"), Kind.API)
    assert (refused.verdict, refused.reason) == (Verdict.LOGIN, NOT_VALID)

    # /live: the handshake passes Host and Origin; its first message logs in (a new session) or presents one.
    origin = {"Host": host, "Origin": f"http://{host}"}
    assert auth.decide("/live", _headers(**origin), Kind.LIVE).verdict is Verdict.ALLOW
    evil = auth.decide("/live", _headers(Host=host, Origin="http://evil.example"), Kind.LIVE)
    assert evil.verdict is Verdict.FORBIDDEN
    wrong = auth.admit(json.dumps({"op": "auth", "token": "nope"}))
    assert (wrong.close_code, wrong.reason, wrong.key) == (CLOSE_WRONG_TOKEN, WRONG_TOKEN, "")
    login = auth.admit(json.dumps({"op": "auth", "token": token}))
    assert login.key and login.new_session and token not in login.new_session
    again = auth.admit(json.dumps({"op": "auth", "session": login.new_session}))
    assert (again.key, again.new_session, again.close_code) == (login.key, "", 0)
    bearer = auth.decide("/api/queue", _headers(Host=host, Authorization=f"Bearer {login.new_session}"), Kind.API)
    assert (bearer.verdict, bearer.session) == (Verdict.ALLOW, login.key)
    unknown = auth.admit(json.dumps({"op": "auth", "session": "forged"}))
    assert (unknown.close_code, unknown.reason) == (CLOSE_SESSION_ENDED, SESSION_ENDED)
    for first in ("{", "[]", json.dumps({"op": "submit"}), json.dumps({"op": "auth", "session": 5}), ""):
        assert (auth.admit(first).close_code, auth.admit(first).reason) == (CLOSE_NO_AUTH, AUTH_FIRST), first
    # The sessions are kept by digest only: the store holds neither a session nor the token.
    assert login.new_session not in repr(vars(auth.sessions)) and token not in repr(vars(auth.sessions))


def test_token_comparisons_are_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth_module.hmac, "compare_digest", spy)
    assert token_matches("abc", "abc") and not token_matches("abc", "abd") and not token_matches("", "abc")
    assert not token_matches("é", "e")  # non-ASCII compares as bytes, without raising
    auth = Auth("tok", "0.0.0.0")
    auth.decide("/api/queue", _headers(Host="h", Authorization="Bearer guess"), Kind.API)
    auth.admit(json.dumps({"op": "auth", "token": "guess"}))
    assert len(calls) == 6


def test_only_loopback_hosts_and_same_origin_websockets_are_served() -> None:
    auth = Auth("tok", "127.0.0.1")
    for host in ("127.0.0.1:8766", "localhost:8766", "[::1]:8766", "LOCALHOST"):
        assert auth.decide("/", _headers(Host=host), Kind.PAGE).verdict is Verdict.ALLOW, host
    for kind in Kind:  # DNS rebinding: a page at attacker.example resolving to 127.0.0.1
        assert auth.decide("/api/queue", _headers(Host="attacker.example:8766"), kind).verdict is Verdict.FORBIDDEN
    same = _headers(Host="127.0.0.1:8766", Origin="http://127.0.0.1:8766")
    assert auth.decide("/live", same, Kind.LIVE).verdict is Verdict.ALLOW
    for origin in ("https://some-site.example", "http://127.0.0.1:9999", "null"):  # another port is another origin
        other = _headers(Host="127.0.0.1:8766", Origin=origin)
        assert auth.decide("/live", other, Kind.LIVE).verdict is Verdict.FORBIDDEN, origin
    assert auth.decide("/live", _headers(Host="127.0.0.1:8766"), Kind.LIVE).verdict is Verdict.ALLOW
    with pytest.raises(ValueError):
        Auth("", "127.0.0.1")


def test_transcript_lines_span_frames_and_cut_lines_are_marked() -> None:
    event = (
        '{"type":"assistant","message":{"content":[{"type":"tool_use","name":"Write","input":{"file_path":"a.py"}}]}}\n'
    )
    transcript = Transcript()
    assert transcript.feed(event[:30]) == []
    assert transcript.feed(event[30:]) == ["→ Write(a.py)"]
    resumed = Transcript(carry=event[:30])
    assert resumed.feed(event[30:] + "plain text\n") == ["→ Write(a.py)", "plain text"]
    unknown = Transcript(carry=None)
    assert unknown.feed(event[30:] + event) == ["…" + event[30:-1], "→ Write(a.py)"]
    assert Transcript().feed("x" * 2_000_000 + "\n")[0].startswith("[a line of 2,000,000 characters")
    assert Transcript().feed('{"type":"result","result":"ok","total_cost_usd":0.5}') == []


@pytest.mark.timeout(60)
def test_long_entries_are_split_into_chunks_and_older_pages_resume_mid_entry(redis_url: str) -> None:
    """A frame can hold a megabyte: chunks stay small, and paging back from any chunk loses nothing."""
    task_id = f"split-{uuid.uuid4().hex}"
    frames = ["".join(f"{n:06d}-{i:05d}\n" for i in range(25_000)) for n in range(3)]  # 325,000 chars each

    async def run() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            for seq, data in enumerate(frames):
                event = {"type": "output", "task_id": task_id, "seq": seq, "stream": "stdout", "data": data}
                await client.xadd(keys.log_key(task_id), {"e": json.dumps(event)})
            entries, more = await read_page(client, task_id, None)
            assert [e[1]["seq"] for e in entries] == [2] and more
            chunks = logview.make_chunks(entries, None)
            assert max(chunk["chars"] for chunk in chunks) <= logview.CHUNK_CHARS + logview.PIECE_CHARS
            assert "".join(text for chunk in chunks for _, text in chunk["parts"]) == frames[2]
            # The page dropped all but the last two chunks; paging back from there gives exactly what preceded.
            kept = chunks[-2:]
            shown = "".join(text for chunk in kept for _, text in chunk["parts"])
            older, _ = await read_page(client, task_id, kept[0]["first"], kept[0]["offset"])
            before = "".join(text for chunk in logview.make_chunks(older, None) for _, text in chunk["parts"])
            assert kept[0]["offset"] > 0
            assert (before + shown).endswith(frames[1] + frames[2])
        finally:
            await client.delete(keys.log_key(task_id))
            await client.aclose()

    asyncio.run(run())


# ---- screenshots for docs/dashboard.md -----------------------------------------------------


def take_screenshots(out_dir: Path) -> None:
    """Run a stack with a few tasks (a Claude stand-in among them) and photograph both views (and the queue
    paused, and with tasks for later and schedules)."""
    from playwright.sync_api import expect, sync_playwright

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ccx-shots-") as tmp:
        tmp_path = Path(tmp)
        standin = write_script(tmp_path / "claude", CLAUDE_STANDIN)
        standin.chmod(0o755)
        go = tmp_path / "go"
        env = {
            "CCX_CLAUDE_BIN": str(standin),
            "STANDIN_GO": str(go),
            "STANDIN_WAIT_FOR": "Create a FastAPI app",
            "STANDIN_DELAY": "0.6",  # the worker writes progress at most twice a second
        }
        with LocalStack(env=env, worker_output=subprocess.DEVNULL) as stack:
            assert stack.redis_url is not None
            runner = Runner(redis_url=stack.redis_url, queue=stack.queue)
            board = start_dashboard(stack.redis_url, stack.queue, tmp_path / "dashboard.log")
            try:
                done = [
                    runner.submit("Add a /health endpoint to the FastAPI app and test it", tools=["Write", "Edit"]),
                    runner.submit(agent="command", argv=["uname", "-sr"]),
                    runner.submit(agent="command", argv=["make", "-C", str(tmp_path), "lint"]),
                    runner.submit("Summarise the open issues labelled 'bug'", tools=["Bash"]),
                ]
                for handle in done:
                    handle.result(timeout=60)
                running = runner.submit("Create a FastAPI app with a health endpoint", tools=["Write", "Edit", "Bash"])
                runner.submit("Refactor the config loader to use dataclasses", tools=["Edit"])
                runner.submit(agent="command", argv=["make", "docs"])
                runner.submit("Write release notes for v0.2 from the git log", tools=["Bash"])
                wait_until(lambda: "3 passed" in _log_text(runner, running.id), 30, what="the running task's output")
                with sync_playwright() as playwright:
                    context = playwright.chromium.launch_persistent_context(
                        str(tmp_path / "profile"),
                        executable_path=str(CHROMIUM),
                        args=CHROMIUM_ARGS,
                        viewport={"width": 1280, "height": 820},
                        device_scale_factor=1,
                    )
                    page = context.pages[0] if context.pages else context.new_page()
                    page.goto(signed(board, board.url))
                    expect(page.locator("#queued [data-task-id]")).to_have_count(3)
                    expect(page.locator("#running .prog")).to_contain_text("6 lines")
                    page.fill("#f-task", "Add rate limiting to the public API")
                    page.fill("#f-tools", "Edit, Bash")
                    page.screenshot(path=str(out_dir / "dashboard-queue.png"))
                    from runner import queue_state

                    until = (int(time.time()) // 3600 + 3) * 3600 + 21 * 60
                    queue_state.pause(runner.redis, stack.queue, "usage_limit", "five-hour usage limit", until)
                    expect(page.locator("#pause")).to_contain_text("five-hour usage limit")
                    page.screenshot(path=str(out_dir / "dashboard-paused.png"))
                    runner.resume()
                    from runner import schedules

                    nightly = {"task": "Run the nightly dependency update", "tools": ["Edit", "Bash"]}
                    schedules.add(runner.redis, stack.queue, "0 3 * * *", nightly)
                    weekly = {"task": "Triage the issues opened last week", "tools": ["Bash"]}
                    schedules.add(runner.redis, stack.queue, "0 9 * * 1", weekly)
                    # Adding a schedule announces nothing; these tasks' `scheduled` events refresh the view.
                    tomorrow_7 = (int(time.time()) // 86400 + 1) * 86400 + 7 * 3600
                    runner.submit("Check the deploy of v0.2 and report any 5xx", tools=["Bash"], in_=25 * 60)
                    runner.submit("Summarise yesterday's CI failures", tools=["Bash"], at=float(tomorrow_7))
                    expect(page.locator("#scheduled [data-task-id]")).to_have_count(2)
                    expect(page.locator("#schedules [data-schedule-id]")).to_have_count(2)
                    page.screenshot(path=str(out_dir / "dashboard-scheduled.png"), full_page=True)
                    page.goto(signed(board, task_url(board, running.id)))
                    expect(page.locator("#output")).to_contain_text("3 passed")
                    expect(page.locator("#task-facts")).to_contain_text("6 lines")
                    page.screenshot(path=str(out_dir / "dashboard-task.png"))
                    context.close()
            finally:
                go.touch()
                board.stop()
                runner.redis.close()


def _log_text(runner: Runner, task_id: str) -> str:
    entries = runner.redis.xrange(f"ccx:task:{task_id}:log")
    return "".join(json.loads(fields[b"e"]).get("data", "") for _, fields in entries)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Retake the dashboard screenshots of docs/dashboard.md.")
    parser.add_argument("--screenshots", type=Path, default=Path("docs/images"), help="output directory")
    take_screenshots(parser.parse_args().screenshots)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.231.7.1", "::"])
def test_off_loopback_the_dashboard_wants_tls_or_an_explicit_insecure_flag(host: str) -> None:
    """Issue 20, item 12: a dashboard bound off loopback would send its token and task output in clear text.
    It is refused with a sentence before it binds anything, unless it has TLS or CCX_ALLOW_INSECURE says so."""
    config = DashboardConfig(host=host, token="t")
    with pytest.raises(DashboardError) as refused:
        config.check()
    assert str(refused.value) == (
        f"The dashboard on --host {host} would send its token and every task's output in clear text: give "
        "--tls-cert and --tls-key, or bind 127.0.0.1 (CCX_ALLOW_INSECURE=1 if the network is private)."
    )
    DashboardConfig(host=host, token="t", allow_insecure=True).check()
    DashboardConfig(host=host, token="t", tls_cert="c.pem", tls_key="k.pem").check()
    with pytest.raises(DashboardError, match="go together"):
        DashboardConfig(host=host, token="t", tls_cert="c.pem").check()


@pytest.mark.timeout(60)
def test_with_a_certificate_the_dashboard_serves_https_only(redis_url: str, queue_name: str, tmp_path: Path) -> None:
    import ssl

    from tests.support.certs import make_certs

    certs = make_certs(tmp_path / "certs")
    tls = ("--tls-cert", str(certs.cert), "--tls-key", str(certs.key))
    board = start_dashboard(redis_url, queue_name, tmp_path / "dashboard.log", *tls)
    try:
        assert board.url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(certs.ca))
        with urllib.request.urlopen(board.url + "healthz", context=context, timeout=10) as reply:
            assert reply.status == 200
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # a TLS port answers no plain HTTP
            urllib.request.urlopen(board.url.replace("https://", "http://") + "healthz", timeout=10)
    finally:
        board.stop()


@pytest.mark.parametrize("name", ["Host", "Origin", "Authorization"])
def test_a_header_sent_twice_is_a_400_saying_so_not_a_500(
    name: str, redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    """Reading a repeated Host, Origin or Authorization raised (a 500); which copy the checks read would be a
    guess. The live WebSocket reads all three; the same values sent once are let in."""
    board = start_dashboard(redis_url, queue_name, tmp_path / "dashboard.log")
    try:
        port = int(board.url.rsplit(":", 1)[1].strip("/"))
        headers = {
            "Host": f"127.0.0.1:{port}",
            "Origin": f"http://127.0.0.1:{port}",
            "Authorization": f"Bearer {board.token}",
            **WEBSOCKET_UPGRADE,
        }
        assert send_twice(port, "GET", LIVE_PATH, headers, "") == (101, b"")
        status, body = send_twice(port, "GET", LIVE_PATH, headers, name)
        assert (status, json.loads(body)) == (
            400,
            {"error": f"Bad request: the {name} header was sent more than once; send it once."},
        )
    finally:
        board.stop()
