"""Where the service finds docs/openapi.yaml and the web demo page (api.utils.resources)."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.apps import openapi
from api.utils import resources

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def installed_elsewhere(tmp_path, monkeypatch):
    """As in a regular (non-editable) install: the package's source tree has no docs/."""
    monkeypatch.setattr(resources, "SOURCE_ROOT", tmp_path / "site-packages")
    openapi.openapi_document.cache_clear()
    yield
    openapi.openapi_document.cache_clear()


def test_found_in_the_source_tree_first():
    assert resources.find_resource(openapi.OPENAPI_RELATIVE) == REPO / "docs" / "openapi.yaml"


def test_falls_back_to_the_working_directory(installed_elsewhere, monkeypatch):
    monkeypatch.chdir(REPO)  # the Docker image's WORKDIR holds docs/ and example/
    assert resources.find_resource(Path("docs") / "openapi.yaml") == Path("docs") / "openapi.yaml"
    assert '"openapi":"3.1' in openapi.openapi_document()


def test_missing_everywhere_names_the_places_searched(installed_elsewhere, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resources.find_resource(openapi.OPENAPI_RELATIVE) is None
    with pytest.raises(FileNotFoundError) as missing:
        openapi.openapi_document()
    assert str(tmp_path / "site-packages" / "docs" / "openapi.yaml") in str(missing.value)
