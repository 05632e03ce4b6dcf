"""JSON-RPC 2.0 messages spoken between the worker and the handler.

Pure functions and dataclasses, no sockets: the server and the worker's client
both build and parse their messages here, so every name on the wire is defined
once. The server reads requests with :func:`parse_request`; the client reads the
server's messages with :func:`parse_server_message`, which turns each frame into
one typed message (a :data:`ServerMessage`) or a :class:`ProtocolError`, so no
caller indexes into raw JSON. See docs/protocol.md for the prose version.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, TypeAlias

import orjson

JSONRPC_VERSION = "2.0"

# Methods a client may call.
EXECUTE = "execute"
CANCEL = "cancel"

# Notifications the server sends while a run is alive.
PROCESS_QUEUED = "process.queued"
PROCESS_STARTED = "process.started"
PROCESS_OUTPUT = "process.output"

STDOUT = "stdout"
STDERR = "stderr"

# Standard JSON-RPC error codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# Project error codes (the -32000..-32099 range is reserved for servers).
EXECUTABLE_NOT_ALLOWED = -32001
EXECUTABLE_NOT_FOUND = -32002
SPAWN_FAILED = -32003
UNKNOWN_RUN = -32004
DUPLICATE_ID = -32005
SHUTTING_DOWN = -32006
ENV_NOT_ALLOWED = -32007
STALE_FENCE = -32008
CONFIG_NOT_ALLOWED = -32009
NOTHING_KEPT = -32010

MAX_RUN_NAME = 256
MAX_COLLECT = 16


class ProtocolError(Exception):
    """A message that breaks the protocol. The handler answers such a request with a JSON-RPC error object
    carrying ``code``; the worker, reading such a message from the handler, gives up on the connection."""

    def __init__(self, code: int, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True)
class Request:
    """A parsed JSON-RPC request. ``id`` is None for notifications."""

    method: str
    params: dict[str, Any]
    id: Any = None


@dataclass(frozen=True)
class ExecuteParams:
    """What to run: ``argv`` only ever reaches ``exec``, never a shell."""

    argv: list[str]
    cwd: str | None = None
    env: dict[str, str | None] | None = None
    timeout: float | None = None
    stdin: str | None = None
    fence: dict[str, Any] | None = None
    """``{"key": <queue>, "token": <n>}``: runs of one key never overlap, and a newer token wins (see
    :mod:`runner.lock`). The handler refuses an older token and stops the runs it has with one."""
    run: str | None = None
    """The caller's name for this run: the handler keeps its outcome a while, should the answer not reach the
    caller (see ``collect``)."""
    collect: list[str] | None = None
    """Runs of the same task whose answer never reached the caller (cut off, frozen, killed): if one of them
    ran to its end here, its outcome is given back (its output replayed) instead of running the task again."""
    collect_only: bool | None = None
    """Give back a kept outcome of ``collect`` or answer :data:`NOTHING_KEPT`: never run anything."""

    def to_params(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class ExecuteResult:
    """The response to ``execute``, sent once the process has ended."""

    exit_code: int | None
    signal: int | None
    timed_out: bool
    cancelled: bool
    duration_ms: float
    stdout_bytes: int
    stderr_bytes: int
    collected: str | None = None
    """Set when this is the kept outcome of that earlier run (``collect``), not a new run."""

    def to_dict(self) -> dict[str, Any]:
        """The wire form: ``collected`` only when set, so an ordinary answer is what it always was."""
        data = asdict(self)
        if self.collected is None:
            del data["collected"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExecuteResult:
        return cls(**{name: data.get(name) for name in cls.__dataclass_fields__})


def _loads(frame: str | bytes) -> Any:
    """A frame's JSON, or the JSON-RPC parse error, whichever side reads it."""
    try:
        return orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(PARSE_ERROR, f"Parse error: the message is not valid JSON ({exc}).") from None


def parse_request(message: str | bytes) -> Request:
    """Parse one frame into a request, or raise :class:`ProtocolError`."""
    data = _loads(message)
    if not isinstance(data, dict):
        raise ProtocolError(INVALID_REQUEST, "Invalid request: a JSON-RPC request must be a JSON object.")
    request_id = data.get("id")
    if request_id is not None and (isinstance(request_id, bool) or not isinstance(request_id, (str, int))):
        raise ProtocolError(INVALID_REQUEST, "Invalid request: 'id' must be a string or an integer.")
    if data.get("jsonrpc") != JSONRPC_VERSION:
        raise ProtocolError(INVALID_REQUEST, "Invalid request: 'jsonrpc' must be \"2.0\".", request_id)
    method = data.get("method")
    if not isinstance(method, str):
        raise ProtocolError(INVALID_REQUEST, "Invalid request: 'method' must be a string.", request_id)
    params = data.get("params", {})
    if not isinstance(params, dict):
        raise ProtocolError(INVALID_PARAMS, "Invalid params: 'params' must be an object.", request_id)
    return Request(method=method, params=params, id=request_id)


def _invalid(message: str, request_id: Any) -> ProtocolError:
    return ProtocolError(INVALID_PARAMS, f"Invalid params: {message}", request_id)


def _valid_env(env: Any) -> bool:
    """Variable names (no ``=``, no NUL) mapped to strings without NUL, or to None (remove it)."""
    return isinstance(env, dict) and all(
        isinstance(k, str)
        and k
        and "=" not in k
        and "\0" not in k
        and (v is None or (isinstance(v, str) and "\0" not in v))
        for k, v in env.items()
    )


def _valid_fence(fence: Any) -> bool:
    """``{"key": a non-empty string, "token": a whole number}``, nothing else."""
    return (
        isinstance(fence, dict)
        and set(fence) == {"key", "token"}
        and isinstance(fence["key"], str)
        and bool(fence["key"])
        and isinstance(fence["token"], int)
        and not isinstance(fence["token"], bool)
        and fence["token"] >= 0
    )


def parse_execute_params(params: dict[str, Any], request_id: Any = None) -> ExecuteParams:
    """Validate ``execute`` params; every rejection names the offending field."""
    unknown = set(params) - set(ExecuteParams.__dataclass_fields__)
    if unknown:
        raise _invalid(f"unknown field(s) {sorted(unknown)}.", request_id)
    argv = params.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise _invalid("'argv' must be a non-empty list of strings.", request_id)
    if not argv[0]:
        raise _invalid("'argv[0]' must name an executable.", request_id)
    if any("\0" in a for a in argv):
        raise _invalid("'argv' must not contain NUL characters.", request_id)
    cwd = params.get("cwd")
    if cwd is not None and (not isinstance(cwd, str) or "\0" in cwd):
        raise _invalid("'cwd' must be a string without NUL characters.", request_id)
    env = params.get("env")
    if env is not None and not _valid_env(env):
        raise _invalid("'env' must map variable names to strings without NUL (or null to remove one).", request_id)
    timeout = params.get("timeout")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout):
            raise _invalid("'timeout' must be a number of seconds.", request_id)
        if timeout <= 0:
            raise _invalid("'timeout' must be greater than zero.", request_id)
    stdin = params.get("stdin")
    if stdin is not None and not isinstance(stdin, str):
        raise _invalid("'stdin' must be a string.", request_id)
    fence = params.get("fence")
    if fence is not None and not _valid_fence(fence):
        raise _invalid('\'fence\' must be {"key": a non-empty string, "token": a whole number}.', request_id)
    run = params.get("run")
    if run is not None and not (isinstance(run, str) and 0 < len(run) <= MAX_RUN_NAME):
        raise _invalid(f"'run' must be a non-empty string of at most {MAX_RUN_NAME} characters.", request_id)
    collect = params.get("collect")
    if collect is not None and not (
        isinstance(collect, list)
        and len(collect) <= MAX_COLLECT
        and all(isinstance(name, str) and 0 < len(name) <= MAX_RUN_NAME for name in collect)
    ):
        raise _invalid(f"'collect' must be a list of at most {MAX_COLLECT} run names.", request_id)
    collect_only = params.get("collect_only")
    if collect_only is not None and not isinstance(collect_only, bool):
        raise _invalid("'collect_only' must be true or false.", request_id)
    return ExecuteParams(
        argv=list(argv), cwd=cwd, env=env, timeout=timeout, stdin=stdin, fence=fence, run=run, collect=collect,
        collect_only=collect_only,
    )  # fmt: skip


def parse_cancel_params(params: dict[str, Any], request_id: Any = None) -> str | int:
    """Return the id of the ``execute`` request to cancel."""
    target = params.get("id")
    if isinstance(target, bool) or not isinstance(target, (str, int)):
        raise _invalid("'id' must be the id of a running execute request.", request_id)
    return target


def request(method: str, params: dict[str, Any], request_id: str | int) -> bytes:
    return orjson.dumps({"jsonrpc": JSONRPC_VERSION, "id": request_id, "method": method, "params": params})


def notification(method: str, params: dict[str, Any]) -> bytes:
    return orjson.dumps({"jsonrpc": JSONRPC_VERSION, "method": method, "params": params})


def output_notification(run_id: str | int, stream: str, seq: int, data: str) -> bytes:
    """The hot-path frame: one per coalesced chunk, never one per line."""
    return orjson.dumps(
        {
            "jsonrpc": JSONRPC_VERSION,
            "method": PROCESS_OUTPUT,
            "params": {"id": run_id, "stream": stream, "seq": seq, "data": data},
        }
    )


def response(request_id: Any, result: dict[str, Any]) -> bytes:
    return orjson.dumps({"jsonrpc": JSONRPC_VERSION, "id": request_id, "result": result})


def error_response(request_id: Any, code: int, message: str) -> bytes:
    return orjson.dumps({"jsonrpc": JSONRPC_VERSION, "id": request_id, "error": {"code": code, "message": message}})


# ----------------------------------------------------------------------------- what the server sends
# One dataclass per kind of message, as websockets' ``events_received`` hands out typed events: the client
# matches on the type, and a frame that fits none of them is a ProtocolError here, not a KeyError there.

RequestId: TypeAlias = str | int | None


@dataclass(frozen=True)
class Queued:
    """``process.queued``: the run waits for a free slot, ``position`` runs ahead of it in line."""

    id: RequestId
    position: int


@dataclass(frozen=True)
class Started:
    """``process.started``: the process was spawned (``pid`` 0 for a kept outcome given back, see ``collect``)."""

    id: RequestId
    pid: int


@dataclass(frozen=True)
class Output:
    """``process.output``: one coalesced chunk of one stream; ``seq`` counts frames from 0 across both."""

    id: RequestId
    stream: str
    seq: int
    data: str


@dataclass(frozen=True)
class OtherNotification:
    """A notification this side does not know (a newer handler's): kept, so the caller may skip it."""

    method: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Result:
    """A successful response: for ``execute`` an :class:`ExecuteResult` in wire form, for ``cancel``
    ``{"cancelling": true}``; which one, only the request's ``id`` tells."""

    id: RequestId
    result: dict[str, Any]


@dataclass(frozen=True)
class Error:
    """An error response; ``id`` is None when the request could not be read at all."""

    id: RequestId
    code: int
    message: str


ServerMessage: TypeAlias = Queued | Started | Output | OtherNotification | Result | Error


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad_message(message: str) -> ProtocolError:
    return ProtocolError(INVALID_REQUEST, f"Invalid message: {message}")


def parse_server_message(raw: str | bytes) -> ServerMessage:
    """One frame from the handler as a typed message, or raise :class:`ProtocolError` saying what is wrong."""
    data = _loads(raw)
    if not isinstance(data, dict):
        raise _bad_message("a JSON-RPC message must be a JSON object.")
    if data.get("jsonrpc") != JSONRPC_VERSION:
        raise _bad_message("'jsonrpc' must be \"2.0\".")
    if "method" in data:
        return _notification(data)
    return _response(data)


def _notification(data: dict[str, Any]) -> ServerMessage:
    method, params = data["method"], data.get("params", {})
    if not isinstance(method, str):
        raise _bad_message("'method' must be a string.")
    if not isinstance(params, dict):
        raise ProtocolError(INVALID_PARAMS, f"Invalid params: the params of {method} must be an object.")
    run = params.get("id")  # notifications name their run; absent is tolerated, as the client never needed it
    if method == PROCESS_OUTPUT:
        stream, seq, text = params.get("stream"), params.get("seq"), params.get("data")
        if stream not in (STDOUT, STDERR) or not _whole(seq) or not isinstance(text, str):
            raise ProtocolError(
                INVALID_PARAMS,
                f"Invalid params: {PROCESS_OUTPUT} needs 'stream' (stdout or stderr), 'seq' (a whole number) "
                "and 'data' (a string).",
            )
        return Output(id=run, stream=stream, seq=seq, data=text)
    if method == PROCESS_STARTED:
        if not _whole(params.get("pid")):
            raise ProtocolError(INVALID_PARAMS, f"Invalid params: {PROCESS_STARTED} needs 'pid', a whole number.")
        return Started(id=run, pid=params["pid"])
    if method == PROCESS_QUEUED:
        if not _whole(params.get("position")):
            raise ProtocolError(INVALID_PARAMS, f"Invalid params: {PROCESS_QUEUED} needs 'position', a whole number.")
        return Queued(id=run, position=params["position"])
    return OtherNotification(method=method, params=params)


def _response(data: dict[str, Any]) -> Result | Error:
    if "id" not in data:
        raise _bad_message("a message needs a 'method' (a notification) or an 'id' (a response).")
    request_id = data["id"]
    if request_id is not None and not (_whole(request_id) or isinstance(request_id, str)):
        raise _bad_message("'id' must be a string, an integer or null.")
    if ("result" in data) == ("error" in data):
        raise _bad_message("a response carries exactly one of 'result' and 'error'.")
    if "result" in data:
        if not isinstance(data["result"], dict):
            raise _bad_message("'result' must be an object.")
        return Result(id=request_id, result=data["result"])
    error = data["error"]
    if not (isinstance(error, dict) and _whole(error.get("code")) and isinstance(error.get("message"), str)):
        raise _bad_message("'error' must be an object with an integer 'code' and a string 'message'.")
    return Error(id=request_id, code=error["code"], message=error["message"])
