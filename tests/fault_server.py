"""A threaded HTTP server on 127.0.0.1 serving generated images and fault routes, for tests and benchmarks."""
from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote, urlsplit

import numpy as np
from PIL import Image

SLOW_SECONDS = 3.0      # /fault/slow waits this long before answering (tests use timeouts well below it)
DRIP_SECONDS = 20.0     # /fault/drip sends its body over this long
ENDLESS_CHUNK = 64 * 1024
ENDLESS_BYTES = 256 * 1024**2  # /fault/endless stops here: a client without a byte cap is not OOM-killed
UNICODE_PATH = "/img/with space/ünïcødé 图.jpg"  # served at its percent-encoded form


@dataclass
class Route:
    """A static response: body, status and headers."""
    body: bytes
    content_type: str = "image/jpeg"
    status: int = 200
    headers: dict = field(default_factory=dict)


# ---------------------------------------------------------------- generated images

def gradient(w: int, h: int, seed: int = 0) -> np.ndarray:
    """An RGB uint8 array with some structure (gradients + noise) so encoders do real work."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 255 // max(w - 1, 1)).astype(np.uint8)
    g = (y * 255 // max(h - 1, 1)).astype(np.uint8)
    b = ((x + y + rng.integers(0, 64)) % 256).astype(np.uint8)
    arr = np.stack([r, g, b], axis=-1)
    noise = rng.integers(0, 24, size=arr.shape, dtype=np.uint8)
    return arr + noise


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def jpeg(w: int, h: int, seed: int = 0, quality: int = 90) -> bytes:
    return encode(Image.fromarray(gradient(w, h, seed)), "JPEG", quality=quality)


def png(w: int, h: int, seed: int = 0) -> bytes:
    return encode(Image.fromarray(gradient(w, h, seed)), "PNG")


def cmyk_jpeg() -> bytes:
    return encode(Image.fromarray(gradient(64, 48, 1)).convert("CMYK"), "JPEG", quality=90)


def rgba_png() -> bytes:
    arr = np.zeros((40, 60, 4), dtype=np.uint8)
    arr[..., 0] = 255          # red, fully transparent on the left half -> white after compositing
    arr[:, 30:, 3] = 255
    return encode(Image.fromarray(arr, "RGBA"), "PNG")


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 24), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def png16() -> bytes:
    arr = (np.arange(48 * 32, dtype=np.uint16).reshape(32, 48) * 40).astype(np.uint16)
    return encode(Image.fromarray(arr), "PNG")  # uint16 array -> mode I;16


def exif_rotated_jpeg() -> bytes:
    """Stored 80x40 with EXIF orientation 6 (rotate 90 CW): displayed 40x80."""
    img = Image.fromarray(gradient(80, 40, 2))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img, "JPEG", quality=90, exif=exif.tobytes())


def bomb_png(w: int = 100_000, h: int = 100_000) -> bytes:
    """A tiny PNG whose header claims w x h pixels (decided from the header: never decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ---------------------------------------------------------------- fault routes

# path -> expected ledger reason after the download stage (with allow_private_networks, default image
# config, a timeout below SLOW_SECONDS and a deadline well below DRIP_SECONDS).
FAULT_ROUTES: dict[str, str] = {
    "/fault/404": "download_error:http_404",
    "/fault/500": "download_error:http_500",
    "/fault/503-then-ok": "ok",
    "/fault/429": "download_error:http_429",
    "/fault/429-then-ok": "ok",
    "/fault/slow": "download_error:timeout",
    "/fault/drip": "download_error:timeout",
    "/fault/redirect": "ok",
    "/fault/redirect-loop": "download_error:too_many_redirects",
    "/fault/redirect-chain": "download_error:too_many_redirects",
    "/fault/html": "download_error:content_type",
    "/fault/html-as-jpeg": "decode_error:unidentified",
    "/fault/wrong-type": "ok",
    "/fault/truncated.jpg": "decode_error:truncated",
    "/fault/bomb.png": "decode_error:too_many_pixels",
    "/fault/endless": "download_error:too_large",
    "/fault/huge-length": "download_error:too_large",
    "/fault/robots-noai": "robots:x_robots_tag",
    "/fault/robots-noimageai": "robots:x_robots_tag",
    "/fault/robots-curate": "robots:x_robots_tag",
    "/fault/robots-otherbot": "ok",
    "/fault/empty": "decode_error:empty",
    "/img/1x1.png": "ok",
    "/img/cmyk.jpg": "ok",
    "/img/rgba.png": "ok",
    "/img/anim.gif": "ok",
    "/img/16bit.png": "ok",
    "/img/exif-rotated.jpg": "ok",
    UNICODE_PATH: "ok",
}


def _static_routes() -> dict[str, Route]:
    ok_jpeg = jpeg(64, 48, seed=7)
    return {
        "/img/ok.jpg": Route(ok_jpeg),
        "/img/1x1.png": Route(png(1, 1), "image/png"),
        "/img/cmyk.jpg": Route(cmyk_jpeg()),
        "/img/rgba.png": Route(rgba_png(), "image/png"),
        "/img/anim.gif": Route(animated_gif(), "image/gif"),
        "/img/16bit.png": Route(png16(), "image/png"),
        "/img/exif-rotated.jpg": Route(exif_rotated_jpeg()),
        UNICODE_PATH: Route(ok_jpeg),
        "/fault/404": Route(b"not found", "text/plain", 404),
        "/fault/500": Route(b"boom", "text/plain", 500),
        "/fault/429": Route(b"slow down", "text/plain", 429, {"Retry-After": "1"}),
        "/fault/redirect": Route(b"", "text/plain", 302, {"Location": "/img/ok.jpg"}),
        "/fault/redirect-loop": Route(b"", "text/plain", 302, {"Location": "/fault/redirect-loop"}),
        "/fault/html": Route(b"<html><body>not an image</body></html>", "text/html; charset=utf-8"),
        "/fault/html-as-jpeg": Route(b"<html><body>not an image</body></html>"),
        "/fault/wrong-type": Route(ok_jpeg, "application/octet-stream"),
        "/fault/truncated.jpg": Route(jpeg(256, 256, seed=3)[:2000]),
        "/fault/bomb.png": Route(bomb_png(), "image/png"),
        "/fault/robots-noai": Route(ok_jpeg, headers={"X-Robots-Tag": "noai"}),
        "/fault/robots-noimageai": Route(ok_jpeg, headers={"X-Robots-Tag": "noindex, noimageai"}),
        "/fault/robots-curate": Route(ok_jpeg, headers={"X-Robots-Tag": "curate: noai"}),
        "/fault/robots-otherbot": Route(ok_jpeg, headers={"X-Robots-Tag": "otherbot: noai"}),
        "/fault/empty": Route(b""),
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, so clients can reuse connections
    disable_nagle_algorithm = True  # headers and body go out as separate writes: Nagle would add 40 ms
    server: "_Server"

    def log_message(self, *args) -> None:  # quiet: tests print failures, not access logs
        pass

    def setup(self) -> None:
        super().setup()
        self.server.owner._connected()

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        path = unquote(urlsplit(self.path).path)
        owner = self.server.owner
        n = owner._hit(path, dict(self.headers))
        owner._enter()
        try:
            self._dispatch(path, n)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True   # the client gave up (cap, deadline): expected
        finally:
            owner._leave()

    def do_HEAD(self) -> None:  # noqa: N802
        self.send_response(405)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _dispatch(self, path: str, n: int) -> None:
        owner = self.server.owner
        route = owner.routes.get(path)
        if route is not None:
            return self._send(route.status, route.body, route.content_type, route.headers)
        ok = owner.routes["/img/ok.jpg"].body
        if path == "/fault/503-then-ok":
            return self._send(503, b"busy", "text/plain") if n == 1 else self._send(200, ok, "image/jpeg")
        if path == "/fault/429-then-ok":
            if n == 1:
                return self._send(429, b"slow down", "text/plain", {"Retry-After": "1"})
            return self._send(200, ok, "image/jpeg")
        if path.startswith("/fault/redirect-chain"):
            hop = int(path.rsplit("/", 1)[-1]) if path.count("/") == 3 else 0
            return self._send(302, b"", "text/plain", {"Location": f"/fault/redirect-chain/{hop + 1}"})
        if path.startswith("/pool/"):  # /pool/<row>/<k>.<ext>: image k of the benchmark pool under many URLs
            k = int(path.rsplit("/", 1)[-1].split(".", 1)[0])
            r = owner.pool[k]
            return self._send(r.status, r.body, r.content_type, r.headers)
        if path.startswith("/delay/"):  # /delay/<ms>[/anything]: answers the ok image after ms
            time.sleep(int(path.split("/")[2]) / 1000)
            return self._send(200, ok, "image/jpeg")
        if path == "/fault/slow":
            time.sleep(owner.slow_seconds)
            return self._send(200, ok, "image/jpeg")
        if path == "/fault/drip":
            return self._drip(ok, owner.drip_seconds)
        if path == "/fault/endless":
            return self._endless()
        if path == "/fault/huge-length":
            return self._huge_length()
        return self._send(404, b"no such route", "text/plain")

    def _drip(self, body: bytes, seconds: float) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        step = max(1, len(body) // 100)
        for i in range(0, len(body), step):
            self.wfile.write(body[i:i + step])
            self.wfile.flush()
            time.sleep(seconds / 100)

    def _endless(self) -> None:
        """A body with no length that never ends; the connection closes when the client stops reading."""
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        chunk = b"\xff" * ENDLESS_CHUNK
        deadline = time.monotonic() + 120  # a server thread never outlives a forgotten client by much
        for _ in range(self.server.owner.endless_bytes // ENDLESS_CHUNK):  # "endless" up to a bound
            if time.monotonic() > deadline:
                break
            self.wfile.write(chunk)

    def _huge_length(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(300_000_000))
        self.end_headers()
        self.close_connection = True
        self.wfile.write(b"\xff" * ENDLESS_CHUNK)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    owner: "ImageServer"


class ImageServer:
    """Context manager: a 127.0.0.1 HTTP server with static image routes and the FAULT_ROUTES.

    `hits[path]` counts requests per (decoded) path; `add()` registers more static routes.
    """

    def __init__(self, slow_seconds: float = SLOW_SECONDS, drip_seconds: float = DRIP_SECONDS,
                 port: int = 0, pool: list[Route] | None = None, endless_bytes: int = ENDLESS_BYTES):
        self.slow_seconds = slow_seconds
        self.drip_seconds = drip_seconds
        self.endless_bytes = endless_bytes   # a client that never stops reading still ends (tests, benchmarks)
        self.pool: list[Route] = pool or []  # served at /pool/<anything>/<index>.<ext>
        self.routes: dict[str, Route] = _static_routes()
        self.hits: Counter = Counter()
        self.headers_seen: dict[str, dict] = {}   # path -> request headers of its last request
        self.connections = 0                      # TCP connections accepted (keep-alive reuse shows here)
        self.in_flight = 0
        self.max_in_flight = 0                    # most requests handled at the same time
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", port), _Handler)
        self._httpd.owner = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """The absolute URL of `path` (percent-encoded, as a browser would send it)."""
        return self.base_url + quote(path, safe="/?=&%:")

    def raw_url(self, path: str) -> str:
        """The URL with `path` as given (spaces, non-ASCII): what a messy URL list contains."""
        return self.base_url + path

    def add(self, path: str, body: bytes, content_type: str = "image/jpeg", headers: dict | None = None,
            status: int = 200) -> str:
        """Registers a static route; returns its URL."""
        self.routes[path] = Route(body, content_type, status, dict(headers or {}))
        return self.url(path)

    def _hit(self, path: str, headers: dict) -> int:
        with self._lock:
            self.hits[path] += 1
            self.headers_seen[path] = headers
            return self.hits[path]

    def _connected(self) -> None:
        with self._lock:
            self.connections += 1

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def total_hits(self) -> int:
        with self._lock:
            return sum(self.hits.values())

    def reset_hits(self) -> None:
        with self._lock:
            self.hits.clear()
            self.connections = self.max_in_flight = 0

    def start(self) -> "ImageServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="image-server")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> "ImageServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_forever(ready=None, routes: dict[str, Route] | None = None, **kw) -> None:
    """Runs an ImageServer in this process until killed (the benchmark starts it in a child process).

    `ready` (a multiprocessing Connection) receives the port once listening; kw go to ImageServer.
    """
    srv = ImageServer(**kw)
    srv.routes.update(routes or {})
    if ready is not None:
        ready.send(srv.port)
    srv._httpd.serve_forever(poll_interval=0.2)
