"""``GET /demo/``: the browser demo page ``example/websocket/index.html``.

The page is one self-contained HTML file (inline CSS and JavaScript). It is read at
request time, so an edited page shows on the next reload; where it is looked for is
:mod:`api.utils.resources`. When it is found nowhere the route answers 404 with an
error envelope naming the places it looked.

The response carries a Content-Security-Policy that allows only the page's own
inline script and style (by their SHA-256 hashes) and connections to any HTTP(S) or
WS(S) server (the page's "Server" field may point at another host).
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from quart import Blueprint, Response

from api.utils.api_utils import error_result, run_blocking
from api.utils.resources import find_resource, resource_candidates
from common.constants import RetCode

manager = Blueprint("web", __name__)

PAGE_RELATIVE = Path("example") / "websocket" / "index.html"
_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


def content_security_policy(html: str) -> str:
    """A CSP allowing exactly the inline ``<script>`` and ``<style>`` blocks of ``html``."""
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for tag, body in _INLINE.findall(html):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        hashes[tag].append(f"'sha256-{digest}'")
    return "; ".join(
        [
            "default-src 'none'",
            "script-src " + (" ".join(hashes["script"]) or "'none'"),
            "style-src " + (" ".join(hashes["style"]) or "'none'"),
            "connect-src 'self' http: https: ws: wss:",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


def _read_page() -> tuple[Path | None, str]:
    """The page's path and text, or ``(None, "")`` when it is found nowhere (blocking)."""
    path = find_resource(PAGE_RELATIVE)
    return (path, path.read_text(encoding="utf-8")) if path else (None, "")


@manager.route("/demo", methods=["GET"])
async def demo_redirect() -> Response:
    """``/demo`` → ``/demo/`` (relative, so it also works behind a path prefix)."""
    return Response("", status=308, headers={"Location": "demo/"})


@manager.route("/demo/", methods=["GET"])
async def demo_page():
    """The demo page, or 404 with the paths searched when the file is missing."""
    path, html = await run_blocking(_read_page)
    if path is None:
        searched = ", ".join(str(c) for c in resource_candidates(PAGE_RELATIVE))
        return error_result(
            RetCode.NOT_FOUND,
            f"the web demo page is not installed: {PAGE_RELATIVE} was not found (looked in: {searched}); "
            "run the service from a checkout of the repository",
            status=404,
        )
    return Response(
        html,
        content_type="text/html; charset=utf-8",
        headers={
            "Cache-Control": "no-cache",
            "Content-Security-Policy": content_security_policy(html),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )
