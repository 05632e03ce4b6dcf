"""A scriptable local stand-in for the Anthropic Messages API.

Why: the test suite runs the *real* Claude Code CLI, which must not reach the
network.  Pointing ``ANTHROPIC_BASE_URL`` at this server lets a test decide
exactly what "the model" answers, turn by turn, and inspect what the CLI sent.

Only the standard library is used so the helper works in any test venv.

Usage::

    with FakeAnthropic(script=[Reply.tool_use("Write", {...}), Reply.text("ok")]) as api:
        run_cli(env=claude_env(api.url, home))
        assert api.main_requests[1]["messages"][-1]["content"][0]["type"] == "tool_result"

What the CLI actually sends (claude 2.1.332, ``-p``, with
``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1``): only ``POST
/v1/messages?beta=true`` streamed main turns, one per model call, each with
``tools``.  Without that variable it also calls ``GET /api/hello`` here and
resolves other hosts.  The binary also contains *side* requests (a one-token
``quota`` probe, small-model helpers such as session titles or summaries);
should any arrive, they are told apart by :func:`is_main_turn`, answered with
short plain text and never consume the script.  ``count_tokens`` and unknown
paths get sensible JSON answers; unknown paths are recorded in
``unknown_paths`` so a test can notice new CLI traffic.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

__all__ = [
    "FakeAnthropic",
    "Orchestrator",
    "RecordedRequest",
    "Reply",
    "ScriptFn",
    "is_main_turn",
    "tool_names",
    "tool_results",
]

ReplyKind = Literal["text", "tool_use", "hang", "error"]


@dataclass(frozen=True)
class Reply:
    """One scripted answer of "the model" to one main conversation turn.

    Build replies with the class methods; the fields are an implementation
    detail kept public only so tests can introspect a script.
    """

    kind: ReplyKind
    content: str = ""
    tool_name: str = ""
    tool_input: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    pings: bool = True
    status: int = 0
    error_type: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def text(cls, text: str) -> Reply:
        """A plain text answer with stop_reason ``end_turn``."""
        return cls(kind="text", content=text)

    @classmethod
    def tool_use(cls, name: str, tool_input: dict[str, Any], text: str = "") -> Reply:
        """A ``tool_use`` block (stop_reason ``tool_use``), optionally preceded by text.

        The CLI executes the tool (if permitted) and sends a new main turn whose
        last user message holds the ``tool_result``; script the next reply
        (usually a text answer) for that turn.
        """
        return cls(kind="tool_use", tool_name=name, tool_input=dict(tool_input), content=text)

    @classmethod
    def hang(cls, seconds: float = 600.0, pings: bool = True) -> Reply:
        """Keep the response open for ``seconds`` without ever finishing it.

        With ``pings`` the server sends the SSE headers, ``message_start`` and a
        ``ping`` event every ``ping_interval`` (a slow but alive stream); without, it sends
        nothing at all, not even headers.  Either way the wait ends early when
        the server is closed, so tests never hang on teardown.
        """
        return cls(kind="hang", seconds=seconds, pings=pings)

    @classmethod
    def error(cls, status: int = 500, error_type: str = "api_error", message: str = "fake error") -> Reply:
        """An API error body (``{"type":"error",...}``) with the given HTTP status.

        Note the CLI retries 429/5xx/529 several times with back-off, so prefer
        4xx statuses such as 400/401/403 for fast tests.
        """
        return cls(kind="error", status=status, error_type=error_type, content=message)

    @classmethod
    def usage_limit(cls, resets_at: float, claim: str = "five_hour") -> Reply:
        """The 429 a subscription login gets at its usage limit: the CLI does not retry it, prints a
        ``rate_limit_event`` with ``resetsAt`` and fails the turn."""
        return cls(
            kind="error",
            status=429,
            error_type="rate_limit_error",
            content="This request would exceed your account's rate limit.",
            headers={
                "anthropic-ratelimit-unified-status": "rejected",
                "anthropic-ratelimit-unified-reset": str(int(resets_at)),
                "anthropic-ratelimit-unified-representative-claim": claim,
            },
        )


@dataclass
class RecordedRequest:
    """One HTTP request received by the fake server (any path)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    kind: Literal["main", "side", "count_tokens", "other"]


ScriptFn = Callable[[dict[str, Any]], Reply]


def is_main_turn(body: dict[str, Any]) -> bool:
    """Whether a ``/v1/messages`` body is a turn of the agent conversation.

    Why these signs (checked against claude 2.1.332): agent turns advertise the
    tool list, and even with ``--tools ""`` (an empty list) they stream with
    thinking enabled.  The CLI's side requests are one-shot helpers: the quota
    probe (``max_tokens: 1``, no tools, not streamed) and small-model helpers
    (session title, summaries) sent with ``tools: []`` and thinking disabled.
    """
    if body.get("max_tokens") == 1:
        return False
    if body.get("tools"):
        return True
    thinking = body.get("thinking")
    return bool(body.get("stream")) and isinstance(thinking, dict) and thinking.get("type") not in (None, "disabled")


def tool_names(body: dict[str, Any]) -> list[str]:
    """The names of the tools a main turn offers the model (MCP tools arrive as ``mcp__<server>__<tool>``)."""
    return [tool.get("name", "") for tool in body.get("tools") or []]


def tool_results(body: dict[str, Any]) -> list[str]:
    """The text of each ``tool_result`` block in the turn's last user message (what the tools answered)."""
    messages = body.get("messages") or []
    if not messages or not isinstance(messages[-1].get("content"), list):
        return []
    texts = []
    for block in messages[-1]["content"]:
        if block.get("type") != "tool_result":
            continue
        content = block.get("content")
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if part.get("type") == "text")
        texts.append(str(content or ""))
    return texts


def _json_in(text: str) -> dict[str, Any]:
    start = text.find("{")
    try:
        value = json.loads(text[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        value = None
    return value if isinstance(value, dict) else {}


class Orchestrator:
    """A script for a Claude session that orchestrates cc-execute through its MCP tools (``ccx mcp``).

    A turn that offers ``mcp__ccx__submit_task`` is the orchestrator's: it submits ``task_input``, then
    calls ``mcp__ccx__wait_for_result`` with the id it got (again while the task is still running), and
    ends with a text quoting the task's output. Any other main turn is the inner task's (a fresh Claude
    process started by the handler, with no ccx tools) and gets ``inner``.
    """

    SUBMIT = "mcp__ccx__submit_task"
    WAIT = "mcp__ccx__wait_for_result"

    def __init__(self, task_input: dict[str, Any], inner: Reply, quote: str = "The task answered: ") -> None:
        self.task_input = task_input
        self.inner = inner
        self.quote = quote
        self.calls: list[str] = []
        """The tools the orchestrator was scripted to call, in order (and "inner" for inner turns)."""

    def __call__(self, body: dict[str, Any]) -> Reply:
        if self.SUBMIT not in tool_names(body):
            self.calls.append("inner")
            return self.inner
        results = tool_results(body)
        if not results:
            return self._use(self.SUBMIT, self.task_input)
        answer = _json_in(results[-1])
        if answer.get("done"):
            return Reply.text(f"{self.quote}{answer.get('output', '')}")
        task_id = answer.get("id")
        if not task_id:
            return Reply.text(f"The tool failed: {results[-1]}")
        return self._use(self.WAIT, {"task_id": task_id, "timeout_seconds": 120})

    def _use(self, name: str, tool_input: dict[str, Any]) -> Reply:
        self.calls.append(name)
        return Reply.tool_use(name, tool_input)


_ids = itertools.count(1)


def _new_id(prefix: str) -> str:
    return f"{prefix}_fake{next(_ids):06d}"


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _estimate_tokens(body: Any) -> int:
    """Rough token count (~4 chars a token) so usage numbers look plausible."""
    return max(1, len(json.dumps(body, default=str)) // 4)


def _content_blocks(reply: Reply) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if reply.kind == "text" or reply.content:
        blocks.append({"type": "text", "text": reply.content})
    if reply.kind == "tool_use":
        blocks.append({"type": "tool_use", "id": _new_id("toolu"), "name": reply.tool_name, "input": reply.tool_input})
    return blocks


def _chunks(s: str, size: int) -> Iterator[str]:
    """Split into several deltas, as the real API streams partial output."""
    for i in range(0, len(s), size):
        yield s[i : i + size]
    if not s:
        yield ""


class FakeAnthropic:
    """Threaded local HTTP server speaking the Anthropic Messages API.

    ``script`` is either a list of :class:`Reply` consumed one per *main* turn
    (when exhausted, the answer is ``Reply.text(default_text)``), or a callable
    receiving each main request body and returning a :class:`Reply`.
    ``side`` answers side requests (default: plain text ``side_text``).
    ``classify`` decides what a main turn is (default :func:`is_main_turn`).
    """

    def __init__(
        self,
        script: Iterable[Reply] | ScriptFn | None = None,
        *,
        default_text: str = "done",
        side_text: str = "ok",
        side: ScriptFn | None = None,
        classify: Callable[[dict[str, Any]], bool] = is_main_turn,
        ping_interval: float = 1.0,
    ) -> None:
        self._script_fn: ScriptFn | None = script if callable(script) else None
        self._script: list[Reply] = [] if script is None or callable(script) else list(script)
        self.default_text = default_text
        self._side = side or (lambda _body: Reply.text(side_text))
        self._classify = classify
        self.ping_interval = ping_interval
        self.log: list[RecordedRequest] = []
        self.unknown_paths: list[str] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ views
    @property
    def url(self) -> str:
        """Base URL for ``ANTHROPIC_BASE_URL`` (no trailing slash, no ``/v1``)."""
        if self._server is None:
            raise RuntimeError("FakeAnthropic is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> list[dict[str, Any]]:
        """JSON bodies of every ``POST /v1/messages`` (main and side), in order."""
        with self._lock:
            return [r.body for r in self.log if r.kind in ("main", "side")]

    @property
    def main_requests(self) -> list[dict[str, Any]]:
        """JSON bodies of the main conversation turns only."""
        with self._lock:
            return [r.body for r in self.log if r.kind == "main"]

    @property
    def side_requests(self) -> list[dict[str, Any]]:
        """JSON bodies of side requests (see :func:`is_main_turn`), answered without the script."""
        with self._lock:
            return [r.body for r in self.log if r.kind == "side"]

    def add(self, *replies: Reply) -> None:
        """Append replies to a list script (e.g. between two CLI runs)."""
        with self._lock:
            self._script.extend(replies)

    # -------------------------------------------------------------- lifecycle
    def start(self) -> FakeAnthropic:
        """Bind 127.0.0.1 on an ephemeral port and serve in a daemon thread."""
        if self._server is not None:
            return self
        self._closing.clear()
        server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        server.daemon_threads = True
        self._server = server
        # A short poll interval makes close() quick (shutdown waits for one poll).
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-anthropic", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving; wakes up hanging replies so no thread outlives the test."""
        self._closing.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------- internals
    def _record(self, req: RecordedRequest) -> None:
        with self._lock:
            self.log.append(req)
            if req.kind == "other":
                self.unknown_paths.append(f"{req.method} {req.path}")

    def _reply_for(self, body: dict[str, Any], main: bool) -> Reply:
        if not main:
            return self._side(body)
        if self._script_fn is not None:
            return self._script_fn(body)
        with self._lock:
            if self._script:
                return self._script.pop(0)
        return Reply.text(self.default_text)


def _make_handler(fake: FakeAnthropic) -> type[BaseHTTPRequestHandler]:
    """Build a handler class bound to ``fake`` (http.server wants a class)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # chunked SSE + keep-alive like the real API
        server_version = "fake-anthropic"

        def log_message(self, format: str, *args: Any) -> None:
            """Silence per-request stderr noise; requests are kept in ``fake.log``."""

        # ---------------------------------------------------------- plumbing
        def _read_body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if not raw:
                return None
            try:
                return json.loads(raw)
            except ValueError:
                return raw.decode("utf-8", "replace")

        def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("request-id", _new_id("req"))
            self.end_headers()
            self.wfile.write(data)

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def _event(self, name: str, payload: dict[str, Any]) -> None:
            self._chunk(f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode())

        def _start_stream(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("request-id", _new_id("req"))
            self.end_headers()

        # ---------------------------------------------------------- routing
        def do_GET(self) -> None:
            fake._record(RecordedRequest("GET", self.path, dict(self.headers), None, "other"))
            if self.path.split("?")[0].rstrip("/") == "/v1/models":
                models = [
                    {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
                    for m in ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1")
                ]
                self._send_json(
                    200, {"data": models, "has_more": False, "first_id": models[0]["id"], "last_id": models[-1]["id"]}
                )
            else:
                self._send_json(200, {})

        def do_HEAD(self) -> None:
            fake._record(RecordedRequest("HEAD", self.path, dict(self.headers), None, "other"))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            body = self._read_body()
            path = self.path.split("?")[0].rstrip("/")
            headers = dict(self.headers)
            if path == "/v1/messages/count_tokens":
                fake._record(RecordedRequest("POST", self.path, headers, body, "count_tokens"))
                self._send_json(200, {"input_tokens": _estimate_tokens(body)})
                return
            if path != "/v1/messages" or not isinstance(body, dict):
                fake._record(RecordedRequest("POST", self.path, headers, body, "other"))
                self._send_json(200, {})
                return
            main = fake._classify(body)
            fake._record(RecordedRequest("POST", self.path, headers, body, "main" if main else "side"))
            reply = fake._reply_for(body, main)
            try:
                self._answer(body, reply)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the CLI gave up (e.g. it was killed)

        def do_PUT(self) -> None:
            self._other("PUT")

        def do_DELETE(self) -> None:
            self._other("DELETE")

        def do_PATCH(self) -> None:
            self._other("PATCH")

        def _other(self, method: str) -> None:
            fake._record(RecordedRequest(method, self.path, dict(self.headers), self._read_body(), "other"))
            self._send_json(200, {})

        # ---------------------------------------------------------- answers
        def _answer(self, body: dict[str, Any], reply: Reply) -> None:
            model = str(body.get("model") or "claude-sonnet-4-5")
            input_tokens = _estimate_tokens(body.get("messages"))
            if reply.kind == "error":
                payload = {"type": "error", "error": {"type": reply.error_type, "message": reply.content}}
                self._send_json(reply.status, payload, reply.headers)
                return
            if reply.kind == "hang":
                self._hang(reply, model, input_tokens)
                return
            blocks = _content_blocks(reply)
            stop = "tool_use" if reply.kind == "tool_use" else "end_turn"
            output_tokens = max(1, _estimate_tokens(blocks))
            msg_id = _new_id("msg")
            if not body.get("stream"):
                self._send_json(
                    200,
                    {
                        "id": msg_id,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": blocks,
                        "stop_reason": stop,
                        "stop_sequence": None,
                        "usage": _usage(input_tokens, output_tokens),
                    },
                )
                return
            self._start_stream()
            self._event(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": msg_id,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": _usage(input_tokens, 1),
                    },
                },
            )
            self._event("ping", {"type": "ping"})
            for index, block in enumerate(blocks):
                if block["type"] == "text":
                    start = {"type": "text", "text": ""}
                    deltas = [{"type": "text_delta", "text": part} for part in _chunks(block["text"], 16)]
                else:
                    start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
                    deltas = [
                        {"type": "input_json_delta", "partial_json": part}
                        for part in _chunks(json.dumps(block["input"]), 32)
                    ]
                self._event(
                    "content_block_start", {"type": "content_block_start", "index": index, "content_block": start}
                )
                for delta in deltas:
                    self._event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
                self._event("content_block_stop", {"type": "content_block_stop", "index": index})
            self._event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": output_tokens},
                },
            )
            self._event("message_stop", {"type": "message_stop"})
            self._chunk(b"")  # terminating zero-length chunk

        def _hang(self, reply: Reply, model: str, input_tokens: int) -> None:
            """Never finish the response; give up at ``reply.seconds`` or on close."""
            self.close_connection = True
            deadline = time.monotonic() + reply.seconds
            if reply.pings:
                self._start_stream()
                self._event(
                    "message_start",
                    {
                        "type": "message_start",
                        "message": {
                            "id": _new_id("msg"),
                            "type": "message",
                            "role": "assistant",
                            "model": model,
                            "content": [],
                            "stop_reason": None,
                            "stop_sequence": None,
                            "usage": _usage(input_tokens, 1),
                        },
                    },
                )
            while not fake._closing.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if fake._closing.wait(min(fake.ping_interval, remaining)):
                    break
                if reply.pings:
                    self._event("ping", {"type": "ping"})
            # Return without a terminating chunk: the peer sees a cut-off stream.

    return Handler
