"""A static HTTP server on 127.0.0.1, for the samples of URL-based datasets.

A builder whose raw input is a list of URLs writes its sample as metadata whose URLs point at
``http://127.0.0.1:<port>/...``, the files to serve under ``<raw>/<site>/``, and a ``loopback.json``
that names the port (a free one, chosen when the sample is written), the site folder and optional
per-path responses (a status and headers, e.g. a redirect or an ``X-Robots-Tag``). Its
``Builder.sample_services(raw)`` returns ``serve_sample(raw)``, which serves exactly that port while
the sample is built; a raw folder without ``loopback.json`` (real data) starts nothing. The server
answers HTTP/1.1 with keep-alive, serves only files inside the site folder, and knows no dataset.

The fetcher refuses loopback addresses (``blocked_address``, see ``vldata.ingest.fetch``). For the
duration of the sample build, and only while its server is up, ``serve_sample`` exposes exactly
``127.0.0.1:<port>`` of that server to it (``fetch.exposed_sample_address``: an environment variable
that forked, spawned and Ray build workers inherit). Nothing else is opened: no other port, no other
loopback or private address, and nothing at all once the build ends or when the raw folder has no
``loopback.json``. The port is one this server has bound itself (a port another program listens on
cannot be bound, so it cannot be exposed). ``serve`` alone exposes nothing: whoever fetches from it
sets ``fetch.allow_private=true``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from vldata.ingest.fetch import exposed_sample_address

SERVICE_FILE = "loopback.json"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, port: int, site: Path, routes: dict[str, dict]):
        self.site, self.routes = site.resolve(), routes
        super().__init__(("127.0.0.1", port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body leave at once, not after a delayed ACK
    server: _Server

    def log_message(self, format, *args) -> None:  # noqa: A002 - silence the per-request log
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = urlsplit(self.path).path
        route = self.server.routes.get(path, {})
        status, headers = int(route.get("status", 200)), dict(route.get("headers", {}))
        body = b""
        if status == 200:
            file = (self.server.site / unquote(path).lstrip("/")).resolve()
            if file.is_relative_to(self.server.site) and file.is_file():
                body = file.read_bytes()
            else:
                status, body = 404, b"not found"
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the fetcher gave up on a body over its limit
            self.close_connection = True


@contextlib.contextmanager
def serve(site: Path, port: int = 0, routes: dict[str, dict] | None = None) -> Iterator[str]:
    """Serve the files under ``site`` on 127.0.0.1:``port`` (0: any free port) while the context
    is open; yields the base URL. ``routes`` maps a path to ``{"status": ..., "headers": {...}}``."""
    server = _Server(port, Path(site), routes or {})
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="vldata-loopback")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def write_service(raw: Path, port: int, site: str, routes: dict[str, dict] | None = None) -> None:
    """Record, next to a sample, how ``serve_sample`` must serve it."""
    (Path(raw) / SERVICE_FILE).write_text(json.dumps({"port": port, "site": site, "routes": routes or {}}, indent=1))


@contextlib.contextmanager
def serve_sample(raw: Path) -> Iterator[str | None]:
    """Serve a sample as its ``loopback.json`` says, and expose exactly that 127.0.0.1 port to the
    fetcher while the context is open; do nothing when there is none."""
    service = Path(raw) / SERVICE_FILE
    if not service.is_file():
        yield None
        return
    spec = json.loads(service.read_text())
    try:
        server = serve(Path(raw) / spec["site"], int(spec["port"]), spec.get("routes", {}))
        base = server.__enter__()
    except OSError as e:
        raise OSError(f"{service}: cannot serve the sample on 127.0.0.1:{spec['port']} ({e}); "
                      "write the sample again to pick another port") from None
    try:
        with exposed_sample_address(int(base.rsplit(":", 1)[1])):  # withdrawn before the server stops
            yield base
    finally:
        server.__exit__(None, None, None)
