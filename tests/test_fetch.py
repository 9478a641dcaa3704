"""The fetcher against a loopback server that misbehaves in every documented way."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from fakes.audit import recording
from fakes.http_server import ROUTES, ImageServer

import vldata.ingest.fetch as fetch_mod
from vldata.ingest.fetch import (FetchPolicy, Fetcher, FetchRequest, check_url, fetcher, mirror_path, opt_out_directive,
                          retry_after_seconds)

# the test servers listen on 127.0.0.1, which the fetcher refuses unless told (blocked_address)
FAST = FetchPolicy(threads=8, per_host=8, connect_timeout=2, read_timeout=0.5, retries=1, backoff=0.05,
                   max_retry_after=5, max_bytes=1 << 20, max_redirects=3, allow_private=True)
LOCAL = FetchPolicy(allow_private=True)

@pytest.fixture()
def opened():
    """The files opened and addresses connected to while the test body runs."""
    with recording() as events:
        yield events


@pytest.fixture(scope="module")
def server():
    with ImageServer(slow_seconds=2.0) as srv:
        yield srv


@pytest.fixture()
def canary(tmp_path) -> Path:
    path = tmp_path / "canary.txt"
    path.write_text("secret")
    return path


# --------------------------------------------------------------------------------------------
# Every route ends in the right outcome


@pytest.mark.parametrize("path", sorted(ROUTES))
def test_each_route_ends_in_its_outcome(server, path):
    result = Fetcher(FAST).fetch(server.url(path))
    assert result.reason == ROUTES[path], (path, result)
    if result.ok:
        assert result.data and result.sha256 == hashlib.sha256(result.data).hexdigest()
        assert result.source == "http" and result.status == 200
    else:
        assert result.data is None and result.message


def test_500_then_ok_is_retried(tmp_path):
    with ImageServer() as srv:
        result = Fetcher(FAST).fetch(srv.url("/flaky.jpg"))
        assert result.ok and result.attempts == 2 and srv.hits["/flaky.jpg"] == 2


def test_5xx_gives_up_after_the_retries(server):
    policy = FAST.model_copy(update={"retries": 2})
    before = server.hits["/always-500.jpg"]
    result = Fetcher(policy).fetch(server.url("/always-500.jpg"))
    assert result.reason == "http_5xx_exhausted" and result.status == 500 and result.attempts == 3
    assert server.hits["/always-500.jpg"] - before == 3


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """The fetcher's waits between attempts, recorded instead of slept (no clock in the assertions)."""
    waits: list[float] = []
    monkeypatch.setattr(fetch_mod, "time", SimpleNamespace(monotonic=time.monotonic, sleep=waits.append))
    return waits


def test_429_waits_as_long_as_retry_after_says(sleeps):
    with ImageServer() as srv:
        result = Fetcher(FAST).fetch(srv.url("/busy.jpg"))
        assert result.ok and result.attempts == 2
    assert sleeps == [1.0]  # Retry-After: 1, although backoff is 0.05


def test_a_retry_after_beyond_the_limit_gives_up_at_once(server, sleeps):
    result = Fetcher(FAST).fetch(server.url("/busy-forever.jpg"))
    assert result.reason == "http_429_exhausted" and "3600" in result.message and result.attempts == 1
    assert sleeps == []  # no wait at all


def test_timeouts_are_retried_then_counted(server, sleeps):
    result = Fetcher(FAST).fetch(server.url("/slow.jpg"))
    # the server sends headers only after 3 s: "timeout" means the 0.5 s read timeout cut each attempt
    assert result.reason == "timeout" and result.attempts == 2
    assert sleeps == [FAST.backoff]  # one backoff between the two attempts


def test_a_body_that_drips_past_the_deadline_times_out(server):
    policy = FAST.model_copy(update={"max_seconds": 0.3, "retries": 0, "read_timeout": 5})
    result = Fetcher(policy).fetch(server.url("/drip.jpg"))
    assert result.reason == "timeout" and "0.3" in result.message


def test_oversized_bodies_are_cut_not_read(server):
    for path in ("/huge.jpg", "/huge-chunked.jpg"):
        result = Fetcher(FAST).fetch(server.url(path))
        assert result.reason == "too_large" and result.data is None


def test_redirects_are_followed_and_bounded(server):
    result = Fetcher(FAST).fetch(server.url("/redirect.jpg"))
    assert result.ok and result.final_url == server.url("/redirected.jpg") and result.data == server.jpeg("/redirected.jpg")
    assert Fetcher(FAST).fetch(server.url("/chain/3.jpg")).ok  # max_redirects=3
    too_many = Fetcher(FAST).fetch(server.url("/chain/4.jpg"))
    assert too_many.reason == "too_many_redirects"
    assert Fetcher(FAST).fetch(server.url("/loop-a.jpg")).reason == "redirect_loop"


def test_opt_out_is_honoured_by_default_and_switchable(server):
    assert Fetcher(FAST).fetch(server.url("/noai.jpg")).message.endswith("X-Robots-Tag noai")
    assert Fetcher(FAST).fetch(server.url("/noai-otherbot.jpg")).ok  # addressed to another agent
    ignoring = FAST.model_copy(update={"respect_opt_out": False})
    assert Fetcher(ignoring).fetch(server.url("/noai.jpg")).ok


def test_an_identifying_user_agent_is_sent(server):
    Fetcher(FAST).fetch(server.url("/img/a.jpg"))
    assert server.user_agents[-1].startswith("vldata/")


def test_checksums_are_verified(server):
    data = server.images["a.jpg"]
    url = server.url("/img/a.jpg")
    f = Fetcher(FAST)
    assert f.fetch(FetchRequest(url, md5=hashlib.md5(data).hexdigest())).ok
    assert f.fetch(FetchRequest(url, sha256=hashlib.sha256(data).hexdigest().upper())).ok
    bad = f.fetch(FetchRequest(url, md5="0" * 32))
    assert bad.reason == "checksum_mismatch" and "md5" in bad.message and bad.data is None


# --------------------------------------------------------------------------------------------
# Nothing but http(s) is ever opened


@pytest.mark.parametrize("make_url", [
    lambda c, s: f"file://{c}", lambda c, s: "file:///etc/passwd", lambda c, s: f"FILE://localhost{c}",
    lambda c, s: "ftp://127.0.0.1/img/a.jpg", lambda c, s: "data:image/png;base64,iVBORw0KGgo=",
    lambda c, s: "gopher://127.0.0.1/", lambda c, s: str(c), lambda c, s: f"//127.0.0.1{c}",
    lambda c, s: "javascript:alert(1)", lambda c, s: s.url("/to-file.jpg"),
])
def test_other_schemes_are_refused_and_never_opened(server, canary, opened, make_url):
    server.file_target = str(canary)
    url = make_url(canary, server)
    result = Fetcher(FAST, mirror=canary.parent).fetch(url)
    assert result.reason == "unsupported_scheme", result
    touched = [target for _, target in opened]
    assert str(canary) not in touched and "/etc/passwd" not in touched
    if not url.startswith("http"):  # not even a connection for a refused URL
        assert not [e for e in opened if e[0] == "socket.connect"]


def test_the_audit_would_see_an_open(canary, opened):
    canary.read_bytes()  # the positive control of the test above
    assert str(canary) in [t for _, t in opened]


def test_missing_and_malformed_urls(server):
    f = Fetcher(FAST)
    assert f.fetch(None).reason == "url_missing" and f.fetch("  ").reason == "url_missing"
    assert f.fetch("http://").reason == "invalid_url"
    assert f.fetch("http://127.0.0.1:99999/a.jpg").reason == "invalid_url"


def test_check_url_is_pure():
    assert check_url("https://example.org/a.jpg") is None
    assert check_url("HTTP://EXAMPLE.org/a.jpg") is None
    assert check_url("file:///etc/passwd")[0] == "unsupported_scheme"


# --------------------------------------------------------------------------------------------
# Mirror


def test_mirror_is_read_before_the_network(server, tmp_path):
    mirror = tmp_path / "mirror"
    local = mirror / "127.0.0.1" / "img" / "only-here.jpg"
    local.parent.mkdir(parents=True)
    local.write_bytes(server.images["a.jpg"])
    result = Fetcher(FAST, mirror=mirror).fetch(server.url("/img/only-here.jpg"))
    assert result.ok and result.source == "mirror" and server.hits["/img/only-here.jpg"] == 0
    missing = Fetcher(FAST, mirror=mirror).fetch(server.url("/img/c.webp"))  # not mirrored: downloaded
    assert missing.ok and missing.source == "http"
    (mirror / "127.0.0.1" / "img" / "bad.jpg").write_bytes(b"<html>")
    assert Fetcher(FAST, mirror=mirror).fetch(server.url("/img/bad.jpg")).reason == "not_an_image"


def test_mirror_paths_stay_inside_the_mirror(tmp_path, canary, opened):
    mirror = tmp_path / "mirror"
    (mirror / "h").mkdir(parents=True)
    (mirror / "h" / "link.jpg").symlink_to(canary)
    for url in ("http://h/../canary.txt", "http://h/%2e%2e/canary.txt", "http://h/..%2Fcanary.txt",
                "http://h/a%2F..%2F..%2Fcanary.txt", "http://h/link.jpg", "http://../canary.txt", "http://h/"):
        assert mirror_path(mirror, url) is None, url
    assert mirror_path(mirror, "http://H/a/./b.jpg") == (mirror / "h" / "a" / "b.jpg").resolve()
    assert str(canary) not in [t for _, t in opened]


# --------------------------------------------------------------------------------------------
# Many URLs: order, concurrency, politeness, connection reuse


def test_fetch_many_keeps_the_input_order_and_runs_concurrently():
    with ImageServer(hold_seconds=0.2) as srv:
        f = Fetcher(LOCAL.model_copy(update={"threads": 8, "per_host": 8}))
        urls = [srv.url(f"/held/{i}.jpg") if i % 3 else srv.url("/missing.jpg") if i % 2 else srv.url("/img/a.jpg")
                for i in range(24)]
        results = list(f.fetch_many(urls))
    assert [r.url for r in results] == urls
    assert [r.reason for r in results] == [None if i % 3 or not i % 2 else "http_404" for i in range(24)]
    # concurrency measured by the server (requests held open at once), not by a clock
    assert 4 <= srv.peak_concurrency <= 8


def test_per_host_limit_and_connection_reuse():
    with ImageServer(hold_seconds=0.05) as srv:
        f = Fetcher(LOCAL.model_copy(update={"threads": 16, "per_host": 3}))
        results = list(f.fetch_many(srv.url(f"/held/{i}.jpg") for i in range(40)))
        assert all(r.ok for r in results)
        assert srv.peak_concurrency <= 3
        assert len(srv.connections) <= 3  # 40 requests over at most per_host kept-alive connections


def test_a_kept_alive_connection_closed_by_the_server_is_replaced():
    with ImageServer() as srv:
        f = Fetcher(LOCAL.model_copy(update={"threads": 1, "per_host": 1, "retries": 0}))
        results = [f.fetch(srv.url("/hangup.jpg")) for _ in range(3)] + [f.fetch(srv.url("/img/a.jpg"))]
        assert all(r.ok and r.attempts == 1 for r in results)
        assert len(srv.connections) == 4


def test_urls_are_percent_encoded_as_browsers_do(server):
    data = server.images["b.png"]
    server.add("/img/a%20b%C3%BC.png", data)
    server.add("/q.png", data)
    f = Fetcher(FAST)
    assert f.fetch(server.url("/img/a bü.png")).data == data
    assert f.fetch(server.url("/img/a%20b%C3%BC.png")).data == data  # escapes are kept, not doubled
    assert f.fetch(server.url("/q.png?size=large&x=1")).data == data


def test_identical_requests_in_the_window_are_fetched_once(server):
    url = server.url("/img/c.webp")
    before = server.hits["/img/c.webp"]
    results = list(Fetcher(FAST).fetch_many([url] * 5))
    assert len(results) == 5 and all(r.ok for r in results)
    assert server.hits["/img/c.webp"] - before == 1


def test_closing_fetch_many_early_stops_submitting():
    with ImageServer(hold_seconds=0.05) as srv:
        f = Fetcher(LOCAL.model_copy(update={"threads": 2, "per_host": 2}))
        it = f.fetch_many((srv.url(f"/held/{i}.jpg") for i in range(1000)), window=4)
        assert next(it).ok
        it.close()
        time.sleep(0.3)
        assert sum(srv.hits.values()) <= 6


def test_one_fetcher_per_process_and_settings():
    assert fetcher(FAST) is fetcher(FAST)
    assert fetcher(FAST) is not fetcher(FAST, mirror="/tmp")
    assert fetcher(FAST) is not fetcher(FAST.model_copy(update={"threads": 3}))
    pid = os.fork()
    if pid == 0:  # a forked worker builds its own (the parent's threads do not exist there)
        os._exit(0 if fetcher(FAST) is not None and len([k for k in __import__("vldata.ingest.fetch").ingest.fetch._FETCHERS
                                                         if k[0] != os.getpid()]) == 0 else 1)
    assert os.waitpid(pid, 0)[1] == 0


# --------------------------------------------------------------------------------------------
# Header parsing


@pytest.mark.parametrize("values,expected", [
    (["noai"], "noai"), (["noindex, NoImageAI"], "noimageai"), (["vldata: noai"], "noai"),
    (["otherbot: noai"], None), (["*: noai"], "noai"), (["noindex", "nofollow"], None),
    (["unavailable_after: 25 Jun 2010 15:00:00 PST, noai"], "noai"), ([], None),
])
def test_opt_out_directive(values, expected):
    assert opt_out_directive(values, ("noai", "noimageai")) == expected


def test_retry_after_parsing():
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
