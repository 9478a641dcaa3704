"""The fetcher against servers that are hostile rather than merely broken: bytes past the body, bytes
trickled to hold a download open, addresses inside the network, numeric headers and redirects that
crash parsers, bodies that carry secrets, and bodies large enough to fill memory.

Every server here is written by hand on raw sockets (127.0.0.1 or ::1, in this process); nothing
leaves the machine. Each test is bounded (``pytest.mark.timeout``, and ``bounded`` where a time limit
is the point)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Self

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fakes.audit import recording
from fakes.http_server import encode

import vldata
from vldata.ingest import fetch as fetch_mod
from vldata.ingest.fetch import (
    Fetcher,
    FetchPolicy,
    exposed_sample_address,
    header_int,
    is_global_address,
    retry_after_seconds,
)

pytestmark = pytest.mark.timeout(60)

LOCAL = FetchPolicy(threads=4, per_host=4, connect_timeout=2, read_timeout=2, retries=0, backoff=0.01,
                    max_bytes=1 << 20, allow_private=True)
STRICT = LOCAL.model_copy(update={"allow_private": False})
JPEG = encode("JPEG", (40, 30), (10, 20, 30))


def image(tag: int, size: int) -> bytes:
    """Bytes that sniff as a JPEG, distinct per tag, of ``size`` bytes."""
    body = b"\xff\xd8\xff\xe0" + hashlib.sha256(str(tag).encode()).digest()
    return (body * (size // len(body) + 1))[:size]


def response(body: bytes, status: str = "200 OK", headers: dict | None = None) -> bytes:
    head = {"Content-Length": str(len(body)), "Content-Type": "image/jpeg", **(headers or {})}
    return (f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n").encode() + body


Route = Callable[[socket.socket, str], "bool | None"]  # writes a response; False closes the connection


class RawServer:
    """A hand-written HTTP/1.1 server with keep-alive: ``routes`` maps a path to a function that
    writes whatever it likes on the socket. Counts requests per path and connections."""

    def __init__(self, routes: dict[str, Route], host: str = "127.0.0.1"):
        self.routes, self.host = routes, host
        self.hits: Counter[str] = Counter()
        self.connections = 0
        self.requested = threading.Event()
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://{f'[{self.host}]' if ':' in self.host else self.host}:{self.port}{path}"

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            try:
                while True:
                    while b"\r\n\r\n" not in buf:
                        data = conn.recv(65536)
                        if not data:
                            return
                        buf += data
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    path = head.split(b" ")[1].decode()
                    self.hits[path] += 1
                    self.requested.set()
                    route = self.routes.get(path) or self.routes.get("*") or (
                        lambda c, p: c.sendall(response(b"no such route", "404 Not Found")))
                    if route(conn, path) is False:
                        return
            except OSError:
                return


def bounded(fn: Callable, seconds: float):
    """``fn()``'s value, asserting it returned within ``seconds`` (it runs in a daemon thread)."""
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    return out[0]


def send(data: bytes) -> Route:
    return lambda conn, path: conn.sendall(data)


def send_and_close(data: bytes) -> Route:
    def route(conn, path):
        conn.sendall(data)
        return False

    return route


def connects(events) -> list[str]:
    return [target for event, target in events if event == "socket.connect"]


# --------------------------------------------------------------------------------------------
# Bytes past the body never become the next URL's response


@pytest.mark.parametrize("size,late", [(300, False), (200_000, False), (300, True)],
                         ids=["extra-buffered", "extra-on-the-socket", "extra-after-a-pause"])
def test_bytes_past_the_body_never_reach_the_next_url(size, late):
    meant = {f"/{i}.jpg": image(i, size) for i in range(6)}
    decoy = response(image(99, size))  # a whole fake response sent after the honest one

    def overlong(conn, path):  # what a wrong Content-Length does: the rest follows in the same write
        if not late:
            return conn.sendall(response(meant[path]) + decoy)
        conn.sendall(response(meant[path]))
        time.sleep(0.2)
        conn.sendall(decoy)
        return None

    routes = {path: (overlong if i % 2 == 0 else send(response(meant[path]))) for i, path in enumerate(meant)}
    with RawServer(routes) as srv:
        f = Fetcher(LOCAL.model_copy(update={"threads": 1, "per_host": 1}))
        for path in list(meant) * 2:
            result = f.fetch(srv.url(path))
            assert result.ok, result
            assert result.sha256 == hashlib.sha256(meant[path]).hexdigest(), path
            if late:
                time.sleep(0.3)  # the decoy arrives while the connection is idle in the pool
        assert srv.connections >= 6  # each over-long response cost its connection


def test_honest_responses_still_share_one_connection():
    with RawServer({"*": lambda conn, path: conn.sendall(response(image(len(path), 5000)))}) as srv:
        f = Fetcher(LOCAL.model_copy(update={"threads": 1, "per_host": 1}))
        assert all(f.fetch(srv.url(f"/{i}.jpg")).ok for i in range(10))
        assert srv.connections == 1


# --------------------------------------------------------------------------------------------
# A trickle cannot hold a download open


def drip_body(conn, path):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n\xff\xd8\xff\xe0")
    for _ in range(120):
        time.sleep(1)
        conn.sendall(b"x")
    return False


def drip_headers(conn, path):
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 200:
        conn.sendall(bytes([byte]))
        time.sleep(1)
    return False


@pytest.mark.parametrize("route", [drip_body, drip_headers], ids=["body", "headers"])
def test_one_byte_a_second_ends_at_the_deadline(route):
    policy = LOCAL.model_copy(update={"max_seconds": 2, "read_timeout": 10})
    with RawServer({"/drip.jpg": route}) as srv:  # bounded(): a hang guard, not a speed goal
        result = bounded(lambda: Fetcher(policy).fetch(srv.url("/drip.jpg")), 60)
    # the attempt's deadline ended it, not the 10 s read timeout (which a trickle never triggers)
    assert result.reason == "timeout" and "max_seconds=2" in result.message, result


def test_the_deadline_covers_every_redirect_of_an_attempt():
    policy = LOCAL.model_copy(update={"max_seconds": 2, "read_timeout": 10, "max_redirects": 20})

    def slow_hop(conn, path):
        time.sleep(0.8)
        n = int(path.strip("/").split(".")[0])
        conn.sendall(response(b"", "302 Found", {"Location": f"/{n + 1}.jpg"}))

    with RawServer({"*": slow_hop}) as srv:
        result = bounded(lambda: Fetcher(policy).fetch(srv.url("/0.jpg")), 60)  # a hang guard
    assert result.reason == "timeout", result


def test_interrupting_a_build_is_not_held_up_by_a_download(tmp_path):
    """Ctrl-C while a download trickles: the process ends at once (the pool's threads are daemons)."""
    with RawServer({"/drip.jpg": drip_body}) as srv:
        script = textwrap.dedent(f"""
            from vldata.ingest.fetch import Fetcher, FetchPolicy
            policy = FetchPolicy(max_seconds=600, read_timeout=600, allow_private=True, retries=0)
            for result in Fetcher(policy).fetch_many(["{srv.url('/drip.jpg')}"]):
                print(result)
        """)
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=Path(__file__).resolve().parents[1])
        try:
            assert srv.requested.wait(20), "the download never started"
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)  # the trickle lasts 120 s: a hang guard
        finally:
            proc.kill()
    assert b"KeyboardInterrupt" in err and proc.returncode != 0


# --------------------------------------------------------------------------------------------
# Addresses inside the network are refused, at connect time, before any connection


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:{port}/a.jpg", "http://10.0.0.1/a.jpg", "http://169.254.169.254/latest/meta-data/",
    "http://[::1]:{port}/a.jpg", "http://[fd00::1]/a.jpg", "http://localhost:{port}/a.jpg",
    "http://[::ffff:127.0.0.1]:{port}/a.jpg", "http://100.64.0.1/a.jpg", "http://0.0.0.0:{port}/a.jpg",
    "http://224.0.0.1/a.jpg", "http://[fe80::1]/a.jpg", "http://172.16.0.1/a.jpg", "http://192.168.1.1/a.jpg",
])
def test_non_global_addresses_are_blocked_without_a_connect(url):
    with RawServer({"*": send(response(JPEG))}) as srv:
        url = url.format(port=srv.port)
        with recording() as events:
            result = Fetcher(STRICT).fetch(url)
            seen = connects(events)
        assert result.reason == "blocked_address" and "allow_private" in result.message, result
        assert seen == [] and srv.connections == 0


def test_a_host_name_that_resolves_inside_is_blocked_however_it_resolves(monkeypatch):
    real = socket.getaddrinfo

    def rebinding(host, port, *args, **kwargs):  # public for whoever checks early, loopback after
        if host == "images.example":
            return real("127.0.0.1", port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with RawServer({"*": send(response(JPEG))}) as srv, recording() as events:
        result = Fetcher(STRICT).fetch(f"http://images.example:{srv.port}/a.jpg")
        assert result.reason == "blocked_address" and "127.0.0.1" in result.message
        assert connects(events) == [] and srv.connections == 0


def test_redirects_into_the_network_are_blocked():
    with RawServer({"*": send(response(JPEG))}) as inside:
        targets = [inside.url("/secret"), "http://169.254.169.254/latest/meta-data/", "http://[fd00::1]/x",
                   f"http://localhost:{inside.port}/secret"]
        routes = {f"/r{i}": send(response(b"", "302 Found", {"Location": t})) for i, t in enumerate(targets)}
        routes["/ok.jpg"] = send(response(JPEG))
        with RawServer(routes) as outside, exposed_sample_address(outside.port), recording() as events:
            assert Fetcher(STRICT).fetch(outside.url("/ok.jpg")).ok  # the exposed server itself is fetched
            for i in range(len(targets)):
                result = Fetcher(STRICT).fetch(outside.url(f"/r{i}"))
                assert result.reason == "blocked_address", result
            seen = connects(events)
        assert seen and all(s.endswith(f", {outside.port})") for s in seen), seen
        assert inside.connections == 0


def test_a_sample_address_exposes_exactly_that_port_while_it_lasts():
    with RawServer({"*": send(response(JPEG))}) as a, RawServer({"*": send(response(JPEG))}) as b:
        assert os.environ.get(fetch_mod.SAMPLE_ADDRESSES_ENV) is None
        with exposed_sample_address(a.port):
            assert os.environ[fetch_mod.SAMPLE_ADDRESSES_ENV] == f"127.0.0.1:{a.port}"
            assert Fetcher(STRICT).fetch(a.url("/x.jpg")).ok
            assert Fetcher(STRICT).fetch(b.url("/x.jpg")).reason == "blocked_address"  # another port
        assert fetch_mod.SAMPLE_ADDRESSES_ENV not in os.environ
        assert Fetcher(STRICT).fetch(a.url("/y.jpg")).reason == "blocked_address"  # not after the build
    # only exact 127.0.0.1:<port> entries count: nothing else can be smuggled in through the variable
    os.environ[fetch_mod.SAMPLE_ADDRESSES_ENV] = "10.0.0.1:80,169.254.169.254:80,[::1]:80,127.0.0.1:x,*"
    try:
        assert fetch_mod._sample_addresses(os.environ[fetch_mod.SAMPLE_ADDRESSES_ENV]) == frozenset()
    finally:
        del os.environ[fetch_mod.SAMPLE_ADDRESSES_ENV]


def test_allow_private_fetches_the_same_addresses(monkeypatch):
    """allow_private lifts the rule: the fetcher connects to each address (redirected here to local
    servers, since nothing leaves the machine) and gets its bytes."""
    v4, v6 = RawServer({"*": send(response(JPEG))}), RawServer({"*": send(response(JPEG))}, host="::1")
    attempted: list = []
    real_connect = socket.socket.connect

    def connect(self, address):
        attempted.append(address[:2])
        target = ("::1", v6.port, 0, 0) if self.family == socket.AF_INET6 else ("127.0.0.1", v4.port)
        return real_connect(self, target)

    urls = {"http://127.0.0.1:{p4}/a.jpg": ("127.0.0.1", v4.port), "http://10.0.0.1/a.jpg": ("10.0.0.1", 80),
            "http://169.254.169.254/a.jpg": ("169.254.169.254", 80), "http://[::1]:{p6}/a.jpg": ("::1", v6.port),
            "http://[fd00::1]/a.jpg": ("fd00::1", 80), "http://localhost:{p4}/a.jpg": ("127.0.0.1", v4.port)}
    monkeypatch.setattr(socket.socket, "connect", connect)
    with v4, v6:
        for url, address in urls.items():
            attempted.clear()
            result = Fetcher(LOCAL).fetch(url.format(p4=v4.port, p6=v6.port))
            assert result.ok and result.data == JPEG, (url, result)
            assert attempted == [address], (url, attempted)


@pytest.mark.parametrize("ip,public", [
    ("8.8.8.8", True), ("2606:4700::1111", True), ("::ffff:8.8.8.8", True), ("64:ff9b::808:808", True),
    ("127.0.0.2", False), ("10.1.2.3", False), ("172.31.255.255", False), ("192.168.0.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("255.255.255.255", False),
    ("224.0.0.251", False), ("240.0.0.1", False), ("::1", False), ("::", False), ("fd00::1", False),
    ("fc00::1", False), ("fe80::1%eth0", False), ("ff02::1", False), ("fec0::1", False),
    ("::ffff:127.0.0.1", False), ("::ffff:10.0.0.1", False), ("64:ff9b::a00:1", False), ("2002:7f00:1::", False),
    ("2002:a00:1::", False), ("not an ip", False),
])
def test_which_addresses_are_global(ip, public):
    assert is_global_address(ip) is public


# --------------------------------------------------------------------------------------------
# Nothing a response says ends the build


def test_numeric_headers_are_ascii_digits_only():
    assert header_int("12") == 12 and header_int(" 7 ") == 7 and header_int("9" * 40) == 10 ** 18
    for bad in ("²", "١٢", "+5", "-1", "1_000", "0x10", "", "1 2"):
        assert header_int(bad) is None, bad
    assert retry_after_seconds("²") is None and retry_after_seconds("٣") is None


HOSTILE = {
    "/length-super2.jpg": (b"HTTP/1.1 200 OK\r\nContent-Length: \xc2\xb2\r\n\r\n" + JPEG, "bad_header"),  # "²"
    "/length-arabic.jpg": (b"HTTP/1.1 200 OK\r\nContent-Length: \xd9\xa1\xd9\xa2\r\n\r\n" + JPEG, "bad_header"),
    "/length-twice.jpg": (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n" + JPEG, "bad_header"),
    "/retry-super2.jpg": (b"HTTP/1.1 503 Busy\r\nRetry-After: \xc2\xb2\r\nContent-Length: 0\r\n\r\n", "http_5xx_exhausted"),
    "/retry-429.jpg": (b"HTTP/1.1 429 Busy\r\nRetry-After: \xc2\xb2\r\nContent-Length: \xc2\xb2\r\n\r\n",
                       "http_429_exhausted"),
    "/bad-location.jpg": (response(b"", "302 Found", {"Location": "http://[bad/"}), "bad_redirect"),
    "/bad-port.jpg": (response(b"", "301 Moved", {"Location": "http://example.org:99999/"}), "bad_redirect"),
    "/empty-location.jpg": (response(b"", "302 Found", {"Location": " "}), "bad_redirect"),
    "/garbage.jpg": (b"AWS_SECRET=abcd1234 this is not HTTP\r\n\r\n", "bad_response"),
    "/bad-chunk.jpg": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n" + JPEG[:16]
                       + b"\r\nAWS_SECRET\r\n", "bad_response"),
    "/many-headers.jpg": (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 200 + b"\r\n", "bad_response"),
    "/long-line.jpg": (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000 + b"\r\n\r\n", "bad_response"),
}


@pytest.mark.parametrize("path", sorted(HOSTILE))
def test_malformed_responses_are_counted_reasons(path):
    data, reason = HOSTILE[path]
    with RawServer({path: send_and_close(data)}) as srv:
        result = bounded(lambda: Fetcher(LOCAL).fetch(srv.url(path)), 20)
    assert result.reason == reason, result
    assert "AWS_SECRET" not in result.message


def test_a_mirror_path_segment_too_long_for_the_file_system(tmp_path):
    long = "/" + "s" * 300 + ".jpg"
    (tmp_path / "mirror").mkdir()
    with RawServer({long: send(response(JPEG))}) as srv:
        result = Fetcher(LOCAL, mirror=tmp_path / "mirror").fetch(srv.url(long))
        assert result.ok and result.source == "http"  # not in the mirror: downloaded
        assert Fetcher(STRICT, mirror=tmp_path / "mirror").fetch(srv.url(long)).reason == "blocked_address"


def test_an_unforeseen_error_is_a_counted_reason(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("AWS_SECRET=abcd1234")

    monkeypatch.setattr(fetch_mod, "_target", broken)
    result = Fetcher(LOCAL).fetch("http://127.0.0.1:9/a.jpg")
    assert result.reason == "fetch_error" and "RuntimeError" in result.message and "AWS_SECRET" not in result.message


# --------------------------------------------------------------------------------------------
# Failure messages never copy a body


@pytest.mark.parametrize("body", [b"AWS_SECRET=abcd1", b"AWS_SECRET=abcd1234567890" * 100])
def test_not_an_image_never_quotes_the_body(body, tmp_path):
    with RawServer({"/s.jpg": send(response(body))}) as srv:
        result = Fetcher(LOCAL).fetch(srv.url("/s.jpg"))
    assert result.reason == "not_an_image" and "AWS" not in result.message and f"{len(body)} bytes" in result.message
    mirror = tmp_path / "m" / "h"
    mirror.mkdir(parents=True)
    (mirror / "s.jpg").write_bytes(body)
    result = Fetcher(LOCAL, mirror=tmp_path / "m").fetch("http://h/s.jpg")
    assert result.reason == "not_an_image" and "AWS" not in result.message


# --------------------------------------------------------------------------------------------
# Memory: results waiting to be yielded stay within threads x max_bytes


def test_large_bodies_behind_a_slow_one_do_not_pile_up():
    policy = LOCAL.model_copy(update={"threads": 2, "per_host": 2, "max_bytes": 1 << 20})
    release = threading.Event()
    big = {f"/{i}.jpg": image(i, 900_000) for i in range(1, 20)}

    def slow(conn, path):
        release.wait(10)
        conn.sendall(response(image(0, 1000)))

    with RawServer({"/0.jpg": slow, **{p: send(response(b)) for p, b in big.items()}}) as srv:
        urls = [srv.url("/0.jpg")] + [srv.url(p) for p in big]
        it = Fetcher(policy).fetch_many(urls, window=100)
        first = threading.Thread(target=lambda: next(it), daemon=True)
        first.start()
        time.sleep(1.0)
        waiting = sum(srv.hits.values())
        release.set()
        first.join(10)
        rest = list(it)
    # 2 threads x 1 MiB: the slow head and one large body; a window of 100 alone would have let 99 through
    assert waiting <= 2, waiting
    assert [r.sha256 for r in rest] == [hashlib.sha256(b).hexdigest() for b in big.values()]


# --------------------------------------------------------------------------------------------
# Whole builds


def test_hostile_urls_in_a_build_are_counted_failures(tmp_path):
    routes = {path: send_and_close(data) for path, (data, _) in HOSTILE.items()}
    routes["/secret.jpg"] = send(response(b"AWS_SECRET=abcd1234567890"))
    routes["/" + "s" * 300 + ".jpg"] = send(response(JPEG))
    with RawServer(routes) as srv:
        rows = [{"URL": srv.url(p), "TEXT": f"caption {i}"} for i, p in enumerate(sorted(routes))]
        rows.append({"URL": "http://169.254.169.254/latest/meta-data/", "TEXT": "metadata service"})
        (tmp_path / "raw").mkdir()
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "raw" / "urls.parquet")
        out = tmp_path / "out"
        fetch = {"allow_private": True, "retries": 0, "read_timeout": 2}
        report = vldata.build("laion", tmp_path / "raw", out, formats="parquet", fetch=fetch,
                              mirror=str(tmp_path / "mirror"))
    stats = json.loads((out / "build" / "stats.json").read_text())["splits"]["train"]
    assert report.splits["train"].input_rows == len(rows) and stats["written"] == 1
    failed = stats["reasons"]["failed"]
    assert failed["bad_header"] == 3 and failed["bad_redirect"] == 3 and failed["bad_response"] == 4
    assert failed["not_an_image"] == 1  # allow_private is set, so only the metadata address is a plain fetch
    messages = pq.read_table(out / "build" / "failures.parquet").column("message").to_pylist()
    assert not [m for m in messages if "AWS_SECRET" in m]


def test_the_laion_sample_builds_without_any_setting(tmp_path):
    """The sample's URLs point at its own loopback port: that port alone is exposed while it builds."""
    from conftest import run_cli

    run_cli("sample", "laion", tmp_path / "raw", "--n", "8", check=True)
    proc = run_cli("build", "laion", "--raw", tmp_path / "raw", "--out", tmp_path / "out", "--format", "parquet",
                   "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    s = json.loads((tmp_path / "out" / "build" / "stats.json").read_text())["splits"]["train"]
    failed = s["reasons"]["failed"]
    assert s["written"] >= 6 and "blocked_address" not in failed and "connection_error" not in failed, s
