"""A threaded HTTP/1.1 server on 127.0.0.1 that serves every way an image download can go.

``with ImageServer() as srv: srv.url("/missing.jpg")``. Routes (``ROUTES`` lists them with the
outcome the fetcher must give):

- ``/img/<name>.jpg|png|webp``: good images (``srv.images[name]`` holds the bytes); ``srv.add(path,
  data)`` serves more;
- ``/missing.jpg`` 404, ``/gone.jpg`` 410, ``/always-500.jpg`` 500 forever;
- ``/flaky.jpg``: 500 on the first request, then a good JPEG; ``/busy.jpg``: 429 with
  ``Retry-After: 1`` first, then a good JPEG; ``/busy-forever.jpg``: 429 with ``Retry-After: 3600``;
- ``/slow.jpg``: headers only after ``slow_seconds``; ``/drip.jpg``: a JPEG sent a few bytes at a time;
- ``/page.jpg``: an HTML page served as ``image/jpeg``; ``/truncated.jpg``: the first half of a JPEG;
- ``/huge.jpg``: ``huge_bytes`` of body with an honest Content-Length; ``/huge-chunked.jpg``: the same
  without a length (chunked);
- ``/loop-a.jpg`` <-> ``/loop-b.jpg`` redirect to each other; ``/chain/N.jpg`` redirects N times
  to a good image; ``/redirect.jpg`` redirects once to ``/redirected.jpg``, a good image;
- ``/noai.jpg`` (``X-Robots-Tag: noai``), ``/noimageai.jpg`` (``X-Robots-Tag: noindex, noimageai``),
  ``/noai-otherbot.jpg`` (``X-Robots-Tag: otherbot: noai``, not addressed to vldata);
- ``/hangup.jpg``: a good JPEG, then the server closes the kept-alive connection;
- ``/to-file.jpg``: a redirect to ``file://`` + ``file_target`` (default /etc/passwd);
- ``/held/<n>.jpg``: a good JPEG after ``hold_seconds``; tracks the peak number of concurrent requests.

The server counts hits per path, client connections, User-Agents and peak concurrency.
"""

from __future__ import annotations

import io
import sys
import threading
import zlib
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from PIL import Image as PILImage

# path -> (reason the fetcher must give, or None for bytes that look like an image)
ROUTES = {
    "/img/a.jpg": None, "/img/b.png": None, "/img/c.webp": None,
    "/missing.jpg": "http_404", "/gone.jpg": "http_410", "/always-500.jpg": "http_5xx_exhausted",
    "/flaky.jpg": None, "/busy.jpg": None, "/busy-forever.jpg": "http_429_exhausted",
    "/slow.jpg": "timeout", "/page.jpg": "not_an_image", "/truncated.jpg": None,  # decodes badly: image_corrupt
    "/huge.jpg": "too_large", "/huge-chunked.jpg": "too_large", "/loop-a.jpg": "redirect_loop",
    "/redirect.jpg": None, "/noai.jpg": "opted_out", "/noimageai.jpg": "opted_out", "/noai-otherbot.jpg": None,
    "/to-file.jpg": "unsupported_scheme",
}


def encode(fmt: str, size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    img = PILImage.new("RGB", size, colour)
    for x in range(0, size[0], 7):  # some structure, so that encoders do real work
        for y in range(0, size[1], 5):
            img.putpixel((x, y), (255 - colour[0], y % 256, x % 256))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {}))
    return buf.getvalue()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):  # clients that stop reading
            super().handle_error(request, client_address)


class ImageServer:
    def __init__(self, slow_seconds: float = 3.0, huge_bytes: int = 3 << 20, hold_seconds: float = 0.05,
                 file_target: str = "/etc/passwd"):
        self.slow_seconds, self.huge_bytes, self.hold_seconds = slow_seconds, huge_bytes, hold_seconds
        self.file_target = file_target
        self.images = {"a.jpg": encode("JPEG", (64, 48), (200, 30, 30)), "b.png": encode("PNG", (40, 30), (30, 200, 30)),
                       "c.webp": encode("WEBP", (50, 50), (30, 30, 200))}
        self.extra: dict[str, tuple[bytes, dict]] = {}
        self._jpegs: dict[str, bytes] = {}
        self.hits: Counter[str] = Counter()
        self.user_agents: list[str] = []
        self.connections: set[tuple[str, int]] = set()
        self.peak_concurrency = 0
        self._active = 0
        self._lock = threading.Lock()
        self._server: _Server | None = None

    # ---- lifecycle

    def __enter__(self) -> ImageServer:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with outer._lock:
                    outer.connections.add(self.client_address)

            def do_GET(self) -> None:  # noqa: N802
                outer._serve(self)

        self._server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def add(self, path: str, data: bytes, headers: dict | None = None) -> str:
        """Serve ``data`` at ``path`` (with extra headers); returns its URL."""
        self.extra[path] = (data, headers or {})
        return self.url(path)

    # ---- responses

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        path = urlsplit(h.path).path
        with self._lock:
            self.hits[path] += 1
            hit = self.hits[path]
            self.user_agents.append(h.headers.get("User-Agent", ""))
            self._active += 1
            self.peak_concurrency = max(self.peak_concurrency, self._active)
        try:
            self._respond(h, path, hit)
        finally:
            with self._lock:
                self._active -= 1

    def jpeg(self, path: str) -> bytes:
        """The good JPEG a route serves: a different image for every path (so no two are duplicates)."""
        with self._lock:
            if path not in self._jpegs:
                c = zlib.crc32(path.encode())
                self._jpegs[path] = encode("JPEG", (32 + c % 32, 24 + c % 16), (c % 256, (c >> 8) % 256, (c >> 16) % 256))
            return self._jpegs[path]

    def _respond(self, h: BaseHTTPRequestHandler, path: str, hit: int) -> None:
        jpeg = self.jpeg(path)
        if path in self.extra:
            data, headers = self.extra[path]
            return _send(h, 200, data, headers)
        if path.startswith("/img/") and path[5:] in self.images:
            return _send(h, 200, self.images[path[5:]])
        if path.startswith("/held/"):
            time.sleep(self.hold_seconds)
            return _send(h, 200, jpeg)
        if path.startswith("/chain/"):
            n = int(path.split("/")[2].split(".")[0])
            return _send(h, 302, b"", {"Location": f"/chain/{n - 1}.jpg" if n > 1 else "/img/a.jpg"})
        if path == "/missing.jpg":
            return _send(h, 404, b"not found", {"Content-Type": "text/plain"})
        if path == "/gone.jpg":
            return _send(h, 410, b"gone")
        if path == "/always-500.jpg":
            return _send(h, 500, b"oops")
        if path == "/flaky.jpg":
            return _send(h, 500, b"oops") if hit == 1 else _send(h, 200, jpeg)
        if path == "/busy.jpg":
            return _send(h, 429, b"slow down", {"Retry-After": "1"}) if hit == 1 else _send(h, 200, jpeg)
        if path == "/busy-forever.jpg":
            return _send(h, 429, b"slow down", {"Retry-After": "3600"})
        if path == "/slow.jpg":
            time.sleep(self.slow_seconds)
            return _send(h, 200, jpeg)
        if path == "/drip.jpg":
            h.send_response(200)
            h.send_header("Content-Length", str(len(jpeg)))
            h.end_headers()
            for i in range(0, len(jpeg), 64):
                h.wfile.write(jpeg[i:i + 64])
                h.wfile.flush()
                time.sleep(0.05)
            return None
        if path == "/page.jpg":
            return _send(h, 200, b"<!DOCTYPE html><html><head><title>Not found</title></head><body>"
                         + b"x" * 500 + b"</body></html>", {"Content-Type": "image/jpeg"})
        if path == "/truncated.jpg":
            return _send(h, 200, jpeg[: len(jpeg) // 2])
        if path == "/huge.jpg":
            return _send(h, 200, jpeg[:100] + b"\0" * self.huge_bytes)
        if path == "/huge-chunked.jpg":
            h.send_response(200)
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            chunk = b"\0" * 65536
            try:
                h.wfile.write(b"%x\r\n%s\r\n" % (100, jpeg[:100]))
                for _ in range(self.huge_bytes // len(chunk)):
                    h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                h.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            h.close_connection = True
            return None
        if path in ("/loop-a.jpg", "/loop-b.jpg"):
            return _send(h, 302, b"", {"Location": "/loop-b.jpg" if path == "/loop-a.jpg" else "/loop-a.jpg"})
        if path == "/redirect.jpg":
            return _send(h, 301, b"", {"Location": "/redirected.jpg"})
        if path == "/redirected.jpg":
            return _send(h, 200, jpeg)
        if path == "/noai.jpg":
            return _send(h, 200, jpeg, {"X-Robots-Tag": "noai"})
        if path == "/noimageai.jpg":
            return _send(h, 200, jpeg, {"X-Robots-Tag": "noindex, noimageai"})
        if path == "/noai-otherbot.jpg":
            return _send(h, 200, jpeg, {"X-Robots-Tag": "otherbot: noai"})
        if path == "/hangup.jpg":  # keep-alive announced, then the connection is closed anyway
            _send(h, 200, jpeg)
            h.close_connection = True
            return None
        if path == "/to-file.jpg":
            return _send(h, 302, b"", {"Location": "file://" + self.file_target})
        return _send(h, 404, b"no such route")


def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict | None = None) -> None:
    h.send_response(status)
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    try:
        h.wfile.write(body)
    except (BrokenPipeError, ConnectionResetError):  # the client stopped reading (too_large)
        h.close_connection = True
