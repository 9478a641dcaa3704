"""A static file server on 127.0.0.1 with HTTP range requests, counting what it sends.

``with RangeServer(folder) as srv: srv.url("out/webdataset")``. Serves GET and HEAD for files under
``folder`` (``Content-Length``, ``Accept-Ranges: bytes``, ``206`` for ``Range: bytes=a-b``), 404
otherwise. Folders are not listed (a reader of a build must not need listings) unless
``RangeServer(folder, listing=True)``: then a GET of a folder answers an HTML page of ``<a href>``
links, folders ending in ``/``, as python's ``http.server`` does. ``srv.requests`` records
(method, path, range header or None, bytes sent) for every request.
"""

from __future__ import annotations

import html
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class RangeServer:
    def __init__(self, folder: Path, listing: bool = False):
        self.folder = Path(folder).resolve()
        self.listing = listing
        self.requests: list[tuple[str, str, str | None, int]] = []
        self._lock = threading.Lock()

    def __enter__(self) -> RangeServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                server._serve(self, body=False)

            def do_GET(self) -> None:  # noqa: N802
                server._serve(self, body=True)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def url(self, rel: str = "") -> str:
        return f"http://127.0.0.1:{self._httpd.server_port}/{rel.lstrip('/')}"

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    @property
    def bytes_sent(self) -> int:
        return sum(r[3] for r in self.requests)

    def _serve(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        rel = unquote(urlsplit(h.path).path).lstrip("/")
        file = (self.folder / rel).resolve()
        range_header = h.headers.get("Range")
        if self.listing and file.is_dir() and (file == self.folder or self.folder in file.parents):
            self._list(h, file, rel, body)
            return
        if not file.is_file() or self.folder not in file.parents:
            self._record(h.command, rel, range_header, 0)
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        size = file.stat().st_size
        start, end, status = 0, size - 1, 200
        m = _RANGE.match(range_header or "")
        if m:
            a, b = m.groups()
            if a:
                start, end = int(a), min(int(b), size - 1) if b else size - 1
            else:  # a suffix range: the last b bytes
                start, end = max(0, size - int(b)), size - 1
            status = 206
        length = max(0, end - start + 1)
        data = b""
        if body:
            with open(file, "rb") as f:
                f.seek(start)
                data = f.read(length)
        # recorded before answering: a client that has its answer finds its request counted
        self._record(h.command, rel, range_header, len(data))
        h.send_response(status)
        h.send_header("Content-Length", str(length))
        h.send_header("Accept-Ranges", "bytes")
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        h.end_headers()
        h.wfile.write(data)

    def _list(self, h: BaseHTTPRequestHandler, folder: Path, rel: str, body: bool) -> None:
        names = sorted(p.name + "/" if p.is_dir() else p.name for p in folder.iterdir())
        links = "".join(f'<li><a href="{quote(n)}">{html.escape(n)}</a></li>\n' for n in names)
        page = f"<!DOCTYPE HTML>\n<html><body><h1>Directory listing for /{rel}</h1>\n<ul>\n{links}</ul></body></html>\n"
        data = page.encode("utf-8")
        self._record(h.command, rel, None, len(data) if body else 0)
        h.send_response(200)
        h.send_header("Content-Type", "text/html; charset=utf-8")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)

    def _record(self, method: str, rel: str, range_header: str | None, sent: int) -> None:
        with self._lock:
            self.requests.append((method, rel, range_header, sent))
