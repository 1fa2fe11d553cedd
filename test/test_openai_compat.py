"""``POST /api/v1/chats_openai/<chat_id>/chat/completions`` driven by the official ``openai`` package."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from openai import OpenAI

from api.rag.tokenizer import count_tokens
from test.support.server import (
    ServerProcess,
    Tenant,
    auth,
    corpus_files,
    make_corpus,
    saved_session_sync,
    unique,
)

QUESTION = "How many days do I have to return a purchase?"


@pytest.fixture(scope="module")
async def corpus(server: ServerProcess, tenant: Tenant, corpus_dir) -> dict:
    """The shipped documents, parsed, an offline-model chat and an echo-model chat over them."""
    _, _, (chat_id, echo_id, failing_id) = await make_corpus(
        server, tenant, corpus_files(corpus_dir), {}, {"llm": {"model_name": "echo"}}, {"llm": {"model_name": "error-500"}}, name=unique("openai")
    )
    return {"chat_id": chat_id, "echo_id": echo_id, "failing_id": failing_id}


def client(server: ServerProcess, chat_id: str, key: str) -> OpenAI:
    return OpenAI(base_url=f"{server.api_url}/chats_openai/{chat_id}", api_key=key, max_retries=0, timeout=30)


def saved_messages(http: httpx.Client, chat_id: str, session_id: str) -> list[dict]:
    return saved_session_sync(http, chat_id, session_id)["messages"]


def test_non_streamed_completion_is_the_saved_answer_with_references(server, tenant, corpus, http):
    oa = client(server, corpus["chat_id"], tenant.api_key)
    result = oa.chat.completions.create(
        model="any-name", messages=[{"role": "user", "content": QUESTION}], extra_body={"reference": True}
    )
    assert result.object == "chat.completion" and result.model == "any-name"
    (choice,) = result.choices
    assert choice.index == 0 and choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert "30 days" in choice.message.content and "[ID:0]" in choice.message.content
    extra = result.model_extra
    reference = choice.message.model_extra["reference"]
    assert reference[0]["document_name"] == "returns.md"
    messages = saved_messages(http, corpus["chat_id"], extra["session_id"])
    assert [m["role"] for m in messages] == ["assistant", "user", "assistant"]
    assert messages[1]["content"] == QUESTION
    assert messages[2]["content"] == choice.message.content
    assert result.id == f"chatcmpl-{messages[2]['id']}"
    assert messages[2]["reference"]["chunks"] == reference


def test_streamed_chunks_concatenate_to_the_saved_answer(server, tenant, corpus, http):
    oa = client(server, corpus["chat_id"], tenant.api_key)
    stream = oa.chat.completions.create(
        model="m", messages=[{"role": "user", "content": QUESTION}], stream=True, extra_body={"reference": True}
    )
    chunks = list(stream)
    assert len(chunks) > 3 and all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    last = chunks[-1].choices[0]
    assert last.finish_reason == "stop" and last.delta.content is None
    answer = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert "30 days" in answer
    assert last.delta.model_extra["final_content"] == answer
    reference = last.delta.model_extra["reference"]
    assert reference[0]["document_name"] == "returns.md"
    messages = saved_messages(http, corpus["chat_id"], chunks[-1].model_extra["session_id"])
    assert messages[-1]["content"] == answer and chunks[0].id == f"chatcmpl-{messages[-1]['id']}"
    assert messages[-1]["reference"]["chunks"] == reference


def test_usage_is_reported_and_streamed_when_asked(server, tenant, corpus):
    oa = client(server, corpus["chat_id"], tenant.api_key)
    messages = [{"role": "user", "content": QUESTION}]
    result = oa.chat.completions.create(model="m", messages=messages)
    usage = result.usage
    assert usage.prompt_tokens == count_tokens(QUESTION) > 0
    assert usage.completion_tokens == count_tokens(result.choices[0].message.content) > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    plain = list(oa.chat.completions.create(model="m", messages=messages, stream=True))
    assert all(chunk.usage is None and chunk.choices for chunk in plain), "no usage unless asked"
    asked = list(
        oa.chat.completions.create(model="m", messages=messages, stream=True, stream_options={"include_usage": True})
    )
    *answer_chunks, usage_chunk = asked
    assert usage_chunk.choices == [] and usage_chunk.id == answer_chunks[0].id
    answer = "".join(chunk.choices[0].delta.content or "" for chunk in answer_chunks)
    assert usage_chunk.usage.completion_tokens == count_tokens(answer)
    assert usage_chunk.usage.prompt_tokens == count_tokens(QUESTION)


def test_stream_ends_with_done_marker(server, tenant, corpus):
    body = {"model": "m", "messages": [{"role": "user", "content": QUESTION}], "stream": True}
    with httpx.stream(
        "POST", f"{server.api_url}/chats_openai/{corpus['chat_id']}/chat/completions", json=body,
        headers=auth(tenant), timeout=30,
    ) as response:
        raw = response.read().decode()
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["X-Accel-Buffering"] == "no"
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    last = json.loads(events[-3][len("data: "):])
    assert last["choices"][0]["delta"] == {} and "reference" not in last["choices"][0]["delta"], "references only when asked"


def test_without_reference_flag_no_reference(server, tenant, corpus):
    result = client(server, corpus["chat_id"], tenant.api_key).chat.completions.create(
        model="m", messages=[{"role": "user", "content": QUESTION}]
    )
    assert "reference" not in (result.choices[0].message.model_extra or {})


def test_earlier_messages_are_the_history(server, tenant, corpus, http, openai_server):
    oa = client(server, corpus["echo_id"], tenant.api_key)
    conversation = [
        {"role": "system", "content": "ignored: the chat's own prompt applies"},
        {"role": "assistant", "content": "an opener, dropped"},
        {"role": "user", "content": "How long does standard shipping take?"},
        {"role": "assistant", "content": "Three to five business days."},
        {"role": "user", "content": "And the warranty?"},
    ]
    result = oa.chat.completions.create(model="m", messages=conversation)
    sent = openai_server.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert [m["content"] for m in sent[1:]] == [m["content"] for m in conversation[2:]]
    assert "ignored" not in sent[0]["content"]
    messages = saved_messages(http, corpus["echo_id"], result.model_extra["session_id"])
    assert [(m["role"], m["content"]) for m in messages[1:]] == [
        *((m["role"], m["content"]) for m in conversation[2:]),
        ("assistant", result.choices[0].message.content),
    ]


def test_bad_key_is_401(server, corpus):
    oa = client(server, corpus["chat_id"], "ragsocket-not-a-real-key")
    with pytest.raises(openai.AuthenticationError) as caught:
        oa.chat.completions.create(model="m", messages=[{"role": "user", "content": QUESTION}])
    assert caught.value.status_code == 401
    assert caught.value.body == {
        "message": "Authentication error: API key is invalid!", "type": "invalid_request_error", "param": None, "code": "invalid_api_key"
    }


def test_other_tenants_chat_is_404(server, other_tenant, corpus):
    oa = client(server, corpus["chat_id"], other_tenant.api_key)
    with pytest.raises(openai.NotFoundError) as caught:
        oa.chat.completions.create(model="m", messages=[{"role": "user", "content": QUESTION}], stream=True)
    assert caught.value.status_code == 404
    assert caught.value.body["message"] == f"You don't own the chat {corpus['chat_id']}"


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        ([], "`messages` is required"),
        ([{"role": "assistant", "content": "hi"}], "the last message must be the user's question"),
        ([{"role": "user", "content": "   "}], "must not be empty"),
        ([{"role": "wizard", "content": "hi"}], "`messages[0]` must be an object with a role"),
    ],
)
def test_bad_messages_are_400(server, tenant, corpus, messages, fragment):
    oa = client(server, corpus["chat_id"], tenant.api_key)
    with pytest.raises(openai.BadRequestError) as caught:
        oa.chat.completions.create(model="m", messages=messages)
    assert caught.value.status_code == 400 and fragment in caught.value.body["message"]


def test_bad_stream_options_are_400(server, tenant, corpus):
    body = {"messages": [{"role": "user", "content": QUESTION}], "stream": True, "stream_options": {"include_usage": "yes"}}
    response = httpx.post(
        f"{server.api_url}/chats_openai/{corpus['chat_id']}/chat/completions", json=body, headers=auth(tenant), timeout=30
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "`stream_options.include_usage` must be true or false"


def test_model_failure_is_500_or_an_error_event(server, tenant, corpus):
    oa = client(server, corpus["failing_id"], tenant.api_key)
    with pytest.raises(openai.InternalServerError) as caught:
        oa.chat.completions.create(model="m", messages=[{"role": "user", "content": QUESTION}])
    assert caught.value.status_code == 500 and caught.value.body["type"] == "server_error"
    with pytest.raises(openai.APIError) as streamed:
        list(oa.chat.completions.create(model="m", messages=[{"role": "user", "content": QUESTION}], stream=True))
    assert "chat model failed" in streamed.value.message
