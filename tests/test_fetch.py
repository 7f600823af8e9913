"""The HTTP client against a real 127.0.0.1 server: retries, deadlines, caps, politeness, opt-out and the SSRF guard."""
from __future__ import annotations

import dataclasses
import ipaddress
import threading
import time

import pytest

from curate.config import DownloadConfig
from curate.fetch import Fetcher, Resolver, is_public_address, robots_disallowed
from curate.schema import Status
from tests.fault_server import UNICODE_PATH

FAST = DownloadConfig(timeout=0.5, deadline=1.5, retries=2, backoff=0.05, allow_private_networks=True)


def fetch(server, path, dl=FAST, **kw):
    return Fetcher(dl, **kw).fetch(server.url(path))


@pytest.mark.parametrize("ip", ["127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254",
                                "224.0.0.1", "0.0.0.0", "100.64.0.1", "240.0.0.1", "255.255.255.255", "::1",
                                "fe80::1", "fc00::1", "::ffff:127.0.0.1", "ff02::1"])
def test_non_public_addresses_are_refused(ip):
    assert not is_public_address(ipaddress.ip_address(ip))


@pytest.mark.parametrize("ip", ["8.8.8.8", "151.101.1.69", "2001:4860:4860::8888"])
def test_public_addresses_pass(ip):
    assert is_public_address(ipaddress.ip_address(ip))


def test_loopback_is_blocked_by_default_before_connecting(image_server):
    res = fetch(image_server, "/img/ok.jpg", DownloadConfig(timeout=1, deadline=2))
    assert (res.status, res.detail) == (Status.DOWNLOAD_ERROR, "blocked_address")
    assert image_server.connections == 0


@pytest.mark.parametrize("url,detail", [("ftp://example.com/a.jpg", "bad_scheme"), ("javascript:alert(1)", "bad_scheme"),
                                        ("file:///etc/passwd", "bad_scheme"), ("", "empty"), (None, "empty")])
def test_unfetchable_urls_are_invalid_url(url, detail):
    res = Fetcher(FAST).fetch(url)
    assert (res.status, res.detail) == (Status.INVALID_URL, detail)


def test_retries_then_success_and_give_up(image_server):
    assert fetch(image_server, "/fault/503-then-ok").status == Status.OK
    assert image_server.hits["/fault/503-then-ok"] == 2
    res = fetch(image_server, "/fault/500")
    assert (res.detail, res.http_status) == ("http_500", 500)
    assert image_server.hits["/fault/500"] == FAST.retries + 1
    no_retry = dataclasses.replace(FAST, retries=0)
    image_server.reset_hits()
    assert fetch(image_server, "/fault/503-then-ok", no_retry).detail == "http_503"
    assert image_server.hits["/fault/503-then-ok"] == 1


def test_retry_after_is_honoured(image_server):
    t0 = time.monotonic()
    res = fetch(image_server, "/fault/429-then-ok", dataclasses.replace(FAST, deadline=5))
    assert res.status == Status.OK
    assert time.monotonic() - t0 >= 0.9  # the server asked for 1 s
    # a Retry-After that would pass the deadline is not waited for
    res = fetch(image_server, "/fault/429", dataclasses.replace(FAST, deadline=0.5))
    assert res.detail == "http_429"


def test_drip_and_silence_are_cut_at_the_deadline(image_server):
    dl = dataclasses.replace(FAST, timeout=0.4, deadline=1.0)
    for path in ("/fault/drip", "/fault/slow"):
        t0 = time.monotonic()
        res = fetch(image_server, path, dl)
        assert res.detail == "timeout", (path, res)
        assert time.monotonic() - t0 < dl.deadline + dl.timeout + 0.5


def test_byte_cap_streams_and_stops(image_server):
    dl = dataclasses.replace(FAST, max_bytes=1_000_000, deadline=10)
    assert fetch(image_server, "/fault/endless", dl).detail == "too_large"
    assert fetch(image_server, "/fault/huge-length", dl).detail == "too_large"
    image_server.add("/exact.bin", b"\xff\xd8" + b"x" * 999_998)
    assert fetch(image_server, "/exact.bin", dl).status == Status.OK  # exactly at the cap is fine


def test_redirects(image_server):
    res = fetch(image_server, "/fault/redirect")
    assert res.status == Status.OK and res.url.endswith("/img/ok.jpg")
    assert fetch(image_server, "/fault/redirect-loop").detail == "too_many_redirects"
    assert fetch(image_server, "/fault/redirect-chain").detail == "too_many_redirects"
    assert image_server.hits["/fault/redirect-chain/5"] == 1 and image_server.hits["/fault/redirect-chain/6"] == 0
    image_server.add("/to-file", b"", "text/plain", {"Location": "file:///etc/passwd"}, status=302)
    assert fetch(image_server, "/to-file").detail == "bad_redirect"


def test_user_agent_and_unicode_path(image_server):
    dl = dataclasses.replace(FAST, user_agent="curate-test/9 (+https://example.org)")
    res = Fetcher(dl).fetch(image_server.raw_url(UNICODE_PATH))
    assert res.status == Status.OK
    assert image_server.headers_seen[UNICODE_PATH]["User-Agent"] == dl.user_agent


def test_connection_refused_is_a_connection_error():
    res = Fetcher(dataclasses.replace(FAST, retries=0)).fetch("http://127.0.0.1:9/x.jpg")
    assert (res.status, res.detail) == (Status.DOWNLOAD_ERROR, "connection")


@pytest.mark.parametrize("values,expected", [
    (["noai"], True), (["noindex, nofollow"], True), (["NoImageAI"], True), (["curate: noai"], True),
    (["otherbot: noai"], False), (["otherbot: noai", "noimageai"], True), (["nofollow"], False),
    (["unavailable_after: 25 Jun 2010 15:00:00 PST"], False), (["*: noai"], True), ([], False)])
def test_robots_header_forms(values, expected):
    assert robots_disallowed(values, DownloadConfig().robots_disallow, "curate") is expected


def test_robots_list_is_configurable(image_server):
    assert fetch(image_server, "/fault/robots-noai").status == Status.ROBOTS
    assert fetch(image_server, "/fault/robots-noai", dataclasses.replace(FAST, robots_disallow=())).status == Status.OK


def _hammer(fetcher, urls):
    threads = [threading.Thread(target=fetcher.fetch, args=(u,)) for u in urls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)


def test_per_domain_concurrency_limit(image_server):
    urls = [image_server.url(f"/delay/150/{i}") for i in range(8)]
    _hammer(Fetcher(dataclasses.replace(FAST, per_domain_concurrency=2, deadline=5)), urls)
    assert image_server.max_in_flight <= 2
    image_server.reset_hits()
    _hammer(Fetcher(dataclasses.replace(FAST, per_domain_concurrency=8, deadline=5)), urls)
    assert image_server.max_in_flight > 2


def test_per_domain_request_rate(image_server):
    fetcher = Fetcher(dataclasses.replace(FAST, per_domain_rps=10))
    t0 = time.monotonic()
    _hammer(fetcher, [image_server.url(f"/img/ok.jpg?{i}") for i in range(6)])
    assert time.monotonic() - t0 >= 0.45  # 6 starts at 10/s: the last one no earlier than 0.5 s
    assert image_server.hits["/img/ok.jpg"] == 6


def test_dns_answers_are_cached_per_process():
    r = Resolver(allowed=lambda ip: True)
    ip = r.resolve("localhost", 80)
    assert ipaddress.ip_address(ip).is_loopback
    assert ("localhost", 80) in Resolver._cache
    with pytest.raises(Exception, match="resolve"):
        r.resolve("no-such-host.invalid", 80)
    assert ("no-such-host.invalid", 80) in Resolver._cache  # failures are cached too (shorter)
