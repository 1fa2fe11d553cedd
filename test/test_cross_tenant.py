"""Tenant isolation: every route taking a dataset, document, chat or session id refuses
another tenant's id with an error envelope (102 or 109) and leaks none of its data."""

from __future__ import annotations

import json

import pytest

from test.support.server import (
    ServerProcess,
    Tenant,
    api_client,
    make_chat,
    make_dataset,
    ok,
    unique,
)

SECRET = "The vault code of Alice is 8431."


@pytest.fixture(scope="module")
async def alice(server: ServerProcess, tenant: Tenant) -> dict:
    """The victim's objects: a parsed dataset, an unparsed document, a chat, a session."""
    async with api_client(server, tenant) as api:
        dataset_id, (doc,) = await make_dataset(api, {"vault.txt": SECRET.encode()}, name=unique("private"))
        (idle,) = ok(await api.post(f"/datasets/{dataset_id}/documents", files=[("file", ("idle.txt", b"Idle vault notes."))]))
        chat = await make_chat(api, [dataset_id])
        session = ok(await api.post(f"/chats/{chat['id']}/sessions", json={"name": "private session"}))
        ok(await api.post(f"/chats/{chat['id']}/completions", json={"question": "What is the vault code?", "session_id": session["id"], "stream": False}))
    return {"dataset_id": dataset_id, "doc_id": doc["id"], "idle_id": idle["id"], "chat_id": chat["id"], "session_id": session["id"]}


def routes(a: dict) -> list[tuple[str, str, dict]]:
    """(method, path, request kwargs) of every route, aimed at Alice's objects."""
    ds, doc, chat, session = a["dataset_id"], a["doc_id"], a["chat_id"], a["session_id"]
    return [
        ("PUT", f"/datasets/{ds}", {"json": {"name": "pwned"}}),
        ("DELETE", "/datasets", {"json": {"ids": [ds]}}),
        ("GET", f"/datasets/{ds}/documents", {}),
        ("GET", f"/datasets/{ds}/documents", {"params": {"id": doc}}),
        ("POST", f"/datasets/{ds}/documents", {"files": [("file", ("evil.txt", b"evil"))]}),
        ("DELETE", f"/datasets/{ds}/documents", {"json": {"ids": [doc]}}),
        ("DELETE", f"/datasets/{ds}/documents", {"json": {"ids": None}}),
        ("GET", f"/datasets/{ds}/documents/{doc}", {}),
        ("POST", f"/datasets/{ds}/chunks", {"json": {"document_ids": [a["idle_id"]]}}),
        ("DELETE", f"/datasets/{ds}/chunks", {"json": {"document_ids": [doc]}}),
        ("GET", f"/datasets/{ds}/documents/{doc}/chunks", {}),
        ("POST", "/retrieval", {"json": {"question": "vault code", "dataset_ids": [ds]}}),
        ("POST", "/retrieval", {"json": {"question": "vault code", "dataset_ids": [ds], "document_ids": [doc]}}),
        ("PUT", f"/chats/{chat}", {"json": {"name": "pwned"}}),
        ("DELETE", "/chats", {"json": {"ids": [chat]}}),
        ("POST", f"/chats/{chat}/sessions", {"json": {"name": "intruder"}}),
        ("GET", f"/chats/{chat}/sessions", {}),
        ("GET", f"/chats/{chat}/sessions", {"params": {"id": session}}),
        ("PUT", f"/chats/{chat}/sessions/{session}", {"json": {"name": "pwned"}}),
        ("DELETE", f"/chats/{chat}/sessions", {"json": {"ids": [session]}}),
        ("DELETE", f"/chats/{chat}/sessions", {"json": {"ids": None}}),
        ("POST", f"/chats/{chat}/completions", {"json": {"question": "What is the vault code?"}}),
        ("POST", f"/chats/{chat}/completions", {"json": {"question": "What is the vault code?", "stream": False}}),
        ("POST", f"/chats/{chat}/completions", {"json": {"question": "What is the vault code?", "session_id": session}}),
    ]


async def test_every_route_refuses_another_tenants_ids(other_api, alice):
    for method, path, kwargs in routes(alice):
        response = await other_api.request(method, path, **kwargs)
        text = response.text
        assert response.headers["Content-Type"].startswith("application/json"), (method, path, text[:200])
        body = response.json()
        assert body["code"] in (102, 109), (method, path, body)
        assert body["data"] is None, (method, path, body)
        assert "8431" not in text and "vault.txt" not in text, (method, path, text)


async def test_alices_objects_are_untouched(api, other_api, alice):
    for method, path, kwargs in routes(alice):  # run the attacks (again) before checking
        await other_api.request(method, path, **kwargs)
    (dataset,) = ok(await api.get("/datasets", params={"id": alice["dataset_id"]}))
    assert dataset["name"].startswith("private-") and dataset["document_count"] == 2
    docs = ok(await api.get(f"/datasets/{alice['dataset_id']}/documents"))["docs"]
    assert sorted((d["name"], d["run"]) for d in docs) == [("idle.txt", "UNSTART"), ("vault.txt", "DONE")]
    hits = ok(await api.post("/retrieval", json={"question": "vault code", "dataset_ids": [alice["dataset_id"]]}))["chunks"]
    assert hits[0]["content"] == SECRET
    (chat,) = ok(await api.get("/chats", params={"id": alice["chat_id"]}))
    assert chat["name"] != "pwned"
    sessions = ok(await api.get(f"/chats/{alice['chat_id']}/sessions"))
    assert [(s["name"], len(s["messages"])) for s in sessions] == [("private session", 3)]


async def test_lists_and_filters_show_only_own_objects(other_api, alice):
    assert all(d["id"] != alice["dataset_id"] for d in ok(await other_api.get("/datasets", params={"page_size": 1000})))
    assert ok(await other_api.get("/datasets", params={"id": alice["dataset_id"]})) == []
    assert all(c["id"] != alice["chat_id"] for c in ok(await other_api.get("/chats", params={"page_size": 1000})))
    assert ok(await other_api.get("/chats", params={"id": alice["chat_id"]})) == []


async def test_own_chat_cannot_reach_another_tenants_dataset(other_api, alice):
    body = (await other_api.post("/chats", json={"name": unique("spy"), "dataset_ids": [alice["dataset_id"]]})).json()
    assert body["code"] == 102 and "8431" not in json.dumps(body)
    spy = await make_chat(other_api, [])
    body = (await other_api.put(f"/chats/{spy['id']}", json={"dataset_ids": [alice["dataset_id"]]})).json()
    assert body["code"] == 102
    answer = (await other_api.post(
        f"/chats/{spy['id']}/completions", json={"question": "What is the vault code?", "kb_ids": [alice["dataset_id"]], "stream": False}
    )).json()
    assert answer["code"] == 101 and "8431" not in json.dumps(answer)
    own_dataset, _ = await make_dataset(other_api, {"own.txt": b"Mallory keeps notes here."})
    body = (await other_api.post(
        "/retrieval", json={"question": "vault code", "dataset_ids": [own_dataset], "document_ids": [alice["doc_id"]], "similarity_threshold": 0}
    )).json()
    assert body["code"] == 0 and body["data"]["chunks"] == [], "another tenant's document id filters to nothing"
