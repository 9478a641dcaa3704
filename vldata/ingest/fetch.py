"""Fetch image bytes for URL-based builders: politely, concurrently, and never from the local disk
or the local network.

A ``Fetcher`` turns ``FetchRequest``s (a URL, optionally with the md5/sha256 the metadata carries)
into ``FetchResult``s: the bytes, or a stable snake_case failure reason with a message. It never
raises for anything a URL, a DNS answer or a server can do: every error inside a fetch is a counted
reason (an unforeseen one is ``fetch_error``).

What it opens. Only http and https; any other scheme (file, ftp, data, ...) and any redirect to one is
``unsupported_scheme``. Only global addresses: a host is resolved, each resolved address is checked,
and the socket is connected to exactly the address that passed, for the first URL and every redirect
(so DNS rebinding cannot slip through). Loopback, private (10/8, 172.16/12, 192.168/16), link-local,
CGNAT (100.64/10), unique-local (fc00::/7), multicast, unspecified and reserved addresses, and the
IPv4-mapped / NAT64 / 6to4 forms of those, are ``blocked_address``, never connected to, unless
``FetchPolicy.allow_private`` is set. The one other exception is a sample server that
``exposed_sample_address`` names (``vldata.ingest.loopback.serve_sample``, while a builder's synthetic
sample is built): exactly ``127.0.0.1:<port>``, through an environment variable that worker processes
inherit.

How long. One deadline per attempt (``max_seconds``) covers connecting, the request, the response
head and the body, across redirects (waiting for a free per-host slot does not count): before every receive the socket timeout is set to what is left
(at most ``read_timeout``), so a server that trickles bytes ends as ``timeout``. (Name resolution
uses the system resolver and its own timeouts.) Timeouts, connection errors, 5xx and 429 are retried
with exponential backoff (honouring ``Retry-After``); redirects are followed by hand (bounded, loops
detected, each target's scheme checked); numeric headers are parsed strictly (ASCII digits only; a
malformed ``Content-Length`` is ``bad_header``); bodies are streamed and cut at ``max_bytes``; the
first bytes are sniffed, so an HTML page served at an image URL stops early as ``not_an_image``;
``X-Robots-Tag: noai`` / ``noimageai`` is honoured by default (``opted_out``). Failure messages name
the URL, status and sizes, never bytes of a response body.

Connections. Keep-alive connections are pooled per host (``http.client``, which costs less CPU per
request than urllib3 or requests) and a per-host semaphore bounds the concurrent requests to one
host. A connection goes back to the pool only when its response was read exactly to its end and
nothing more is waiting on it (no bytes past the body, buffered or on the socket); an idle one is
checked again before reuse. So bytes a server sends beyond its Content-Length can never be read as
the response to the next URL. An optional mirror folder (``DIR/<host>/<path>``, what a previous
download left) is read instead of the network, only from inside that folder.

``fetch_many`` runs requests on a pool of daemon threads (a download in progress never keeps the
process alive after Ctrl-C) with a bounded window and yields results in request order, so a builder's
``records()`` generator stays in input order. Memory is bounded: the bodies of downloads running and
of results waiting to be yielded stay within ``threads x max_bytes`` together (see ``fetch_many``).
The pool, connections and host limits belong to one process (``fetcher()`` caches one Fetcher per
process and settings); with N build workers the per-host limit applies per worker. This module does
no image decoding beyond magic-byte sniffing, and knows no dataset.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import http.client
import io
import ipaddress
import math
import os
import queue
import re
import socket
import ssl
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Literal
from urllib.parse import SplitResult, quote, unquote, urljoin, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from vldata.ingest.image import sniff

SCHEMES = ("http", "https")
USER_AGENT = "vldata/0.1 (vision-language dataset builder; honours X-Robots-Tag noai)"
# "127.0.0.1:PORT[,127.0.0.1:PORT...]": the sample servers the fetcher may connect to (exposed_sample_address)
SAMPLE_ADDRESSES_ENV = "VLDATA_FETCH_SAMPLE_ADDRESSES"
_AGENT_TOKEN = "vldata"  # the user-agent token that X-Robots-Tag lines may address
_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 1 << 16  # the first read, enough to sniff; later reads are larger
_BODY_CHUNK = 1 << 18
_SNIFF_BYTES = 16
_URL_SAFE = "/%:@!$&'()*+,;=-._~?[]"  # kept as they are when a path or query is percent-encoded
_NEEDS_QUOTING = re.compile(r"[^A-Za-z0-9/%:@!$&'()*+,;=\-._~?\[\]]")
_DIGITS = re.compile(r"[0-9]{1,18}")  # ASCII only: str.isdigit() and int() also take "²" or "١٢"
# X-Robots-Tag directives that take a value after a colon; "name: ..." with these is not a user agent
_VALUED_DIRECTIVES = ("unavailable_after", "max-snippet", "max-image-preview", "max-video-preview")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class FetchPolicy(BaseModel):
    """How to download: concurrency, limits, retries, politeness. Hashable, so it keys the pool cache."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threads: int = Field(default=32, ge=1, le=1024, description="Concurrent downloads per worker process.")
    per_host: int = Field(default=8, ge=1, description="Concurrent requests to one host per worker process.")
    connect_timeout: float = Field(default=5.0, gt=0, description="Seconds to establish a connection.")
    read_timeout: float = Field(default=10.0, gt=0, description="Seconds to wait for any bytes from the server.")
    max_seconds: float = Field(default=60.0, gt=0, description="Deadline of one attempt, connect to last byte.")
    retries: int = Field(default=2, ge=0, description="Extra attempts after a timeout, connection error, 5xx or 429.")
    backoff: float = Field(default=0.5, ge=0, description="First retry delay in seconds, doubled each retry.")
    max_retry_after: float = Field(default=30.0, ge=0, description="A longer Retry-After gives up at once.")
    max_redirects: int = Field(default=5, ge=0)
    max_bytes: int = Field(default=32 << 20, gt=0, description="Bodies larger than this are refused (too_large).")
    user_agent: str = USER_AGENT
    respect_opt_out: bool = Field(default=True, description="Honour X-Robots-Tag opt-out directives (opted_out).")
    opt_out_directives: tuple[str, ...] = ("noai", "noimageai")
    allow_private: bool = Field(default=False, description="Also connect to loopback, private, link-local and other "
                                "non-global addresses (refused as blocked_address by default).")

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


class _Blocked(Exception):
    """A host resolved only to addresses the policy does not allow (nothing was connected to)."""


class _DeadlinePassed(TimeoutError):
    """The attempt's ``max_seconds`` are spent."""


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


def header_int(value: str | None) -> int | None:
    """A numeric header value (ASCII digits, surrounding blanks allowed); None when absent or anything
    else. Absurdly long numbers read as 10**18."""
    if value is None:
        return None
    value = value.strip(" \t")
    if _DIGITS.fullmatch(value):
        return int(value)
    return 10 ** 18 if value.isascii() and value.isdigit() else None


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
    if not value or not value.strip():
        return None
    seconds = header_int(value)
    if seconds is not None:
        return float(seconds)
    try:
        when = parsedate_to_datetime(value.strip()).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def is_global_address(ip: str) -> bool:
    """Whether ``ip`` (a resolved address) is a public Internet address the fetcher may connect to:
    not loopback, private, link-local, CGNAT, unique-local, site-local, multicast, unspecified or
    reserved, also when written as an IPv4-mapped, NAT64 or 6to4 IPv6 address."""
    try:
        addr = ipaddress.ip_address(ip.partition("%")[0])  # an IPv6 zone ("fe80::1%eth0") is never global
    except ValueError:
        return False
    if addr.version == 6:
        if addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        elif addr in _NAT64:
            addr = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        elif addr.sixtofour is not None and not is_global_address(str(addr.sixtofour)):
            return False
    return addr.is_global and not (addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_multicast
                                   or addr.is_unspecified or addr.is_reserved
                                   or getattr(addr, "is_site_local", False))


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
# Which addresses may be connected to


_ENV_LOCK = threading.Lock()


@contextlib.contextmanager
def exposed_sample_address(port: int) -> Iterator[str]:
    """Let fetchers connect to ``127.0.0.1:port``, and to nothing else that is not global, while the
    block runs: a builder's own sample server (``vldata.ingest.loopback.serve_sample``). It is said in
    the environment variable ``SAMPLE_ADDRESSES_ENV``, so build worker processes (forked, spawned, or
    Ray workers started meanwhile) inherit it; only ``127.0.0.1:<port>`` entries are ever honoured."""
    entry = f"127.0.0.1:{int(port)}"
    with _ENV_LOCK:
        os.environ[SAMPLE_ADDRESSES_ENV] = ",".join(_env_entries() + [entry])
    try:
        yield entry
    finally:
        with _ENV_LOCK:
            entries = _env_entries()
            if entry in entries:
                entries.remove(entry)
            if entries:
                os.environ[SAMPLE_ADDRESSES_ENV] = ",".join(entries)
            else:
                os.environ.pop(SAMPLE_ADDRESSES_ENV, None)


def _env_entries() -> list[str]:
    return [e for e in os.environ.get(SAMPLE_ADDRESSES_ENV, "").split(",") if e]


@functools.lru_cache(maxsize=16)
def _sample_addresses(value: str) -> frozenset[tuple[str, int]]:
    """The (address, port) pairs of ``SAMPLE_ADDRESSES_ENV``: exact ``127.0.0.1:<port>`` entries only."""
    found = set()
    for entry in value.split(","):
        host, _, port = entry.strip().rpartition(":")
        if host == "127.0.0.1" and _DIGITS.fullmatch(port) and 0 < int(port) < 65536:
            found.add((host, int(port)))
    return frozenset(found)


def _allowed(policy: FetchPolicy, sockaddr: tuple) -> bool:
    ip, port = sockaddr[0], sockaddr[1]
    if policy.allow_private or is_global_address(ip):
        return True
    exposed = os.environ.get(SAMPLE_ADDRESSES_ENV)
    return bool(exposed) and (ip, port) in _sample_addresses(exposed)


def _left(deadline: float, limit: float) -> float:
    """Seconds a blocking socket call may take: what is left of the deadline, at most ``limit``."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise _DeadlinePassed("max_seconds spent")
    return min(limit, left)


# --------------------------------------------------------------------------------------------
# Sockets that read under the attempt's deadline


class _DeadlineIO:
    """Mixed into the socket classes the fetcher connects with: before every send and receive the
    timeout is set to what is left of the attempt's ``deadline`` (at most ``read_timeout``). The
    response stream notes bytes already buffered past a response (``leftover``)."""

    deadline: float = math.inf
    read_timeout: float = 10.0
    probing = False  # set while the response stream checks its buffer: receiving then returns nothing
    leftover = False  # bytes arrived past a response: this connection must not be reused

    def recv_into(self, buffer, *args, **kwargs):
        if self.probing:
            raise BlockingIOError(errno.EAGAIN, "probing the buffer only")
        self.settimeout(_left(self.deadline, self.read_timeout))
        return super().recv_into(buffer, *args, **kwargs)

    def sendall(self, data, *args, **kwargs):
        self.settimeout(_left(self.deadline, self.read_timeout))
        return super().sendall(data, *args, **kwargs)

    def makefile(self, mode="r", *args, **kwargs):
        if mode != "rb":
            return super().makefile(mode, *args, **kwargs)
        reader = _ResponseStream(socket.SocketIO(self, "rb"), io.DEFAULT_BUFFER_SIZE)
        self._io_refs += 1  # as socket.makefile does: the socket closes when its last stream does
        return reader


class _Socket(_DeadlineIO, socket.socket):
    pass


class _TLSSocket(_DeadlineIO, ssl.SSLSocket):
    pass


class _ResponseStream(io.BufferedReader):
    """A response's buffered stream (``http.client`` closes it at the end of the body): on close it
    checks, without waiting, whether its buffer already holds bytes past the response."""

    def close(self) -> None:
        if not self.closed:
            sock = self.raw._sock
            sock.probing = True
            try:
                if self.peek(1):
                    sock.leftover = True
            except (OSError, ValueError):
                sock.leftover = True
            finally:
                sock.probing = False
        super().close()


def _idle_and_clean(sock: socket.socket | None) -> bool:
    """True when nothing waits to be read on a connection between responses: no bytes past the last
    response, no close by the server. Checked without waiting, when a connection is pooled and again
    before it is reused."""
    if sock is None or sock.leftover:
        return False
    try:
        sock.settimeout(0)
        if isinstance(sock, ssl.SSLSocket):
            if sock.pending():
                return False
            sock.recv(1)  # records that carry no data (a TLS session ticket) end in SSLWantReadError
        else:
            sock.recv(1, socket.MSG_PEEK)
    except (BlockingIOError, ssl.SSLWantReadError):
        return True
    except OSError:
        return False
    return False  # bytes, or the end of the stream


def _connect(host: str, port: int, policy: FetchPolicy, deadline: float) -> socket.socket:
    """A socket connected to the first resolved address of ``host`` that the policy allows; addresses
    it does not allow are never connected to (``_Blocked`` when none is left)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError | None = None
    blocked: list[str] = []
    for family, kind, proto, _, sockaddr in infos:
        if not _allowed(policy, sockaddr):
            blocked.append(sockaddr[0])
            continue
        sock = _Socket(family, kind, proto)
        try:
            sock.settimeout(_left(deadline, policy.connect_timeout))
            sock.connect(sockaddr)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.read_timeout, sock.deadline = policy.read_timeout, deadline
            return sock
        except OSError as e:
            sock.close()
            if isinstance(e, _DeadlinePassed):
                raise
            error = e  # refused, unreachable: the next address may answer
        except BaseException:
            sock.close()
            raise
    if error is not None:
        raise error
    if blocked:
        raise _Blocked(f"{host} resolves to {', '.join(sorted(set(blocked)))[:100]}, not a global address "
                       "(fetch.allow_private=true allows it)")
    raise socket.gaierror(socket.EAI_NONAME, f"{host}: no address")


class _Connection(http.client.HTTPConnection):
    """A keep-alive connection that connects only to allowed addresses and reads under a deadline."""

    def __init__(self, key: tuple[str, str, int], policy: FetchPolicy, tls: ssl.SSLContext | None):
        super().__init__(key[1], key[2])
        self.policy, self.tls, self.deadline = policy, tls, math.inf
        if tls is not None:
            self.default_port = 443  # the Host header carries no port for the default one

    def arm(self, deadline: float) -> None:
        self.deadline = deadline
        if self.sock is not None:
            self.sock.deadline = deadline

    def connect(self) -> None:
        sock = _connect(self.host, self.port, self.policy, self.deadline)
        if self.tls is not None:
            try:
                sock.settimeout(_left(self.deadline, self.policy.connect_timeout))
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
            except BaseException:
                sock.close()
                raise
            sock.read_timeout, sock.deadline = self.policy.read_timeout, self.deadline
        self.sock = sock


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


class _DaemonPool:
    """A small thread pool of daemon threads. ``ThreadPoolExecutor`` joins its threads when the
    interpreter exits, so a download in progress would keep a build alive after Ctrl-C."""

    def __init__(self, size: int, name: str):
        self._size, self._name = size, name
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, fn: Callable, arg) -> Future:
        future: Future = Future()
        self._tasks.put((future, fn, arg))
        if len(self._threads) < self._size:
            with self._lock:
                if len(self._threads) < self._size:
                    thread = threading.Thread(target=self._work, daemon=True, name=f"{self._name}_{len(self._threads)}")
                    thread.start()
                    self._threads.append(thread)
        return future

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            future, fn, arg = task
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(arg))
                except BaseException as e:  # noqa: BLE001 - handed to whoever waits on the future
                    future.set_exception(e)

    def shutdown(self) -> None:
        """Cancel what has not started and let the threads end (they do not wait for running downloads)."""
        with contextlib.suppress(queue.Empty):
            while True:
                task = self._tasks.get_nowait()
                if task is not None:
                    task[0].cancel()
        for _ in self._threads:
            self._tasks.put(None)


class _Connections:
    """Idle keep-alive connections per (scheme, host, port), at most ``per_host`` of each."""

    def __init__(self, policy: FetchPolicy):
        self.policy = policy
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None

    def get(self, key: tuple[str, str, int]) -> tuple[_Connection, bool]:
        """A connection to ``key`` and whether it was used before (it may have been closed since)."""
        while True:
            with self._lock:
                idle = self._idle.get(key)
                conn = idle.pop() if idle else None
            if conn is None:
                return self.new(key), False
            if _idle_and_clean(conn.sock):  # bytes may have arrived after it was pooled: then it is dropped
                return conn, True
            conn.close()

    def new(self, key: tuple[str, str, int]) -> _Connection:
        tls = None
        if key[0] == "https":
            with self._lock:
                if self._tls is None:
                    self._tls = ssl.create_default_context()
                    self._tls.sslsocket_class = _TLSSocket
                tls = self._tls
        return _Connection(key, self.policy, tls)

    def put(self, key: tuple[str, str, int], conn: _Connection) -> None:
        if _idle_and_clean(conn.sock):
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
        self._pool: _DaemonPool | None = None
        self._hosts: dict[tuple[str, str, int], _Slots] = {}
        self._lock = threading.Lock()

    # ---- one URL

    def fetch(self, request: FetchRequest | str | None) -> FetchResult:
        """Fetch one request (blocking). Never raises for anything a URL or server can do: an error
        nobody foresaw is the counted reason ``fetch_error`` (its type and where, never data)."""
        req = request if isinstance(request, FetchRequest) else FetchRequest(request)
        try:
            parts = _parse(req.url)
            if not isinstance(parts, SplitResult):
                return FetchResult(req.url, reason=parts[0], message=parts[1])
            url = req.url.strip()
            local = self._mirrored(url)
            if local is not None:
                return self._from_mirror(req, url, local)
            return self._download(req, url, parts)
        except Exception as e:  # noqa: BLE001 - one URL must never end a build
            return FetchResult(req.url, reason="fetch_error", message=f"{str(req.url)[:200]}: {_unforeseen(e)}")

    def _mirrored(self, url: str) -> Path | None:
        """The mirror's file for ``url``, if there is one; a name the file system cannot hold (a
        segment over 255 bytes) is simply not in the mirror."""
        if self.mirror is None:
            return None
        try:
            local = mirror_path(self.mirror, url)
            return local if local is not None and local.is_file() else None
        except (OSError, ValueError):
            return None

    def _from_mirror(self, req: FetchRequest, url: str, path: Path) -> FetchResult:
        try:
            size = path.stat().st_size
            if size > self.policy.max_bytes:
                return FetchResult(url, reason="too_large", message=f"{path}: {size} bytes > max_bytes", source="mirror")
            data = path.read_bytes()
        except OSError as e:
            return FetchResult(url, reason="mirror_error", message=f"{path}: {type(e).__name__}: {e.strerror}",
                               source="mirror")
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
            return FetchResult(req.url, reason="not_an_image", message=f"{where}: {_not_an_image(len(data))}",
                               **common)
        sha256 = hashlib.sha256(data).hexdigest()
        for name, expected, actual in (("md5", req.md5, lambda: hashlib.md5(data).hexdigest()),
                                       ("sha256", req.sha256, lambda: sha256)):
            if expected and actual() != expected.strip().lower():
                return FetchResult(req.url, reason="checksum_mismatch",
                                   message=f"{where}: {name} {actual()} != expected {expected[:64]}", **common)
        return FetchResult(req.url, data=data, sha256=sha256, **common)

    def _host_slot(self, key: tuple[str, str, int]) -> _Slots:
        slot = self._hosts.get(key)
        if slot is None:
            with self._lock:
                slot = self._hosts.setdefault(key, _Slots(self.policy.per_host))
        return slot

    def _attempt(self, url: str, parts: SplitResult) -> tuple[bytes, int, str]:
        """One attempt under one deadline: follow redirects, return (body, status, final URL) or raise _Fail."""
        p = self.policy
        deadline = math.inf  # starts once the first host's slot is ours: waiting for one is not the server's time
        visited = {url}
        current = url
        for _ in range(p.max_redirects + 1):
            scheme = parts.scheme.lower()
            key = (scheme, parts.hostname.lower(), parts.port or (443 if scheme == "https" else 80))
            with self._host_slot(key):
                deadline = min(deadline, time.monotonic() + p.max_seconds)
                conn, resp = self._open(key, parts, current, deadline)
                keep = False
                try:
                    status = resp.status
                    if status in _REDIRECTS:
                        location = resp.getheader("Location")
                        keep = _discard(resp)
                        current, parts = _redirect(current, location, status, visited)
                        continue
                    data = self._body(resp, current, deadline)
                    keep = resp.isclosed()  # read exactly to its end: the connection may serve the next request
                    return data, status, current
                except _Fail:
                    keep = resp.isclosed()  # an error body read to its end leaves a reusable connection
                    raise
                finally:
                    if keep and not resp.will_close:
                        self._connections.put(key, conn)  # only if nothing is left to read on it
                    else:
                        conn.close()
        raise _Fail("too_many_redirects", f"{url[:200]}: more than {p.max_redirects} redirects", None)

    def _open(self, key: tuple[str, str, int], parts: SplitResult, url: str,
              deadline: float) -> tuple[_Connection, http.client.HTTPResponse]:
        """Send the request and read the response head, on a pooled connection when one is idle (a
        stale one, closed by the server meanwhile, is replaced once, without counting an attempt)."""
        target = _target(parts)
        pooled = True
        while True:
            conn = None
            try:
                conn, reused = self._connections.get(key) if pooled else (self._connections.new(key), False)
                conn.arm(deadline)
                if conn.sock is None:
                    conn.connect()
                conn.request("GET", target, headers=self._headers)
                return conn, conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                conn.close()
                if reused:  # the server closed an idle connection: try once more on a new one
                    pooled = False
                    continue
                raise _Fail("connection_error", f"{url[:200]}: {type(e).__name__}", retry=True) from None
            except BaseException as e:
                if conn is not None:
                    conn.close()
                raise _failure(url, e, self.policy, deadline) from None

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
        length = _content_length(resp)
        if length == -1:
            raise _Fail("bad_header", f"{url[:200]}: malformed Content-Length", status)
        if length is not None and length > p.max_bytes:
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
                    kind = (resp.getheader("Content-Type") or "").split(";")[0].strip()[:60]
                    raise _Fail("not_an_image", f"{url[:200]}: {_not_an_image(size, kind)}", status)
                if time.monotonic() > deadline:
                    raise _DeadlinePassed("max_seconds spent")
                chunk = resp.read(min(_BODY_CHUNK, p.max_bytes + 1 - size))
        except (TimeoutError, socket.timeout) as e:
            raise _timed_out(url, e, p, deadline, status, f"after {size} bytes of the body") from None
        except (http.client.HTTPException, OSError, ValueError) as e:
            if _malformed(e):  # a chunk size that is not a number: not worth another attempt
                raise _Fail("bad_response", f"{url[:200]}: malformed chunked body after {size} bytes", status) from None
            raise _Fail("connection_error", f"{url[:200]}: {type(e).__name__} after {size} bytes", status,
                        retry=True) from None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    # ---- many URLs

    def fetch_many(self, requests: Iterable[FetchRequest | str | None], window: int | None = None) -> Iterator[FetchResult]:
        """Fetch concurrently, yielding one result per request in request order.

        At most ``window`` requests (default 4 x threads) are in flight or waiting to be yielded, and
        together they hold at most ``threads x max_bytes`` of bodies: a request is submitted only while
        the bodies of results already waiting, plus ``max_bytes`` for every request not yet done (the
        new one included), stay within that bound. So small images keep every thread busy ahead of a
        slow one, and large bodies cannot pile up. Identical requests in the window are fetched once.
        Closing the iterator early cancels what has not started."""
        p = self.policy
        window = window or 4 * p.threads
        budget = p.threads * p.max_bytes
        pool = self._executor()
        pending: deque[tuple[FetchRequest, Future]] = deque()
        in_window: dict[FetchRequest, list] = {}  # request -> [future, count in window]
        it = iter(requests)

        def fits() -> bool:
            if len(in_window) < p.threads:  # each holds at most max_bytes
                return True
            held = p.max_bytes  # the one to submit
            for fut, _ in in_window.values():
                held += _held_bytes(fut, p.max_bytes)
                if held > budget:
                    return False
            return True

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

        def fill() -> None:
            while len(pending) < window and (not pending or fits()) and submit():
                pass

        try:
            fill()
            while pending:
                req, fut = pending.popleft()
                result = fut.result()
                entry = in_window[req]
                entry[1] -= 1
                if entry[1] == 0:
                    del in_window[req]
                fill()
                yield result
        finally:
            for _, fut in pending:
                fut.cancel()

    def _executor(self) -> _DaemonPool:
        with self._lock:
            if self._pool is None:
                self._pool = _DaemonPool(self.policy.threads, "vldata-fetch")
            return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        self._connections.close()


def _held_bytes(fut: Future, running: int) -> int:
    """The body bytes a future in the window holds: its data when done, else as much as it may grow to."""
    if not fut.done():
        return running
    if fut.cancelled() or fut.exception() is not None:
        return 0
    return len(fut.result().data or b"")


def _redirect(current: str, location: str | None, status: int, visited: set[str]) -> tuple[str, SplitResult]:
    """The next URL of a redirect, or _Fail (``bad_redirect`` for a Location that is not a URL)."""
    if not location or not location.strip():
        raise _Fail("bad_redirect", f"{current[:200]}: HTTP {status} without Location", status)
    try:
        target = urljoin(current, location.strip())
    except ValueError:
        raise _Fail("bad_redirect", f"{current[:200]}: HTTP {status} with a malformed Location", status) from None
    parsed = _parse(target)
    if not isinstance(parsed, SplitResult):
        reason = "unsupported_scheme" if parsed[0] == "unsupported_scheme" else "bad_redirect"
        raise _Fail(reason, f"{current[:200]}: redirect refused: {parsed[1]}", status)
    if target in visited:
        raise _Fail("redirect_loop", f"{current[:200]}: redirects back to {target[:200]}", status)
    visited.add(target)
    return target, parsed


def _content_length(resp: http.client.HTTPResponse) -> int | None:
    """The response's Content-Length: None when absent (or chunked), -1 when malformed or repeated
    with different values."""
    values = resp.msg.get_all("Content-Length") or []
    if not values or resp.chunked:
        return None
    lengths = {header_int(v) for v in values}
    if None in lengths or len(lengths) != 1:
        return -1
    return lengths.pop()


def _malformed(e: BaseException | None) -> bool:
    """Whether a ValueError (what http.client raises on a malformed chunk size, inside IncompleteRead)
    is behind ``e``."""
    for _ in range(4):
        if e is None:
            return False
        if isinstance(e, ValueError):
            return True
        e = e.__cause__ or e.__context__
    return False


def _not_an_image(size: int, content_type: str = "") -> str:
    """What a failure says about a body that is not an image: never any of its bytes."""
    kind = f", Content-Type {content_type}" if content_type else ""
    return f"not an image (no known image signature in the first bytes; {size} bytes read{kind})"


def _unforeseen(e: BaseException) -> str:
    """An unexpected error, by type and where it was raised (not its text, which may quote a response)."""
    frames = traceback.extract_tb(e.__traceback__)
    where = f" in {Path(frames[-1].filename).name}:{frames[-1].lineno} ({frames[-1].name})" if frames else ""
    return f"unexpected {type(e).__name__}{where}"


def _timed_out(url: str, e: BaseException, policy: FetchPolicy, deadline: float, status: int | None,
               where: str) -> _Fail:
    """A timeout: the attempt's deadline (``max_seconds``) or a silence of ``read_timeout``."""
    if isinstance(e, _DeadlinePassed) or time.monotonic() >= deadline:
        return _Fail("timeout", f"{url[:200]}: not complete within max_seconds={policy.max_seconds:g} ({where})",
                     status, retry=True)
    limits = f"connect_timeout={policy.connect_timeout:g} s / " if status is None else ""
    return _Fail("timeout", f"{url[:200]}: silent past {limits}read_timeout={policy.read_timeout:g} s ({where})",
                 status, retry=True)


def _failure(url: str, e: BaseException, policy: FetchPolicy, deadline: float) -> _Fail:
    """The failure of a request that raised before a response head arrived."""
    if isinstance(e, _Fail):
        return e
    if isinstance(e, _Blocked):
        return _Fail("blocked_address", f"{url[:200]}: {e}")
    if isinstance(e, socket.gaierror):
        return _Fail("dns_error", f"{url[:200]}: {e}"[:300])
    if isinstance(e, (TimeoutError, socket.timeout)):
        return _timed_out(url, e, policy, deadline, None, "before the response head")
    if isinstance(e, (ssl.SSLError, ssl.CertificateError)):
        return _Fail("ssl_error", f"{url[:200]}: {e}"[:300])
    if isinstance(e, (http.client.InvalidURL, UnicodeError)):
        return _Fail("invalid_url", f"{url[:200]}: {type(e).__name__}")
    if isinstance(e, (http.client.HTTPException, ValueError)):  # malformed status line or headers
        return _Fail("bad_response", f"{url[:200]}: {type(e).__name__}")  # its text may quote the response
    if isinstance(e, OSError):  # refused, unreachable, reset
        return _Fail("connection_error", f"{url[:200]}: {type(e).__name__}: {e.strerror or ''}"[:300], retry=True)
    if isinstance(e, Exception):
        return _Fail("fetch_error", f"{url[:200]}: {_unforeseen(e)}")
    raise e  # KeyboardInterrupt, SystemExit: not something a URL can do


def _discard(resp: http.client.HTTPResponse) -> bool:
    """Drop a response body we do not want; True when it was read to its end (the connection can
    be reused), False when it is large or unknown and the connection must be closed."""
    length = _content_length(resp)
    if length is not None and 0 <= length <= _CHUNK:
        try:
            resp.read(_CHUNK + 1)
        except (http.client.HTTPException, OSError, ValueError):
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
