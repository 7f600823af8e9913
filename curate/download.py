"""The download stage: fetch, validate, decode and re-encode every still-ok row of a table, with many requests in flight."""
from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import zip_longest
from typing import ClassVar

import pyarrow as pa

from curate.config import DownloadConfig, ImageConfig
from curate.fetch import Fetcher, FetchResult
from curate.imageproc import ImageResult, process_image
from curate.optout.embedded import embedded_signals
from curate.schema import COL, Status, ok_mask, set_column, set_status
from curate.stage import StageStats

MAX_DOMAINS_IN_STATS = 50   # hosts listed in domain_errors (the ones with most errors)
_FETCHERS: dict[DownloadConfig, Fetcher] = {}
_FETCHERS_LOCK = threading.Lock()

IMAGE_CHUNK = 256  # rows of the image column built at a time (_image_column)
_OUT_TYPES = {COL.HTTP_STATUS: pa.int16(), COL.CONTENT_TYPE: pa.string(), COL.NUM_BYTES: pa.int64(),
              COL.SHA256: pa.string(), COL.ORIG_WIDTH: pa.int32(), COL.ORIG_HEIGHT: pa.int32(),
              COL.WIDTH: pa.int32(), COL.HEIGHT: pa.int32(), COL.IMAGE_FORMAT: pa.string()}  # + COL.IMAGE (_image_column)


@dataclass(slots=True)
class RowResult:
    """Everything the stage records for one fetched row."""
    status: str
    detail: str | None
    message: str | None
    host: str | None
    http_status: int | None = None
    content_type: str | None = None
    num_bytes: int | None = None
    sha256: str | None = None
    orig_width: int | None = None
    orig_height: int | None = None
    width: int | None = None
    height: int | None = None
    image_format: str | None = None
    image: bytes | None = None
    signals: tuple[str, ...] = ()     # opt-out evidence: the response's header signals, then the embedded ones
    # seconds spent on this row, for the unit's time breakdown (wall on its own thread; CPU of that thread)
    fetch_s: float = 0.0
    fetch_cpu_s: float = 0.0
    sha256_cpu_s: float = 0.0
    decode_s: float = 0.0
    decode_cpu_s: float = 0.0


def get_fetcher(dl: DownloadConfig) -> Fetcher:
    """The process-wide Fetcher for this config: connections and DNS answers are reused across units."""
    with _FETCHERS_LOCK:
        f = _FETCHERS.get(dl)
        if f is None:
            f = _FETCHERS[dl] = Fetcher(dl)
        return f


def fetch_one(url: str, fetcher: Fetcher, img: ImageConfig, decoder: ThreadPoolExecutor | None = None) -> RowResult:
    """Fetch + hash + decode/resize/encode of one URL, run in a fetch thread.

    The decode runs on `decoder` (a few threads; Pillow releases the GIL): many fetches wait on the network,
    but only img.decode_threads decodes run at once, and only those threads ever hold image buffers, so
    the allocator keeps a few arenas instead of one per fetch thread (measured: 10x less retained RSS).
    """
    w0, c0 = time.monotonic(), time.thread_time()
    fr: FetchResult = fetcher.fetch(url)
    out = RowResult(fr.status, fr.detail, fr.message, fr.host, fr.http_status, fr.content_type, signals=fr.signals)
    w1, c1 = time.monotonic(), time.thread_time()
    out.fetch_s, out.fetch_cpu_s = w1 - w0, c1 - c0
    if fr.status != Status.OK:
        return out
    body = fr.body
    out.num_bytes = len(body)
    out.sha256 = hashlib.sha256(body).hexdigest()
    out.sha256_cpu_s = time.thread_time() - c1
    if fetcher.dl.optout.embedded:  # the original bytes: decode may strip their metadata (image.skip_reencode)
        found, decided, why = embedded_signals(body)
        out.signals += found
        if decided:
            out.status, out.detail, out.message = Status.ROBOTS, decided, why
            return out
    ir, out.decode_s, out.decode_cpu_s = (decoder.submit(_timed_process, body, img).result() if decoder
                                          else _timed_process(body, img))
    out.status, out.detail, out.message = ir.status, ir.detail, ir.message
    out.orig_width, out.orig_height = ir.orig_width, ir.orig_height
    if ir.status == Status.OK:
        out.width, out.height, out.image_format, out.image = ir.width, ir.height, ir.image_format, ir.data
    return out


def _timed_process(body: bytes, img: ImageConfig) -> tuple[ImageResult, float, float]:
    """process_image with its wall and CPU seconds, measured on the thread that runs it."""
    w0, c0 = time.monotonic(), time.thread_time()
    ir = process_image(body, img)
    return ir, time.monotonic() - w0, time.thread_time() - c0


def _timings(results: dict[int, RowResult]) -> dict:
    """Per-row work summed over the unit's rows: thread_s is wall seconds summed over rows (many rows run at
    once, so it exceeds the stage's wall time), cpu_s the CPU seconds of the threads that did the work."""
    rows = results.values()
    return {name: {"thread_s": round(sum(getattr(r, w) for r in rows), 3),
                   "cpu_s": round(sum(getattr(r, c) for r in rows), 3)}
            for name, w, c in (("fetch", "fetch_s", "fetch_cpu_s"), ("sha256", "sha256_cpu_s", "sha256_cpu_s"),
                               ("decode_resize_encode", "decode_s", "decode_cpu_s"))}


def _interleave_by_host(indices: list[int], urls: list) -> list[int]:
    """Row indices reordered round-robin over hosts, so the threads spread over hosts instead of
    queueing behind one host's per-domain limit. (Output order is restored by index.)"""
    by_host: dict[str, list[int]] = defaultdict(list)
    for i in indices:
        u = urls[i] or ""
        by_host[u.split("/", 3)[2] if u.count("/") >= 2 else ""].append(i)
    if len(by_host) <= 1:
        return indices
    return [i for group in zip_longest(*by_host.values()) for i in group if i is not None]


def _run(urls: list, todo: list[int], fetcher: Fetcher, dl: DownloadConfig, img: ImageConfig) -> dict[int, RowResult]:
    order = _interleave_by_host(todo, urls)
    results: dict[int, RowResult] = {}
    with ThreadPoolExecutor(max(1, img.decode_threads), thread_name_prefix="decode") as decoder, \
            ThreadPoolExecutor(max(1, min(dl.threads, len(order))), thread_name_prefix="fetch") as ex:
        # every future is bounded: the fetch by its deadline, the decode by the pixel cap
        for i, res in zip(order, ex.map(lambda i: fetch_one(urls[i], fetcher, img, decoder), order)):
            results[i] = res
    return results


def _append_signals(table: pa.Table, results: dict[int, RowResult]) -> pa.Table:
    """Appends each fetched row's opt-out evidence to optout_signals, after what the opt-out stage wrote
    (the column starts as empty lists when that stage did not run)."""
    n = table.num_rows
    old = table[COL.OPTOUT_SIGNALS].to_pylist() if COL.OPTOUT_SIGNALS in table.column_names else [[] for _ in range(n)]
    for i, r in results.items():
        if r.signals:
            old[i] = [*(old[i] or ()), *r.signals]
    return set_column(table, COL.OPTOUT_SIGNALS, old)


def _write_columns(table: pa.Table, results: dict[int, RowResult]) -> pa.Table:
    """Sets the per-row output columns (rows not fetched keep what they had), the opt-out evidence and the statuses."""
    table = _append_signals(table, results)
    n = table.num_rows
    for col, typ in _OUT_TYPES.items():
        old = table[col].to_pylist() if col in table.column_names else [None] * n
        for i, r in results.items():
            old[i] = getattr(r, col)
        table = set_column(table, col, pa.array(old, typ))
    table = set_column(table, COL.IMAGE, _image_column(table, results))
    failed = defaultdict(list)
    for i, r in results.items():
        if r.status != Status.OK:
            failed[r.status].append(i)
    for status, idx in failed.items():
        mask, details, messages = [False] * n, [None] * n, [None] * n
        for i in idx:
            mask[i], details[i], messages[i] = True, results[i].detail, results[i].message
        table = set_status(table, pa.array(mask), status, details, messages)
    return table


def _image_column(table: pa.Table, results: dict[int, RowResult]) -> pa.ChunkedArray:
    """The image column (rows not fetched keep what they had), built IMAGE_CHUNK rows at a time, each row's
    bytes released from `results` once copied: the unit's images never exist twice (bytes + Arrow) at once."""
    n = table.num_rows
    old = table[COL.IMAGE] if COL.IMAGE in table.column_names else None
    chunks = []
    for lo in range(0, n, IMAGE_CHUNK):
        part = old.slice(lo, IMAGE_CHUNK).to_pylist() if old is not None else [None] * min(IMAGE_CHUNK, n - lo)
        for k in range(len(part)):
            r = results.get(lo + k)
            if r is not None:
                part[k], r.image = r.image, None
        chunks.append(pa.array(part, pa.binary()))
    return pa.chunked_array(chunks, pa.binary())


def _count(results: dict[int, RowResult], seconds: float, stats: StageStats) -> None:
    """Counts one call's rows into `stats` (download_* keys; the unit's stats file shows them)."""
    failed = [(r.host or "", r.status if not r.detail else f"{r.status}:{r.detail}")
              for r in results.values() if r.status != Status.OK]
    per_host = defaultdict(Counter)
    for host, key in failed:
        per_host[host][key] += 1
    worst = sorted(per_host, key=lambda h: -sum(per_host[h].values()))[:MAX_DOMAINS_IN_STATS]
    ok = sum(r.status == Status.OK for r in results.values())
    stats.count("download_attempted", len(results))
    stats.tally("download_status_counts", (r.status for r in results.values()))
    stats.tally("download_reason_counts", (key for _, key in failed))
    stats.record("domain_errors", {h: dict(per_host[h]) for h in worst})
    stats.record("domains_with_errors", len(per_host))
    stats.count("bytes_downloaded", sum(r.num_bytes or 0 for r in results.values()))
    stats.count("bytes_stored", sum(len(r.image) for r in results.values() if r.image is not None))
    stats.record("download_seconds", round(seconds, 3))
    stats.record("images_per_s", round(ok / seconds, 2) if seconds > 0 else None)
    stats.record("download_timings", _timings(results))


def download_stage(table: pa.Table, dl: DownloadConfig, img: ImageConfig,
                   fetcher: Fetcher | None = None) -> tuple[pa.Table, dict]:
    """Fetches and processes every row whose status is ok; returns (table, stats as a dict).

    Sets http_status, content_type, num_bytes, sha256 (of the original bytes), orig_width/height,
    width/height, image_format and the transient image column (bytes, null unless ok), and appends the opt-out
    evidence of the response headers and image metadata to optout_signals; failed rows get
    status robots:<signal> / invalid_url / download_error:<detail> / decode_error:<detail> / too_small /
    bad_aspect. Other rows pass through unchanged; row count and order never change.
    Wall time is bounded: each fetch by dl.deadline (+ one dl.timeout), each decode by img.max_pixels.
    """
    stats = StageStats()
    table = DownloadStage(dl, img)(table, stats, fetcher)
    return table, stats.as_dict()


@dataclass(frozen=True)
class DownloadStage:
    """The download stage (see download_stage); its fetcher (connections, DNS answers) is per process."""
    download: DownloadConfig
    image: ImageConfig
    name: ClassVar[str] = "download"

    def __call__(self, table: pa.Table, stats: StageStats | None = None, fetcher: Fetcher | None = None) -> pa.Table:
        t0 = time.monotonic()
        fetcher = fetcher or get_fetcher(self.download)
        todo = [i for i, ok in enumerate(ok_mask(table).to_pylist()) if ok]
        urls = table[COL.URL].to_pylist()
        results = _run(urls, todo, fetcher, self.download, self.image) if todo else {}
        out = _write_columns(table, results)
        _count(results, time.monotonic() - t0, stats if stats is not None else StageStats())
        return out
