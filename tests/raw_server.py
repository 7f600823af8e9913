"""A scripted raw-socket server on 127.0.0.1 for HTTP attacks http.server cannot express (drips, endless 1xx)."""
from __future__ import annotations

import socket
import threading
import time
from typing import Callable

LIFETIME = 15.0   # seconds a connection's script may run: a client that never gives up still ends the test
DRIP = 0.25       # seconds between dripped pieces: well under the 1 s per-read timeout the attack tests use
REQUEST_HEAD_MAX = 64 * 1024


class Stop(Exception):
    """The server is stopping or the connection's lifetime is over: the script ends."""


class RawConn:
    """One accepted connection as a script sees it: send, pause and drip, each bounded by the lifetime."""

    def __init__(self, sock: socket.socket, stopping: threading.Event, lifetime: float):
        self.sock = sock
        self._stopping = stopping
        self._until = time.monotonic() + lifetime

    def send(self, data: bytes) -> None:
        if self._stopping.is_set() or time.monotonic() > self._until:
            raise Stop
        self.sock.sendall(data)

    def pause(self, seconds: float) -> None:
        if self._stopping.wait(seconds) or time.monotonic() > self._until:
            raise Stop

    def drip(self, data: bytes, interval: float = DRIP) -> None:
        """Sends `data` one byte every `interval` seconds."""
        for i in range(len(data)):
            self.send(data[i:i + 1])
            self.pause(interval)

    def repeat(self, data: bytes, interval: float = DRIP) -> None:
        """Sends `data` every `interval` seconds until the client goes away or the lifetime ends."""
        while True:
            self.send(data)
            self.pause(interval)


Script = Callable[[RawConn, str], bool | None]  # (connection, request path) -> keep the connection open?


def head(status: str, headers: dict[str, str] | None = None) -> bytes:
    """A response head: 'HTTP/1.1 <status>' and the headers, ending with the blank line."""
    lines = [f"HTTP/1.1 {status}"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# ---------------------------------------------------------------- attacks (path prefix -> script)

OK_BODY = b"\xff\xd8\xff\xe0" + b"\x00" * 60   # not a real JPEG: the fetch tests only look at bytes


def ok(conn: RawConn, path: str) -> bool:
    conn.send(head("200 OK", {"Content-Type": "image/jpeg", "Content-Length": str(len(OK_BODY))}) + OK_BODY)
    return True


def drip_status(conn: RawConn, path: str) -> None:
    conn.send(b"HTTP/1.1 200 ")
    conn.repeat(b"O")  # the status line never ends; every read gets a byte in time


def drip_headers(conn: RawConn, path: str) -> None:
    conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nX-Pad: ")
    conn.repeat(b"a")


def endless_continue(conn: RawConn, path: str) -> None:
    conn.repeat(b"HTTP/1.1 100 Continue\r\n\r\n", 0.3)


def burst_continue(conn: RawConn, path: str) -> None:
    conn.repeat(b"HTTP/1.1 100 Continue\r\n\r\n" * 100, 0.01)


def _chunked_then(conn: RawConn, trailer: bytes, interval: float) -> None:
    conn.send(head("200 OK", {"Content-Type": "image/jpeg", "Transfer-Encoding": "chunked"})
              + b"%x\r\n" % len(OK_BODY) + OK_BODY + b"\r\n0\r\n")
    conn.repeat(trailer, interval)


def endless_trailers(conn: RawConn, path: str) -> None:
    _chunked_then(conn, b"X-Trailer: 1\r\n", DRIP)


def burst_trailers(conn: RawConn, path: str) -> None:
    _chunked_then(conn, b"X-Trailer: 1\r\n" * 100, 0.01)


def _dripped_error(status: str) -> Script:
    def script(conn: RawConn, path: str) -> None:
        conn.send(head(status, {"Content-Type": "text/plain", "Content-Length": "60000"}))
        conn.repeat(b"x")  # a small error body (drained for reuse) that arrives a byte at a time
    return script


def hop_then_drip(conn: RawConn, path: str) -> bool:
    """A quick redirect on a connection that then closes: the dripped hop runs on a new socket."""
    conn.send(head("302 Found", {"Location": "/drip-headers", "Content-Length": "0", "Connection": "close"}))
    return False


def slow_hop(conn: RawConn, path: str) -> bool:
    """/slow-hop/<n>: a redirect to hop n+1 whose head takes 1.5 s to arrive (each byte well within a timeout)."""
    n = int(path.rsplit("/", 1)[-1])
    conn.send(b"HTTP/1.1 302 Found\r\nX-Pad: ")
    conn.drip(b"a" * 30, 0.05)
    conn.send(b"\r\nLocation: /slow-hop/%d\r\nContent-Length: 0\r\n\r\n" % (n + 1))
    return True


def tls_drip(conn: RawConn, path: str) -> None:
    """Answers a TLS ClientHello with a record header announcing 16 KiB, then drips the record."""
    conn.send(b"\x16\x03\x03\x40\x00")
    conn.repeat(b"\x00")


ATTACKS: dict[str, Script] = {
    "/ok": ok,
    "/drip-status": drip_status,
    "/drip-headers": drip_headers,
    "/endless-100": endless_continue,
    "/burst-100": burst_continue,
    "/endless-trailers": endless_trailers,
    "/burst-trailers": burst_trailers,
    "/drip-404": _dripped_error("404 Not Found"),
    "/drip-503": _dripped_error("503 Service Unavailable"),
    "/hop-then-drip": hop_then_drip,
    "/slow-hop/": slow_hop,
}


# ---------------------------------------------------------------- server

class RawServer:
    """Context manager: a TCP server on 127.0.0.1 that answers each request with the script of the longest
    matching path prefix (or, with read_request=False, runs scripts[""] as soon as a client connects).

    Every connection ends within `lifetime` seconds and at stop(); `connections` counts accepted ones and
    `requests` lists the paths asked for.
    """

    def __init__(self, scripts: dict[str, Script] | None = None, read_request: bool = True,
                 lifetime: float = LIFETIME):
        self.scripts = dict(ATTACKS if scripts is None else scripts)
        self.read_request = read_request
        self.lifetime = lifetime
        self.connections = 0
        self.requests: list[str] = []
        self._stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def start(self) -> "RawServer":
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        self._stopping.set()
        for t in list(self._threads):
            t.join(timeout=5)
        self._listener.close()

    def __enter__(self) -> "RawServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True, name="raw-server")
        self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            self._spawn(self._serve, sock)

    def _serve(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a dripped byte leaves at once
        conn = RawConn(sock, self._stopping, self.lifetime)
        with sock:
            try:
                if not self.read_request:
                    self.scripts[""](conn, "")
                    return
                while (path := self._read_request(sock)) is not None:
                    self.requests.append(path)
                    if not self._script(path)(conn, path):
                        return
            except (Stop, OSError):
                pass  # the client went away, the lifetime ended or the server stops

    def _script(self, path: str) -> Script:
        prefix = max((p for p in self.scripts if path.startswith(p)), key=len, default=None)
        if prefix is None:
            return lambda conn, _: conn.send(head("404 Not Found", {"Content-Length": "0"})) or True
        return self.scripts[prefix]

    def _read_request(self, sock: socket.socket) -> str | None:
        """The path of the next request on the connection (its head is read whole); None when it closed."""
        sock.settimeout(1.0)
        buf = b""
        while b"\r\n\r\n" not in buf:
            if self._stopping.is_set() or len(buf) > REQUEST_HEAD_MAX:
                return None
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            if not data:
                return None
            buf += data
        return buf.split(b"\r\n", 1)[0].split(b" ")[1].decode("latin-1")
