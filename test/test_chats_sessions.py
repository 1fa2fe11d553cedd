"""Chat assistants and their sessions over HTTP against the real server."""

from __future__ import annotations

import asyncio

import pytest

from common.constants import (
    DEFAULT_EMPTY_RESPONSE,
    DEFAULT_PROLOGUE,
    DEFAULT_SYSTEM_PROMPT,
)
from test.support.server import (
    ServerProcess,
    Tenant,
    api_client,
    assert_error,
    make_chat,
    make_dataset,
    ok,
    unique,
)


@pytest.fixture(scope="module")
async def dataset_id(server: ServerProcess, tenant: Tenant) -> str:
    async with api_client(server, tenant) as api:
        dataset_id, _ = await make_dataset(
            api, {"lamp.txt": b"The Lumen lamp has a two-year warranty.\n\nIts shade is made of linen."}, name=unique("chats")
        )
    return dataset_id


# --------------------------------------------------------------------------- chats


async def test_create_chat_with_defaults(api, dataset_id):
    name = unique("defaults")
    chat = ok(await api.post("/chats", json={"name": name, "dataset_ids": [dataset_id]}))
    assert len(chat["id"]) == 32 and chat["name"] == name and chat["dataset_ids"] == [dataset_id]
    assert chat["llm"] == {
        "model_name": "ragsocket-offline",
        "temperature": 0.1,
        "top_p": 0.3,
        "presence_penalty": 0.4,
        "frequency_penalty": 0.7,
        "max_tokens": 512,
    }
    prompt = chat["prompt"]
    assert prompt["prompt"] == DEFAULT_SYSTEM_PROMPT and prompt["opener"] == DEFAULT_PROLOGUE
    assert prompt["empty_response"] == DEFAULT_EMPTY_RESPONSE
    assert (prompt["top_n"], prompt["similarity_threshold"]) == (6, 0.2)
    assert "system" not in prompt and "prologue" not in prompt, "RAGFlow's SDK names only"
    assert chat["top_n"] == 6 and chat["similarity_threshold"] == 0.2


async def test_create_chat_with_llm_and_prompt(api, dataset_id):
    body = {
        "name": unique("full"),
        "description": "Lamp support",
        "dataset_ids": [dataset_id],
        "llm": {"model_name": "echo", "temperature": 0.5, "max_tokens": 64},
        "prompt": {
            "prompt": "Answer briefly.\n{knowledge}",
            "opener": "Hello from the lamp desk!",
            "empty_response": "No idea.",
            "top_n": 3,
            "similarity_threshold": 0.35,
        },
    }
    chat = ok(await api.post("/chats", json=body))
    assert chat["description"] == "Lamp support"
    assert chat["llm"]["model_name"] == "echo" and chat["llm"]["temperature"] == 0.5 and chat["llm"]["max_tokens"] == 64
    assert chat["llm"]["top_p"] == 0.3, "unset llm fields keep their defaults"
    prompt = chat["prompt"]
    assert prompt["prompt"] == "Answer briefly.\n{knowledge}"
    assert prompt["opener"] == "Hello from the lamp desk!"
    assert (prompt["empty_response"], prompt["top_n"], prompt["similarity_threshold"]) == ("No idea.", 3, 0.35)
    assert chat["top_n"] == 3 and chat["similarity_threshold"] == 0.35
    listed = ok(await api.get("/chats", params={"id": chat["id"]}))
    assert listed == [chat]


@pytest.mark.parametrize("model", ["echo", "error-500", "ragsocket-offline"])
async def test_models_of_the_server_are_accepted(api, model):
    chat = ok(await api.post("/chats", json={"name": unique(model), "llm": {"model_name": model}}))
    assert chat["llm"]["model_name"] == model


async def test_unknown_model_is_101(api):
    name = unique("bad-model")
    body = (await api.post("/chats", json={"name": name, "llm": {"model_name": "gpt-nonexistent"}})).json()
    assert body["code"] == 101 and body["data"] is None
    assert body["message"].startswith("model 'gpt-nonexistent' is not available"), body
    assert ok(await api.get("/chats", params={"name": name})) == []
    chat = await make_chat(api, [])
    assert_error(await api.put(f"/chats/{chat['id']}", json={"llm": {"model_name": "gpt-nonexistent"}}), 101, "gpt-nonexistent")
    assert ok(await api.get("/chats", params={"id": chat["id"]}))[0]["llm"]["model_name"] == "ragsocket-offline"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "`name`: Field required"),
        ({"name": ""}, "`name`"),
        ({"name": "x", "knowledge": []}, "`knowledge`: Extra inputs are not permitted"),
        ({"name": "x", "llm": {"model": "echo"}}, "`llm.model`"),
        ({"name": "x", "llm": {"temperature": 3}}, "`llm.temperature`"),
        ({"name": "x", "prompt": {"top_n": 0}}, "`prompt.top_n`"),
        ({"name": "x", "prompt": {"similarity_threshold": 1.5}}, "`prompt.similarity_threshold`"),
        ({"name": "x", "dataset_ids": "abc"}, "`dataset_ids`"),
    ],
)
async def test_create_chat_bad_fields_are_101(api, body, fragment):
    assert_error(await api.post("/chats", json=body), 101, fragment)


async def test_create_chat_errors_are_102(api, other_api):
    name = unique("dup-chat")
    ok(await api.post("/chats", json={"name": name}))
    assert_error(await api.post("/chats", json={"name": name}), 102, f"Duplicated chat name in creating chat: {name}")
    theirs = ok(await other_api.post("/datasets", json={"name": unique("their-ds")}))
    assert_error(await api.post("/chats", json={"name": unique("x"), "dataset_ids": [theirs["id"]]}), 102, "You don't own the dataset")


async def test_update_chat_merges_prompt_and_llm(api, dataset_id):
    chat = await make_chat(
        api, [dataset_id], llm={"model_name": "echo", "temperature": 0.9}, prompt={"opener": "Hi!", "top_n": 2, "empty_response": "None."}
    )
    updated = ok(await api.put(f"/chats/{chat['id']}", json={"prompt": {"top_n": 4}, "llm": {"max_tokens": 100}}))
    assert updated["prompt"]["top_n"] == 4
    assert updated["prompt"]["opener"] == "Hi!" and updated["prompt"]["empty_response"] == "None.", "other prompt fields kept"
    assert updated["prompt"]["prompt"] == DEFAULT_SYSTEM_PROMPT
    assert updated["llm"]["model_name"] == "echo" and updated["llm"]["temperature"] == 0.9 and updated["llm"]["max_tokens"] == 100
    renamed = ok(await api.put(f"/chats/{chat['id']}", json={"name": chat["name"] + "-2", "prompt": {"opener": "Welcome!"}, "dataset_ids": []}))
    assert renamed["name"] == chat["name"] + "-2" and renamed["dataset_ids"] == []
    assert renamed["prompt"]["opener"] == "Welcome!" and renamed["prompt"]["top_n"] == 4
    assert ok(await api.get("/chats", params={"id": chat["id"]}))[0] == renamed
    session = ok(await api.post(f"/chats/{chat['id']}/sessions", json={}))
    assert session["messages"][0]["content"] == "Welcome!", "new sessions open with the new prologue"
    other = await make_chat(api, [])
    assert_error(await api.put(f"/chats/{other['id']}", json={"name": renamed["name"]}), 102, "Duplicated chat name")
    assert_error(await api.put(f"/chats/{other['id']}", json={"colour": "red"}), 101, "`colour`")
    assert_error(await api.put(f"/chats/{'0' * 32}", json={"name": "x"}), 102, "You don't own the chat")


async def test_list_chats_filters_and_order(api):
    prefix = unique("list-chat")
    created = []
    for index in range(3):
        created.append(await make_chat(api, [], name=f"{prefix}-{index}"))
        await asyncio.sleep(0.005)  # distinct create_time
    assert [c["id"] for c in ok(await api.get("/chats", params={"name": f"{prefix}-1"}))] == [created[1]["id"]]
    assert [c["name"] for c in ok(await api.get("/chats", params={"id": created[2]["id"]}))] == [f"{prefix}-2"]
    newest = ok(await api.get("/chats", params={"page": 1, "page_size": 2}))
    assert [c["id"] for c in newest] == [created[2]["id"], created[1]["id"]]
    ascending = [c["id"] for c in ok(await api.get("/chats", params={"desc": "false", "page_size": 1000}))]
    assert ascending.index(created[0]["id"]) < ascending.index(created[2]["id"])
    assert_error(await api.get("/chats", params={"page_size": "0"}), 101, "`page_size`")


async def test_delete_chats_with_their_sessions(api):
    chats = [await make_chat(api, []) for _ in range(2)]
    session = ok(await api.post(f"/chats/{chats[0]['id']}/sessions", json={"name": "doomed"}))
    unknown = "0" * 32
    assert_error(await api.request("DELETE", "/chats", json={"ids": [chats[0]["id"], unknown]}), 102, unknown)
    assert len(ok(await api.get("/chats", params={"id": chats[0]["id"]}))) == 1, "nothing deleted on error"
    ok(await api.request("DELETE", "/chats", json={"ids": [chats[0]["id"]]}))
    assert ok(await api.get("/chats", params={"id": chats[0]["id"]})) == []
    assert_error(await api.get(f"/chats/{chats[0]['id']}/sessions"), 102, "You don't own the chat")
    assert_error(await api.put(f"/chats/{chats[0]['id']}/sessions/{session['id']}", json={"name": "x"}), 102)
    assert len(ok(await api.get("/chats", params={"id": chats[1]["id"]}))) == 1


# --------------------------------------------------------------------------- sessions


async def test_session_lifecycle(api, dataset_id):
    chat = await make_chat(api, [dataset_id], prompt={"opener": "Ask me about lamps."})
    created = ok(await api.post(f"/chats/{chat['id']}/sessions", json={"name": "support", "user_id": "u-1"}))
    assert created["name"] == "support" and created["chat_id"] == chat["id"] and created["user_id"] == "u-1"
    assert created["messages"] == [
        {"id": created["messages"][0]["id"], "role": "assistant", "content": "Ask me about lamps.", "reference": {}, "interrupted": False}
    ]
    default = ok(await api.post(f"/chats/{chat['id']}/sessions"))
    assert default["name"] == "New session" and default["user_id"] == ""

    answer = ok(await api.post(
        f"/chats/{chat['id']}/completions",
        json={"question": "How long is the lamp warranty?", "session_id": created["id"], "stream": False},
    ))
    assert "two-year warranty" in answer["answer"] and answer["session_id"] == created["id"]

    (listed,) = ok(await api.get(f"/chats/{chat['id']}/sessions", params={"id": created["id"]}))
    roles = [m["role"] for m in listed["messages"]]
    assert roles == ["assistant", "user", "assistant"]
    assert listed["messages"][1]["content"] == "How long is the lamp warranty?"
    reply = listed["messages"][2]
    assert reply["id"] == answer["id"] and reply["content"] == answer["answer"]
    assert reply["reference"]["chunks"][0]["document_name"] == "lamp.txt"
    assert reply["reference"] == answer["reference"]

    by_user = ok(await api.get(f"/chats/{chat['id']}/sessions", params={"user_id": "u-1"}))
    assert [s["id"] for s in by_user] == [created["id"]]
    by_name = ok(await api.get(f"/chats/{chat['id']}/sessions", params={"name": "New session"}))
    assert [s["id"] for s in by_name] == [default["id"]]
    assert len(ok(await api.get(f"/chats/{chat['id']}/sessions", params={"page_size": 1}))) == 1

    renamed = ok(await api.put(f"/chats/{chat['id']}/sessions/{created['id']}", json={"name": "warranty questions"}))
    assert renamed["name"] == "warranty questions" and len(renamed["messages"]) == 3
    assert_error(await api.put(f"/chats/{chat['id']}/sessions/{created['id']}", json={"name": ""}), 101, "`name`")
    assert_error(await api.put(f"/chats/{chat['id']}/sessions/{created['id']}", json={}), 101, "`name`: Field required")

    ok(await api.request("DELETE", f"/chats/{chat['id']}/sessions", json={"ids": [created["id"]]}))
    assert [s["id"] for s in ok(await api.get(f"/chats/{chat['id']}/sessions"))] == [default["id"]]
    assert_error(await api.request("DELETE", f"/chats/{chat['id']}/sessions", json={"ids": [created["id"]]}), 102, created["id"])
    ok(await api.request("DELETE", f"/chats/{chat['id']}/sessions", json={"ids": None}))
    assert ok(await api.get(f"/chats/{chat['id']}/sessions")) == []


async def test_chat_without_prologue_starts_empty(api):
    chat = await make_chat(api, [], prompt={"opener": ""})
    session = ok(await api.post(f"/chats/{chat['id']}/sessions", json={"name": "quiet"}))
    assert session["messages"] == []


async def test_session_of_another_chat_is_102(api):
    first, second = await make_chat(api, []), await make_chat(api, [])
    session = ok(await api.post(f"/chats/{first['id']}/sessions", json={"name": "mine"}))
    message = f"The chat doesn't own the session {session['id']}"
    assert_error(await api.put(f"/chats/{second['id']}/sessions/{session['id']}", json={"name": "moved"}), 102, message)
    assert_error(await api.request("DELETE", f"/chats/{second['id']}/sessions", json={"ids": [session["id"]]}), 102, message)
    assert_error(
        await api.post(f"/chats/{second['id']}/completions", json={"question": "hi", "session_id": session["id"], "stream": False}),
        102,
        message,
    )
    assert ok(await api.get(f"/chats/{second['id']}/sessions", params={"id": session["id"]})) == []
    (kept,) = ok(await api.get(f"/chats/{first['id']}/sessions", params={"id": session["id"]}))
    assert kept["name"] == "mine" and len(kept["messages"]) == 1
