"""Stored files as HTTP responses, with no file-system call on the event loop.

:func:`open_stored_file` does the blocking part (it stats the file) in the worker
pool; :func:`attachment_response` then builds, on the loop, the response Quart's
``send_file(path, as_attachment=True, …)`` would (same headers, in the same order),
whose body reads the file off the loop while it is sent.
"""

from __future__ import annotations

import mimetypes
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote
from zlib import adler32

from quart import Response, current_app
from quart.helpers import DEFAULT_MIMETYPE
from quart.wrappers.response import FileBody


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII ``filename`` and, for other names, RFC 6266 /
    RFC 8187 ``filename*=UTF-8''…`` (HTTP header values are not UTF-8)."""
    fallback = re.sub(r'[^\x20-\x7e]|["\\]', "_", filename)
    if fallback == filename:
        return f'attachment; filename="{filename}"'
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


@dataclass(frozen=True)
class StoredFile:
    """A file on disk, looked at in a worker thread, ready to be sent as ``filename``
    (whose type is ``mimetype``)."""

    path: Path
    stat: os.stat_result
    body: FileBody
    filename: str
    mimetype: str


def open_stored_file(location: str | Path, filename: str) -> StoredFile:
    """Stat the file at ``location``, make its (lazily opened) response body and guess
    the type of ``filename``, the name it is sent under.

    Blocking (file system; the first type guess reads the system's MIME tables): call
    it in the worker pool.

    Raises:
        FileNotFoundError: nothing at ``location`` (or a path component is not a folder).
    """
    path = Path(location)
    mimetype = mimetypes.guess_type(filename)[0] or DEFAULT_MIMETYPE
    try:
        return StoredFile(path, path.stat(), FileBody(path), filename, mimetype)
    except NotADirectoryError as error:
        raise FileNotFoundError(str(error)) from None


def attachment_response(stored: StoredFile) -> Response:
    """What ``send_file(path, as_attachment=True, attachment_filename=stored.filename)``
    answers (type, length, ``Last-Modified``, cache headers, ETag), with
    :func:`content_disposition`, but with no file-system call on the event loop: the
    body reads the file off the loop as it is sent."""
    response = current_app.response_class(stored.body, mimetype=stored.mimetype)
    response.content_length = stored.stat.st_size
    response.headers["Content-Disposition"] = content_disposition(stored.filename)
    response.last_modified = stored.stat.st_mtime  # type: ignore[assignment]
    response.cache_control.public = True
    max_age = current_app.get_send_file_max_age(str(stored.path))
    if max_age is not None:
        response.cache_control.max_age = max_age
        response.expires = datetime.now(UTC) + timedelta(seconds=max_age)
    response.set_etag(f"{stored.stat.st_mtime}-{stored.stat.st_size}-{adler32(bytes(stored.path))}")
    return response
