"""The download stage against a real 127.0.0.1 server: every fault route's status, bounded time and memory, row accounting."""
from __future__ import annotations

import hashlib
import io
import os
import time

import psutil
import pyarrow as pa
import pytest
from PIL import Image

from curate.config import DownloadConfig, ImageConfig
from curate.download import download_stage
from curate.fetch import Fetcher
from curate.schema import COL, Status
from tests.fault_server import FAULT_ROUTES, UNICODE_PATH, ImageServer

FAST = DownloadConfig(timeout=0.5, deadline=1.5, retries=2, backoff=0.05, allow_private_networks=True)
IMG = ImageConfig(size=32)


def table_of(urls: list, statuses: list | None = None) -> pa.Table:
    n = len(urls)
    statuses = statuses or [Status.OK] * n
    return pa.table({
        COL.UID: [f"u{i:04d}" for i in range(n)],
        COL.URL: pa.array(urls, pa.string()),
        COL.CAPTION: [f"caption {i}" for i in range(n)],
        COL.STATUS: statuses,
        COL.REASON: pa.array([None if s == Status.OK else s for s in statuses], pa.string()),
    })


def reasons(table: pa.Table) -> list[str]:
    return [r or s for s, r in zip(table[COL.STATUS].to_pylist(), table[COL.REASON].to_pylist())]


@pytest.fixture
def fast_server():
    with ImageServer(slow_seconds=3.0, drip_seconds=6.0) as srv:
        yield srv


def test_every_fault_route_gets_its_status_in_bounded_time(fast_server):
    paths = list(FAULT_ROUTES)
    urls = [fast_server.raw_url(p) for p in paths]
    t0 = time.monotonic()
    out, stats = download_stage(table_of(urls), FAST, IMG)
    wall = time.monotonic() - t0
    got = dict(zip(paths, reasons(out)))
    assert got == FAULT_ROUTES
    # no hang: slow/drip routes are cut at deadline (+ one timeout); 429 waits one Retry-After
    assert wall < 8, wall
    assert out[COL.UID].to_pylist() == [f"u{i:04d}" for i in range(len(paths))]
    assert stats["download_attempted"] == len(paths)
    assert sum(stats["download_status_counts"].values()) == len(paths)
    assert "127.0.0.1" in stats["domain_errors"]
    assert fast_server.hits["/fault/503-then-ok"] == 2
    assert fast_server.hits["/fault/429-then-ok"] == 2


def test_columns_of_a_good_and_a_failed_row(image_server):
    body = image_server.routes["/img/ok.jpg"].body
    out, _ = download_stage(table_of([image_server.url("/img/ok.jpg"), image_server.url("/fault/404"),
                                      image_server.url("/img/exif-rotated.jpg")]), FAST, IMG)
    good, bad, rot = out.to_pylist()
    assert good[COL.STATUS] == Status.OK and good[COL.REASON] is None
    assert good[COL.HTTP_STATUS] == 200 and good[COL.CONTENT_TYPE] == "image/jpeg"
    assert good[COL.NUM_BYTES] == len(body)
    assert good[COL.SHA256] == hashlib.sha256(body).hexdigest()
    assert (good[COL.ORIG_WIDTH], good[COL.ORIG_HEIGHT]) == (64, 48)
    assert (good[COL.WIDTH], good[COL.HEIGHT]) == (43, 32)
    assert good[COL.IMAGE_FORMAT] == "jpg"
    assert Image.open(io.BytesIO(good[COL.IMAGE])).size == (43, 32)
    assert bad[COL.HTTP_STATUS] == 404 and bad[COL.IMAGE] is None and bad[COL.SHA256] is None
    assert bad[COL.REASON] == "download_error:http_404" and bad[COL.ERROR_MESSAGE]
    assert (rot[COL.ORIG_WIDTH], rot[COL.ORIG_HEIGHT]) == (40, 80)
    assert out.schema.field(COL.HTTP_STATUS).type == pa.int16()
    assert out.schema.field(COL.IMAGE).type == pa.binary()


def test_rows_not_ok_pass_through_untouched_and_are_not_fetched(image_server):
    urls = [image_server.url("/img/ok.jpg"), image_server.url("/img/cmyk.jpg"), "ftp://example.com/x.jpg", None]
    t = table_of(urls, [Status.OK, Status.LANG, Status.OK, Status.OK])
    out, stats = download_stage(t, FAST, IMG)
    assert reasons(out) == ["ok", "lang", "invalid_url:bad_scheme", "invalid_url:empty"]
    assert image_server.hits["/img/cmyk.jpg"] == 0
    assert out[COL.IMAGE].to_pylist()[1] is None and out[COL.HTTP_STATUS].to_pylist()[1] is None
    assert stats["download_attempted"] == 3


def test_ssrf_guard_refuses_loopback_by_default(image_server):
    urls = [image_server.url("/img/ok.jpg"), f"http://localhost:{image_server.port}/img/ok.jpg"]
    out, _ = download_stage(table_of(urls), DownloadConfig(timeout=1, deadline=2), IMG)
    assert reasons(out) == ["download_error:blocked_address"] * 2
    assert image_server.total_hits() == 0


def test_redirect_to_a_private_address_is_refused_after_the_hop(image_server):
    # the guard lets this loopback test server through but nothing else non-public (as if it were public)
    import ipaddress
    from curate.fetch import is_public_address

    def allowed(ip):
        return ip == ipaddress.ip_address("127.0.0.1") or is_public_address(ip)

    image_server.add("/to-metadata", b"", "text/plain", {"Location": "http://169.254.169.254/latest/meta-data/"},
                     status=302)
    image_server.add("/to-private", b"", "text/plain", {"Location": "http://10.1.2.3/x.jpg"}, status=301)
    fetcher = Fetcher(FAST, address_allowed=allowed)
    urls = [image_server.url("/to-metadata"), image_server.url("/to-private"), image_server.url("/fault/redirect")]
    out, _ = download_stage(table_of(urls), FAST, IMG, fetcher=fetcher)
    assert reasons(out) == ["download_error:blocked_address", "download_error:blocked_address", "ok"]
    assert out[COL.HTTP_STATUS].to_pylist()[:2] == [None, None]  # never connected to the target


def test_endless_body_is_cut_without_memory_growth(image_server):
    dl = DownloadConfig(timeout=2, deadline=10, max_bytes=4_000_000, allow_private_networks=True)
    proc = psutil.Process(os.getpid())
    before = proc.memory_info().rss
    out, _ = download_stage(table_of([image_server.url("/fault/endless")] * 4), dl, IMG)
    grown = proc.memory_info().rss - before
    assert reasons(out) == ["download_error:too_large"] * 4
    # four concurrent endless bodies held at most max_bytes each; a body read whole would never return
    assert grown < 4 * dl.max_bytes + 48_000_000, grown


def test_many_rows_each_once_in_order_with_keep_alive(image_server):
    n = 300
    urls = [image_server.url(f"/delay/{i % 3}/img{i}.jpg") for i in range(n)]
    t = table_of(urls)
    out, stats = download_stage(t, DownloadConfig(threads=16, allow_private_networks=True), IMG)
    assert out[COL.UID].to_pylist() == t[COL.UID].to_pylist()
    assert out[COL.STATUS].to_pylist() == [Status.OK] * n
    assert image_server.total_hits() == n
    assert image_server.connections <= 32  # reused, not one connection per request
    assert stats["download_status_counts"] == {Status.OK: n}


def test_unicode_path_and_output_formats(image_server):
    for fmt, pil in (("png", "PNG"), ("webp", "WEBP"), ("jpg", "JPEG")):
        out, _ = download_stage(table_of([image_server.raw_url(UNICODE_PATH), image_server.url("/img/rgba.png")]),
                                FAST, ImageConfig(size=16, format=fmt, resize_mode="center_crop"))
        assert reasons(out) == ["ok", "ok"]
        assert out[COL.IMAGE_FORMAT].to_pylist() == [fmt, fmt]
        for data in out[COL.IMAGE].to_pylist():
            im = Image.open(io.BytesIO(data))
            assert (im.format, im.size) == (pil, (16, 16))


def test_image_column_keeps_unfetched_rows_and_releases_fetched_bytes():
    """_image_column over several IMAGE_CHUNKs: fetched rows take their result's bytes (which the result then
    drops, so a unit's images are never held twice), other rows keep the column's earlier value."""
    from curate import download as dlmod

    n = dlmod.IMAGE_CHUNK * 2 + 7
    before = [f"old{i}".encode() if i % 3 == 0 else None for i in range(n)]
    table = pa.table({COL.IMAGE: pa.array(before, pa.binary())})
    fetched = {i: dlmod.RowResult(Status.OK, None, None, "h", image=f"new{i}".encode()) for i in range(1, n, 2)}
    col = dlmod._image_column(table, fetched)
    assert col.to_pylist() == [f"new{i}".encode() if i in fetched else before[i] for i in range(n)]
    assert all(r.image is None for r in fetched.values())
    assert col.num_chunks == 3 and col.type == pa.binary()
