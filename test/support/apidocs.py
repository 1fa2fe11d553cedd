"""Helpers for the API description tests: the app's registered routes, and JSON Schema
validators over a YAML document (``$ref`` resolved within the document)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from test.support.server import ROOT, _child_env

_ROUTES_SCRIPT = """
import json
from common.settings import load_settings
from api.app import create_app
app = create_app(load_settings())
rules = [
    {"rule": r.rule, "methods": sorted(set(r.methods or ()) - {"HEAD", "OPTIONS"}), "websocket": bool(r.websocket)}
    for r in app.url_map.iter_rules()
]
print("ROUTES=" + json.dumps(rules))
"""


def registered_routes(tmp_dir: Path) -> list[dict[str, Any]]:
    """Every rule the real Quart app registers (``create_app`` in a child process, on a
    throw-away SQLite database): ``{"rule", "methods", "websocket"}``."""
    env = _child_env({
        "RAGSOCKET_DATA_DIR": str(tmp_dir),
        "RAGSOCKET_DATABASE_URL": f"sqlite:///{tmp_dir / 'routes.db'}",
    })
    result = subprocess.run([sys.executable, "-c", _ROUTES_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("ROUTES="))
    return json.loads(line.removeprefix("ROUTES="))


def load_yaml(path: Path) -> dict[str, Any]:
    """A YAML document as plain JSON-compatible data."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


class DocumentSchemas:
    """Draft 2020-12 validators for schemas inside one document (``#/…`` refs resolve
    against the document itself)."""

    def __init__(self, document: dict[str, Any], uri: str) -> None:
        self.document = document
        self.uri = uri
        resource = Resource.from_contents(document, default_specification=DRAFT202012)
        self.registry = Registry().with_resource(uri, resource)

    def validator(self, pointer: str) -> Draft202012Validator:
        """A validator of the schema at JSON pointer ``pointer`` (``#/components/…``)."""
        return Draft202012Validator({"$ref": f"{self.uri}{pointer}"}, registry=self.registry)

    def errors(self, pointer: str, instance: Any) -> list[str]:
        """Validation errors of ``instance`` against the schema at ``pointer``."""
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in self.validator(pointer).iter_errors(instance)]

    def resolve(self, pointer: str) -> Any:
        """The value at a JSON pointer ``#/a/b`` in the document (no ref following)."""
        node: Any = self.document
        for part in pointer.removeprefix("#/").split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node
