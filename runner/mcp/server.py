"""``ccx mcp``: the cc-execute tools as an MCP server (official ``mcp`` SDK), over stdio or streamable HTTP.

Over stdio the server is a child of the orchestrator's own Claude Code
(``claude mcp add ccx -- ccx mcp``): whoever can start it is already the
user. Over HTTP every request must carry ``Authorization: Bearer <token>``
(the token given, or the private file ``mcp.token``, made if missing), a
request from a browser page (any ``Origin`` header) is refused, it binds
loopback by default, and another address needs TLS — the handler's rules
(docs/security.md). Those checks are :class:`BearerGuard`'s; the SDK's own
Host/Origin check is off, since with a token it adds nothing and it would
refuse every request to a non-loopback address.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import socket
import ssl
import sys
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
import orjson
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import ToolAnnotations
from pydantic import Field

from handler import __version__
from runner.agents import DEFAULT_AGENT, agent_names
from runner.client import Runner
from runner.dashboard.auth import repeated_header
from runner.errors import CcxError, UsageError
from runner.mcp import tools as ops

log = logging.getLogger("ccx.mcp")

SERVER_NAME = "ccx"
HTTP_PATH = "/mcp"
INSTRUCTIONS = """\
cc-execute runs tasks one after another, each in a fresh agent process (Claude Code by default) with a \
clean context. The pattern: submit_task with a complete, self-contained prompt (the agent sees nothing \
else), then wait_for_result with its id (call it again while it says the task is still running), read \
the result's output, and decide the next task. Use `after` to chain a task to one that must succeed \
first, and `key` so that a retried submit never queues the same task twice. read_output pages through a \
task's whole transcript when the result alone is not enough."""


def _call(func: Any, *args: Any) -> dict[str, Any]:
    """A tool's body: our errors become tool errors carrying their one sentence.

    Every failure a tool means to report is a :class:`CcxError` (`after` naming no task is an UnknownTask, a
    bad cursor a UsageError: runner/mcp/tools.py); anything else is a bug, and is not dressed up as a sentence."""

    try:
        return func(*args)
    except CcxError as exc:
        raise ToolError(str(exc)) from None


SPEC_OPTIONS = (
    "Other task fields, as in the Python API (docs/agents.md): e.g. disallowed_tools, max_turns, "
    "permission_mode, append_system_prompt, system_prompt, json_schema, effort, fallback_model, add_dirs, "
    "env, idle_timeout, retries, max_budget_usd, metadata."
)

AGENT_DESCRIPTION = (
    agent_names(quote="'", last=", or ").replace(f"'{DEFAULT_AGENT}'", f"'{DEFAULT_AGENT}' (default)") + "."
)


def build_server(runner: Runner) -> Any:
    """The MCP server with the seven tools, bound to ``runner``'s Redis and queue."""

    server = MCPServer(SERVER_NAME, version=__version__, instructions=INSTRUCTIONS, log_level="WARNING")

    @server.tool(
        description=(
            "Queue a task for a fresh agent process. Tasks of a queue run strictly one after another, in the "
            "order submitted. Returns the task id, its status and how many tasks run before it. The prompt must "
            "be self-contained: the agent that runs it starts with an empty context."
        ),
        annotations=ToolAnnotations(destructiveHint=False, openWorldHint=True),
    )
    def submit_task(
        task: Annotated[
            str, Field(description="The prompt for the agent (for agent 'command': a title, may be empty).")
        ],
        agent: Annotated[str, Field(description=AGENT_DESCRIPTION)] = DEFAULT_AGENT,
        argv: Annotated[
            list[str] | None, Field(description="For agent 'command' only: the program and its arguments.")
        ] = None,
        tools: Annotated[
            list[str] | None,
            Field(description="Tools the agent may use without asking, e.g. ['Read', 'Write', 'Edit', 'Bash']."),
        ] = None,
        model: Annotated[str | None, Field(description="The model, e.g. 'sonnet' or 'opus'.")] = None,
        timeout: Annotated[float | None, Field(description="Seconds the task may run (default 3600).", gt=0)] = None,
        cwd: Annotated[str | None, Field(description="The directory the agent works in.")] = None,
        after: Annotated[
            str | None,
            Field(description="Run only after this task id has succeeded (with after_any: after it ended at all)."),
        ] = None,
        after_any: Annotated[bool, Field(description="With `after`: run even if that task failed.")] = False,
        key: Annotated[
            str | None,
            Field(
                description=(
                    "An idempotency key: submitting again with the same key returns the task already submitted "
                    "instead of queueing a second one. Use one per logical task."
                ),
                max_length=200,
            ),
        ] = None,
        at: Annotated[
            str | None,
            Field(description="Run it at this time (ISO 8601, e.g. 2026-12-02T03:00:00Z); it then joins the line."),
        ] = None,
        in_seconds: Annotated[
            float | None, Field(description="Run it this many seconds from now; it then joins the line.", ge=0)
        ] = None,
        options: Annotated[dict[str, Any] | None, Field(description=SPEC_OPTIONS)] = None,
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {**(options or {}), "task": task, "agent": agent}
        for name, value in (
            ("argv", argv),
            ("tools", tools),
            ("model", model),
            ("timeout", timeout),
            ("cwd", cwd),
        ):
            if value is not None:
                spec[name] = value
        return _call(ops.submit_task, runner, spec, after, after_any, key, at, in_seconds)

    @server.tool(
        description=(
            "A task's status (queued, scheduled, deferred, running, finished, failed, cancelled), its times, how "
            "many tasks run before it when queued, the lines printed so far when running, and its outcome when ended."
        ),
        annotations=ToolAnnotations(readOnlyHint=True),
    )
    def task_status(task_id: Annotated[str, Field(description="The id submit_task returned.")]) -> dict[str, Any]:
        return _call(ops.task_status, runner, task_id)

    @server.tool(
        description=(
            "Wait up to timeout_seconds (at most 600) for a task to end. When it ended: done=true, success, "
            "exit_code, error, cost, and the first 4000 characters of its output (the agent's final answer). "
            "Otherwise done=false and where it is ('still running, N lines so far'): call again."
        ),
        annotations=ToolAnnotations(readOnlyHint=True),
    )
    def wait_for_result(
        task_id: Annotated[str, Field(description="The id submit_task returned.")],
        timeout_seconds: Annotated[
            float, Field(description="How long to wait at most, in seconds (0 to 600).", ge=0, le=600)
        ] = 60,
    ) -> dict[str, Any]:
        return _call(ops.wait_for_result, runner, task_id, timeout_seconds)

    @server.tool(
        description=(
            "Read a task's output one page at a time, live or after it ended: a readable transcript for Claude "
            "tasks (messages, tool calls), the raw text for commands. Start with since_seq='0'; pass the "
            "returned next_seq to read on. more=false means everything so far was read."
        ),
        annotations=ToolAnnotations(readOnlyHint=True),
    )
    def read_output(
        task_id: Annotated[str, Field(description="The id submit_task returned.")],
        since_seq: Annotated[
            str | int, Field(description="'0' for the start, else the next_seq of the previous read_output call.")
        ] = "0",
        max_bytes: Annotated[
            int, Field(description="The most text to return in this page (200 to 65536).", ge=200, le=65536)
        ] = ops.DEFAULT_PAGE_BYTES,
    ) -> dict[str, Any]:
        return _call(ops.read_output, runner, task_id, str(since_seq), max_bytes)

    @server.tool(
        description=(
            "Cancel a task: a queued one never runs, a running one is stopped. Tasks submitted after it are "
            "cancelled too (a cancel stops the line)."
        ),
        annotations=ToolAnnotations(destructiveHint=True, idempotentHint=True),
    )
    def cancel_task(task_id: Annotated[str, Field(description="The task to cancel.")]) -> dict[str, Any]:
        return _call(ops.cancel_task, runner, task_id)

    @server.tool(
        description="The newest tasks of the queue, newest first: id, status, title, times, success.",
        annotations=ToolAnnotations(readOnlyHint=True),
    )
    def list_tasks(
        limit: Annotated[int, Field(description="How many (1 to 100).", ge=1, le=100)] = 20,
        status: Annotated[
            str | None,
            Field(
                description="Only tasks with this status: queued, scheduled, deferred, running, finished, failed, "
                "cancelled."
            ),
        ] = None,
    ) -> dict[str, Any]:
        return _call(ops.list_tasks, runner, limit, status)

    @server.tool(
        description=(
            "The queue at a glance: whether it is paused (why, until when: e.g. a usage limit), the running "
            "task and for how long, how many tasks wait, and the cost today and in all."
        ),
        annotations=ToolAnnotations(readOnlyHint=True),
    )
    def queue_status() -> dict[str, Any]:
        return _call(ops.queue_status, runner)

    return server


def run_stdio(runner: Runner) -> int:
    build_server(runner).run("stdio")
    return 0


@dataclass
class HttpConfig:
    host: str
    port: int
    token: str
    token_hint: str = "the token ccx mcp was given"
    """Where a client finds the token, for the 401's sentence (never the token itself)."""
    tls_cert: str | None = None
    tls_key: str | None = None
    allow_insecure: bool = False

    def check(self) -> None:
        if not _is_loopback(self.host) and not (self.tls_cert and self.tls_key) and not self.allow_insecure:
            raise UsageError(
                f"ccx mcp --http --host {self.host} would send tasks and the token in clear text: give "
                "--tls-cert and --tls-key, or bind 127.0.0.1 (CCX_ALLOW_INSECURE=1 if the network is private)."
            )
        if bool(self.tls_cert) != bool(self.tls_key):
            raise UsageError("--tls-cert and --tls-key go together: give both.")
        if self.tls_cert and self.tls_key:
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(self.tls_cert, self.tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise UsageError(
                    f"Cannot use --tls-cert {self.tls_cert} with --tls-key {self.tls_key} ({exc}): give a PEM "
                    "certificate and its private key."
                ) from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # the stdlib's: `host` is a name, not an address (only "localhost" is loopback by name)
        return False


class BearerGuard:
    """ASGI middleware: any request from a web page (an ``Origin`` header) refused, then the bearer token
    checked in constant time. Only HTTP requests (and the app's lifespan) get through."""

    def __init__(self, app: Any, token: str, token_hint: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.token_hint = token_hint

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            return  # e.g. a WebSocket: nothing here speaks it
        pairs = scope.get("headers") or []
        # dict() keeps the last of a repeated header: an Origin sent twice, the second empty, would pass.
        repeated = repeated_header(name.decode("latin-1") for name, _ in pairs)
        if repeated is not None:
            await _refuse(send, 400, repeated)
            return
        headers = dict(pairs)
        origin = headers.get(b"origin", b"").decode(errors="replace")
        if origin:
            await _refuse(send, 403, f"Forbidden: requests from web pages ({origin}) may not use this server.")
            return
        if not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
            await _refuse(send, 401, f"Unauthorized: send 'Authorization: Bearer <token>' ({self.token_hint}).")
            return
        await self.app(scope, receive, send)


async def _refuse(send: Any, status: int, message: str) -> None:

    body = orjson.dumps({"error": message})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="ccx"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def run_http(runner: Runner, config: HttpConfig) -> int:
    """Serve streamable HTTP at ``http(s)://host:port/mcp`` until stopped."""

    config.check()
    server = build_server(runner)

    inner = server.streamable_http_app(
        streamable_http_path=HTTP_PATH,
        host=config.host,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    app = BearerGuard(inner, config.token, config.token_hint)
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"ccx mcp cannot listen on {config.host}:{config.port} ({exc.strerror or exc}): choose another --port."
        ) from None
    sock.listen(128)
    port = sock.getsockname()[1]
    scheme = "https" if config.tls_cert else "http"
    uv = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            ssl_certfile=config.tls_cert,
            ssl_keyfile=config.tls_key,
            lifespan="on",
        )
    )
    print(f"ccx mcp serving {scheme}://{config.host}:{port}{HTTP_PATH} (queue '{runner.settings.queue}')", flush=True)
    try:
        anyio.run(lambda: uv.serve(sockets=[sock]))
    finally:
        sock.close()
    return 0


def main_stdio_banner() -> None:
    """A line on stderr (stdout is the protocol) so a person who runs `ccx mcp` by hand knows what it is."""
    if sys.stdin.isatty():
        print(
            "ccx mcp speaks MCP on stdin/stdout: add it to Claude Code with `claude mcp add ccx -- ccx mcp`.",
            file=sys.stderr,
            flush=True,
        )
