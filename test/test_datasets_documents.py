"""Datasets and documents over HTTP against the real server: CRUD, upload, parsing,
download, chunks, cancel — with RAGFlow's envelope and error codes."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from test.support.documents import make_docx, make_pdf
from test.support.server import (
    ServerProcess,
    Tenant,
    api_client,
    assert_error,
    make_dataset,
    ok,
    unique,
    wait_parsed,
)

# --------------------------------------------------------------------------- helpers


HTML = (
    b"<html><head><title>Care guide</title><script>var hidden = 'zeppelin';</script></head>"
    b"<body><h1>Cleaning</h1><p>Wipe the Lumen lamp shade with a dry microfiber cloth.</p></body></html>"
)
DOCX_TEXT = "The Lumen lamp dimmer has seven brightness levels."
PDF_TEXT = "Replacement bulbs for the Lumen lamp are sold in packs of three."


async def docs_by_name(api: httpx.AsyncClient, dataset_id: str) -> dict[str, dict]:
    docs = ok(await api.get(f"/datasets/{dataset_id}/documents", params={"page_size": 100}))["docs"]
    return {doc["name"]: doc for doc in docs}


async def retrieve(api: httpx.AsyncClient, dataset_id: str, question: str, **fields) -> dict:
    return ok(await api.post("/retrieval", json={"question": question, "dataset_ids": [dataset_id], **fields}))


# --------------------------------------------------------------------------- datasets


async def test_create_dataset_defaults(api):
    name = unique("defaults")
    data = ok(await api.post("/datasets", json={"name": name}))
    assert len(data["id"]) == 32
    assert data["name"] == name
    assert data["chunk_method"] == "naive"
    assert data["permission"] == "me"
    assert data["language"] == "English"
    assert data["description"] == ""
    assert data["parser_config"] == {"chunk_token_num": 512}
    assert (data["document_count"], data["chunk_count"], data["token_num"]) == (0, 0, 0)
    listed = ok(await api.get("/datasets", params={"id": data["id"]}))
    assert [d["name"] for d in listed] == [name]


async def test_create_dataset_with_chunk_token_num_chunks_by_it(api):
    small = ok(await api.post("/datasets", json={"name": unique("small"), "parser_config": {"chunk_token_num": 16}}))
    assert small["parser_config"] == {"chunk_token_num": 16}
    text = "\n\n".join(f"Paragraph {i} talks about the lamp number {i} and its shade." for i in range(12)).encode()
    docs = ok(await api.post(f"/datasets/{small['id']}/documents", files=[("file", ("many.txt", text))]))
    ok(await api.post(f"/datasets/{small['id']}/chunks", json={"document_ids": [docs[0]["id"]]}))
    (doc,) = await wait_parsed(api, small["id"])
    assert doc["run"] == "DONE" and doc["chunk_count"] >= 6, doc
    dataset = ok(await api.get("/datasets", params={"id": small["id"]}))[0]
    assert dataset["document_count"] == 1 and dataset["chunk_count"] == doc["chunk_count"]
    assert dataset["token_num"] == doc["token_count"] > 0


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "`name`: Field required"),
        ({"name": ""}, "`name`: String should have at least 1 character"),
        ({"name": "   "}, "`name`: String should have at least 1 character"),
        ({"name": "x", "colour": "blue"}, "`colour`: Extra inputs are not permitted"),
        ({"name": "x", "chunk_method": "qa"}, "`chunk_method`"),
        ({"name": "x", "parser_config": {"chunk_token_num": 1}}, "`parser_config.chunk_token_num`"),
        ({"name": "x" * 129}, "`name`: String should have at most 128 characters"),
    ],
)
async def test_create_dataset_bad_fields_are_101(api, body, fragment):
    assert_error(await api.post("/datasets", json=body), 101, fragment)


async def test_duplicate_dataset_name_is_102(api):
    name = unique("dup")
    ok(await api.post("/datasets", json={"name": name}))
    assert_error(await api.post("/datasets", json={"name": name}), 102, f"Dataset name '{name}' already exists")
    assert len(ok(await api.get("/datasets", params={"name": name}))) == 1


async def test_list_datasets_pagination_order_and_filters(api):
    prefix = unique("list")
    created = []
    for index in range(3):
        created.append(ok(await api.post("/datasets", json={"name": f"{prefix}-{index}"})))
        await asyncio.sleep(0.005)  # distinct create_time
    newest_first = ok(await api.get("/datasets", params={"page": 1, "page_size": 2}))
    assert [d["id"] for d in newest_first] == [created[2]["id"], created[1]["id"]]
    second_page = ok(await api.get("/datasets", params={"page": 2, "page_size": 2}))
    assert second_page[0]["id"] == created[0]["id"]
    oldest_first = ok(await api.get("/datasets", params={"orderby": "create_time", "desc": "false", "page_size": 1000}))
    ids = [d["id"] for d in oldest_first]
    assert ids.index(created[0]["id"]) < ids.index(created[1]["id"]) < ids.index(created[2]["id"])
    by_name = ok(await api.get("/datasets", params={"name": f"{prefix}-1"}))
    assert [d["id"] for d in by_name] == [created[1]["id"]]
    by_id = ok(await api.get("/datasets", params={"id": created[2]["id"]}))
    assert [d["name"] for d in by_id] == [f"{prefix}-2"]


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"page_size": "0"}, "`page_size`"),
        ({"page_size": "1001"}, "`page_size`"),
        ({"page_size": "many"}, "`page_size`"),
        ({"page": "0"}, "`page`"),
        ({"orderby": "name"}, "`orderby`"),
        ({"desc": "maybe"}, "`desc`"),
    ],
)
async def test_list_datasets_bad_parameters_are_101(api, params, fragment):
    assert_error(await api.get("/datasets", params=params), 101, fragment)


async def test_update_dataset_rename_and_duplicate_refused(api):
    first = ok(await api.post("/datasets", json={"name": unique("upd-a")}))
    second = ok(await api.post("/datasets", json={"name": unique("upd-b")}))
    new_name = unique("renamed")
    updated = ok(await api.put(f"/datasets/{first['id']}", json={"name": new_name, "description": "lamps"}))
    assert updated["name"] == new_name and updated["description"] == "lamps" and updated["id"] == first["id"]
    assert updated["update_time"] >= first["update_time"]
    assert ok(await api.get("/datasets", params={"id": first["id"]}))[0]["name"] == new_name
    assert_error(
        await api.put(f"/datasets/{second['id']}", json={"name": new_name}), 102, f"Dataset name '{new_name}' already exists"
    )
    assert ok(await api.get("/datasets", params={"id": second["id"]}))[0]["name"] == second["name"]
    # renaming to its own name is not a duplicate
    assert ok(await api.put(f"/datasets/{first['id']}", json={"name": new_name}))["name"] == new_name
    merged = ok(await api.put(f"/datasets/{first['id']}", json={"parser_config": {"chunk_token_num": 256}}))
    assert merged["parser_config"] == {"chunk_token_num": 256}
    assert_error(await api.put(f"/datasets/{first['id']}", json={"owner": "me"}), 101, "`owner`")
    assert_error(await api.put(f"/datasets/{'0' * 32}", json={"name": "x"}), 102, "You don't own the dataset")


async def test_delete_datasets(api):
    doomed = [ok(await api.post("/datasets", json={"name": unique("del")}))["id"] for _ in range(2)]
    kept = ok(await api.post("/datasets", json={"name": unique("keep")}))["id"]
    unknown = "f" * 32
    assert_error(await api.request("DELETE", "/datasets", json={"ids": [doomed[0], unknown]}), 102, unknown)
    assert len(ok(await api.get("/datasets", params={"id": doomed[0]}))) == 1, "nothing deleted on error"
    assert ok(await api.request("DELETE", "/datasets", json={"ids": doomed})) == {"success_count": 2}
    for dataset_id in doomed:
        assert ok(await api.get("/datasets", params={"id": dataset_id})) == []
        assert_error(await api.get(f"/datasets/{dataset_id}/documents"), 102, "You don't own the dataset")
    assert len(ok(await api.get("/datasets", params={"id": kept}))) == 1


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/datasets"), ("PUT", "/datasets/abc"), ("DELETE", "/datasets"), ("POST", "/retrieval")],
)
async def test_malformed_json_is_101(api, method, path):
    response = await api.request(method, path, content=b'{"name": "x",', headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert_error(response, 101, "invalid JSON")


async def test_non_object_body_is_101(api):
    assert_error(await api.post("/datasets", json=["name"]), 101, "JSON object")


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "Authorization is not valid!"),
        ({"Authorization": "Token abc"}, "Authorization is not valid!"),
        ({"Authorization": "Basic YWJj"}, "Authorization is not valid!"),
        ({"Authorization": "Bearer ragsocket-nope"}, "Authentication error: API key is invalid!"),
    ],
)
async def test_missing_or_bad_authorization_is_109(server, headers, message):
    async with httpx.AsyncClient(base_url=server.api_url, headers=headers) as anonymous:
        for method, path in [("GET", "/datasets"), ("POST", "/datasets"), ("POST", "/retrieval"), ("GET", "/chats")]:
            response = await anonymous.request(method, path, json={"name": "x"})
            assert response.json() == {"code": 109, "message": message, "data": None}, (method, path)
            # the unread body makes the server close the connection: it must say so, or
            # the client's next request races the close ("Server disconnected")
            assert response.headers["Connection"] == "close"


# --------------------------------------------------------------------------- documents


@pytest.fixture(scope="module")
async def mixed(server: ServerProcess, tenant: Tenant, corpus_dir) -> dict:
    """One upload of seven files (two of which cannot be parsed), parsed."""
    files = {
        "returns.md": (corpus_dir / "returns.md").read_bytes(),
        "warranty.txt": (corpus_dir / "warranty.txt").read_bytes(),
        "dimmer.docx": make_docx("Dimmer", DOCX_TEXT),
        "care.html": HTML,
        "bulbs.pdf": make_pdf(PDF_TEXT),
        "notes.xyz": b"some bytes in an unknown format",
        "broken.pdf": b"%PDF-1.4\nthis is not really a PDF\n%%EOF\n",
    }
    async with api_client(server, tenant) as api:
        dataset = ok(await api.post("/datasets", json={"name": unique("mixed")}))
        uploaded = ok(await api.post(f"/datasets/{dataset['id']}/documents", files=[("file", item) for item in files.items()]))
        before = await docs_by_name(api, dataset["id"])
        ok(await api.post(f"/datasets/{dataset['id']}/chunks", json={"document_ids": [d["id"] for d in uploaded]}))
        after = {d["name"]: d for d in await wait_parsed(api, dataset["id"])}
    return {"dataset_id": dataset["id"], "files": files, "uploaded": uploaded, "before": before, "after": after}


async def test_upload_returns_unstarted_documents(mixed):
    uploaded = mixed["uploaded"]
    assert [d["name"] for d in uploaded] == list(mixed["files"])
    for doc in uploaded:
        assert doc["run"] == "UNSTART" and doc["progress"] == 0 and doc["chunk_count"] == 0
        assert doc["size"] == len(mixed["files"][doc["name"]])
        assert doc["dataset_id"] == mixed["dataset_id"]
    assert {d["name"]: d["type"] for d in uploaded}["dimmer.docx"] == "docx"
    assert {(d["run"], d["progress"], d["progress_msg"]) for d in mixed["before"].values()} == {("UNSTART", 0, "")}


async def test_parsing_reaches_done_for_supported_files(mixed):
    for name in ("returns.md", "warranty.txt", "dimmer.docx", "care.html", "bulbs.pdf"):
        doc = mixed["after"][name]
        assert doc["run"] == "DONE", doc
        assert doc["progress"] == 1.0
        assert doc["progress_msg"].startswith("Done: ") and "chunks" in doc["progress_msg"]
        assert doc["chunk_count"] > 0 and doc["token_count"] > 0
        assert doc["process_duration"] >= 0 and doc["process_begin_at"] is not None


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("notes.xyz", "Parsing failed: unsupported file type '.xyz'; supported: .txt, .md"),
        ("broken.pdf", "Parsing failed: could not read PDF: file is damaged or not a PDF"),
    ],
)
async def test_unparseable_files_fail_with_a_reason(mixed, name, message):
    doc = mixed["after"][name]
    assert doc["run"] == "FAIL" and doc["progress"] == -1
    assert doc["progress_msg"].startswith(message), doc["progress_msg"]
    assert "Traceback" not in doc["progress_msg"] and "File \"" not in doc["progress_msg"]
    assert doc["chunk_count"] == 0


async def test_parsed_formats_are_searchable(api, mixed):
    for question, name in [
        ("How many brightness levels does the dimmer have?", "dimmer.docx"),
        ("How are replacement bulbs sold?", "bulbs.pdf"),
        ("How do I clean the lamp shade?", "care.html"),
    ]:
        hits = (await retrieve(api, mixed["dataset_id"], question))["chunks"]
        assert hits and hits[0]["document_name"] == name, (question, hits[:1])
    assert (await retrieve(api, mixed["dataset_id"], "zeppelin"))["chunks"] == [], "script text is not indexed"


async def test_list_documents_filters(api, mixed):
    dataset_id = mixed["dataset_id"]
    listing = ok(await api.get(f"/datasets/{dataset_id}/documents", params={"page": 1, "page_size": 3}))
    assert listing["total"] == 7 and len(listing["docs"]) == 3
    last = ok(await api.get(f"/datasets/{dataset_id}/documents", params={"page": 3, "page_size": 3}))
    assert len(last["docs"]) == 1
    by_name = ok(await api.get(f"/datasets/{dataset_id}/documents", params={"name": "care.html"}))
    assert by_name["total"] == 1 and by_name["docs"][0]["name"] == "care.html"
    by_keyword = ok(await api.get(f"/datasets/{dataset_id}/documents", params={"keywords": ".pdf"}))
    assert sorted(d["name"] for d in by_keyword["docs"]) == ["broken.pdf", "bulbs.pdf"]
    doc_id = mixed["after"]["warranty.txt"]["id"]
    by_id = ok(await api.get(f"/datasets/{dataset_id}/documents", params={"id": doc_id}))
    assert [d["name"] for d in by_id["docs"]] == ["warranty.txt"]
    assert_error(await api.get(f"/datasets/{dataset_id}/documents", params={"page_size": "0"}), 101, "`page_size`")


async def test_download_returns_original_bytes_and_name(api, mixed):
    for name in ("dimmer.docx", "bulbs.pdf", "notes.xyz"):
        doc = mixed["after"][name]
        response = await api.get(f"/datasets/{mixed['dataset_id']}/documents/{doc['id']}")
        assert response.status_code == 200
        assert response.content == mixed["files"][name]
        assert response.headers["Content-Disposition"] == f'attachment; filename="{name}"'
    assert_error(await api.get(f"/datasets/{mixed['dataset_id']}/documents/{'0' * 32}"), 102, "You don't own the document")


async def test_download_keeps_a_non_ascii_name(api):
    dataset = ok(await api.post("/datasets", json={"name": unique("zh-name")}))
    content = "退货：三十天内。".encode()
    (doc,) = ok(await api.post(f"/datasets/{dataset['id']}/documents", files=[("file", ("退货 政策.txt", content))]))
    assert doc["name"] == "退货 政策.txt"
    response = await api.get(f"/datasets/{dataset['id']}/documents/{doc['id']}")
    assert response.content == content
    assert response.headers["Content-Disposition"] == (
        "attachment; filename=\"__ __.txt\"; filename*=UTF-8''%E9%80%80%E8%B4%A7%20%E6%94%BF%E7%AD%96.txt"
    )


async def test_list_chunks_of_a_document(api):
    paragraphs = [f"Section {i}: the lamp model L{i} has {i} watts." for i in range(1, 9)]
    dataset = ok(await api.post("/datasets", json={"name": unique("chunks"), "parser_config": {"chunk_token_num": 16}}))
    (doc,) = ok(await api.post(f"/datasets/{dataset['id']}/documents", files=[("file", ("models.txt", "\n\n".join(paragraphs).encode()))]))
    ok(await api.post(f"/datasets/{dataset['id']}/chunks", json={"document_ids": [doc["id"]]}))
    (parsed,) = await wait_parsed(api, dataset["id"])
    url = f"/datasets/{dataset['id']}/documents/{doc['id']}/chunks"
    everything = ok(await api.get(url, params={"page_size": 100}))
    assert everything["total"] == parsed["chunk_count"] == len(everything["chunks"]) >= 4
    assert everything["doc"]["id"] == doc["id"] and everything["doc"]["run"] == "DONE"
    joined = " ".join(chunk["content"] for chunk in everything["chunks"])
    positions = [joined.index(p) for p in paragraphs]
    assert positions == sorted(positions), "chunks are listed in document order"
    for chunk in everything["chunks"]:
        assert chunk["document_id"] == doc["id"] and chunk["dataset_id"] == dataset["id"]
        assert chunk["docnm_kwd"] == "models.txt" and chunk["available"] is True
    page2 = ok(await api.get(url, params={"page": 2, "page_size": 2}))
    assert [c["id"] for c in page2["chunks"]] == [c["id"] for c in everything["chunks"][2:4]]
    assert page2["total"] == everything["total"]
    found = ok(await api.get(url, params={"keywords": "L7 has"}))
    assert found["total"] == 1 and "model L7 has 7 watts" in found["chunks"][0]["content"]
    one = everything["chunks"][1]
    assert [c["content"] for c in ok(await api.get(url, params={"id": one["id"]}))["chunks"]] == [one["content"]]
    assert_error(await api.get(f"/datasets/{dataset['id']}/documents/{'0' * 32}/chunks"), 102, "You don't own the document")


async def test_delete_documents_removes_their_chunks_from_retrieval(api):
    dataset_id, docs = await make_dataset(
        api,
        {
            "kettle.txt": b"The Orbit kettle boils one litre of water in ninety seconds.",
            "toaster.txt": b"The Orbit toaster has six browning levels.",
        },
        name=unique("del-docs"),
    )
    ids = {d["name"]: d["id"] for d in docs}
    hits = (await retrieve(api, dataset_id, "Which kettle boils water?"))["chunks"]
    assert hits[0]["document_name"] == "kettle.txt"
    ok(await api.request("DELETE", f"/datasets/{dataset_id}/documents", json={"ids": [ids["kettle.txt"]]}))
    after = await retrieve(api, dataset_id, "Which kettle boils water?")
    assert all(chunk["document_id"] != ids["kettle.txt"] for chunk in after["chunks"]), "no stale hit"
    assert "kettle.txt" not in await docs_by_name(api, dataset_id)
    assert_error(await api.get(f"/datasets/{dataset_id}/documents/{ids['kettle.txt']}"), 102)
    assert_error(await api.get(f"/datasets/{dataset_id}/documents/{ids['kettle.txt']}/chunks"), 102)
    assert (await retrieve(api, dataset_id, "browning levels"))["chunks"][0]["document_name"] == "toaster.txt"
    # an unknown id refuses the whole request
    assert_error(
        await api.request("DELETE", f"/datasets/{dataset_id}/documents", json={"ids": [ids["toaster.txt"], "0" * 32]}),
        102,
        "You don't own the document",
    )
    assert "toaster.txt" in await docs_by_name(api, dataset_id)
    # re-upload the deleted file and parse again: found again, once
    (again,) = ok(await api.post(f"/datasets/{dataset_id}/documents", files=[("file", ("kettle.txt", b"The Orbit kettle boils one litre of water in ninety seconds."))]))
    ok(await api.post(f"/datasets/{dataset_id}/chunks", json={"document_ids": [again["id"]]}))
    await wait_parsed(api, dataset_id)
    hits = (await retrieve(api, dataset_id, "Which kettle boils water?"))["chunks"]
    assert hits[0]["document_id"] == again["id"]
    assert [h["document_id"] for h in hits].count(again["id"]) == 1
    # ids: null deletes every document
    ok(await api.request("DELETE", f"/datasets/{dataset_id}/documents", json={"ids": None}))
    assert ok(await api.get(f"/datasets/{dataset_id}/documents"))["total"] == 0
    assert (await retrieve(api, dataset_id, "kettle toaster browning"))["chunks"] == []


async def test_reparse_replaces_chunks(api):
    dataset_id, (doc,) = await make_dataset(api, {"fan.txt": b"The Breeze fan has three speeds."}, name=unique("reparse"))
    url = f"/datasets/{dataset_id}/documents/{doc['id']}/chunks"
    first = ok(await api.get(url))["chunks"]
    ok(await api.post(f"/datasets/{dataset_id}/chunks", json={"document_ids": [doc["id"]]}))
    (again,) = await wait_parsed(api, dataset_id)
    assert again["run"] == "DONE" and again["chunk_count"] == len(first)
    second = ok(await api.get(url))["chunks"]
    assert [c["content"] for c in second] == [c["content"] for c in first]
    assert {c["id"] for c in second}.isdisjoint({c["id"] for c in first}), "old chunks replaced"
    assert len((await retrieve(api, dataset_id, "Breeze fan speeds"))["chunks"]) == len(first)


async def test_cancel_parsing_a_large_document(api):
    paragraph = "The Lumen lamp ships with a warranty covering manufacturing defects for two years. " * 5
    big = "\n\n".join(f"Paragraph {i}. {paragraph}" for i in range(8000)).encode()
    dataset = ok(await api.post("/datasets", json={"name": unique("cancel")}))
    docs = ok(
        await api.post(f"/datasets/{dataset['id']}/documents", files=[("file", ("big.txt", big)), ("file", ("small.txt", b"Small file."))])
    )
    big_id, small_id = docs[0]["id"], docs[1]["id"]
    assert_error(
        await api.request("DELETE", f"/datasets/{dataset['id']}/chunks", json={"document_ids": [small_id]}),
        102,
        "not being parsed: small.txt",
    )
    ok(await api.post(f"/datasets/{dataset['id']}/chunks", json={"document_ids": [big_id]}))
    running = (await docs_by_name(api, dataset["id"]))["big.txt"]
    assert running["run"] == "RUNNING" and 0 <= running["progress"] < 1, running
    assert_error(
        await api.post(f"/datasets/{dataset['id']}/chunks", json={"document_ids": [big_id]}), 102, "being parsed: big.txt"
    )
    ok(await api.request("DELETE", f"/datasets/{dataset['id']}/chunks", json={"document_ids": [big_id]}))
    doc = (await docs_by_name(api, dataset["id"]))["big.txt"]
    assert doc["run"] == "CANCEL" and doc["progress_msg"] == "Cancelled"
    await asyncio.sleep(1.5)  # longer than the parse would take: it must not come back
    doc = (await docs_by_name(api, dataset["id"]))["big.txt"]
    assert (doc["run"], doc["progress_msg"], doc["chunk_count"]) == ("CANCEL", "Cancelled", 0)
    assert ok(await api.get(f"/datasets/{dataset['id']}/documents/{big_id}/chunks"))["total"] == 0
    assert_error(
        await api.request("DELETE", f"/datasets/{dataset['id']}/chunks", json={"document_ids": [big_id]}),
        102,
        "not being parsed: big.txt",
    )
    # a cancelled document can be parsed again
    ok(await api.post(f"/datasets/{dataset['id']}/chunks", json={"document_ids": [big_id, small_id]}))
    doc = {d["name"]: d for d in await wait_parsed(api, dataset["id"])}["big.txt"]
    assert doc["run"] == "DONE" and doc["chunk_count"] > 100


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"files": [("other", ("a.txt", b"text"))]}, "No file part!"),
        ({"data": {"field": "value"}}, "No file part!"),
        ({"files": [("file", ("", b"text"))]}, ""),
        ({"files": [("file", ("empty.txt", b""))]}, "File 'empty.txt' is empty"),
    ],
)
async def test_bad_uploads_are_101(api, kwargs, fragment):
    dataset = ok(await api.post("/datasets", json={"name": unique("bad-upload")}))
    assert_error(await api.post(f"/datasets/{dataset['id']}/documents", **kwargs), 101, fragment)
    assert ok(await api.get(f"/datasets/{dataset['id']}/documents"))["total"] == 0


@pytest.mark.parametrize(
    "body",
    [{}, {"document_ids": []}, {"document_ids": "abc"}, {"document_ids": ["a"], "extra": 1}],
)
async def test_parse_request_validation(api, body):
    dataset = ok(await api.post("/datasets", json={"name": unique("parse-args")}))
    assert_error(await api.post(f"/datasets/{dataset['id']}/chunks", json=body), 101, "`")
    assert_error(await api.request("DELETE", f"/datasets/{dataset['id']}/chunks", json=body), 101, "`")


async def test_parse_unknown_document_is_102(api):
    dataset = ok(await api.post("/datasets", json={"name": unique("parse-unknown")}))
    assert_error(
        await api.post(f"/datasets/{dataset['id']}/chunks", json={"document_ids": ["0" * 32]}), 102, "You don't own the document"
    )


async def test_upload_to_another_tenants_dataset_is_102(api, other_api):
    theirs = ok(await other_api.post("/datasets", json={"name": unique("theirs")}))
    response = await api.post(f"/datasets/{theirs['id']}/documents", files=[("file", ("a.txt", b"sneaky"))])
    assert_error(response, 102, "You don't own the dataset")
    assert ok(await other_api.get(f"/datasets/{theirs['id']}/documents"))["total"] == 0
