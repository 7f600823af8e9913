"""A generated web-like corpus (shapes drawn by code, multilingual captions, the web's noise) and a server for it."""
from __future__ import annotations

import io
import random
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from PIL import Image, ImageFilter

from curate.imageproc import open_image
from curate.synth import COLORS, SHAPES, draw_sample

# Non-English captions of the same scenes: the demo keeps English only, so these go before any fetch.
FOREIGN = {
    "de": "ein Foto von einer farbigen Form auf einem schlichten Hintergrund, gezeichnet mit dem Computer",
    "fr": "une photo d'une forme colorée sur un fond uni, dessinée par un ordinateur pour la démonstration",
    "es": "una foto de una forma de color sobre un fondo liso, dibujada por una computadora",
    "ru": "фотография цветной фигуры на однотонном фоне, нарисованная компьютером",
    "ja": "コンピューターで描かれた、無地の背景の上にある色付きの図形の写真です",
}
KINDS = ("match", "mismatch", "foreign", "broken", "exact_dup", "near_dup", "bad_caption", "dup_url")
WEIGHTS = (0.52, 0.16, 0.08, 0.06, 0.06, 0.06, 0.03, 0.03)


@dataclass
class CorpusRow:
    url: str
    caption: str | None
    kind: str  # one of KINDS: what the row is meant to exercise


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _caption(rng: random.Random, color: str, shape: str) -> str:
    a = "an" if color[0] in "aeiou" else "a"
    return rng.choice((f"a photo of {a} {color} {shape}", f"{a} {color} {shape} on a plain background",
                       f"a drawing of {a} {color} {shape}", f"an image showing {a} {color} {shape}"))


def _other(rng: random.Random, color: str, shape: str) -> tuple[str, str]:
    """A colour and a shape that both differ from the image's: a caption that does not match."""
    return (rng.choice([c for c in COLORS if c != color]), rng.choice([s for s in SHAPES if s != shape]))


def _image_row(kind: str, i: int, rng: random.Random, files: dict, last: list, base: str) -> CorpusRow:
    """One row whose URL serves an image (match, mismatch, foreign, exact/near duplicates, bad captions)."""
    color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
    if kind in ("exact_dup", "near_dup", "dup_url") and last:
        path0, color, shape = rng.choice(last)
        if kind == "dup_url":
            return CorpusRow(base + path0, _caption(rng, color, shape), kind)
        src = open_image(files[path0])
        data = files[path0] if kind == "exact_dup" else _jpeg(
            src.resize((src.width * 3 // 4, src.height * 3 // 4)).filter(ImageFilter.SMOOTH), 70)
    else:
        data = _jpeg(draw_sample(shape, color, rng, size=rng.choice((96, 128, 192, 256, 320))))
    path = f"/img/{i:06d}.jpg"
    files[path] = data
    if kind == "match":
        last.append((path, color, shape))
    if kind == "mismatch":
        caption = _caption(rng, *_other(rng, color, shape))
    elif kind == "foreign":
        caption = FOREIGN[rng.choice(list(FOREIGN))]
    elif kind == "bad_caption":
        caption = rng.choice(["", "IMG_4032.JPG", None])
    else:
        caption = _caption(rng, color, shape)
    return CorpusRow(base + path, caption, kind)


def make_corpus(n: int, seed: int, base_url: str) -> tuple[list[CorpusRow], dict[str, bytes]]:
    """`n` rows (url, caption, kind) and the files {path: bytes} a server must serve for them."""
    rng = random.Random(seed)
    files: dict[str, bytes] = {}
    last: list = []
    rows = []
    for i in range(n):
        kind = rng.choices(KINDS, WEIGHTS)[0] if i >= 20 else "match"  # a few originals first
        if kind == "broken":
            url = rng.choice([f"{base_url}/missing/{i}.jpg", f"ftp://example.invalid/{i}.jpg", "",
                              f"{base_url}/notimage/{i}.jpg"])
            rows.append(CorpusRow(url, _caption(rng, rng.choice(list(COLORS)), rng.choice(SHAPES)), kind))
            continue
        rows.append(_image_row(kind, i, rng, files, last, base_url))
    return rows, files


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # the demo prints its own summary, not access logs
        pass

    def do_GET(self):  # noqa: N802 (http.server naming)
        path = unquote(urlsplit(self.path).path)
        body = self.server.files.get(path)
        if path in self.server.failing:  # a host having a bad moment: retryable
            body, ctype, code = b"busy", "text/plain", 503
        elif path.startswith("/notimage/"):
            body, ctype, code = b"<html>not an image</html>", "text/html", 200
        elif body is None:
            body, ctype, code = b"not found", "text/plain", 404
        else:
            ctype, code = "image/jpeg", 200
        with self.server.lock:
            self.server.hits += 1
            self.server.path_hits[path] = self.server.path_hits.get(path, 0) + 1
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class CorpusServer:
    """Serves {path: bytes} on 127.0.0.1 from a background thread (context manager)."""

    def __init__(self, files: dict[str, bytes] | None = None, port: int = 0):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.files = files or {}
        self.httpd.hits = 0
        self.httpd.path_hits = {}  # path -> requests
        self.httpd.failing = set()  # paths answered 503 until removed
        self.httpd.lock = threading.Lock()
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def hits(self) -> int:
        return self.httpd.hits

    @property
    def path_hits(self) -> dict[str, int]:
        return self.httpd.path_hits

    @property
    def failing(self) -> set[str]:
        return self.httpd.failing

    def set_files(self, files: dict[str, bytes]) -> None:
        self.httpd.files = files

    def __enter__(self) -> "CorpusServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
