"""The answer-stream protocol without I/O: request validation, frames, errors, SSE.

Everything here is driven with plain strings and dicts (STYLE.md, practice 1); the
expected frames are RAGFlow's formats as documented in :mod:`api.streaming.protocol`.
"""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

import pytest

from api.db.services.conversation_service import AnswerDelta, AnswerDone
from api.rag.llm import ChatModelError
from api.streaming.agent_frames import AGENT_DIALECT, AgentFramer
from api.streaming.dify_format import PING_EVENT, DifyKind, dify_dialect
from api.streaming.protocol import (
    CHAT_DIALECT,
    END_FRAME,
    INTERNAL_ERROR_MESSAGE,
    AnswerFramer,
    CompletionRequest,
    IllegalTransition,
    StreamState,
    describe_error,
    dumps,
    end_frame,
    error_frame,
    error_frame_for,
    frame_seq,
    is_end_marker,
    parse_request_payload,
    parse_request_text,
    sse_event,
)
from common.constants import RetCode
from common.errors import ArgumentError, AuthError, DataError, RagSocketError

MAX = 100
MSG = "m-1"
SID = "s-1"
REFERENCE = {"total": 1, "chunks": [{"id": "c1", "content": "30 days"}], "doc_aggs": [{"doc_name": "returns.md"}]}


def parse_error(text: str, max_chars: int = MAX) -> ArgumentError:
    with pytest.raises(ArgumentError) as caught:
        parse_request_text(text, max_chars)
    assert caught.value.code is RetCode.ARGUMENT_ERROR
    return caught.value


# -- requests ----------------------------------------------------------------------


def test_minimal_request_gets_defaults():
    assert parse_request_text('{"question": "hi"}', MAX) == CompletionRequest(
        question="hi", session_id=None, stream=True, legacy=False, kb_ids=(), doc_ids=()
    )


def test_request_with_all_fields():
    text = json.dumps(
        {
            "question": "  How long?  ",
            "session_id": "abc",
            "stream": False,
            "legacy": True,
            "kb_ids": ["kb1", "kb2"],
            "doc_ids": ["d1"],
        }
    )
    assert parse_request_text(text, MAX) == CompletionRequest(
        question="How long?", session_id="abc", stream=False, legacy=True, kb_ids=("kb1", "kb2"), doc_ids=("d1",)
    )


def test_empty_session_id_and_null_id_lists_mean_absent():
    request = parse_request_payload({"question": "q", "session_id": "", "kb_ids": None, "doc_ids": []}, MAX)
    assert request.session_id is None and request.kb_ids == () and request.doc_ids == ()


def test_chinese_question_is_kept():
    assert parse_request_text('{"question": "退货期限是多久？"}', MAX).question == "退货期限是多久？"


def test_invalid_json_reports_line_and_column():
    error = parse_error('{\n  "question": "hi",\n}')
    assert error.message.startswith("invalid JSON at line 3 column 1: ")
    assert "Expecting property name" in error.message


def test_invalid_json_on_first_line():
    assert parse_error("not json").message == "invalid JSON at line 1 column 1: Expecting value"


def test_deeply_nested_json_is_an_argument_error():
    assert parse_error("[" * 1000).message.startswith("invalid JSON")


@pytest.mark.parametrize("text", ['"question"', "[]", '[{"question": "hi"}]', "42", "null", "true"])
def test_request_must_be_an_object(text):
    assert parse_error(text).message == "the request must be a JSON object"


def test_payload_must_be_a_dict():
    with pytest.raises(ArgumentError, match="must be a JSON object"):
        parse_request_payload(["question"], MAX)


@pytest.mark.parametrize(
    "payload",
    [{}, {"question": None}, {"question": ""}, {"question": "   \n\t"}, {"question": 42}, {"question": ["hi"]}],
)
def test_question_is_required_and_non_blank(payload):
    assert parse_error(json.dumps(payload)).message == "`question` is required and must be a non-empty string"


def test_question_length_limit():
    assert parse_request_payload({"question": "x" * MAX}, MAX).question == "x" * MAX
    error = parse_error(json.dumps({"question": "x" * (MAX + 1)}))
    assert error.message == f"`question` is too long: {MAX + 1} characters, at most {MAX}"


@pytest.mark.parametrize("name", ["stream", "legacy"])
@pytest.mark.parametrize("value", ["true", 1, 0, None, [], {}])
def test_flags_must_be_booleans(name, value):
    assert parse_error(json.dumps({"question": "q", name: value})).message == f"`{name}` must be true or false"


@pytest.mark.parametrize("value", [42, True, ["abc"], {"id": "abc"}, "x" * 65])
def test_session_id_must_be_a_short_string(value):
    error = parse_error(json.dumps({"question": "q", "session_id": value}))
    assert error.message == "`session_id` must be a string of at most 64 characters"


def test_session_id_of_64_characters_is_accepted():
    assert parse_request_payload({"question": "q", "session_id": "s" * 64}, MAX).session_id == "s" * 64


@pytest.mark.parametrize("name", ["kb_ids", "doc_ids"])
@pytest.mark.parametrize("value", ["kb1", 7, True, ["kb1", 2], ["kb1", ""], [None], {"a": "b"}])
def test_id_lists_must_be_lists_of_ids(name, value):
    assert parse_error(json.dumps({"question": "q", name: value})).message == f"`{name}` must be a list of ids"


@pytest.mark.parametrize("value", [0, False, "", {}])
def test_falsy_id_lists_of_wrong_type_are_rejected(value):
    parse_error(json.dumps({"question": "q", "kb_ids": value}))


# -- frames ------------------------------------------------------------------------


def delta(text: str) -> AnswerDelta:
    return AnswerDelta(text=text, message_id=MSG, session_id=SID)


def done(answer: str) -> AnswerDone:
    return AnswerDone(answer=answer, reference=REFERENCE, message_id=MSG, session_id=SID)


def data_frame(answer: str, reference: object, final: bool, seq: int) -> dict:
    return {
        "code": 0,
        "message": "",
        "data": {"answer": answer, "reference": reference, "id": MSG, "session_id": SID, "final": final, "seq": seq},
    }


def feed_all(framer: AnswerFramer, events: list) -> list[list[dict]]:
    return [framer.feed(event) for event in events]


EVENTS = [delta("Thirty "), delta("days "), delta("[ID:0]."), done("Thirty days [ID:0].")]


def test_delta_frames_carry_only_new_text():
    framer = AnswerFramer()
    assert feed_all(framer, EVENTS) == [
        [data_frame("Thirty ", {}, False, 1)],
        [data_frame("days ", {}, False, 2)],
        [data_frame("[ID:0].", {}, False, 3)],
        [data_frame("", REFERENCE, True, 4)],
    ]
    assert framer.finished and framer.state is StreamState.FINISHED
    assert framer.answer == "Thirty days [ID:0]."


def test_legacy_frames_are_cumulative():
    framer = AnswerFramer(legacy=True)
    assert feed_all(framer, EVENTS) == [
        [data_frame("Thirty ", {}, False, 1)],
        [data_frame("Thirty days ", {}, False, 2)],
        [data_frame("Thirty days [ID:0].", {}, False, 3)],
        [data_frame("Thirty days [ID:0].", REFERENCE, True, 4)],
    ]


@pytest.mark.parametrize("legacy", [False, True])
def test_without_stream_only_one_final_frame_with_the_whole_answer(legacy):
    framer = AnswerFramer(stream=False, legacy=legacy)
    assert feed_all(framer, EVENTS) == [[], [], [], [data_frame("Thirty days [ID:0].", REFERENCE, True, 1)]]


def test_final_frame_ids_come_from_the_events():
    framer = AnswerFramer()
    assert framer.message_id is None and framer.session_id is None
    [frame] = framer.feed(AnswerDone(answer="", reference={}, message_id="m-9", session_id="s-9"))
    assert frame["data"]["id"] == "m-9" and frame["data"]["session_id"] == "s-9"


@pytest.mark.parametrize("late", [delta("more"), done("again")])
def test_feeding_after_the_final_frame_is_illegal(late):
    framer = AnswerFramer()
    framer.feed(delta("a"))
    framer.feed(done("a"))
    with pytest.raises(IllegalTransition, match="after the final frame"):
        framer.feed(late)
    assert framer.answer == "a"


def test_end_frame():
    assert END_FRAME == {"code": 0, "message": "", "data": True}


# -- errors ------------------------------------------------------------------------


def test_error_frame_envelope():
    assert error_frame(RetCode.DATA_ERROR, "no such chat") == {
        "code": 102,
        "message": "no such chat",
        "data": {"answer": "**ERROR**: no such chat", "reference": []},
    }
    assert type(error_frame(RetCode.DATA_ERROR, "x")["code"]) is int


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ArgumentError("bad field"), RetCode.ARGUMENT_ERROR),
        (DataError("bad field"), RetCode.DATA_ERROR),
        (AuthError("bad field"), RetCode.AUTHENTICATION_ERROR),
        (RagSocketError("bad field"), RetCode.SERVER_ERROR),
        (RagSocketError("bad field", RetCode.OPERATING_ERROR), RetCode.OPERATING_ERROR),
    ],
)
def test_ragsocket_errors_keep_their_code_and_message(error, code):
    assert describe_error(error) == (code, "bad field")
    assert error_frame_for(error) == error_frame(code, "bad field")


def test_chat_model_error_is_500_with_its_message():
    error = ChatModelError("the chat model failed: upstream answered 500")
    assert describe_error(error) == (RetCode.SERVER_ERROR, "the chat model failed: upstream answered 500")


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("SELECT * FROM api_token WHERE token='secret'"),
        KeyError("/srv/ragsocket/secret.key"),
        ValueError("password=hunter2"),
    ],
)
def test_other_errors_are_generic_and_never_leak_their_text(error, caplog):
    with caplog.at_level(logging.ERROR, logger="api.streaming.protocol"):
        code, message = describe_error(error)
        frame = error_frame_for(error)
    assert (code, message) == (RetCode.SERVER_ERROR, INTERNAL_ERROR_MESSAGE)
    assert frame == error_frame(500, INTERNAL_ERROR_MESSAGE)
    assert str(error).strip("'") not in dumps(frame)
    assert caplog.records and caplog.records[0].exc_info[1] is error, "the traceback is logged"


# -- serialisation -----------------------------------------------------------------


def test_dumps_is_compact_and_keeps_chinese():
    assert dumps({"answer": "三十天", "n": [1, 2]}) == '{"answer":"三十天","n":[1,2]}'


def test_sse_event_format():
    frame = data_frame("退货期限：30 天\n", {}, False, 1)
    event = sse_event(frame)
    assert event == "data:" + json.dumps(frame, ensure_ascii=False, separators=(",", ":")) + "\n\n"
    assert event.startswith('data:{"code":0,"message":"","data":{"answer":"退货期限：30 天\\n"')
    assert "\\u" not in event
    assert event.count("\n") == 2, "newlines in the answer are escaped inside the JSON"
    assert json.loads(event[len("data:") :]) == frame


def test_sse_end_event():
    assert sse_event(END_FRAME) == 'data:{"code":0,"message":"","data":true}\n\n'


# -- dialects: refusals, markers, heartbeats ------------------------------------------


def test_chat_refusal_is_the_error_envelope_echoing_req_id():
    assert CHAT_DIALECT.error(DataError("busy"), "a") == {**error_frame(102, "busy"), "req_id": "a"}
    assert CHAT_DIALECT.error(ArgumentError("bad")) == error_frame(101, "bad")
    assert CHAT_DIALECT.rejection(108, "too many") == {"code": 108, "message": "too many", "data": None}


def test_agent_refusals_carry_the_error_event():
    assert AGENT_DIALECT.error(ArgumentError("empty"), "q") == {**error_frame(101, "empty"), "event": "error", "req_id": "q"}
    assert AGENT_DIALECT.rejection(109, "bad key") == {"code": 109, "message": "bad key", "data": None, "event": "error"}
    assert AGENT_DIALECT.framer(CompletionRequest("q", req_id="r")).req_id == "r"
    assert isinstance(AGENT_DIALECT.framer(CompletionRequest("q")), AgentFramer)


@pytest.mark.parametrize(
    ("req_id", "untagged_running", "marker"),
    [
        (None, False, True),  # nothing untagged runs: the refusal ends with its marker
        (None, True, False),  # its marker would read as the running answer's end
        ("a", True, True),  # a tagged marker cannot be mistaken
        ("a", False, True),
    ],
)
def test_a_refusal_has_no_marker_only_while_the_untagged_request_runs(req_id, untagged_running, marker):
    assert CHAT_DIALECT.refusal_has_marker(req_id, untagged_running) is marker
    assert AGENT_DIALECT.refusal_has_marker(req_id, untagged_running) is marker


def test_dify_refusals_keep_their_marker_which_the_socket_drops():
    dialect = dify_dialect(DifyKind.CHAT, 10.0)
    assert dialect.refusal_has_marker(None, True) is True
    assert dialect.heartbeats and dialect.heartbeat == PING_EVENT == {"event": "ping"} and dialect.heartbeat_interval == 10.0
    assert not dify_dialect(DifyKind.CHAT, 0).heartbeats, "0 turns the ping off"
    assert not CHAT_DIALECT.heartbeats and not AGENT_DIALECT.heartbeats


def test_end_marker_and_seq_are_read_off_frames():
    assert is_end_marker(end_frame()) and is_end_marker(end_frame("a"))
    assert not is_end_marker({"event": "message", "data": True})
    assert not is_end_marker(data_frame("x", {}, False, 1))
    assert frame_seq(data_frame("x", {}, False, 3)) == 3
    assert frame_seq(end_frame()) is None and frame_seq({"data": {"seq": True}}) is None and frame_seq("x") is None


# -- docstrings ---------------------------------------------------------------------

STREAMING = Path(__file__).resolve().parents[2] / "api" / "streaming"


def undocumented(path: Path) -> list[str]:
    """Public classes, functions and methods of a module without a docstring."""
    missing: list[str] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not child.name.startswith("_"):
                if ast.get_docstring(child) is None:
                    missing.append(f"{path.name}:{child.lineno} {prefix}{child.name}")
                if isinstance(child, ast.ClassDef):
                    walk(child, f"{prefix}{child.name}.")

    walk(ast.parse(path.read_text(encoding="utf-8")), "")
    return missing


def test_every_public_name_of_the_stream_core_has_a_docstring():
    missing = [name for path in sorted(STREAMING.glob("*.py")) for name in undocumented(path)]
    assert missing == []
