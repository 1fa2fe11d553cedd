"""``POST /api/v1/retrieval`` against the real server: ranking, thresholds, paging, filters."""

from __future__ import annotations

import httpx
import pytest

from test.support.server import (
    ServerProcess,
    Tenant,
    api_client,
    corpus_files,
    make_corpus,
    make_dataset,
    ok,
    unique,
)


@pytest.fixture(scope="module")
async def shipped(server: ServerProcess, tenant: Tenant, corpus_dir) -> dict:
    """The shipped English and Chinese documents, parsed into one dataset."""
    dataset_id, docs, _ = await make_corpus(server, tenant, corpus_files(corpus_dir), name=unique("retrieval"))
    return {"dataset_id": dataset_id, "docs": {d["name"]: d["id"] for d in docs}}


@pytest.fixture(scope="module")
async def many(server: ServerProcess, tenant: Tenant) -> dict:
    """Twelve one-sentence documents that all mention "lamp" (for paging and top_k)."""
    async with api_client(server, tenant) as api:
        files = {f"lamp{i:02d}.txt": f"Lamp model {i} gives {i * 100} lumens.".encode() for i in range(12)}
        dataset_id, docs = await make_dataset(api, files, name=unique("many"))
    return {"dataset_id": dataset_id, "docs": {d["name"]: d["id"] for d in docs}}


async def search(api: httpx.AsyncClient, **body) -> dict:
    return ok(await api.post("/retrieval", json=body))


async def test_english_question_ranks_the_answer_first(api, shipped):
    data = await search(api, question="How many days do I have to return a purchase?", dataset_ids=[shipped["dataset_id"]])
    top = data["chunks"][0]
    assert top["document_name"] == "returns.md" and top["document_keyword"] == "returns.md"
    assert top["document_id"] == shipped["docs"]["returns.md"]
    assert "within 30 days of delivery" in top["content"]
    assert 0 < top["similarity"] <= 1 and top["term_similarity"] == top["similarity"]
    assert top["vector_similarity"] == 0.0
    assert top["dataset_id"] == top["kb_id"] == shipped["dataset_id"]
    scores = [chunk["similarity"] for chunk in data["chunks"]]
    assert scores == sorted(scores, reverse=True)
    assert all(0.2 <= score <= 1 for score in scores), "default threshold is 0.2"
    assert data["total"] == len(data["chunks"])
    assert {agg["doc_name"] for agg in data["doc_aggs"]} == {c["document_name"] for c in data["chunks"]}
    assert sum(agg["count"] for agg in data["doc_aggs"]) == len(data["chunks"])


async def test_chinese_question_ranks_the_chinese_passage_first(api, shipped):
    data = await search(api, question="退货政策是什么？", dataset_ids=[shipped["dataset_id"]])
    top = data["chunks"][0]
    assert top["document_name"] == "zh_policy.md"
    assert "三十天内可以申请无理由退货" in top["content"]
    assert 0 < top["similarity"] <= 1


async def test_similarity_threshold(api, shipped):
    question = "How many days do I have to return a purchase?"
    low = await search(api, question=question, dataset_ids=[shipped["dataset_id"]], similarity_threshold=0.0)
    best = low["chunks"][0]["similarity"]
    assert all(chunk["similarity"] > 0 for chunk in low["chunks"]), "chunks without any query word never match"
    # similarities are shown rounded to 6 decimals
    at_best = await search(api, question=question, dataset_ids=[shipped["dataset_id"]], similarity_threshold=best - 1e-6)
    assert [c["id"] for c in at_best["chunks"]] == [low["chunks"][0]["id"]]
    high = await search(api, question=question, dataset_ids=[shipped["dataset_id"]], similarity_threshold=min(1.0, best + 0.01))
    assert high == {"total": 0, "chunks": [], "doc_aggs": []}
    nothing = await search(api, question="zebra xylophone quasar", dataset_ids=[shipped["dataset_id"]], similarity_threshold=0)
    assert nothing == {"total": 0, "chunks": [], "doc_aggs": []}


async def test_paging_and_top_k(api, many):
    base = {"question": "lamp lumens", "dataset_ids": [many["dataset_id"]], "similarity_threshold": 0}
    everything = await search(api, **base, page_size=100)
    assert everything["total"] == 12 and len(everything["chunks"]) == 12
    ranked = [c["id"] for c in everything["chunks"]]
    page1 = await search(api, **base, page=1, page_size=5)
    page3 = await search(api, **base, page=3, page_size=5)
    assert [c["id"] for c in page1["chunks"]] == ranked[:5]
    assert [c["id"] for c in page3["chunks"]] == ranked[10:]
    assert page1["total"] == page3["total"] == 12
    beyond = await search(api, **base, page=4, page_size=5)
    assert beyond["chunks"] == [] and beyond["total"] == 12
    top = await search(api, **base, top_k=4, page_size=100)
    assert top["total"] == 4 and [c["id"] for c in top["chunks"]] == ranked[:4]


async def test_document_ids_filter(api, many):
    wanted = [many["docs"]["lamp03.txt"], many["docs"]["lamp07.txt"]]
    data = await search(api, question="lamp lumens", dataset_ids=[many["dataset_id"]], document_ids=wanted, similarity_threshold=0)
    assert data["total"] == 2
    assert sorted(c["document_id"] for c in data["chunks"]) == sorted(wanted)
    assert sorted(a["doc_name"] for a in data["doc_aggs"]) == ["lamp03.txt", "lamp07.txt"]


async def test_several_datasets_are_searched_together(api, shipped, many):
    data = await search(api, question="lamp warranty lumens", dataset_ids=[shipped["dataset_id"], many["dataset_id"]], page_size=100, similarity_threshold=0)
    assert {c["dataset_id"] for c in data["chunks"]} == {shipped["dataset_id"], many["dataset_id"]}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"dataset_ids": ["x"]}, "`question`: Field required"),
        ({"question": "   ", "dataset_ids": ["x"]}, "`question`: String should have at least 1 character"),
        ({"question": "lamp"}, "`dataset_ids`: Field required"),
        ({"question": "lamp", "dataset_ids": []}, "`dataset_ids`: List should have at least 1 item"),
        ({"question": "lamp", "dataset_ids": "abc"}, "`dataset_ids`"),
        ({"question": "lamp", "dataset_ids": ["x"], "similarity_threshold": 2}, "`similarity_threshold`"),
        ({"question": "lamp", "dataset_ids": ["x"], "top_k": 0}, "`top_k`"),
        ({"question": "lamp", "dataset_ids": ["x"], "page": 0}, "`page`"),
        ({"question": "lamp", "dataset_ids": ["x"], "page_size": 0}, "`page_size`"),
    ],
)
async def test_bad_arguments_are_101(api, body, fragment):
    body_json = (await api.post("/retrieval", json=body)).json()
    assert body_json["code"] == 101 and body_json["data"] is None
    assert fragment in body_json["message"], body_json


async def test_empty_document_ids_means_no_filter(api, shipped):
    """RAGFlow's SDK ``retrieve()`` always sends ``document_ids``, empty for "all"."""
    question = "What does the warranty cover?"
    unfiltered = await search(api, question=question, dataset_ids=[shipped["dataset_id"]])
    assert unfiltered["chunks"] and unfiltered["chunks"][0]["document_name"] == "warranty.txt"
    assert await search(api, question=question, dataset_ids=[shipped["dataset_id"]], document_ids=[]) == unfiltered


async def test_unknown_or_foreign_dataset_is_102(api, other_api, shipped):
    unknown = "0" * 32
    body = (await api.post("/retrieval", json={"question": "lamp", "dataset_ids": [shipped["dataset_id"], unknown]})).json()
    assert body == {"code": 102, "message": f"You don't own the dataset {unknown}.", "data": None}
    body = (await other_api.post("/retrieval", json={"question": "return purchase", "dataset_ids": [shipped["dataset_id"]]})).json()
    assert body == {"code": 102, "message": f"You don't own the dataset {shipped['dataset_id']}.", "data": None}


async def test_document_of_another_dataset_gives_no_hit(api, shipped, many):
    data = await search(
        api, question="lamp lumens", dataset_ids=[shipped["dataset_id"]], document_ids=[many["docs"]["lamp01.txt"]], similarity_threshold=0
    )
    assert data == {"total": 0, "chunks": [], "doc_aggs": []}
