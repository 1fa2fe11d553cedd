"""RAGFlow's own Python SDK (``ragflow-sdk`` 0.22.1 from PyPI, unchanged) against the real server.

The SDK is synchronous (``requests``); ``RAGFlow(api_key, base_url)`` appends
``/api/v1`` itself, so ``base_url`` is ``http://127.0.0.1:PORT``. Every flow below goes
through the SDK's own objects (``DataSet``, ``Document``, ``Chunk``, ``Chat``,
``Session``, ``Message``); the plain HTTP client is used only to read what the server
saved. Agents are out of scope here.
"""

from __future__ import annotations

import itertools

import httpx
import pytest
from ragflow_sdk import RAGFlow
from ragflow_sdk.modules.chat import Chat
from ragflow_sdk.modules.chunk import Chunk
from ragflow_sdk.modules.dataset import DataSet
from ragflow_sdk.modules.document import Document
from ragflow_sdk.modules.session import Message, Session

from test.support.sdk import sdk_corpus
from test.support.server import ServerProcess, saved_session_sync, unique

QUESTION = "How many days do I have to return a purchase?"


@pytest.fixture(scope="module")
def corpus(rag: RAGFlow, corpus_dir) -> dict:
    """A dataset made, filled and parsed through the SDK."""
    dataset, parsed = sdk_corpus(rag, corpus_dir, unique("sdk-corpus"), description="shipped test documents")
    return {"dataset": dataset, "docs": {d.name: d for d in parsed}}


@pytest.fixture(scope="module")
def chat(rag: RAGFlow, corpus: dict) -> Chat:
    """A chat over the corpus, created with the SDK's default ``llm`` and ``prompt``."""
    return rag.create_chat(unique("sdk-chat"), dataset_ids=[corpus["dataset"].id])


# -- datasets ---------------------------------------------------------------------
def test_dataset_create_list_update_delete(rag: RAGFlow):
    name = unique("sdk-ds")
    parser_config = DataSet.ParserConfig(rag, {"chunk_token_num": 256})
    dataset = rag.create_dataset(name=name, description="first", parser_config=parser_config)
    assert isinstance(dataset, DataSet)
    assert dataset.name == name and dataset.description == "first" and dataset.id
    assert dataset.permission == "me" and dataset.chunk_method == "naive"
    assert dataset.document_count == 0 and dataset.chunk_count == 0
    assert dataset.parser_config.chunk_token_num == 256

    (listed,) = rag.list_datasets(name=name)
    assert listed.id == dataset.id and listed.description == "first"
    assert rag.get_dataset(name=name).id == dataset.id
    assert [d.id for d in rag.list_datasets(id=dataset.id)] == [dataset.id]

    dataset.update({"name": name + "-renamed", "description": "second"})
    assert dataset.name == name + "-renamed" and dataset.description == "second"
    (listed,) = rag.list_datasets(id=dataset.id)
    assert listed.name == name + "-renamed" and listed.description == "second"

    rag.delete_datasets(ids=[dataset.id])
    assert rag.list_datasets(name=name + "-renamed") == []
    with pytest.raises(Exception, match="not found"):
        rag.get_dataset(name=name + "-renamed")


def test_dataset_errors_raise_with_server_message(rag: RAGFlow):
    name = unique("sdk-dup")
    dataset = rag.create_dataset(name=name)
    with pytest.raises(Exception, match=name):
        rag.create_dataset(name=name)
    with pytest.raises(Exception, match="chunk_method"):
        rag.create_dataset(name=unique("sdk-bad"), chunk_method="qa")
    rag.delete_datasets(ids=[dataset.id])


def test_bad_key_raises_authentication_error(server: ServerProcess):
    rag = RAGFlow(api_key="ragsocket-not-a-key", base_url=f"http://127.0.0.1:{server.port}")
    with pytest.raises(Exception, match="API key is invalid"):
        rag.list_datasets()


# -- documents, parsing, chunks, retrieval -----------------------------------------
def test_uploaded_documents_parse_to_done(corpus: dict, corpus_dir):
    docs = corpus["docs"]
    assert set(docs) == {p.name for p in corpus_dir.iterdir()}
    for name, doc in docs.items():
        assert isinstance(doc, Document)
        assert doc.run == "DONE" and doc.progress == 1.0
        assert doc.chunk_count >= 1 and doc.token_count > 0
        assert doc.dataset_id == corpus["dataset"].id
        assert doc.size == (corpus_dir / name).stat().st_size
    (listed,) = corpus["dataset"].list_documents(id=docs["returns.md"].id)
    assert listed.name == "returns.md" and listed.run == "DONE"
    assert [d.name for d in corpus["dataset"].list_documents(keywords="warranty")] == ["warranty.txt"]


def test_document_download_returns_the_file(corpus: dict, corpus_dir):
    assert corpus["docs"]["zh_policy.md"].download() == (corpus_dir / "zh_policy.md").read_bytes()


def test_list_chunks_of_a_document(corpus: dict):
    doc = corpus["docs"]["returns.md"]
    chunks = doc.list_chunks()
    assert len(chunks) == doc.chunk_count
    assert all(isinstance(c, Chunk) for c in chunks)
    assert all(c.document_id == doc.id and c.dataset_id == corpus["dataset"].id for c in chunks)
    assert any("30 days" in c.content for c in chunks)
    assert [c.id for c in doc.list_chunks(id=chunks[0].id)] == [chunks[0].id]
    assert doc.list_chunks(keywords="refund") and not doc.list_chunks(keywords="zzzz-nothing")


def test_retrieve_ranks_chunks(rag: RAGFlow, corpus: dict):
    chunks = rag.retrieve(dataset_ids=[corpus["dataset"].id], question="refund return purchase")
    assert chunks and all(isinstance(c, Chunk) for c in chunks)
    top = chunks[0]
    assert top.document_name == "returns.md" and top.document_id == corpus["docs"]["returns.md"].id
    assert 0 < top.similarity <= 1 and "30 days" in top.content
    scores = [c.similarity for c in chunks]
    assert scores == sorted(scores, reverse=True)
    only = rag.retrieve(
        dataset_ids=[corpus["dataset"].id], document_ids=[corpus["docs"]["warranty.txt"].id], question="refund return warranty"
    )
    assert {c.document_name for c in only} == {"warranty.txt"}


def test_delete_documents(rag: RAGFlow):
    dataset = rag.create_dataset(name=unique("sdk-docs"))
    docs = dataset.upload_documents([{"display_name": "a.txt", "blob": b"alpha"}, {"display_name": "b.txt", "blob": b"beta"}])
    assert [d.run for d in docs] == ["UNSTART", "UNSTART"]
    dataset.delete_documents(ids=[docs[0].id])
    assert [d.name for d in dataset.list_documents()] == ["b.txt"]
    rag.delete_datasets(ids=[dataset.id])


# -- chats ------------------------------------------------------------------------
def test_chat_create_list_update_delete(rag: RAGFlow, corpus: dict):
    name = unique("sdk-chat")
    llm = Chat.LLM(rag, {"model_name": "ragsocket-offline", "temperature": 0.2, "top_p": 0.5, "max_tokens": 256})
    prompt = Chat.Prompt(rag, {"opener": "Hello from the SDK.", "top_n": 3, "empty_response": "Nothing found."})
    chat = rag.create_chat(name, dataset_ids=[corpus["dataset"].id], llm=llm, prompt=prompt)
    assert isinstance(chat, Chat) and chat.name == name
    assert chat.dataset_ids == [corpus["dataset"].id]
    assert chat.llm.model_name == "ragsocket-offline" and chat.llm.temperature == 0.2 and chat.llm.max_tokens == 256
    assert chat.prompt.opener == "Hello from the SDK." and chat.prompt.top_n == 3
    assert chat.prompt.empty_response == "Nothing found."

    (listed,) = rag.list_chats(name=name)
    assert listed.id == chat.id and listed.prompt.top_n == 3

    chat.update({"name": name + "-renamed", "llm": {"temperature": 0.7}, "prompt": {"top_n": 5}})
    (listed,) = rag.list_chats(id=chat.id)
    assert listed.name == name + "-renamed"
    assert listed.llm.temperature == 0.7 and listed.llm.max_tokens == 256, "llm is merged"
    assert listed.prompt.top_n == 5 and listed.prompt.opener == "Hello from the SDK.", "prompt is merged"

    rag.delete_chats(ids=[chat.id])
    assert rag.list_chats(id=chat.id) == []


def test_chat_with_default_sdk_settings(chat: Chat, corpus: dict):
    """``create_chat`` without llm/prompt sends the SDK's defaults (``model_name: None``,
    the ``{knowledge}`` prompt, ``variables``, ``rerank_model``...): accepted."""
    assert chat.dataset_ids == [corpus["dataset"].id]
    assert chat.prompt.opener == "Hi! I'm your assistant. What can I do for you?"
    assert "{knowledge}" in chat.prompt.prompt


# -- sessions and answers -----------------------------------------------------------
def test_session_create_list_update_delete(chat: Chat):
    session = chat.create_session(name="first")
    assert isinstance(session, Session) and session.name == "first" and session.chat_id == chat.id
    assert session.messages[0]["role"] == "assistant"
    assert session.messages[0]["content"] == "Hi! I'm your assistant. What can I do for you?"
    other = chat.create_session()
    assert other.name == "New session"

    listed = {s.id for s in chat.list_sessions()}
    assert {session.id, other.id} <= listed
    assert [s.id for s in chat.list_sessions(name="first")] == [session.id]

    session.update({"name": "renamed"})
    (renamed,) = chat.list_sessions(id=session.id)
    assert renamed.name == "renamed"

    chat.delete_sessions(ids=[session.id, other.id])
    assert chat.list_sessions(id=session.id) == [] and chat.list_sessions(id=other.id) == []


def test_ask_stream_yields_messages_ending_with_reference(chat: Chat, http: httpx.Client):
    session = chat.create_session(name="stream")
    messages = list(session.ask(QUESTION, stream=True))
    assert len(messages) > 3 and all(isinstance(m, Message) for m in messages)
    assert all(m.role == "assistant" for m in messages)
    last = messages[-1]
    assert last.reference, "the last message carries the references"
    assert last.reference[0]["document_name"] == "returns.md"
    assert all(m.reference is None for m in messages[:-1])
    answer = "".join(m.content for m in messages)
    assert "30 days" in answer and "[ID:0]" in answer
    saved = saved_session_sync(http, chat.id, session.id)["messages"]
    assert [m["role"] for m in saved] == ["assistant", "user", "assistant"]
    assert saved[1]["content"] == QUESTION
    assert saved[2]["content"] == answer, "the streamed deltas are the saved answer"
    assert saved[2]["reference"]["chunks"] == last.reference


def test_ask_stream_legacy_is_cumulative_with_full_last_message(chat: Chat, http: httpx.Client):
    """RAGFlow 0.22 streams the whole answer so far; ``legacy=True`` (passed through
    ``ask(**kwargs)``) gives that: each message extends the previous one and the last
    holds the full answer with its references, as the SDK's docs print it."""
    session = chat.create_session(name="legacy")
    messages = list(session.ask(QUESTION, stream=True, legacy=True))
    contents = [m.content for m in messages]
    assert len(contents) > 3
    for shorter, longer in itertools.pairwise(contents):
        assert longer.startswith(shorter)
    last = messages[-1]
    assert last.reference[0]["document_name"] == "returns.md"
    saved = saved_session_sync(http, chat.id, session.id)["messages"]
    assert last.content == saved[-1]["content"] and "30 days" in last.content


def test_ask_non_stream_returns_one_message(chat: Chat, http: httpx.Client):
    session = chat.create_session(name="whole")
    (message,) = list(session.ask("What does the warranty cover?", stream=False))
    assert isinstance(message, Message)
    assert "manufacturing defects" in message.content
    assert message.reference[0]["document_name"] == "warranty.txt"
    saved = saved_session_sync(http, chat.id, session.id)["messages"]
    assert saved[-1]["content"] == message.content and saved[-1]["reference"]["chunks"] == message.reference


def test_ask_continues_the_session(chat: Chat, http: httpx.Client):
    session = chat.create_session(name="two turns")
    first = "".join(m.content for m in session.ask(QUESTION, stream=True))
    (second,) = list(session.ask("退货政策是什么？", stream=False))
    assert "三十天" in second.content
    saved = saved_session_sync(http, chat.id, session.id)["messages"]
    assert [m["role"] for m in saved] == ["assistant", "user", "assistant", "user", "assistant"]
    assert saved[2]["content"] == first and saved[4]["content"] == second.content


def test_deleted_chat_raises_with_server_message(rag: RAGFlow, corpus: dict):
    chat = rag.create_chat(unique("sdk-gone"), dataset_ids=[corpus["dataset"].id])
    rag.delete_chats(ids=[chat.id])
    with pytest.raises(Exception, match=f"You don't own the chat {chat.id}"):
        chat.create_session()
    with pytest.raises(Exception, match=chat.id):
        chat.list_sessions()
