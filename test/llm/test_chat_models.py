"""Chat-model layer: prompt building, the offline model, OpenAI-compatible models."""

from __future__ import annotations

import dataclasses
import threading
import time
from types import SimpleNamespace

import pytest

from api.rag.llm import (
    ChatModelError,
    ChatRequest,
    OfflineChatModel,
    OpenAIChatModel,
    available_models,
    get_chat_model,
)
from api.rag.llm.cancel_watch import WATCHER, CancelWatcher
from api.rag.llm.offline import split_deltas, split_sentences
from api.rag.prompt import build_messages, format_knowledge, retrieval_question
from common.constants import DEFAULT_SYSTEM_PROMPT, OFFLINE_MODEL_NAME
from test.support.openai_server import (
    SLOW_CHUNKS,
    SLOW_INTERVAL,
    STALL,
    STALL_SECONDS,
    OpenAITestServer,
    echo_answer,
)

CHUNKS = [
    {
        "content": "Billing happens monthly. Invoices are sent by email.",
        "document_name": "billing.md",
        "similarity": 0.4,
    },
    {
        "content": "To reset a password, open Settings and click Reset password. The link expires in one hour.",
        "document_name": "account.md",
        "similarity": 0.8,
    },
    {
        "content": "重置密码请打开设置页面并点击重置。账单每月结算一次！",
        "document_name": "帮助.md",
        "similarity": 0.5,
    },
]


def make_request(question: str, chunks: list[dict] | None = None, empty: str = "Nothing found.") -> ChatRequest:
    chunks = CHUNKS if chunks is None else chunks
    messages = build_messages(DEFAULT_SYSTEM_PROMPT, chunks, [], question)
    return ChatRequest(question=question, messages=messages, chunks=chunks, empty_response=empty)


def collect(model, request: ChatRequest, cancel: threading.Event | None = None) -> list[str]:
    return list(model.stream(request, cancel or threading.Event()))


# -- prompt ----------------------------------------------------------------------


def test_format_knowledge_numbers_chunks_like_ragflow():
    text = format_knowledge(CHUNKS[:2])
    assert text == (
        "ID: 0\n├── Title: billing.md\n└── Content: Billing happens monthly. Invoices are sent by email."
        "\n\n"
        "ID: 1\n├── Title: account.md\n└── Content: " + CHUNKS[1]["content"]
    )
    assert format_knowledge([]) == ""


def test_build_messages_replaces_placeholder_keeps_braces_and_history_order():
    template = 'Answer as JSON like {"answer": "..."} using:\n{knowledge}\nEnd {0} {name}.'
    history = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "system", "content": "must be dropped"},
        {"role": "user", "content": "second question"},
        {"role": "assistant", "content": "second answer"},
    ]
    messages = build_messages(template, CHUNKS[:1], history, "third question")

    assert messages[0]["role"] == "system"
    system = messages[0]["content"]
    assert "{knowledge}" not in system
    assert system.startswith('Answer as JSON like {"answer": "..."} using:\nID: 0\n├── Title: billing.md')
    assert system.endswith("\nEnd {0} {name}.")
    assert [(m["role"], m["content"]) for m in messages[1:]] == [
        ("user", "first question"),
        ("assistant", "first answer"),
        ("user", "second question"),
        ("assistant", "second answer"),
        ("user", "third question"),
    ]


def test_build_messages_appends_knowledge_without_placeholder():
    messages = build_messages("Be brief.", CHUNKS[:1], [], "q")
    assert messages[0]["content"].startswith("Be brief.")
    assert messages[0]["content"].endswith(format_knowledge(CHUNKS[:1]))
    assert messages[-1] == {"role": "user", "content": "q"}


# -- offline model ---------------------------------------------------------------


def test_split_sentences_english_and_chinese():
    assert split_sentences("One here. Two there!  Three?\n\nFour") == ["One here.", "Two there!", "Three?", "Four"]
    assert split_sentences("第一句。第二句！“第三句？”尾巴") == ["第一句。", "第二句！", "“第三句？”", "尾巴"]


@pytest.mark.parametrize("text", ["Hello  big world.\n[ID:0]", "中文句子没有空格。 [ID:2] and English", "  lead"])
def test_split_deltas_round_trip(text):
    deltas = split_deltas(text)
    assert "".join(deltas) == text
    assert all(len(delta.strip()) <= 8 or delta.isascii() for delta in deltas)


def test_offline_cites_relevant_chunk_word_by_word():
    model = OfflineChatModel()
    request = make_request("How do I reset my password?")
    deltas = collect(model, request)
    answer = "".join(deltas)

    assert model.name == OFFLINE_MODEL_NAME
    assert "To reset a password, open Settings and click Reset password. [ID:1]" in answer
    assert "[ID:0]" not in answer and "Billing" not in answer
    assert len(deltas) >= 10
    assert deltas[:3] == ["To ", "reset ", "a "]


def test_offline_answer_keeps_chunk_order_of_best_sentences():
    chunks = [
        {"content": "Export reports from the Reports page.", "document_name": "a", "similarity": 0.3},
        {"content": "Reports can be exported as CSV files.", "document_name": "b", "similarity": 0.9},
    ]
    answer = "".join(collect(OfflineChatModel(), make_request("export reports csv", chunks)))
    assert answer.index("[ID:0]") < answer.index("[ID:1]")
    assert answer.endswith("exported as CSV files. [ID:1]")


def test_offline_empty_response_when_nothing_matches():
    request = make_request("quantum chromodynamics lattice", empty="Sorry, nothing relevant.")
    assert "".join(collect(OfflineChatModel(), request)) == "Sorry, nothing relevant."
    no_chunks = make_request("reset password", chunks=[], empty="Empty KB.")
    assert "".join(collect(OfflineChatModel(), no_chunks)) == "Empty KB."


HISTORY = [
    {"role": "user", "content": "first?"},
    {"role": "assistant", "content": "one [ID:0]"},
    {"role": "user", "content": "second?"},
    {"role": "assistant", "content": "two"},
    {"role": "user", "content": "third?"},
]


@pytest.mark.parametrize(
    ("history", "earlier", "expected"),
    [
        ([], 2, "new?"),
        (HISTORY, 2, "second?\nthird?\nnew?"),
        (HISTORY, 5, "first?\nsecond?\nthird?\nnew?"),
        (HISTORY, 0, "new?"),
        ([{"role": "assistant", "content": "Hi! I'm your assistant."}], 2, "new?"),
        ([{"role": "user", "content": "  "}, {"role": "user", "content": "kept?"}], 2, "kept?\nnew?"),
    ],
)
def test_retrieval_question_puts_earlier_user_questions_first(history, earlier, expected):
    assert retrieval_question("new?", history, earlier) == expected


def offline_answer(question: str, retrieval: str) -> str:
    request = dataclasses.replace(make_request(question), retrieval_question=retrieval)
    return "".join(collect(OfflineChatModel(), request))


def test_offline_follow_up_falls_back_to_the_earlier_question():
    # "When does it run out?" shares no word with any sentence; the earlier question does.
    answer = offline_answer("When does it run out?", "How do I reset my password?\nWhen does it run out?")
    assert "To reset a password, open Settings and click Reset password. [ID:1]" in answer


def test_offline_follow_up_on_a_new_topic_answers_the_new_question():
    answer = offline_answer("And billing?", "How do I reset my password?\nAnd billing?")
    assert answer == "Billing happens monthly. [ID:0]"


def test_offline_chinese_question_gets_chinese_sentence():
    deltas = collect(OfflineChatModel(), make_request("如何重置密码？"))
    answer = "".join(deltas)
    assert answer == "重置密码请打开设置页面并点击重置。 [ID:2]"
    assert len(deltas) >= 5
    assert all(len(delta.strip()) <= 4 for delta in deltas if not delta.isascii())


def test_offline_cancel_stops_early():
    cancel = threading.Event()
    model = OfflineChatModel(token_delay=0.01)
    full = collect(model, make_request("How do I reset my password?"))
    deltas = []
    for delta in model.stream(make_request("How do I reset my password?"), cancel):
        deltas.append(delta)
        if len(deltas) == 2:
            cancel.set()
    assert deltas == full[:2]
    assert len(full) > 2


def test_offline_token_delay_paces_the_stream():
    model = OfflineChatModel(token_delay=0.02)
    started = time.monotonic()
    deltas = collect(model, make_request("How do I reset my password?"))
    assert time.monotonic() - started >= 0.02 * (len(deltas) - 1) * 0.9


# -- OpenAI-compatible model -----------------------------------------------------


@pytest.fixture(scope="module")
def server():
    with OpenAITestServer(api_key="sk-test") as running:
        yield running


def test_openai_streams_echo_and_sends_messages_and_key(server):
    history = [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "reply"}]
    messages = build_messages(DEFAULT_SYSTEM_PROMPT, CHUNKS, history, "How do I reset my password?")
    request = ChatRequest("How do I reset my password?", messages, CHUNKS, "none", temperature=0.1, max_tokens=64)
    before = len(server.requests)

    deltas = collect(OpenAIChatModel(server.base_url, "sk-test", "echo", 10), request)

    assert "".join(deltas) == echo_answer(messages)
    assert "".join(deltas).startswith("You asked: How do I reset my password?. The knowledge says: ")
    assert len(deltas) > 5
    sent = server.requests[before]
    assert sent["model"] == "echo" and sent["stream"] is True
    assert sent["messages"] == messages
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]
    assert sent["temperature"] == 0.1 and sent["max_tokens"] == 64
    assert "top_p" not in sent
    assert server.authorizations[-1] == "Bearer sk-test"


def test_openai_wrong_key_is_401(server):
    with pytest.raises(ChatModelError) as caught:
        collect(OpenAIChatModel(server.base_url, "wrong", "echo", 10), make_request("hi"))
    assert str(caught.value) == "the chat model failed: upstream answered 401"


def test_openai_error_500_has_safe_message(server):
    with pytest.raises(ChatModelError) as caught:
        collect(OpenAIChatModel(server.base_url, "sk-test", "error-500", 10), make_request("hi"))
    message = str(caught.value)
    assert message == "the chat model failed: upstream answered 500"
    assert "Traceback" not in message and "internal failure" not in message


def test_openai_fail_midstream_yields_then_raises(server):
    deltas = []
    with pytest.raises(ChatModelError) as caught:
        for delta in OpenAIChatModel(server.base_url, "sk-test", "fail-midstream", 10).stream(
            make_request("hi"), threading.Event()
        ):
            deltas.append(delta)
    assert deltas == ["Partial ", "answer "]
    assert str(caught.value) == "the chat model stopped mid-answer"


def test_openai_unreachable_endpoint():
    with OpenAITestServer() as stopped:
        base_url = stopped.base_url
    with pytest.raises(ChatModelError) as caught:
        collect(OpenAIChatModel(base_url, "k", "echo", 5), make_request("hi"))
    assert str(caught.value) == "the chat model is unreachable"


def test_openai_cancel_during_slow_returns_promptly(server):
    cancel = threading.Event()
    deltas = []
    started = time.monotonic()
    for delta in OpenAIChatModel(server.base_url, "sk-test", "slow", 10).stream(make_request("hi"), cancel):
        deltas.append(delta)
        if len(deltas) == 2:
            cancel.set()
    elapsed = time.monotonic() - started
    assert deltas == ["tick0 ", "tick1 "]
    assert elapsed < SLOW_CHUNKS * SLOW_INTERVAL / 4  # full stream takes ~3.8 s


def _stream_with_stop_after_first(model, cancel: threading.Event, stop_delay: float) -> tuple[list[str], float]:
    """Stream ``model``; ``stop_delay`` s after the first delta, set ``cancel`` from
    another thread. Returns the deltas and the seconds from the stop to the end."""
    deltas: list[str] = []
    stopped_at: list[float] = []

    def stop() -> None:
        stopped_at.append(time.monotonic())
        cancel.set()

    timer = None
    for delta in model.stream(make_request("hi"), cancel):
        deltas.append(delta)
        if timer is None:
            timer = threading.Timer(stop_delay, stop)
            timer.start()
    ended = time.monotonic()
    if timer is not None:
        timer.join()
    return deltas, ended - stopped_at[0] if stopped_at else float("inf")


def test_openai_stop_while_model_is_silent_ends_the_stream_promptly(server):
    """The model sends one chunk then goes quiet for 30 s: a stop must not wait for it."""
    model = OpenAIChatModel(server.base_url, "sk-test", STALL, 60)
    cancel = threading.Event()
    started = time.monotonic()

    deltas, after_stop = _stream_with_stop_after_first(model, cancel, 0.3)

    assert deltas == ["first "]  # no error raised: a stop is not a failure
    assert after_stop < 2, f"stream ended {after_stop:.1f} s after the stop"
    assert time.monotonic() - started < STALL_SECONDS / 3
    assert WATCHER.watching() == 0
    # the shared client's pool is still usable after the connection was shut down
    echo = OpenAIChatModel(server.base_url, "sk-test", "echo", 10)
    echo._client = model._client  # same connection pool
    assert "".join(collect(echo, make_request("again"))).startswith("You asked: again.")


def _own_threads() -> list[str]:
    """Names of this process's threads, without the test server's request handlers."""
    return sorted(t.name for t in threading.enumerate() if "process_request_thread" not in t.name)


def test_openai_streams_leave_no_watch_or_thread_behind(server):
    model = OpenAIChatModel(server.base_url, "sk-test", "echo", 10)
    collect(model, make_request("warm up"))
    threads = _own_threads()
    for index in range(10):
        assert "".join(collect(model, make_request(f"q{index}"))).startswith(f"You asked: q{index}.")
    cancel = threading.Event()
    for _ in model.stream(make_request("cut"), cancel):
        cancel.set()
    assert WATCHER.watching() == 0
    assert _own_threads() == threads
    assert [name for name in threads if name == "llm-cancel-watcher"] == ["llm-cancel-watcher"]
    model.close()


def test_cancel_watcher_runs_action_once_and_never_after_the_block():
    watcher = CancelWatcher(interval=0.01)
    calls: list[str] = []
    event = threading.Event()
    with watcher.watch(event, lambda: calls.append("fired")):
        event.set()
        deadline = time.monotonic() + 2
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
    assert calls == ["fired"]

    late = threading.Event()
    with watcher.watch(late, lambda: calls.append("late")):
        pass
    late.set()
    time.sleep(0.05)
    assert calls == ["fired"] and watcher.watching() == 0


def test_cancel_watcher_survives_a_failing_action():
    watcher = CancelWatcher(interval=0.01)
    first, second = threading.Event(), threading.Event()
    done = threading.Event()

    def boom() -> None:
        raise RuntimeError("boom")

    with watcher.watch(first, boom), watcher.watch(second, done.set):
        first.set()
        second.set()
        assert done.wait(2)


def test_openai_cancel_before_start_sends_nothing(server):
    cancel = threading.Event()
    cancel.set()
    before = len(server.requests)
    assert collect(OpenAIChatModel(server.base_url, "sk-test", "echo", 10), make_request("hi"), cancel) == []
    assert len(server.requests) == before


# -- selection -------------------------------------------------------------------


def _settings(**values):
    base = {"llm_base_url": "", "llm_api_key": "", "llm_model": "", "llm_timeout": 5.0, "offline_token_delay": 0.0}
    base.update(values)
    return SimpleNamespace(**base, llm_configured=bool(base["llm_base_url"] and base["llm_model"]))


def test_get_chat_model_selection(server):
    offline_settings = _settings(offline_token_delay=0.05)
    for setting in ({}, {"model_name": ""}, {"model_name": OFFLINE_MODEL_NAME}, None):
        model = get_chat_model(setting, offline_settings)
        assert isinstance(model, OfflineChatModel)
        assert model.token_delay == 0.05

    configured = _settings(llm_base_url=server.base_url, llm_api_key="sk-test", llm_model="echo")
    model = get_chat_model({"model_name": "echo"}, configured)
    assert isinstance(model, OpenAIChatModel) and model.name == "echo"
    assert "".join(collect(model, make_request("ping"))).startswith("You asked: ping.")
    assert available_models(configured) == [OFFLINE_MODEL_NAME, "echo"]


def test_get_chat_model_not_configured():
    with pytest.raises(ChatModelError) as caught:
        get_chat_model({"model_name": "gpt-4o"}, _settings())
    assert str(caught.value) == (
        "model 'gpt-4o' is not available: set RAGSOCKET_LLM_BASE_URL and RAGSOCKET_LLM_MODEL"
    )
    assert available_models(_settings()) == [OFFLINE_MODEL_NAME]


def test_get_chat_model_with_real_settings(server):
    from common.settings import load_settings

    settings = load_settings(llm_base_url=server.base_url, llm_model="echo", llm_api_key="sk-test")
    model = get_chat_model({"model_name": "slow"}, settings)
    assert isinstance(model, OpenAIChatModel) and model.name == "slow"


# -- the test server itself ------------------------------------------------------


def test_test_server_non_streaming_and_models(server):
    import openai

    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
    messages = [{"role": "system", "content": "Rules\nKnowledge text"}, {"role": "user", "content": "q?"}]
    completion = client.chat.completions.create(model="echo", messages=messages)
    assert completion.choices[0].message.content == "You asked: q?. The knowledge says: Knowledge text"
    assert sorted(model.id for model in client.models.list()) == ["echo", "error-500", "fail-midstream", "slow", "stall"]
    client.close()
