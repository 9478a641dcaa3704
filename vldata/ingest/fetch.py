"""Fetch image bytes for URL-based builders: politely, concurrently, and never from the local disk.

A ``Fetcher`` turns ``FetchRequest``s (a URL, optionally with the md5/sha256 the metadata carries)
into ``FetchResult``s: the bytes, or a stable snake_case failure reason with a message. Only http and
https are ever opened; any other scheme (file, ftp, data, ...) and any redirect to one is the counted
failure ``unsupported_scheme``. Each attempt has connect/read timeouts and a deadline; timeouts,
connection errors, 5xx and 429 are retried with exponential backoff (honouring ``Retry-After``);
redirects are followed by hand (bounded, loops detected, each target's scheme checked); bodies are
streamed and cut at ``max_bytes``; the first bytes are sniffed, so an HTML page served at an image
URL stops early as ``not_an_image``; ``X-Robots-Tag: noai`` / ``noimageai`` is honoured by default
(``opted_out``). Keep-alive connections are pooled per host (``http.client``, which costs less CPU
per request than urllib3 or requests) and a per-host semaphore bounds the concurrent requests to one
host. An optional mirror folder (``DIR/<host>/<path>``, what a previous
download left) is read instead of the network, only from inside that folder.

``fetch_many`` runs requests on a thread pool with a bounded window and yields results in request
order, so a builder's ``records()`` generator stays in input order. The pool, connections and host
limits belong to one process (``fetcher()`` caches one Fetcher per process and settings); with N
build workers the per-host limit applies per worker. This module does no image decoding beyond
magic-byte sniffing, and knows no dataset.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import queue
import re
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Literal
from urllib.parse import SplitResult, quote, unquote, urljoin, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from vldata.ingest.image import sniff

SCHEMES = ("http", "https")
USER_AGENT = "vldata/0.1 (vision-language dataset builder; honours X-Robots-Tag noai)"
_AGENT_TOKEN = "vldata"  # the user-agent token that X-Robots-Tag lines may address
_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 1 << 16  # the first read, enough to sniff; later reads are larger
_BODY_CHUNK = 1 << 18
_SNIFF_BYTES = 16
_URL_SAFE = "/%:@!$&'()*+,;=-._~?[]"  # kept as they are when a path or query is percent-encoded
_NEEDS_QUOTING = re.compile(r"[^A-Za-z0-9/%:@!$&'()*+,;=\-._~?\[\]]")
# X-Robots-Tag directives that take a value after a colon; "name: ..." with these is not a user agent
_VALUED_DIRECTIVES = ("unavailable_after", "max-snippet", "max-image-preview", "max-video-preview")


class FetchPolicy(BaseModel):
    """How to download: concurrency, limits, retries, politeness. Hashable, so it keys the pool cache."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threads: int = Field(default=32, ge=1, le=1024, description="Concurrent downloads per worker process.")
    per_host: int = Field(default=8, ge=1, description="Concurrent requests to one host per worker process.")
    connect_timeout: float = Field(default=5.0, gt=0, description="Seconds to establish a connection.")
    read_timeout: float = Field(default=10.0, gt=0, description="Seconds to wait for any bytes from the server.")
    max_seconds: float = Field(default=60.0, gt=0, description="Deadline of one attempt, headers to last byte.")
    retries: int = Field(default=2, ge=0, description="Extra attempts after a timeout, connection error, 5xx or 429.")
    backoff: float = Field(default=0.5, ge=0, description="First retry delay in seconds, doubled each retry.")
    max_retry_after: float = Field(default=30.0, ge=0, description="A longer Retry-After gives up at once.")
    max_redirects: int = Field(default=5, ge=0)
    max_bytes: int = Field(default=32 << 20, gt=0, description="Bodies larger than this are refused (too_large).")
    user_agent: str = USER_AGENT
    respect_opt_out: bool = Field(default=True, description="Honour X-Robots-Tag opt-out directives (opted_out).")
    opt_out_directives: tuple[str, ...] = ("noai", "noimageai")

    @field_validator("opt_out_directives", mode="before")
    @classmethod
    def _comma_separated(cls, value):  # --set fetch.opt_out_directives=noai,noimageai,noindex
        return tuple(v.strip() for v in value.split(",") if v.strip()) if isinstance(value, str) else value


@dataclass(frozen=True, slots=True)
class FetchRequest:
    """One URL, with the checksums of the expected bytes when the metadata has them (hex)."""

    url: str | None
    md5: str | None = None
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class FetchResult:
    """Bytes that look like an image, or why not. ``reason`` is None on success."""

    url: str | None
    data: bytes | None = None
    reason: str | None = None
    message: str = ""
    status: int | None = None  # HTTP status of the last response
    final_url: str | None = None  # after redirects
    source: Literal["http", "mirror"] | None = None
    attempts: int = 0
    sha256: str | None = None  # of ``data``

    @property
    def ok(self) -> bool:
        return self.reason is None


class _Fail(Exception):
    """Ends an attempt; ``retry`` marks transient failures, ``wait`` a server-requested delay."""

    def __init__(self, reason: str, message: str, status: int | None = None, retry: bool = False,
                 wait: float | None = None):
        super().__init__(message)
        self.reason, self.message, self.status, self.retry, self.wait = reason, message, status, retry, wait


# --------------------------------------------------------------------------------------------
# Pure helpers


def check_url(url: str | None) -> tuple[str, str] | None:
    """(reason, message) when ``url`` must not be fetched, else None. Never touches anything."""
    parsed = _parse(url)
    return None if isinstance(parsed, SplitResult) else parsed


def _parse(url: str | None) -> SplitResult | tuple[str, str]:
    """The parts of an http(s) URL, or (reason, message) why it must not be fetched."""
    if url is None or not str(url).strip():
        return "url_missing", "no URL"
    url = url.strip()
    try:
        parts = urlsplit(url)
    except ValueError as e:
        return "invalid_url", f"{url[:200]}: {e}"
    if parts.scheme.lower() not in SCHEMES:
        return "unsupported_scheme", f"{url[:200]}: scheme {parts.scheme or '(none)'!r} is not http or https"
    try:
        host = parts.hostname
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as e:
        return "invalid_url", f"{url[:200]}: {e}"
    if not host:
        return "invalid_url", f"{url[:200]}: no host"
    return parts


def _target(parts: SplitResult) -> str:
    """The request target: path and query, percent-encoded where the URL was not (spaces, non-ASCII
    characters are common in web metadata); existing escapes are kept."""
    target = f"{parts.path or '/'}?{parts.query}" if parts.query else parts.path or "/"
    return quote(target, safe=_URL_SAFE) if _NEEDS_QUOTING.search(target) else target


def opt_out_directive(values: Iterable[str], directives: Iterable[str], agent: str = _AGENT_TOKEN) -> str | None:
    """The first opt-out directive among X-Robots-Tag header values that applies to ``agent``.

    A value is ``"noai, noindex"`` (applies to every agent) or ``"agent: noai"`` (applies to that
    agent only, or to all with ``*``)."""
    wanted = {d.lower() for d in directives}
    for value in values:
        head, sep, rest = value.partition(":")
        token = head.strip().lower()
        if sep and token and " " not in token and token not in _VALUED_DIRECTIVES:
            if token not in (agent, "*"):
                continue
            value = rest
        for directive in value.split(","):
            if directive.strip().lower() in wanted:
                return directive.strip().lower()
    return None


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date); None when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def mirror_path(root: Path, url: str) -> Path | None:
    """Where ``url`` would be in a mirror folder: ``root/<host>/<path>``; None when the URL cannot
    map to a place strictly inside ``root`` (traversal, encoded slashes, symlinks pointing out)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if not host or host.strip(".") == "" or "/" in host or "\\" in host:
        return None
    segments = [unquote(s) for s in parts.path.split("/")]
    if any(s == ".." or "/" in s or "\\" in s or "\x00" in s for s in segments):
        return None
    segments = [s for s in segments if s not in ("", ".")]
    if not segments:
        return None
    base = root.resolve()
    path = base.joinpath(host, *segments).resolve()
    return path if path.is_relative_to(base) and path != base else None


# --------------------------------------------------------------------------------------------
# The fetcher


class _Slots:
    """A counting semaphore on a C-level queue: ``threading.Semaphore`` is Python code, and this one
    is entered for every request."""

    def __init__(self, n: int):
        self._tokens: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(n):
            self._tokens.put(None)

    def __enter__(self) -> None:
        self._tokens.get()

    def __exit__(self, *exc) -> None:
        self._tokens.put(None)


class _Connections:
    """Idle keep-alive connections per (scheme, host, port), at most ``per_host`` of each."""

    def __init__(self, policy: FetchPolicy):
        self.policy = policy
        self._idle: dict[tuple[str, str, int], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None

    def get(self, key: tuple[str, str, int]) -> tuple[http.client.HTTPConnection, bool]:
        """A connection to ``key`` and whether it was used before (it may have been closed since)."""
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop(), True
        return self.new(key), False

    def new(self, key: tuple[str, str, int]) -> http.client.HTTPConnection:
        scheme, host, port = key
        if scheme == "https":
            with self._lock:
                if self._tls is None:
                    self._tls = ssl.create_default_context()
            return http.client.HTTPSConnection(host, port, timeout=self.policy.connect_timeout, context=self._tls)
        return http.client.HTTPConnection(host, port, timeout=self.policy.connect_timeout)

    def put(self, key: tuple[str, str, int], conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self.policy.per_host:
                idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            for idle in self._idle.values():
                for conn in idle:
                    conn.close()
            self._idle.clear()


class Fetcher:
    """Downloads with a thread pool, pooled connections and per-host limits (see module doc)."""

    def __init__(self, policy: FetchPolicy | None = None, mirror: str | Path | None = None):
        self.policy = policy or FetchPolicy()
        self.mirror = Path(mirror) if mirror else None
        self._headers = {"User-Agent": self.policy.user_agent,
                         "Accept": "image/webp,image/png,image/jpeg,image/*;q=0.8,*/*;q=0.5"}
        self._connections = _Connections(self.policy)
        self._pool: ThreadPoolExecutor | None = None
        self._hosts: dict[tuple[str, str, int], _Slots] = {}
        self._lock = threading.Lock()

    # ---- one URL

    def fetch(self, request: FetchRequest | str | None) -> FetchResult:
        """Fetch one request (blocking). Never raises for anything a URL or server can do."""
        req = request if isinstance(request, FetchRequest) else FetchRequest(request)
        parts = _parse(req.url)
        if not isinstance(parts, SplitResult):
            return FetchResult(req.url, reason=parts[0], message=parts[1])
        url = req.url.strip()
        if self.mirror is not None:
            local = mirror_path(self.mirror, url)
            if local is not None and local.is_file():
                return self._from_mirror(req, url, local)
        return self._download(req, url, parts)

    def _from_mirror(self, req: FetchRequest, url: str, path: Path) -> FetchResult:
        size = path.stat().st_size
        if size > self.policy.max_bytes:
            return FetchResult(url, reason="too_large", message=f"{path}: {size} bytes > max_bytes", source="mirror")
        data = path.read_bytes()
        return self._verified(req, data, source="mirror", final_url=url, status=None, attempts=0)

    def _download(self, req: FetchRequest, url: str, parts: SplitResult) -> FetchResult:
        p = self.policy
        attempt = 0
        while True:
            attempt += 1
            try:
                data, status, final_url = self._attempt(url, parts)
            except _Fail as f:
                if not f.retry or attempt > p.retries:
                    reason = f.reason
                    if f.retry and reason in ("http_5xx", "http_429"):
                        reason += "_exhausted"
                    return FetchResult(url, reason=reason, message=f.message, status=f.status, source="http",
                                       attempts=attempt)
                delay = p.backoff * 2 ** (attempt - 1)
                if f.wait is not None:
                    if f.wait > p.max_retry_after:
                        return FetchResult(url, reason=f"{f.reason}_exhausted", source="http", attempts=attempt,
                                           status=f.status, message=f"{f.message}; Retry-After {f.wait:.0f} s "
                                           f"exceeds max_retry_after={p.max_retry_after:g}")
                    delay = max(delay, f.wait)
                time.sleep(delay)
                continue
            return self._verified(req, data, source="http", final_url=final_url, status=status, attempts=attempt)

    def _verified(self, req: FetchRequest, data: bytes, *, source: str, final_url: str, status: int | None,
                  attempts: int) -> FetchResult:
        where = f"{req.url[:200]}" + (" (mirror)" if source == "mirror" else "")
        common = dict(status=status, final_url=final_url, source=source, attempts=attempts)
        if sniff(data) is None:
            return FetchResult(req.url, reason="not_an_image", message=f"{where}: body starts with {data[:16]!r}",
                               **common)
        sha256 = hashlib.sha256(data).hexdigest()
        for name, expected, actual in (("md5", req.md5, lambda: hashlib.md5(data).hexdigest()),
                                       ("sha256", req.sha256, lambda: sha256)):
            if expected and actual() != expected.strip().lower():
                return FetchResult(req.url, reason="checksum_mismatch",
                                   message=f"{where}: {name} {actual()} != expected {expected}", **common)
        return FetchResult(req.url, data=data, sha256=sha256, **common)

    def _host_slot(self, key: tuple[str, str, int]) -> _Slots:
        slot = self._hosts.get(key)
        if slot is None:
            with self._lock:
                slot = self._hosts.setdefault(key, _Slots(self.policy.per_host))
        return slot

    def _attempt(self, url: str, parts: SplitResult) -> tuple[bytes, int, str]:
        """One attempt: follow redirects, return (body, status, final URL) or raise _Fail."""
        p = self.policy
        deadline = time.monotonic() + p.max_seconds
        visited = {url}
        current = url
        for _ in range(p.max_redirects + 1):
            scheme = parts.scheme.lower()
            key = (scheme, parts.hostname.lower(), parts.port or (443 if scheme == "https" else 80))
            with self._host_slot(key):
                conn, resp = self._open(key, parts, current)
                keep = False
                try:
                    status = resp.status
                    if status in _REDIRECTS:
                        location = resp.getheader("Location")
                        keep = _discard(resp)
                        if not location:
                            raise _Fail("bad_redirect", f"{current[:200]}: HTTP {status} without Location", status)
                        target = urljoin(current, location.strip())
                        parsed = _parse(target)
                        if not isinstance(parsed, SplitResult):
                            raise _Fail(parsed[0], f"{current[:200]}: redirect refused: {parsed[1]}", status)
                        if target in visited:
                            raise _Fail("redirect_loop", f"{current[:200]}: redirects back to {target[:200]}", status)
                        visited.add(target)
                        current, parts = target, parsed
                        continue
                    data = self._body(resp, current, deadline)
                    keep = resp.isclosed()  # read to its end: the connection can serve the next request
                    return data, status, current
                except _Fail:
                    keep = resp.isclosed()  # an error body read to its end leaves a reusable connection
                    raise
                finally:
                    if keep and not resp.will_close:
                        self._connections.put(key, conn)
                    else:
                        conn.close()
        raise _Fail("too_many_redirects", f"{url[:200]}: more than {p.max_redirects} redirects", None)

    def _open(self, key: tuple[str, str, int], parts: SplitResult,
              url: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send the request and read the response head, on a pooled connection when one is idle (a
        stale one, closed by the server meanwhile, is replaced once, without counting an attempt)."""
        target = _target(parts)
        pooled = True
        while True:
            conn, reused = self._connections.get(key) if pooled else (self._connections.new(key), False)
            try:
                if conn.sock is None:
                    conn.connect()
                    conn.sock.settimeout(self.policy.read_timeout)
                conn.request("GET", target, headers=self._headers)
                return conn, conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                conn.close()
                if reused:  # the server closed an idle connection: try once more on a new one
                    pooled = False
                    continue
                raise _Fail("connection_error", f"{url[:200]}: {type(e).__name__}: {e}"[:300], retry=True) from None
            except BaseException as e:
                conn.close()
                raise _failure(url, e) from None

    def _body(self, resp: http.client.HTTPResponse, url: str, deadline: float) -> bytes:
        p = self.policy
        status = resp.status
        if status == 429 or status >= 500:
            wait = retry_after_seconds(resp.getheader("Retry-After"))
            _discard(resp)
            reason = "http_429" if status == 429 else "http_5xx"
            raise _Fail(reason, f"{url[:200]}: HTTP {status}", status, retry=True, wait=wait)
        if not 200 <= status < 300:
            _discard(resp)
            reason = f"http_{status}" if status in (401, 403, 404, 410, 451) else f"http_{status // 100}xx"
            raise _Fail(reason, f"{url[:200]}: HTTP {status}", status)
        if p.respect_opt_out:
            directive = opt_out_directive(resp.msg.get_all("X-Robots-Tag") or (), p.opt_out_directives)
            if directive:
                raise _Fail("opted_out", f"{url[:200]}: X-Robots-Tag {directive}", status)
        length = resp.getheader("Content-Length", "")
        if length.isdigit() and int(length) > p.max_bytes:
            raise _Fail("too_large", f"{url[:200]}: Content-Length {length} > max_bytes={p.max_bytes}", status)
        chunks: list[bytes] = []
        size = 0
        try:
            chunk = resp.read(_CHUNK)
            while chunk:
                chunks.append(chunk)
                size += len(chunk)
                if size > p.max_bytes:
                    raise _Fail("too_large", f"{url[:200]}: body exceeds max_bytes={p.max_bytes}", status)
                if len(chunks) == 1 and size >= _SNIFF_BYTES and sniff(chunk) is None:
                    raise _Fail("not_an_image", f"{url[:200]}: body starts with {chunk[:16]!r}", status)
                if time.monotonic() > deadline:
                    raise _Fail("timeout", f"{url[:200]}: body not received within {p.max_seconds:g} s", status,
                                retry=True)
                chunk = resp.read(min(_BODY_CHUNK, p.max_bytes + 1 - size))
        except (TimeoutError, socket.timeout):
            raise _Fail("timeout", f"{url[:200]}: read timed out after {size} bytes", status, retry=True) from None
        except (http.client.HTTPException, OSError) as e:
            raise _Fail("connection_error", f"{url[:200]}: {type(e).__name__} after {size} bytes", status,
                        retry=True) from None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    # ---- many URLs

    def fetch_many(self, requests: Iterable[FetchRequest | str | None], window: int | None = None) -> Iterator[FetchResult]:
        """Fetch concurrently, yielding one result per request in request order. At most ``window``
        requests (default 4 x threads) are in flight or waiting to be yielded; identical requests in
        the window are fetched once. Closing the iterator early cancels what has not started."""
        window = window or 4 * self.policy.threads
        pool = self._executor()
        pending: deque[tuple[FetchRequest, Future]] = deque()
        in_window: dict[FetchRequest, list] = {}  # request -> [future, count in window]
        it = iter(requests)

        def submit() -> bool:
            for request in it:
                req = request if isinstance(request, FetchRequest) else FetchRequest(request)
                entry = in_window.get(req)
                if entry is None:
                    entry = in_window[req] = [pool.submit(self.fetch, req), 0]
                entry[1] += 1
                pending.append((req, entry[0]))
                return True
            return False

        try:
            while len(pending) < window and submit():
                pass
            while pending:
                req, fut = pending.popleft()
                entry = in_window[req]
                entry[1] -= 1
                if entry[1] == 0:
                    del in_window[req]
                submit()
                yield fut.result()
        finally:
            for _, fut in pending:
                fut.cancel()

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.policy.threads, thread_name_prefix="vldata-fetch")
            return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._connections.close()


def _failure(url: str, e: BaseException) -> _Fail:
    """The failure of a request that raised before a response head arrived."""
    if isinstance(e, socket.gaierror):
        return _Fail("dns_error", f"{url[:200]}: {e}"[:300])
    if isinstance(e, (TimeoutError, socket.timeout)):
        return _Fail("timeout", f"{url[:200]}: {type(e).__name__}", retry=True)
    if isinstance(e, (ssl.SSLError, ssl.CertificateError)):
        return _Fail("ssl_error", f"{url[:200]}: {e}"[:300])
    if isinstance(e, (http.client.InvalidURL, UnicodeError, ValueError)):
        return _Fail("invalid_url", f"{url[:200]}: {e}"[:300])
    if isinstance(e, http.client.HTTPException):  # malformed status line or headers
        return _Fail("bad_response", f"{url[:200]}: {type(e).__name__}: {e}"[:300])
    if isinstance(e, OSError):  # refused, unreachable, reset
        return _Fail("connection_error", f"{url[:200]}: {type(e).__name__}: {e}"[:300], retry=True)
    raise e  # a bug, not something a URL can do


def _discard(resp: http.client.HTTPResponse) -> bool:
    """Drop a response body we do not want; True when it was read to its end (the connection can
    be reused), False when it is large or unknown and the connection must be closed."""
    length = resp.getheader("Content-Length", "")
    if length.isdigit() and int(length) <= _CHUNK:
        try:
            resp.read(_CHUNK + 1)
        except (http.client.HTTPException, OSError):
            return False
        return resp.isclosed()
    return False


_FETCHERS: dict[tuple[int, FetchPolicy, str | None], Fetcher] = {}
_FETCHERS_LOCK = threading.Lock()


def fetcher(policy: FetchPolicy | None = None, mirror: str | Path | None = None) -> Fetcher:
    """The Fetcher of this process for these settings, so that connections and the thread pool are
    reused across partitions (a forked worker never inherits its parent's)."""
    policy = policy or FetchPolicy()
    key = (os.getpid(), policy, str(mirror) if mirror else None)
    with _FETCHERS_LOCK:
        f = _FETCHERS.get(key)
        if f is None:
            for stale in [k for k in _FETCHERS if k[0] != os.getpid()]:
                del _FETCHERS[stale]
            f = _FETCHERS[key] = Fetcher(policy, mirror)
        return f
