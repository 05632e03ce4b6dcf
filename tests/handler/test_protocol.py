"""JSON-RPC messages: parsing requests, validating params, and building frames that parse back unchanged."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import orjson
import pytest

from handler import protocol
from handler.protocol import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    NOTHING_KEPT,
    PARSE_ERROR,
    Error,
    ExecuteParams,
    ExecuteResult,
    OtherNotification,
    Output,
    ProtocolError,
    Queued,
    Result,
    Started,
    parse_cancel_params,
    parse_execute_params,
    parse_request,
    parse_server_message,
)

pytestmark = pytest.mark.timeout(60)


def _error(call: Any, *args: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        call(*args)
    return caught.value


def test_a_valid_request_is_parsed() -> None:
    """method, params and id come out of a well-formed request."""
    req = parse_request('{"jsonrpc": "2.0", "id": 7, "method": "execute", "params": {"argv": ["x"]}}')
    assert (req.method, req.params, req.id) == ("execute", {"argv": ["x"]}, 7)


def test_a_request_without_id_or_params_is_a_notification_with_empty_params() -> None:
    """No id means a notification (id None); missing params mean an empty object."""
    req = parse_request(b'{"jsonrpc": "2.0", "method": "cancel"}')
    assert (req.method, req.params, req.id) == ("cancel", {}, None)


@pytest.mark.parametrize("text", ["{", "not json", "", '{"jsonrpc": "2.0",}', "\xff"])
def test_malformed_json_is_a_parse_error(text: str) -> None:
    """Anything that is not JSON gets -32700 and no id."""
    error = _error(parse_request, text)
    assert error.code == PARSE_ERROR
    assert error.request_id is None
    assert "JSON" in error.message


@pytest.mark.parametrize("text", ["[]", '[{"jsonrpc": "2.0", "method": "execute"}]', '"execute"', "42", "null"])
def test_a_message_that_is_not_an_object_is_an_invalid_request(text: str) -> None:
    """Arrays (batches included), strings, numbers and null are not requests: -32600."""
    assert _error(parse_request, text).code == INVALID_REQUEST


@pytest.mark.parametrize("request_id", [True, 1.5, [1], {"a": 1}])
def test_an_id_that_is_not_a_string_or_integer_is_an_invalid_request(request_id: Any) -> None:
    """Ids must be strings or integers (booleans are not integers here)."""
    text = orjson.dumps({"jsonrpc": "2.0", "id": request_id, "method": "execute"})
    error = _error(parse_request, text)
    assert error.code == INVALID_REQUEST
    assert "'id'" in error.message


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"id": 1, "method": "execute"}, "'jsonrpc'"),
        ({"jsonrpc": "1.0", "id": 1, "method": "execute"}, "'jsonrpc'"),
        ({"jsonrpc": 2.0, "id": 1, "method": "execute"}, "'jsonrpc'"),
        ({"jsonrpc": "2.0", "id": 1}, "'method'"),
        ({"jsonrpc": "2.0", "id": 1, "method": 5}, "'method'"),
    ],
)
def test_a_wrong_envelope_is_an_invalid_request_answered_to_its_id(message: dict[str, Any], field: str) -> None:
    """A missing or wrong jsonrpc/method gets -32600, naming the field, addressed to the request's id."""
    error = _error(parse_request, orjson.dumps(message))
    assert (error.code, error.request_id) == (INVALID_REQUEST, 1)
    assert field in error.message


@pytest.mark.parametrize("params", [[], ["argv"], "x", 3, None])
def test_params_that_are_not_an_object_are_invalid_params(params: Any) -> None:
    """Positional (array) or scalar params are refused with -32602."""
    error = _error(parse_request, orjson.dumps({"jsonrpc": "2.0", "id": "a", "method": "execute", "params": params}))
    assert (error.code, error.request_id) == (INVALID_PARAMS, "a")


def test_execute_params_with_every_field_are_accepted() -> None:
    """argv, cwd, env (null removes), timeout, stdin all come through."""
    params = parse_execute_params(
        {"argv": ["claude", "-p", "hi"], "cwd": "/tmp", "env": {"A": "1", "B": None}, "timeout": 2, "stdin": "in"}
    )
    assert params == ExecuteParams(
        argv=["claude", "-p", "hi"], cwd="/tmp", env={"A": "1", "B": None}, timeout=2, stdin="in"
    )


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "'argv'"),
        ({"argv": []}, "'argv'"),
        ({"argv": "claude -p hi"}, "'argv'"),
        ({"argv": ["claude", 3]}, "'argv'"),
        ({"argv": [None]}, "'argv'"),
        ({"argv": [""]}, "'argv[0]'"),
        ({"argv": ["claude", "a\0b"]}, "NUL"),
        ({"argv": ["x"], "cwd": 1}, "'cwd'"),
        ({"argv": ["x"], "env": ["A=1"]}, "'env'"),
        ({"argv": ["x"], "env": {"A": 1}}, "'env'"),
        ({"argv": ["x"], "env": {"": "1"}}, "'env'"),
        ({"argv": ["x"], "env": {"A=B": "1"}}, "'env'"),
        ({"argv": ["x"], "timeout": "5"}, "'timeout'"),
        ({"argv": ["x"], "timeout": True}, "'timeout'"),
        ({"argv": ["x"], "timeout": float("nan")}, "'timeout'"),
        ({"argv": ["x"], "timeout": float("inf")}, "'timeout'"),
        ({"argv": ["x"], "timeout": 0}, "'timeout'"),
        ({"argv": ["x"], "timeout": -1}, "'timeout'"),
        ({"argv": ["x"], "stdin": b"bytes"}, "'stdin'"),
        ({"argv": ["x"], "stdin": ["a"]}, "'stdin'"),
        ({"argv": ["x"], "shell": True}, "shell"),
    ],
)
def test_wrong_execute_params_are_refused_naming_the_field(params: dict[str, Any], field: str) -> None:
    """Every wrong type or value gets -32602 with a message naming the offending field."""
    error = _error(parse_execute_params, params, 9)
    assert (error.code, error.request_id) == (INVALID_PARAMS, 9)
    assert field in error.message


@pytest.mark.parametrize("target", ["run-1", 0, 12345678901])
def test_cancel_names_the_execute_id(target: Any) -> None:
    """cancel's ``id`` param is the string or integer id of an execute request."""
    assert parse_cancel_params({"id": target}) == target


@pytest.mark.parametrize("params", [{}, {"id": None}, {"id": True}, {"id": 1.5}, {"id": ["a"]}])
def test_cancel_without_a_usable_id_is_invalid_params(params: dict[str, Any]) -> None:
    """A missing or wrongly typed target id gets -32602."""
    error = _error(parse_cancel_params, params, "c")
    assert (error.code, error.request_id) == (INVALID_PARAMS, "c")


def test_a_built_request_parses_back_to_the_same_request() -> None:
    """request() and parse_request() agree on every name on the wire."""
    params = ExecuteParams(argv=["codex", "exec"], env={"X": None}, timeout=1.5)
    req = parse_request(protocol.request(protocol.EXECUTE, params.to_params(), "r1"))
    assert (req.method, req.id) == ("execute", "r1")
    assert parse_execute_params(req.params) == params


def test_to_params_leaves_out_unset_fields() -> None:
    """Only fields that were given go on the wire."""
    assert ExecuteParams(argv=["gemini"]).to_params() == {"argv": ["gemini"]}


def test_notifications_responses_and_errors_have_the_jsonrpc_shape() -> None:
    """Every frame the server sends is a JSON-RPC 2.0 object with the documented fields."""
    assert orjson.loads(protocol.notification(protocol.PROCESS_STARTED, {"id": 1, "pid": 42})) == {
        "jsonrpc": "2.0",
        "method": "process.started",
        "params": {"id": 1, "pid": 42},
    }
    assert orjson.loads(protocol.response("a", {"ok": True})) == {"jsonrpc": "2.0", "id": "a", "result": {"ok": True}}
    assert orjson.loads(protocol.error_response(None, -32700, "bad")) == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32700, "message": "bad"},
    }


@pytest.mark.parametrize(
    "data",
    ["", "plain", 'quotes " and \\ backslash', "\x00\x01\x1b[31m\x7f", "\ufffd", "é中😀\u2028\u2029", "a" * 100_000],
    ids=["empty", "plain", "quotes", "control", "replacement", "unicode", "long"],
)
@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_output_frames_carry_any_text_unchanged(data: str, stream: str) -> None:
    """Whatever text a child printed (control characters, quotes, separators, emoji) parses back identical."""
    message = orjson.loads(protocol.output_notification("run", stream, 2**40, data))
    assert message == {
        "jsonrpc": "2.0",
        "method": "process.output",
        "params": {"id": "run", "stream": stream, "seq": 2**40, "data": data},
    }


def test_an_execute_result_survives_a_round_trip_and_tolerates_missing_fields() -> None:
    """from_dict(asdict(result)) is the identity; absent fields become None rather than errors."""
    result = ExecuteResult(None, 9, True, False, 12.5, 100, 3)
    assert ExecuteResult.from_dict(orjson.loads(orjson.dumps(asdict(result)))) == result
    partial = ExecuteResult.from_dict({"exit_code": 0, "extra": "ignored"})
    assert partial.exit_code == 0 and partial.signal is None


# ---- what the server sends, read by the worker ---------------------------------------------------------------


def test_every_frame_the_server_builds_parses_back_to_its_typed_message() -> None:
    """The builders the handler uses and parse_server_message agree on every name on the wire."""
    result = ExecuteResult(0, None, False, False, 12.5, 6, 0, collected="R1")
    assert parse_server_message(protocol.notification(protocol.PROCESS_QUEUED, {"id": 1, "position": 2})) == Queued(
        id=1, position=2
    )
    assert parse_server_message(protocol.notification(protocol.PROCESS_STARTED, {"id": "r", "pid": 0})) == Started(
        id="r", pid=0
    )
    assert parse_server_message(protocol.output_notification(1, "stderr", 7, "oops\n")) == Output(
        id=1, stream="stderr", seq=7, data="oops\n"
    )
    assert parse_server_message(protocol.response(1, result.to_dict())) == Result(id=1, result=result.to_dict())
    assert ExecuteResult.from_dict(parse_server_message(protocol.response(1, result.to_dict())).result) == result
    assert parse_server_message(protocol.response(2, {"cancelling": True})) == Result(id=2, result={"cancelling": True})
    assert parse_server_message(protocol.error_response(1, NOTHING_KEPT, "Nothing kept.")) == Error(
        id=1, code=NOTHING_KEPT, message="Nothing kept."
    )
    assert parse_server_message(protocol.error_response(None, PARSE_ERROR, "bad")) == Error(
        id=None, code=PARSE_ERROR, message="bad"
    )


def test_a_notification_without_a_run_id_or_of_an_unknown_method_is_still_a_message() -> None:
    """A notification's id is optional (the client never needed it); one this side does not know is kept whole,
    for the caller to skip, so a newer handler's notifications do not break an older worker."""
    assert parse_server_message('{"jsonrpc": "2.0", "method": "process.started", "params": {"pid": 4242}}') == (
        Started(id=None, pid=4242)
    )
    assert parse_server_message(b'{"jsonrpc": "2.0", "method": "process.paused", "params": {"id": 1}}') == (
        OtherNotification(method="process.paused", params={"id": 1})
    )
    assert parse_server_message(b'{"jsonrpc": "2.0", "method": "hello"}') == OtherNotification("hello", {})


@pytest.mark.parametrize(
    ("raw", "code", "message"),
    [
        (
            "{",
            PARSE_ERROR,
            "Parse error: the message is not valid JSON (unexpected end of data: line 1 column 2 (char 1)).",
        ),
        ("[]", INVALID_REQUEST, "Invalid message: a JSON-RPC message must be a JSON object."),
        ("null", INVALID_REQUEST, "Invalid message: a JSON-RPC message must be a JSON object."),
        ('{"id": 1, "result": {}}', INVALID_REQUEST, "Invalid message: 'jsonrpc' must be \"2.0\"."),
        ('{"jsonrpc": "1.0", "id": 1, "result": {}}', INVALID_REQUEST, "Invalid message: 'jsonrpc' must be \"2.0\"."),
        ('{"jsonrpc": "2.0", "method": 7}', INVALID_REQUEST, "Invalid message: 'method' must be a string."),
        (
            '{"jsonrpc": "2.0", "method": "process.output", "params": []}',
            INVALID_PARAMS,
            "Invalid params: the params of process.output must be an object.",
        ),
        (
            '{"jsonrpc": "2.0", "result": {}}',
            INVALID_REQUEST,
            "Invalid message: a message needs a 'method' (a notification) or an 'id' (a response).",
        ),
        (
            '{"jsonrpc": "2.0", "id": 1.5, "result": {}}',
            INVALID_REQUEST,
            "Invalid message: 'id' must be a string, an integer or null.",
        ),
        (
            '{"jsonrpc": "2.0", "id": true, "result": {}}',
            INVALID_REQUEST,
            "Invalid message: 'id' must be a string, an integer or null.",
        ),
        (
            '{"jsonrpc": "2.0", "id": 1}',
            INVALID_REQUEST,
            "Invalid message: a response carries exactly one of 'result' and 'error'.",
        ),
        (
            '{"jsonrpc": "2.0", "id": 1, "result": {}, "error": {"code": 1, "message": "x"}}',
            INVALID_REQUEST,
            "Invalid message: a response carries exactly one of 'result' and 'error'.",
        ),
        ('{"jsonrpc": "2.0", "id": 1, "result": [0]}', INVALID_REQUEST, "Invalid message: 'result' must be an object."),
        (
            '{"jsonrpc": "2.0", "id": 1, "error": {"code": "-32002", "message": "x"}}',
            INVALID_REQUEST,
            "Invalid message: 'error' must be an object with an integer 'code' and a string 'message'.",
        ),
        (
            '{"jsonrpc": "2.0", "id": 1, "error": {"code": -32002}}',
            INVALID_REQUEST,
            "Invalid message: 'error' must be an object with an integer 'code' and a string 'message'.",
        ),
    ],
)
def test_a_malformed_server_message_is_a_protocol_error_saying_what_is_wrong(raw: str, code: int, message: str) -> None:
    """Anything that is not one of the messages the handler sends is refused in one sentence, never a KeyError."""
    error = _error(parse_server_message, raw)
    assert (error.code, error.message, error.request_id) == (code, message, None)


OUTPUT_NEEDS = (
    "Invalid params: process.output needs 'stream' (stdout or stderr), 'seq' (a whole number) and 'data' (a string)."
)


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("process.output", {"id": 1, "seq": 0, "data": "x"}, OUTPUT_NEEDS),
        ("process.output", {"id": 1, "stream": "stdin", "seq": 0, "data": "x"}, OUTPUT_NEEDS),
        ("process.output", {"id": 1, "stream": "stdout", "seq": True, "data": "x"}, OUTPUT_NEEDS),
        ("process.output", {"id": 1, "stream": "stdout", "seq": 0, "data": 5}, OUTPUT_NEEDS),
        ("process.started", {"id": 1}, "Invalid params: process.started needs 'pid', a whole number."),
        ("process.started", {"id": 1, "pid": "42"}, "Invalid params: process.started needs 'pid', a whole number."),
        (
            "process.queued",
            {"id": 1, "position": 1.0},
            "Invalid params: process.queued needs 'position', a whole number.",
        ),
    ],
)
def test_a_known_notification_with_wrong_params_is_invalid_params(
    method: str, params: dict[str, Any], message: str
) -> None:
    """The three notifications the worker acts on are checked field by field: -32602 and one sentence."""
    error = _error(parse_server_message, protocol.notification(method, params))
    assert (error.code, error.message) == (INVALID_PARAMS, message)
