"""Who may use the dashboard: the token, the sessions it is exchanged for, and the Host and Origin checks.

No cookie. A browser scopes cookies by host, not by port: it sends the dashboard's cookie to any other
program listening on another port of 127.0.0.1 (another local user's, say), which could replay it. So:

* The dashboard always has a token (given, or made once in a private file, as Jupyter does). The
  browser presents it once, from the login link's fragment (``/#token=…``: a fragment is never sent
  over HTTP) or the login form, as the first message on ``/live``, and gets a *session* back.
* A session is a random value the dashboard keeps in memory (only its SHA-256, looked up in a dict)
  and the page keeps in ``sessionStorage``, which is per origin, so per port: no other port's page
  can read it. The page sends it explicitly: as the first message on each ``/live`` connection and as
  ``Authorization: Bearer <session>`` on the JSON endpoints. A cookie, if one arrives, is ignored.
* A session ends after :data:`SESSION_IDLE` unused, :data:`SESSION_MAX_AGE` after it began, at
  ``/api/logout``, or when the dashboard restarts (they live in its memory only).
* Scripts send ``Authorization: Bearer <token>``. The token is compared in constant time and never
  logged or echoed; neither is a session.

Two more checks keep other web sites out: bound to loopback, the ``Host`` header must name the
loopback (a DNS-rebinding page cannot talk to it), and a WebSocket's ``Origin`` must be the dashboard
itself. Submit and cancel travel only over that WebSocket, so every state-changing request passes both
checks, then the session check.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson
from websockets.datastructures import Headers

from handler.config import is_loopback

TOKEN_PARAM = "token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

SESSION_IDLE = 12 * 3600.0
"""Seconds a session lives unused (no request and no open ``/live``): a working day, so a page left open
keeps working, while a browser walked away from asks for the login link again the next morning."""
SESSION_MAX_AGE = 7 * 24 * 3600.0
"""Seconds a session lives at most, however busy: a session that leaked somehow does not last forever."""
MAX_SESSIONS = 1000
"""Sessions kept at most (only holders of the token make them); past it, the least recently used ends."""
AUTH_TIMEOUT = 10.0
"""Seconds a ``/live`` connection may stay open before its first message, which must authenticate it."""

CLOSE_NO_AUTH = 4400
CLOSE_SESSION_ENDED = 4401
CLOSE_WRONG_TOKEN = 4403
"""WebSocket close codes (4000–4999 are the application's): the page shows the close reason and asks to log in."""

# What a user meets, one sentence each. Close reasons must fit in 123 bytes (a WebSocket close frame).
SESSION_ENDED = (
    "Your dashboard session expired or the dashboard restarted: open the login link again (`ccx dashboard` prints it)."
)
WRONG_TOKEN = "That token is not right: check it, or open the login link `ccx dashboard` prints."
AUTH_FIRST = 'The first message on /live must be {"op": "auth", "session": …} or {"op": "auth", "token": …}.'
LOGGED_OUT = "You logged out: open the login link again (`ccx dashboard` prints it) to come back."
ALL_ENDED = "The dashboard's sessions were ended with its token: open the login link again (`ccx dashboard` prints it)."
UNAUTHORIZED = (
    "Unauthorized: send 'Authorization: Bearer <token>' (the dashboard's token, or a session from its login); "
    "cookies are not accepted."
)
NOT_VALID = (
    "Your dashboard session expired or the dashboard restarted, or the token is wrong: "
    "open the login link again (`ccx dashboard` prints it)."
)


class Kind(enum.Enum):
    """What a request is for, which decides what it must carry."""

    PAGE = "page"
    """The page's shell (``/``, ``/tasks/<id>``): static, no data in it, so it is served without credentials."""
    API = "api"
    """JSON endpoints and metrics: ``Authorization: Bearer <session or token>``."""
    LIVE = "live"
    """The ``/live`` WebSocket: its first message authenticates it (:meth:`Auth.admit`)."""


class Verdict(enum.Enum):
    ALLOW = "allow"
    LOGIN = "login"
    """No credentials, or wrong or ended ones (401, with :attr:`Decision.reason`)."""
    REDIRECT = "redirect"
    """An old-style login link (``?token=``): to the same address with the token in the fragment instead."""
    FORBIDDEN = "forbidden"
    """A request from somewhere the dashboard does not serve (Host or Origin check)."""
    BAD_REQUEST = "bad_request"
    """A request with Host, Origin or Authorization sent twice (:func:`repeated_header`)."""


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    location: str = ""
    reason: str = ""
    session: str = ""
    """The key (:meth:`Sessions.key`) of the session that authenticated the request, if one did."""
    with_token: bool = False
    """Whether the request authenticated with the token itself."""


@dataclass(frozen=True)
class Admission:
    """The outcome of a ``/live`` connection's first message."""

    key: str = ""
    """The session's key when admitted."""
    new_session: str = ""
    """The session to hand the page, when it logged in with the token."""
    close_code: int = 0
    reason: str = ""


def token_matches(supplied: str, expected: str) -> bool:
    """Constant-time comparison of two secrets (as UTF-8 bytes, so any text compares safely)."""
    return hmac.compare_digest(supplied.encode(), expected.encode())


def host_name(host_header: str) -> str:
    """``example.org:8766`` → ``example.org``; ``[::1]:8766`` → ``::1``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


SINGLE_HEADERS = ("host", "origin", "authorization")
"""Headers a request may carry once only: with two, which one a check reads is a guess (a proxy in front may
have read the other), so the request is refused (400) before any check. The handler and ``ccx mcp --http``
refuse them too."""


def repeated_header(names: Iterable[str]) -> str | None:
    """The sentence refusing a request whose header ``names`` hold one of :data:`SINGLE_HEADERS` twice; else None."""
    seen: set[str] = set()
    for name in names:
        key = name.lower()
        if key in seen:
            return f"Bad request: the {key.title()} header was sent more than once; send it once."
        if key in SINGLE_HEADERS:
            seen.add(key)
    return None


@dataclass
class _Entry:
    started: float
    used: float
    connections: int = 0


class Sessions:
    """The live sessions, by the SHA-256 of their value: a dict lookup of a digest leaks nothing a timing
    attack could use, and a memory dump holds no usable session."""

    def __init__(
        self,
        idle: float = SESSION_IDLE,
        max_age: float = SESSION_MAX_AGE,
        limit: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle = idle
        self.max_age = max_age
        self.limit = limit
        self.clock = clock
        self._entries: dict[str, _Entry] = {}  # in order of last use, oldest first

    @staticmethod
    def key(session: str) -> str:
        return hashlib.sha256(session.encode()).hexdigest()

    def __len__(self) -> int:
        return len(self._entries)

    def create(self) -> tuple[str, str]:
        """A new session: (its value, for the page only; its key)."""
        self.prune()
        while len(self._entries) >= self.limit:
            del self._entries[next(iter(self._entries))]
        session = secrets.token_urlsafe(32)
        now = self.clock()
        key = self.key(session)
        self._entries[key] = _Entry(started=now, used=now)
        return session, key

    def _alive(self, entry: _Entry, now: float) -> bool:
        # An open /live connection is use: a page left open does not end its session by idling.
        return now - entry.started < self.max_age and (entry.connections > 0 or now - entry.used < self.idle)

    def alive(self, key: str) -> bool:
        entry = self._entries.get(key)
        return entry is not None and self._alive(entry, self.clock())

    def use(self, session: str) -> str | None:
        """The session's key if it is alive, counting this as use; None if unknown, expired or revoked."""
        key = self.key(session)
        entry = self._entries.pop(key, None)
        now = self.clock()
        if entry is None or not self._alive(entry, now):
            return None
        entry.used = now
        self._entries[key] = entry  # now the most recently used
        return key

    def opened(self, key: str) -> None:
        entry = self._entries.get(key)
        if entry is not None:
            entry.connections += 1

    def closed(self, key: str) -> None:
        entry = self._entries.get(key)
        if entry is not None:
            entry.connections = max(0, entry.connections - 1)
            entry.used = self.clock()  # idling starts when the last page goes

    def revoke(self, key: str) -> bool:
        return self._entries.pop(key, None) is not None

    def revoke_all(self) -> int:
        count = len(self._entries)
        self._entries.clear()
        return count

    def prune(self) -> None:
        now = self.clock()
        for key in [key for key, entry in self._entries.items() if not self._alive(entry, now)]:
            del self._entries[key]


class Auth:
    """The dashboard's access rules for one token and one bound address."""

    def __init__(self, token: str, bind_host: str, sessions: Sessions | None = None) -> None:
        if not token:
            raise ValueError("the dashboard needs a token")
        self.token = token
        self.bind_host = bind_host
        self.sessions = sessions if sessions is not None else Sessions()

    def host_allowed(self, headers: Headers) -> bool:
        """Bound to loopback, only loopback names are served: a defence against DNS rebinding."""
        if not is_loopback(self.bind_host):
            return True
        name = host_name(headers.get("Host", ""))
        return name in LOOPBACK_NAMES or is_loopback(name) or name == self.bind_host.lower()

    @staticmethod
    def origin_allowed(headers: Headers) -> bool:
        """A browser's WebSocket must come from a page of this dashboard; clients without Origin are not browsers."""
        origin = headers.get("Origin")
        if origin is None:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc.lower() == headers.get("Host", "").strip().lower()

    def decide(self, path: str, headers: Headers, kind: Kind) -> Decision:
        """What to do with a request for ``path`` (with its query) carrying ``headers``."""
        repeated = repeated_header(name for name, _ in headers.raw_items())
        if repeated is not None:  # (reading such a header would raise MultipleValuesError: a 500)
            return Decision(Verdict.BAD_REQUEST, reason=repeated)
        if not self.host_allowed(headers):
            return Decision(Verdict.FORBIDDEN, reason="This dashboard only answers to loopback addresses.")
        if kind is Kind.LIVE:
            if not self.origin_allowed(headers):
                return Decision(Verdict.FORBIDDEN, reason="Cross-origin WebSocket connections are refused.")
            return Decision(Verdict.ALLOW)  # the first message must authenticate it: see admit()
        if kind is Kind.PAGE:
            return self._page(path)
        return self._bearer(headers)

    @staticmethod
    def _page(path: str) -> Decision:
        """The shell, to anyone; an old-style ``?token=`` link moves the token to the fragment, where the
        page takes it (and the address bar and history lose it)."""
        parts = urlsplit(path)
        query = parse_qsl(parts.query, keep_blank_values=True)
        supplied = [value for name, value in query if name == TOKEN_PARAM]
        if not supplied:
            return Decision(Verdict.ALLOW)
        rest = urlencode([(name, value) for name, value in query if name != TOKEN_PARAM])
        fragment = urlencode({TOKEN_PARAM: supplied[-1]})
        return Decision(Verdict.REDIRECT, location=(parts.path or "/") + (f"?{rest}" if rest else "") + f"#{fragment}")

    def _bearer(self, headers: Headers) -> Decision:
        scheme, _, value = headers.get("Authorization", "").partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            return Decision(Verdict.LOGIN, reason=UNAUTHORIZED)
        if token_matches(value, self.token):
            return Decision(Verdict.ALLOW, with_token=True)
        key = self.sessions.use(value)
        if key is None:
            return Decision(Verdict.LOGIN, reason=NOT_VALID)
        return Decision(Verdict.ALLOW, session=key)

    def admit(self, message: str | bytes) -> Admission:
        """A ``/live`` connection's first message: ``{"op": "auth", "session": S}``, or ``{"op": "auth",
        "token": T}`` to log in (a new session comes back)."""
        try:
            request = orjson.loads(message)
        except orjson.JSONDecodeError:
            request = None
        if not isinstance(request, dict) or request.get("op") != "auth":
            return Admission(close_code=CLOSE_NO_AUTH, reason=AUTH_FIRST)
        session, token = request.get("session"), request.get("token")
        if isinstance(session, str) and session:
            key = self.sessions.use(session)
            if key is None:
                return Admission(close_code=CLOSE_SESSION_ENDED, reason=SESSION_ENDED)
            return Admission(key=key)
        if isinstance(token, str) and token:
            if not token_matches(token, self.token):
                return Admission(close_code=CLOSE_WRONG_TOKEN, reason=WRONG_TOKEN)
            new_session, key = self.sessions.create()
            return Admission(key=key, new_session=new_session)
        return Admission(close_code=CLOSE_NO_AUTH, reason=AUTH_FIRST)
