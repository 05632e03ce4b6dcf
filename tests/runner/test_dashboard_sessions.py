"""The dashboard's sessions: how they end (idle, maximum age, logout, a restart) and what the user is told.

Three levels: the session store with a clock the test moves; the real server in this process (a real Redis,
real WebSocket and HTTP clients) with that clock, so a 12-hour idle passes at once; and a real dashboard
process with Chromium, for what the page says. Nothing waits by sleeping: every wait is on a condition,
with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from runner.dashboard import server as server_module
from runner.dashboard.auth import (
    ALL_ENDED,
    AUTH_FIRST,
    CLOSE_NO_AUTH,
    CLOSE_SESSION_ENDED,
    LOGGED_OUT,
    NOT_VALID,
    SESSION_ENDED,
    WRONG_TOKEN,
    Auth,
    Sessions,
)
from runner.dashboard.server import DashboardConfig, login_url, serve_dashboard
from tests.runner.test_dashboard import browser_page, start_dashboard

__all__ = ["browser_page"]  # the dashboard tests' headless Chromium fixture, used here

DEADLINE = 20.0


class Clock:
    """A clock the test moves: a session's hours pass in no time."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


# ---- the store -------------------------------------------------------------------------------------


def test_sessions_end_when_idle_at_their_maximum_age_and_when_revoked() -> None:
    clock = Clock()
    sessions = Sessions(idle=100.0, max_age=1_000.0, limit=3, clock=clock)
    value, key = sessions.create()
    assert len(value) >= 43 and key == Sessions.key(value) and value not in key
    clock.now += 99
    assert sessions.use(value) == key  # use restarts the idle count
    clock.now += 99
    assert sessions.use(value) == key
    clock.now += 100
    assert sessions.use(value) is None and len(sessions) == 0, "100 s unused: ended, and forgotten"

    value, key = sessions.create()
    sessions.opened(key)
    clock.now += 500  # an open page is use: no idling while it is open
    assert sessions.alive(key) and sessions.use(value) == key
    sessions.closed(key)
    clock.now += 99
    assert sessions.alive(key)  # idling counts from when the last page went
    sessions.opened(key)
    clock.now += 401  # 1,000 s after it began: over, however busy
    assert not sessions.alive(key) and sessions.use(value) is None

    first, first_key = sessions.create()
    second, second_key = sessions.create()
    assert sessions.revoke(first_key) and not sessions.revoke(first_key)
    assert sessions.use(first) is None and sessions.use(second) == second_key
    assert sessions.revoke_all() == 1 and sessions.use(second) is None

    made = [sessions.create() for _ in range(3)]
    sessions.use(made[0][0])  # the first is now the most recently used: the second goes first
    sessions.create()
    assert sessions.use(made[1][0]) is None and sessions.use(made[0][0]) and len(sessions) == 3
    clock.now += 101
    sessions.prune()
    assert len(sessions) == 0


# ---- the server, in this process, on a clock the test moves -----------------------------------------


@dataclass
class Served:
    url: str
    token: str
    clock: Clock
    auths: list[Auth] = field(default_factory=list)

    @property
    def live(self) -> str:
        return self.url.replace("http://", "ws://") + "live"

    async def get(self, path: str, credential: str) -> tuple[int, dict[str, Any]]:
        def fetch() -> tuple[int, dict[str, Any]]:
            request = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {credential}"})
            try:
                with urllib.request.urlopen(request, timeout=10) as reply:
                    return reply.status, json.load(reply)
            except urllib.error.HTTPError as exc:
                return exc.code, json.load(exc)

        return await asyncio.to_thread(fetch)

    async def log_in(self) -> tuple[ClientConnection, str]:
        """A /live connection logged in with the token: (the open connection, its new session)."""
        ws = await connect(self.live, open_timeout=10, close_timeout=5)
        await ws.send(json.dumps({"op": "auth", "token": self.token}))
        message = json.loads(await asyncio.wait_for(ws.recv(), DEADLINE))
        assert message["type"] == "session"
        assert json.loads(await asyncio.wait_for(ws.recv(), DEADLINE))["type"] == "hello"
        return ws, message["session"]


@contextlib.asynccontextmanager
async def serving(redis_url: str, queue: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    """``serve_dashboard`` on 127.0.0.1 (a free port) whose sessions run on a :class:`Clock`; stopped after."""
    served = Served("", "tok-" + uuid.uuid4().hex, Clock())

    def auth(token: str, host: str) -> Auth:
        made = Auth(token, host, Sessions(clock=served.clock))
        served.auths.append(made)
        return made

    monkeypatch.setattr(server_module, "Auth", auth)
    monkeypatch.setattr(server_module, "SESSION_SWEEP", 0.05)  # the sweep for sessions past their maximum age
    monkeypatch.setattr(server_module, "AUTH_TIMEOUT", 0.5)
    config = DashboardConfig(host="127.0.0.1", port=0, redis_url=redis_url, queue=queue, token=served.token)
    stop = asyncio.Event()
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_dashboard(config, stop, on_ready=ready.set_result, announce=False))
    try:
        served.url = await asyncio.wait_for(ready, DEADLINE)
        yield served
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE)


async def closed_with(ws: ClientConnection) -> tuple[int | None, str, list[str]]:
    """Read until the dashboard closes ``ws``: (its close code, its reason, the messages before)."""
    seen: list[str] = []
    try:
        async with asyncio.timeout(DEADLINE):
            while True:
                seen.append(str(await ws.recv()))
    except ConnectionClosed as closed:
        return (closed.rcvd.code, closed.rcvd.reason, seen) if closed.rcvd else (None, "", seen)


async def refused_on_live(served: Served, first: dict[str, Any] | None) -> tuple[int | None, str, list[str]]:
    async with connect(served.live, open_timeout=10, close_timeout=5) as ws:
        if first is not None:
            await ws.send(json.dumps(first))
        return await closed_with(ws)


@pytest.mark.timeout(60)
def test_an_expired_session_is_refused_with_one_sentence(
    redis_url: str, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        async with serving(redis_url, queue_name, monkeypatch) as served:
            idle, max_age = served.auths[0].sessions.idle, served.auths[0].sessions.max_age
            began = served.clock.now
            ws, session = await served.log_in()
            served.clock.now += idle + 1  # a page left open keeps its session
            assert (await served.get("api/queue", session))[0] == 200
            await ws.close()

            async def expired() -> bool:
                # Each try moves the clock past the idle time: once the server has seen the page go, refused.
                served.clock.now += idle + 1
                return (await served.get("api/queue", session))[0] == 401

            async with asyncio.timeout(DEADLINE):
                while not await expired():
                    pass
            assert served.clock.now - began < max_age / 2, "ended by idling, not by its maximum age"
            assert await served.get("api/queue", session) == (401, {"error": NOT_VALID})
            assert await refused_on_live(served, {"op": "auth", "session": session}) == (
                CLOSE_SESSION_ENDED,
                SESSION_ENDED,
                [],
            )

            # However busy, a session ends at its maximum age: its open page is closed, saying so.
            ws, session = await served.log_in()
            await ws.send(json.dumps({"op": "watch"}))
            served.clock.now += max_age
            code, reason, _ = await closed_with(ws)
            assert (code, reason) == (CLOSE_SESSION_ENDED, SESSION_ENDED)
            assert await served.get("api/queue", session) == (401, {"error": NOT_VALID})

            # A connection that does not authenticate first gets nothing and is closed.
            assert await refused_on_live(served, None) == (CLOSE_NO_AUTH, AUTH_FIRST, [])
            assert await refused_on_live(served, {"op": "watch"}) == (CLOSE_NO_AUTH, AUTH_FIRST, [])

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_logout_ends_the_session_and_closes_its_pages_and_the_token_ends_them_all(
    redis_url: str, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        async with serving(redis_url, queue_name, monkeypatch) as served:
            ws, session = await served.log_in()
            other, other_session = await served.log_in()
            assert await served.get("api/logout", session) == (200, {"ok": True, "message": LOGGED_OUT})
            assert (await closed_with(ws))[:2] == (CLOSE_SESSION_ENDED, LOGGED_OUT)
            assert await served.get("api/queue", session) == (401, {"error": NOT_VALID})
            assert (await served.get("api/queue", other_session))[0] == 200, "another browser stays logged in"

            third, _ = await served.log_in()
            status, body = await served.get("api/logout", served.token)  # the operator ends every session
            assert (status, body["message"]) == (
                200,
                "Ended every dashboard session (2): each browser must open the login link again.",
            )
            for page in (other, third):
                assert (await closed_with(page))[:2] == (CLOSE_SESSION_ENDED, ALL_ENDED)
            assert await served.get("api/queue", other_session) == (401, {"error": NOT_VALID})

    asyncio.run(scenario())


# ---- in the browser ---------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_page_whose_session_ended_says_why_in_one_sentence(
    redis_url: str, queue_name: str, browser_page: Any, tmp_path: Path
) -> None:
    """Logged out from the page, ended by the operator, the dashboard restarted, a wrong token in the link:
    the page says so in one sentence and asks for the login link; the link, opened again, logs back in."""
    from playwright.sync_api import expect

    page = browser_page
    board = start_dashboard(redis_url, queue_name, tmp_path / "dashboard.log")
    try:
        message = page.locator("#login-msg")
        page.goto(login_url(board.url, board.token))
        expect(page.locator("#conn")).to_have_text("live")
        page.locator("#logout").click()
        expect(message).to_have_text(LOGGED_OUT)
        expect(page.locator("#queue-view")).to_be_hidden()
        assert page.evaluate("sessionStorage.length") == 0

        page.goto(login_url(board.url, board.token))  # only the fragment changes: the page logs in again
        expect(page.locator("#conn")).to_have_text("live")
        expect(message).to_be_hidden()
        ended = urllib.request.Request(board.url + "api/logout", headers={"Authorization": f"Bearer {board.token}"})
        with urllib.request.urlopen(ended, timeout=10) as reply:
            assert json.load(reply)["ok"]
        expect(message).to_have_text(ALL_ENDED)

        page.goto(login_url(board.url, "not-the-token"))
        expect(message).to_have_text(WRONG_TOKEN)
        page.goto(login_url(board.url + "tasks/" + str(uuid.uuid4()), board.token))
        expect(page.locator("#conn")).to_have_text("live")
        port = board.url.rsplit(":", 1)[1].strip("/")
        board.stop()
        expect(page.locator("#conn")).to_have_text("reconnecting…")
        # The dashboard back on the same port: a new process, whose memory holds no session.
        board = start_dashboard(redis_url, queue_name, tmp_path / "dashboard.log", "--port", port)
        expect(message).to_have_text(SESSION_ENDED)
        expect(page.locator("#task-view")).to_be_hidden()
    finally:
        board.stop()
