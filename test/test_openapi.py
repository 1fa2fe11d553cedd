"""The OpenAPI document served at GET /api/v1/openapi.json: a valid OpenAPI 3.1
document, covering every HTTP route the app registers under /api/v1, whose response
schemas accept real responses of the live server."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from test.support.apidocs import DocumentSchemas, load_yaml, registered_routes
from test.support.server import (
    ROOT,
    ServerProcess,
    Tenant,
    api_client,
    corpus_files,
    make_dataset,
    ok,
)

URI = "urn:ragsocket:openapi"
PREFIX = "/api/v1"


@pytest.fixture(scope="module")
def served(server: ServerProcess) -> dict[str, Any]:
    response = httpx.get(f"{server.api_url}/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


@pytest.fixture(scope="module")
def schemas(served) -> DocumentSchemas:
    return DocumentSchemas(served, URI)


def test_served_document_is_valid_openapi_31(served):
    assert served["openapi"].startswith("3.1")
    validate(served)
    assert served == load_yaml(ROOT / "docs" / "openapi.yaml"), "the service serves docs/openapi.yaml"


def test_every_registered_http_route_is_documented(served, tmp_path):
    documented = {
        (path, method) for path, item in served["paths"].items() for method in item if method in {"get", "post", "put", "delete", "patch"}
    }
    routes = [r for r in registered_routes(tmp_path) if not r["websocket"] and r["rule"].startswith(PREFIX + "/")]
    assert len(routes) > 30, routes
    missing = []
    for route in routes:
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", route["rule"].removeprefix(PREFIX))
        missing += [f"{method} {route['rule']}" for method in route["methods"] if (path, method.lower()) not in documented]
    assert not missing, f"routes missing from docs/openapi.yaml: {missing}"
    # and nothing documented that the app does not serve
    served_pairs = {
        (re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", r["rule"].removeprefix(PREFIX)), m.lower()) for r in routes for m in r["methods"]
    }
    assert documented <= served_pairs, f"documented but not served: {documented - served_pairs}"


def response_schema(doc: dict, path: str, method: str, status: str = "200", media: str = "application/json") -> str:
    """JSON pointer of a response body schema (``#/paths/~1datasets/post/…``)."""
    assert media in doc["paths"][path][method]["responses"][status]["content"]
    escaped = path.replace("~", "~0").replace("/", "~1")
    return f"#/paths/{escaped}/{method}/responses/{status}/content/{media.replace('/', '~1')}/schema"


def request_schema(path: str, method: str, media: str = "application/json") -> str:
    escaped = path.replace("~", "~0").replace("/", "~1")
    return f"#/paths/{escaped}/{method}/requestBody/content/{media.replace('/', '~1')}/schema"


def assert_valid(schemas: DocumentSchemas, pointer: str, instance: Any) -> None:
    errors = schemas.errors(pointer, instance)
    assert not errors, f"{pointer}: {errors}\n{instance}"


async def test_real_responses_match_their_schemas(server: ServerProcess, tenant: Tenant, served, schemas, corpus_dir):
    async with api_client(server, tenant) as api:
        create_body = {"name": "openapi-ds", "description": "checked", "parser_config": {"chunk_token_num": 256}}
        assert_valid(schemas, request_schema("/datasets", "post"), create_body)
        created = await api.post("/datasets", json=create_body)
        assert_valid(schemas, response_schema(served, "/datasets", "post"), created.json())
        dataset_id = ok(created)["id"]
        deleted = await api.request("DELETE", "/datasets", json={"ids": [dataset_id]})
        assert_valid(schemas, response_schema(served, "/datasets", "delete"), deleted.json())
        ok(deleted)

        dataset_id, _ = await make_dataset(api, corpus_files(corpus_dir))
        listed = await api.get(f"/datasets/{dataset_id}/documents")
        assert_valid(schemas, response_schema(served, "/datasets/{dataset_id}/documents", "get"), listed.json())
        assert ok(listed)["docs"]

        query = {"question": "How many days do I have to return a purchase?", "dataset_ids": [dataset_id], "document_ids": []}
        assert_valid(schemas, request_schema("/retrieval", "post"), query)
        retrieved = await api.post("/retrieval", json=query)
        assert_valid(schemas, response_schema(served, "/retrieval", "post"), retrieved.json())
        assert ok(retrieved)["chunks"]

        datasets = await api.get("/datasets")
        assert_valid(schemas, response_schema(served, "/datasets", "get"), datasets.json())

        chat = await api.post("/chats", json={"name": "openapi-chat", "dataset_ids": [dataset_id]})
        assert_valid(schemas, response_schema(served, "/chats", "post"), chat.json())
        answer = await api.post(f"/chats/{ok(chat)['id']}/completions", json={"question": "How long does shipping take?", "stream": False})
        assert_valid(schemas, response_schema(served, "/chats/{chat_id}/completions", "post"), answer.json())
        sessions = await api.get(f"/chats/{ok(chat)['id']}/sessions")
        assert_valid(schemas, response_schema(served, "/chats/{chat_id}/sessions", "get"), sessions.json())

        # error envelopes: an argument error, a data error, an authentication error
        bad = await api.post("/datasets", json={"name": ""})
        assert bad.json()["code"] == 101
        assert_valid(schemas, response_schema(served, "/datasets", "post"), bad.json())
        assert_valid(schemas, "#/components/schemas/ErrorEnvelope", bad.json())
        unknown = await api.get("/datasets/nope/documents")
        assert unknown.json()["code"] == 102
        assert_valid(schemas, response_schema(served, "/datasets/{dataset_id}/documents", "get"), unknown.json())
    refused = httpx.get(f"{server.api_url}/datasets", headers={"Authorization": "Bearer ragsocket-wrong"}, timeout=10)
    assert refused.json()["code"] == 109
    assert_valid(schemas, response_schema(served, "/datasets", "get"), refused.json())
    health = httpx.get(f"{server.api_url}/health", timeout=10)
    assert_valid(schemas, response_schema(served, "/health", "get"), health.json())


def test_success_and_error_envelopes_are_exclusive(schemas):
    pointer = "#/components/schemas/ErrorEnvelope"
    assert schemas.validator(pointer).is_valid({"code": 102, "message": "no", "data": None})
    assert not schemas.validator(pointer).is_valid({"code": 0, "message": "", "data": None})
    assert not schemas.validator("#/components/schemas/SuccessEnvelope").is_valid({"code": 101, "message": "x", "data": None})
