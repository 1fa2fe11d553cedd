"""The OpenAI-compatible format without I/O: request parsing and the framer, with dicts."""

from __future__ import annotations

import pytest

from api.db.services.conversation_service import AnswerDelta, AnswerDone
from api.rag.llm import ChatModelError
from api.streaming.openai_format import (
    DONE,
    OpenAIFramer,
    OpenAIRequest,
    error_body,
    parse_openai_request,
)
from api.utils.metrics import envelope_code
from common.errors import ArgumentError, DataError

REFERENCE = {"total": 1, "chunks": [{"id": "c1", "document_name": "a.md"}], "doc_aggs": []}


def events() -> list:
    return [AnswerDelta("Hello ", "m1", "s1"), AnswerDelta("world", "m1", "s1"), AnswerDone("Hello world", REFERENCE, "m1", "s1")]


def test_parse_keeps_user_and_assistant_turns_after_the_first_question():
    req = parse_openai_request(
        {
            "model": "gpt-x",
            "stream": True,
            "reference": True,
            "temperature": 0.3,
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "assistant", "content": "opener"},
                {"role": "user", "content": [{"type": "text", "text": "q1"}]},
                {"role": "assistant", "content": "a1"},
                {"role": "user", "content": " q2 "},
            ],
        },
        100,
    )
    assert req == OpenAIRequest(
        "q2",
        ({"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}),
        "gpt-x",
        True,
        True,
        include_usage=False,
        prompt_tokens=5,  # every message sent counts: s, opener, q1, a1, q2
    )


def test_parse_defaults_and_ragflow_extra_body():
    req = parse_openai_request({"messages": [{"role": "user", "content": "q"}], "extra_body": {"reference": True}}, 100)
    assert (req.model, req.stream, req.reference, req.history) == ("ragsocket", False, True, ())


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ([], "JSON object"),
        ({}, "`messages` is required"),
        ({"messages": [{"role": "user", "content": 3}]}, "`messages[0].content`"),
        ({"messages": [{"role": "user", "content": "x" * 101}]}, "too long: 101 characters, at most 100"),
        ({"messages": [{"role": "user", "content": "q"}], "stream": "yes"}, "`stream`"),
        ({"messages": [{"role": "user", "content": "q"}], "extra_body": []}, "`extra_body`"),
    ],
)
def test_parse_refuses(payload, fragment):
    with pytest.raises(ArgumentError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        parse_openai_request(payload, 100)


def test_streamed_chunks_then_done():
    framer = OpenAIFramer(OpenAIRequest("q", stream=True, reference=True, model="m"), now=1700000000)
    frames = [frame for event in events() for frame in framer.feed(event)]
    base = {"id": "chatcmpl-m1", "object": "chat.completion.chunk", "created": 1700000000, "model": "m", "session_id": "s1"}
    assert frames == [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hello "}, "logprobs": None, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "world"}, "logprobs": None, "finish_reason": None}]},
        {
            **base,
            "choices": [
                {
                    "index": 0,
                    "delta": {"reference": REFERENCE["chunks"], "final_content": "Hello world"},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
        },
    ]
    assert framer.end() is DONE


def test_one_completion_when_not_streamed():
    framer = OpenAIFramer(OpenAIRequest("q", prompt_tokens=1), now=5)
    frames = [frame for event in events() for frame in framer.feed(event)]
    assert frames == [
        {
            "id": "chatcmpl-m1",
            "object": "chat.completion",
            "created": 5,
            "model": "ragsocket",
            "session_id": "s1",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello world"}, "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        }
    ]


def test_usage_chunk_only_when_asked():
    asked = OpenAIFramer(OpenAIRequest("q", stream=True, include_usage=True, prompt_tokens=1), now=5)
    frames = [frame for event in events() for frame in asked.feed(event)]
    assert frames[-2]["choices"][0]["finish_reason"] == "stop" and "usage" not in frames[-2]
    assert frames[-1] == {
        "id": "chatcmpl-m1",
        "object": "chat.completion.chunk",
        "created": 5,
        "model": "ragsocket",
        "session_id": "s1",
        "choices": [],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
    plain = OpenAIFramer(OpenAIRequest("q", stream=True), now=5)
    assert all("usage" not in frame for event in events() for frame in plain.feed(event))


@pytest.mark.parametrize(
    ("options", "message"),
    [("yes", "`stream_options` must be an object"), ({"include_usage": 1}, "`stream_options.include_usage` must be true or false")],
)
def test_bad_stream_options(options, message):
    with pytest.raises(ArgumentError, match=message.replace(".", r"\.")):
        parse_openai_request({"messages": [{"role": "user", "content": "q"}], "stream_options": options}, 100)


def test_failures_map_to_status_and_openai_error():
    framer = OpenAIFramer(OpenAIRequest("q"))
    assert framer.fail(DataError("You don't own the chat x")) == error_body(102, "You don't own the chat x")
    assert framer.status == 404
    assert framer.fail(ChatModelError("the chat model failed: upstream answered 500")) == {
        "error": {"message": "the chat model failed: upstream answered 500", "type": "server_error", "param": None, "code": "internal_error"}
    }
    assert framer.status == 500


@pytest.mark.parametrize(
    ("body", "code"),
    [(b'{"code":102,"data":null,"message":"x"}', 102), (b'{"code": 0, "data": []}', 0), (b'{"error": {}}', None), (b"[]", None)],
)
def test_envelope_code(body, code):
    assert envelope_code(body) == code
