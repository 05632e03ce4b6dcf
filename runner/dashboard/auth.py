"""Who may use the dashboard: the token check, its cookie, and the Host and Origin checks.

The dashboard always has a token (given, or made once in a private file, as
Jupyter does). The browser presents it once (``/?token=…``, the login URL the
dashboard prints); the dashboard answers with an ``HttpOnly``, ``SameSite=Strict``
cookie holding a value derived from the token (never the token itself) and
redirects to the same address without it. Scripts may send
``Authorization: Bearer <token>`` instead. Every comparison is constant-time,
and the token is never logged or echoed.

Two more checks keep other web sites out: bound to loopback, the ``Host`` header
must name the loopback (a DNS-rebinding page cannot talk to it), and a
WebSocket's ``Origin`` must be the dashboard itself. Submit and cancel travel only
over that WebSocket, so every state-changing request passes both checks.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

from websockets.datastructures import Headers

from handler.config import is_loopback

TOKEN_PARAM = "token"
COOKIE_MAX_AGE = 30 * 24 * 3600
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class Verdict(enum.Enum):
    ALLOW = "allow"
    LOGIN = "login"
    """No credentials, or wrong ones: show the login prompt (401)."""
    REDIRECT = "redirect"
    """The right token in the query: set the cookie and redirect to the address without it."""
    FORBIDDEN = "forbidden"
    """A request from somewhere the dashboard does not serve (Host or Origin check)."""
    BAD_REQUEST = "bad_request"
    """A request with Host, Origin or Authorization sent twice (:func:`repeated_header`)."""


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    location: str = ""
    set_cookie: str = ""
    wrong_token: bool = False
    reason: str = ""


def token_matches(supplied: str, expected: str) -> bool:
    """Constant-time comparison of two secrets (as UTF-8 bytes, so any text compares safely)."""
    return hmac.compare_digest(supplied.encode(), expected.encode())


def session_value(token: str) -> str:
    """What the cookie holds: a keyed digest of the token, so the cookie never reveals the token."""
    return hmac.new(token.encode(), b"ccx-dashboard-session-v1", hashlib.sha256).hexdigest()


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


def cookies(headers: Headers) -> dict[str, str]:
    found: dict[str, str] = {}
    for header in headers.get_all("Cookie"):
        for part in header.split(";"):
            name, _, value = part.strip().partition("=")
            if name:
                found.setdefault(name, value)
    return found


class Auth:
    """The dashboard's access rules for one token (or none) and one listening port."""

    def __init__(self, token: str | None, bind_host: str, port: int = 0) -> None:
        self.token = token or None
        self.bind_host = bind_host
        self.port = port
        self._session = session_value(self.token) if self.token else ""

    @property
    def cookie_name(self) -> str:
        # Cookies are not scoped by port: one name per port keeps two dashboards on a host apart.
        return f"ccx_dashboard_{self.port}"

    def host_allowed(self, headers: Headers) -> bool:
        """Bound to loopback (or without a token), only loopback names are served: a defence against DNS rebinding."""
        if self.token and not is_loopback(self.bind_host):
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

    def credentials_ok(self, headers: Headers) -> bool:
        if not self.token:
            return True
        supplied = cookies(headers).get(self.cookie_name)
        if supplied is not None and token_matches(supplied, self._session):
            return True
        scheme, _, value = headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and token_matches(value.strip(), self.token)

    def decide(self, path: str, headers: Headers, websocket: bool = False) -> Decision:
        """What to do with a request for ``path`` (with its query) carrying ``headers``."""
        repeated = repeated_header(name for name, _ in headers.raw_items())
        if repeated is not None:  # (reading such a header would raise MultipleValuesError: a 500)
            return Decision(Verdict.BAD_REQUEST, reason=repeated)
        if not self.host_allowed(headers):
            return Decision(Verdict.FORBIDDEN, reason="This dashboard only answers to loopback addresses.")
        if websocket and not self.origin_allowed(headers):
            return Decision(Verdict.FORBIDDEN, reason="Cross-origin WebSocket connections are refused.")
        parts = urlsplit(path)
        query = parse_qsl(parts.query, keep_blank_values=True)
        supplied = [value for name, value in query if name == TOKEN_PARAM]
        if self.token and supplied and not websocket:
            if not token_matches(supplied[-1], self.token):
                return Decision(Verdict.LOGIN, wrong_token=True)
            rest = urlencode([(name, value) for name, value in query if name != TOKEN_PARAM])
            cookie = f"{self.cookie_name}={self._session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={COOKIE_MAX_AGE}"
            return Decision(
                Verdict.REDIRECT, location=(parts.path or "/") + (f"?{rest}" if rest else ""), set_cookie=cookie
            )
        if self.credentials_ok(headers):
            return Decision(Verdict.ALLOW)
        return Decision(Verdict.LOGIN)
