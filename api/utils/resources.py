"""Files the service reads from its source tree at run time (not Python modules).

The web demo page (``example/websocket/index.html``) and the OpenAPI document
(``docs/openapi.yaml``) are not package data: they live in the repository next to the
code. They are looked up next to the source tree (``<repo>/<relative>``, right for a
checkout and an editable install) and then under the current working directory
(right for a regular install started in the repository, and for the Docker image,
whose ``WORKDIR /app`` holds ``docs/`` and ``example/``).
"""

from __future__ import annotations

from pathlib import Path

#: The repository root when running from a checkout or an editable install.
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def resource_candidates(relative: Path) -> tuple[Path, ...]:
    """Where ``relative`` is looked for, in order: the source tree, then the working
    directory (a relative path, resolved at call time)."""
    return (SOURCE_ROOT / relative, relative)


def find_resource(relative: Path) -> Path | None:
    """The first candidate of ``relative`` that is a file, or ``None`` (blocking: stats files)."""
    for candidate in resource_candidates(relative):
        if candidate.is_file():
            return candidate
    return None
