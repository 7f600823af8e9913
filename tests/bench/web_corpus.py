"""A web-like benchmark corpus: distinct generated images (a realistic size and format mix) cached on disk,
served from disk on 127.0.0.1, and a URL list with real multilingual captions."""
from __future__ import annotations

import io
import json
import math
import multiprocessing as mp
import os
import tempfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

CORPUS_VERSION = 1          # bump when the generator changes, so an old cache is not reused
MEDIAN_LONGEST = 480        # px: median longest side (LAION-400M's median is about 500)
SIGMA_LONGEST = 0.55        # lognormal sigma of the longest side: about 2% of images above 1,500 px
MIN_LONGEST, MAX_LONGEST = 64, 4_000
ASPECTS = (4 / 3, 3 / 2, 16 / 9, 1.0, 3 / 4, 2 / 3, 9 / 16, 2.0)
FORMATS = ("jpg",) * 80 + ("png",) * 12 + ("webp",) * 8   # share of each format in 100 images
CTYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
CAPTIONS = Path(__file__).resolve().parents[1] / "data" / "captions_multilingual.jsonl"


def cache_dir(seed: int = 0) -> Path:
    """Where the images of this generator version and seed live (reused by every later run)."""
    return Path(os.environ.get("CURATE_BENCH_CACHE") or tempfile.gettempdir()) / f"curate-web-corpus-v{CORPUS_VERSION}-{seed}"


def _spec(k: int, seed: int) -> tuple[np.random.Generator, int, int, str]:
    """(rng, width, height, ext) of image k: everything about it follows from (seed, k)."""
    rng = np.random.default_rng([seed, k])
    longest = int(np.clip(MEDIAN_LONGEST * math.exp(rng.normal(0, SIGMA_LONGEST)), MIN_LONGEST, MAX_LONGEST))
    aspect = ASPECTS[rng.integers(len(ASPECTS))] * rng.uniform(0.95, 1.05)
    w, h = (longest, max(32, int(longest / aspect))) if aspect >= 1 else (max(32, int(longest * aspect)), longest)
    return rng, w, h, FORMATS[rng.integers(len(FORMATS))]


def _picture(rng: np.random.Generator, w: int, h: int, grain: int) -> Image.Image:
    """A smooth random colour field with a few shapes, drawn at a quarter of the size and scaled up (soft
    edges), plus grain: compresses like a photo (JPEG q85 about 1-3 bits/pixel) and hashes far from every
    other image of the corpus."""
    cw, ch = max(8, w // 4), max(8, h // 4)
    field = Image.fromarray(rng.integers(0, 256, (int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3), dtype=np.uint8))
    im = field.resize((cw, ch), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(3, 12))):
        x0, x1 = sorted(rng.integers(-cw // 4, cw + cw // 4, 2).tolist())
        y0, y1 = sorted(rng.integers(-ch // 4, ch + ch // 4, 2).tolist())
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1 + 1, y1 + 1), fill=fill)
    im = im.resize((w, h), Image.Resampling.BICUBIC)
    if grain:
        arr = np.asarray(im, dtype=np.int16) + rng.integers(-grain, grain + 1, (h, w, 1), dtype=np.int16)
        im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return im


def make_image(k: int, seed: int = 0) -> tuple[str, bytes]:
    """(ext, encoded bytes) of image k. PNGs get little grain (web PNGs are mostly graphics, not photos)."""
    rng, w, h, ext = _spec(k, seed)
    im = _picture(rng, w, h, grain=2 if ext == "png" else int(rng.integers(4, 12)))
    buf = io.BytesIO()
    if ext == "png":
        im.save(buf, "PNG", optimize=False)
    else:
        im.save(buf, {"jpg": "JPEG", "webp": "WEBP"}[ext], quality=int(rng.integers(75, 96)))
    return ext, buf.getvalue()


def _write_range(args: tuple[str, int, list[int]]) -> int:
    folder, seed, ks = args
    for k in ks:
        ext, data = make_image(k, seed)
        tmp = Path(folder) / f".{k}.{ext}.tmp"
        tmp.write_bytes(data)
        tmp.rename(Path(folder) / f"{k}.{ext}")
    return len(ks)


def ensure_corpus(n: int, seed: int = 0, processes: int = 2) -> list[tuple[int, str, int]]:
    """Generates the images 0..n-1 missing from the cache (a larger n adds images, a smaller one reuses a
    prefix); returns [(k, ext, bytes)] for k < n."""
    folder = cache_dir(seed)
    folder.mkdir(parents=True, exist_ok=True)
    have = {int(p.name.split(".")[0]): p for p in folder.iterdir() if not p.name.startswith(".")}
    missing = [k for k in range(n) if k not in have]
    if missing:
        print(f"generating {len(missing)} images into {folder} ...", flush=True)
        chunks = [missing[i::processes * 8] for i in range(processes * 8)]
        with mp.get_context("spawn").Pool(processes) as pool:
            pool.map(_write_range, [(str(folder), seed, c) for c in chunks if c], chunksize=1)
        have = {int(p.name.split(".")[0]): p for p in folder.iterdir() if not p.name.startswith(".")}
    return [(k, have[k].suffix[1:], have[k].stat().st_size) for k in range(n)]


# ---------------------------------------------------------------- serving from disk

class _DiskHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive for clients that reuse connections (curate does)
    folder: Path = Path()

    def do_GET(self):  # noqa: N802 (http.server's naming)
        name = self.path.rsplit("/", 1)[-1]
        path = self.folder / name
        if "/" in name or name.startswith(".") or not path.is_file():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size = path.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", CTYPES.get(path.suffix[1:], "application/octet-stream"))
        self.send_header("Content-Length", str(size))
        self.end_headers()
        with open(path, "rb") as f:
            self.wfile.flush()
            os.sendfile(self.connection.fileno(), f.fileno(), 0, size)

    def log_message(self, *args):  # one line per request would drown the benchmark's output
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024       # img2dataset opens a connection per request: a burst must not be refused


def _serve(folder: str, conn) -> None:
    handler = type("Handler", (_DiskHandler,), {"folder": Path(folder)})
    srv = _Server(("127.0.0.1", 0), handler)
    conn.send(srv.server_address[1])
    srv.serve_forever()


def start_disk_server(seed: int = 0) -> tuple[mp.Process, str]:
    """A threaded HTTP server over the cache folder, in its own process (its GIL is not the tools');
    returns (process, base URL). Images are at <base>/img/<k>.<ext>."""
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_serve, args=(str(cache_dir(seed)), send), daemon=True)
    proc.start()
    return proc, f"http://127.0.0.1:{recv.recv()}"


# ---------------------------------------------------------------- the URL list

def multilingual_captions(n: int, seed: int = 0) -> list[str]:
    """n real captions (17 languages, tests/data/captions_multilingual.jsonl): the file's captions in turn,
    after the first pass each joined with another of the same language, so captions stay in one language
    and mostly distinct."""
    rows = [json.loads(line) for line in CAPTIONS.read_text().splitlines() if line.strip()]
    by_lang: dict[str, list[str]] = {}
    for r in rows:
        by_lang.setdefault(r["lang"], []).append(r["text"])
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        r = rows[i % len(rows)]
        if i < len(rows):
            out.append(r["text"])
        else:
            same = by_lang[r["lang"]]
            out.append(f"{r['text']}. {same[int(rng.integers(len(same)))]}")
    return out


def write_url_list(path: Path, base: str, corpus: list[tuple[int, str, int]], seed: int = 0) -> int:
    """A parquet URL list (url, caption) over the corpus in a shuffled order; returns its rows."""
    order = np.random.default_rng(seed).permutation(len(corpus))
    urls = [f"{base}/img/{corpus[i][0]}.{corpus[i][1]}" for i in order]
    pq.write_table(pa.table({"url": urls, "caption": multilingual_captions(len(urls), seed)}), path)
    return len(urls)


def describe(corpus: list[tuple[int, str, int]], seed: int = 0) -> dict:
    """Size and format mix of the corpus (recorded in the result file)."""
    longest = np.array([max(_spec(k, seed)[1:3]) for k, _, _ in corpus])
    sizes = np.array([b for _, _, b in corpus])
    fmts: dict[str, int] = {}
    for _, ext, _ in corpus:
        fmts[ext] = fmts.get(ext, 0) + 1
    return {"images": len(corpus), "formats": fmts, "median_longest_px": int(np.median(longest)),
            "share_longest_above_1500px": round(float(np.mean(longest > 1500)), 4),
            "mean_bytes": int(sizes.mean()), "median_bytes": int(np.median(sizes)),
            "total_mb": round(float(sizes.sum()) / 2**20, 1)}
