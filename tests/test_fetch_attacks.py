"""The HTTP client attacked by real 127.0.0.1 servers: compressed error bodies, deadline bypasses, SSRF spellings."""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest

from curate.config import DownloadConfig
from curate.fetch import Fetcher, is_public_address
from curate.schema import Status
from tests.raw_server import RawServer, tls_drip

REPO = Path(__file__).resolve().parents[1]
DL = DownloadConfig(timeout=1.0, deadline=2.0, retries=2, backoff=0.05, allow_private_networks=True)
HANG = DL.deadline + 2.0  # seconds: generous, only tells "cut at the deadline" from "held while the server likes"
MiB = 1 << 20


@pytest.fixture
def raw_server():
    with RawServer() as srv:
        yield srv


def timed_fetch(url: str, dl: DownloadConfig = DL, fetcher: Fetcher | None = None):
    t0 = time.monotonic()
    res = (fetcher or Fetcher(dl)).fetch(url)
    return res, time.monotonic() - t0


# ---------------------------------------------------------------- compressed error bodies (bug 2)

def gzip_zeros(n_mib: int) -> bytes:
    """gzip of n_mib MiB of zeros, built from one compressed MiB (a full flush makes every MiB compress the same)."""
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes(MiB)
    piece = co.compress(block) + co.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(n_mib):
        crc = zlib.crc32(block, crc)
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + piece * n_mib + co.flush()
            + struct.pack("<II", crc, (n_mib * MiB) & 0xFFFFFFFF))


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """gzip(gzip(1 GiB of zeros)): about 2.5 KB on the wire, served with Content-Encoding: gzip, gzip."""
    inner = gzip_zeros(1024)
    co = zlib.compressobj(9, zlib.DEFLATED, 31)
    return co.compress(inner) + co.flush()


def test_the_bomb_is_what_it_claims(bomb):
    assert len(bomb) < 4096
    inner = zlib.decompressobj(31).decompress(bomb)
    d = zlib.decompressobj(31)
    assert d.decompress(inner, 10 * MiB) == bytes(10 * MiB) and d.unconsumed_tail  # ... and much more


# Runs in a child process so its peak RSS (ru_maxrss) measures this fetch alone.
CHILD = r"""
import json, resource, sys, time
from curate.config import DownloadConfig
from curate.fetch import Fetcher
dl = DownloadConfig(timeout=5, deadline=120, retries=1, backoff=0.01, allow_private_networks=True)
fetcher = Fetcher(dl)
warm = fetcher.fetch(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.monotonic()
res = fetcher.fetch(sys.argv[2])
took = time.monotonic() - t0
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps(dict(warm=warm.status, status=res.status, detail=res.detail, took=took, grown_mb=grown / 1024)))
"""


@pytest.mark.parametrize("status,headers,expected", [
    (404, {}, "download_error:http_404"),                        # an error body
    (301, {"Location": "/img/ok.jpg"}, "ok"),                    # a redirect body (the hop is followed)
    (503, {}, "download_error:http_503"),                        # a retried 5xx body, discarded on every attempt
    (200, {}, "download_error:too_large"),                       # an image body: decoded, capped at max_bytes
])
def test_a_compressed_body_is_never_inflated_past_the_caps(image_server, bomb, status, headers, expected):
    url = image_server.add(f"/bomb/{status}", bomb, "image/jpeg" if status == 200 else "text/plain",
                           {"Content-Encoding": "gzip, gzip", **headers}, status=status)
    out = subprocess.run([sys.executable, "-c", CHILD, image_server.url("/img/ok.jpg"), url], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    assert got["warm"] == Status.OK
    assert ":".join(filter(None, (got["status"], got["detail"]))) == expected, got
    assert got["grown_mb"] < 100, got   # the old client inflated the whole GiB (and spent seconds of CPU on it)
    assert got["took"] < 30, got        # generous: only catches a client that inflates gigabytes


# ---------------------------------------------------------------- the deadline bounds the whole request (bug 3)

@pytest.mark.parametrize("path", [
    "/drip-status",        # one status-line byte per 0.25 s: every read is in time, the line never ends
    "/drip-headers",       # the same inside a header line
    "/endless-100",        # 100 Continue every 0.3 s, never a final response
    "/endless-trailers",   # a chunked body whose trailer never ends
    "/drip-404",           # a small error body drained for reuse, a byte at a time
    "/drip-503",           # the same on a retried 5xx
    "/hop-then-drip",      # a redirect, then the dripped head on a new connection
    "/slow-hop/0",         # redirect hops of 1.5 s each (the check between hops bounded this one already)
])
def test_the_deadline_bounds_the_whole_request(raw_server, path):
    res, took = timed_fetch(raw_server.url(path))
    assert (res.status, res.detail) == (Status.DOWNLOAD_ERROR, "timeout"), res
    assert took < HANG, (path, took)


def test_a_pooled_connection_is_watched_too(raw_server):
    fetcher = Fetcher(DL)
    assert fetcher.fetch(raw_server.url("/ok")).status == Status.OK
    res, took = timed_fetch(raw_server.url("/drip-status"), fetcher=fetcher)
    assert res.detail == "timeout" and took < HANG
    assert raw_server.connections == 1  # the dripped answer came on the reused connection


def test_a_dripped_tls_handshake_is_cut():
    """CPython applies the socket timeout to the handshake as a whole (so this held before the watchdog too)."""
    with RawServer({"": tls_drip}, read_request=False) as srv:
        res, took = timed_fetch(srv.url("/x.jpg", scheme="https"))
    assert res.detail == "timeout" and took < HANG, (res, took)


def test_a_finished_fetch_is_never_cut_later(raw_server):
    """The watchdog forgets a fetch when it ends: its pooled socket serves the next fetch past the first deadline."""
    fetcher = Fetcher(dataclasses.replace(DL, deadline=1.0))
    assert fetcher.fetch(raw_server.url("/ok")).status == Status.OK
    time.sleep(1.3)
    assert fetcher.fetch(raw_server.url("/ok")).status == Status.OK
    assert raw_server.connections == 1


@pytest.mark.parametrize("path,words", [("/burst-100", "interim (1xx)"), ("/burst-trailers", "trailer lines")])
def test_interim_responses_and_trailer_lines_are_limited(raw_server, path, words):
    dl = dataclasses.replace(DL, deadline=20, retries=0)
    res, took = timed_fetch(raw_server.url(path), dl)
    assert (res.status, res.detail) == (Status.DOWNLOAD_ERROR, "connection"), res
    assert words in res.message
    assert took < HANG


def watchdog_threads() -> int:
    return sum(t.name == "fetch-watchdog" for t in threading.enumerate())


def test_one_watchdog_thread_per_fetcher_not_per_request(raw_server):
    fetcher = Fetcher(DL)
    before = watchdog_threads()  # other tests' idle watchdogs may end meanwhile: that only lowers the count
    for i in range(20):
        assert fetcher.fetch(raw_server.url(f"/ok?{i}")).status == Status.OK
    assert watchdog_threads() - before <= 1 and fetcher.watchdog._running


# ---------------------------------------------------------------- SSRF: addresses that embed or hide private space

@pytest.mark.parametrize("ip", [
    "64:ff9b::7f00:1", "64:ff9b::a00:1", "64:ff9b::c0a8:101", "64:ff9b::a9fe:a9fe",   # NAT64 well-known prefix
    "64:ff9b:1::a00:1", "64:ff9b:1::808:808",                                        # NAT64 local use: all of it
    "2002:7f00:1::", "2002:a00:1::1", "2002:a9fe:a9fe::",                           # 6to4
    "::127.0.0.1", "::a00:1", "::169.254.169.254", "::", "::1",                      # IPv4-compatible
    "::ffff:0:7f00:1", "::ffff:0:a00:1",                                             # IPv4-translated (SIIT)
    "::ffff:10.0.0.1", "::ffff:169.254.169.254",                                     # IPv4-mapped
    "2001:0:7f00:1::", "2001:0:808:808:0:0:f5ff:fffe",                               # Teredo: private server, client
    "192.0.0.1", "192.0.0.9", "192.0.0.10", "192.0.0.170",                           # IETF protocol assignments
    "fec0::1", "feff::1",                                                            # site-local
])
def test_embedded_and_special_private_spellings_are_refused(ip):
    assert not is_public_address(ipaddress.ip_address(ip))


@pytest.mark.parametrize("ip", ["64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8", "::ffff:0:808:808",
                                "192.0.1.1", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_embedded_forms_pass(ip):
    assert is_public_address(ipaddress.ip_address(ip))


@pytest.mark.parametrize("host", ["[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[::127.0.0.1]", "[64:ff9b::7f00:1]",
                                  "[2002:7f00:1::]", "[::ffff:0:7f00:1]", "127.1", "2130706433", "0x7f.0.0.1"])
def test_loopback_spellings_are_blocked_end_to_end(image_server, host):
    res = Fetcher(DownloadConfig(timeout=1, deadline=2)).fetch(f"http://{host}:{image_server.port}/img/ok.jpg")
    assert (res.status, res.detail) == (Status.DOWNLOAD_ERROR, "blocked_address"), res
    assert image_server.connections == 0


def test_a_mapped_spelling_does_reach_loopback_when_the_guard_is_off(image_server):
    """The guard matters: this OS connects [::ffff:127.0.0.1] to the 127.0.0.1 server."""
    res = Fetcher(DL).fetch(f"http://[::ffff:127.0.0.1]:{image_server.port}/img/ok.jpg")
    assert res.status == Status.OK and image_server.connections == 1
