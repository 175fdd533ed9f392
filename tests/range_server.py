"""A local HTTP server for download tests (127.0.0.1 only): byte ranges, faults, a request log.

The ``range_server`` fixture of ``tests/conftest.py`` yields one :class:`RangeServer`.
"""

from __future__ import annotations

import http.server
import re
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple


class Hit(NamedTuple):
    """One request the server received."""

    method: str
    path: str  # unquoted, without the leading "/" and the query
    range: str | None
    auth: str | None


#: Serves a request itself and returns True, or returns False to leave it to the files.
Route = Callable[[http.server.BaseHTTPRequestHandler, str], bool]


@dataclass
class RangeServer:
    """HTTP server on 127.0.0.1 serving ``files`` (then the folder ``root``) by relative path.

    ``honour_range=False`` ignores ``Range`` (answers 200 with the whole body);
    ``cut_after[path] = n`` makes the next GET of ``path`` announce the full length but
    close the connection after ``n`` bytes; ``sent`` counts the body bytes written per
    path; ``routes`` are tried first (a fake API, a redirect). ``requests`` logs every
    request as a :class:`Hit`.
    """

    files: dict[str, bytes] = field(default_factory=dict)
    root: Path | None = None
    honour_range: bool = True
    cut_after: dict[str, int] = field(default_factory=dict)
    routes: list[Route] = field(default_factory=list)
    requests: list[Hit] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def _handle(self, *, body: bool) -> None:
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path.lstrip("/"))
                server.requests.append(
                    Hit(self.command, path, self.headers.get("Range"),
                        self.headers.get("Authorization"))
                )  # fmt: skip
                if any(route(self, path) for route in server.routes):
                    return
                data = server.body(path)
                if data is None or self.command == "POST":
                    self.send_error(404)
                    return
                server.send_range(self, path, data, body=body)

            def do_GET(self) -> None:
                self._handle(body=True)

            def do_HEAD(self) -> None:
                self._handle(body=False)

            def do_POST(self) -> None:
                self._handle(body=True)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, with a trailing slash."""
        return f"http://127.0.0.1:{self.port}/"

    def body(self, path: str) -> bytes | None:
        """What ``path`` serves: ``files``, else the file under ``root``, else None."""
        if path in self.files:
            return self.files[path]
        if self.root is not None and path and (self.root / path).is_file():
            return (self.root / path).read_bytes()
        return None

    def gets(self) -> list[tuple[str, str | None]]:
        """(path, Range header) of every GET so far."""
        return [(h.path, h.range) for h in self.requests if h.method == "GET"]

    def send_range(
        self, handler: http.server.BaseHTTPRequestHandler, path: str, data: bytes, *, body: bool
    ) -> None:
        """Answer with ``data`` (its requested range when honoured), cut if asked."""
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", handler.headers.get("Range") or "")
        if match and self.honour_range:
            start = int(match.group(1))
            if start >= len(data):
                handler.send_error(416)
                return
            handler.send_response(206)
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            handler.send_response(200)
        handler.send_header("Content-Length", str(len(data) - start))
        handler.end_headers()
        if not body:
            return
        payload = data[start:]
        if path in self.cut_after:
            payload = payload[: self.cut_after.pop(path)]
        # Counted before the write: the client may finish reading (and the test assert)
        # before this thread runs again after the write returns.
        self.sent[path] = self.sent.get(path, 0) + len(payload)
        handler.wfile.write(payload)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
