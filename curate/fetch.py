"""The HTTP client of the download workers: pooled, polite, deadline-bounded, SSRF-guarded fetches mapped to ledger reasons."""
from __future__ import annotations

import http.client
import ipaddress
import math
import random
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError
from urllib3.util import connection as u3conn

from curate.config import DownloadConfig
from curate.optout.signals import HeaderChecks, header_signals
from curate.optout.signals import robots_disallowed  # noqa: F401 - its home was here: callers import it from fetch
from curate.schema import Status
from curate.urls import InvalidURL, normalize_url

DNS_TTL = 300.0            # seconds a resolved (or failed) host answer is reused in this process
DNS_FAIL_TTL = 60.0
RETRY_AFTER_CAP = 10.0     # seconds: a server asking for more is not waited for longer
READ_CHUNK = 256 * 1024    # bytes per read: large enough to keep per-read overhead small
ERROR_BODY_DRAIN = 64 * 1024  # bytes: error bodies up to this size are read (undecoded) so the connection can be reused
MAX_INTERIM_RESPONSES = 8  # 1xx responses before the real one: http.client would read them forever
MAX_TRAILER_LINES = 64     # chunked trailer lines: http.client would read them forever
HOST_DELAYS_MAX = 100_000  # per-host Crawl-delays kept per Fetcher: past this the map restarts empty
WATCHDOG_IDLE_EXIT = 5.0   # seconds without fetches after which a Fetcher's watchdog thread ends
REDIRECTS = frozenset({301, 302, 303, 307, 308})
_REFUSED_TYPES = ("text/", "application/json", "application/xml", "application/xhtml", "application/javascript")


class BlockedAddress(Exception):
    """The host resolves only to addresses the SSRF guard refuses (not an OSError: urllib3 must not retry it)."""


class DNSFailure(Exception):
    """The host name did not resolve."""


@dataclass(slots=True)
class FetchResult:
    """What one fetch produced: the body on success, else a ledger status + detail + message."""
    status: str                       # Status.OK, DOWNLOAD_ERROR, ROBOTS or INVALID_URL
    detail: str | None = None
    message: str | None = None
    body: bytes | None = None
    http_status: int | None = None
    content_type: str | None = None
    url: str | None = None            # final URL after redirects
    host: str | None = None           # host of the requested URL, for per-domain stats
    signals: tuple[str, ...] = ()     # opt-out evidence from the final 2xx response's headers, "<signal>:<outcome>"


# Not caught by ipaddress.is_global (Python 3.11): 192.0.0.0/24 is the IETF protocol block (192.0.0.9 and
# .10 count as global there), fec0::/10 is the deprecated site-local space still routed inside some sites, and
# 64:ff9b:1::/48 is local-use NAT64 whose operator decides where the IPv4 address sits, so it cannot be checked.
_REFUSED_V4 = ipaddress.ip_network("192.0.0.0/24")
_REFUSED_V6 = tuple(ipaddress.ip_network(n) for n in ("fec0::/10", "64:ff9b:1::/48"))
# IPv6 forms that carry the destination IPv4 address in their low 32 bits: IPv4-compatible (::a.b.c.d),
# IPv4-translated (::ffff:0:a.b.c.d) and NAT64 well-known (64:ff9b::a.b.c.d). IPv4-mapped is .ipv4_mapped.
_V4_IN_LOW_BITS = tuple(ipaddress.ip_network(n) for n in ("::/96", "::ffff:0:0:0/96", "64:ff9b::/96"))


def _public_v4(ip: ipaddress.IPv4Address) -> bool:
    return ip.is_global and not ip.is_multicast and ip not in _REFUSED_V4


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address delivers to (mapped, translated, compatible, NAT64, 6to4), else None."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in net for net in _V4_IN_LOW_BITS):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """False for loopback, private, link-local, multicast, reserved, unspecified and shared (CGN) space,
    192.0.0.0/24 and site-local fec0::/10; an IPv6 form that embeds an IPv4 address (mapped, translated,
    compatible, NAT64, 6to4, both Teredo ends) is judged by that IPv4 address."""
    if ip.version == 4:
        return _public_v4(ip)
    v4 = _embedded_v4(ip)
    if v4 is not None:
        return _public_v4(v4)
    if ip.teredo is not None and not all(_public_v4(a) for a in ip.teredo):
        return False
    return ip.is_global and not ip.is_multicast and not any(ip in net for net in _REFUSED_V6)


def any_address(ip) -> bool:
    """The guard with allow_private_networks: every address passes."""
    return True


class Resolver:
    """getaddrinfo with a per-process TTL cache; returns the first address the guard allows."""

    _cache: dict = {}                 # (host, port) -> (expiry, addresses | exception); shared per process
    _lock = threading.Lock()

    def __init__(self, allowed=is_public_address):
        self.allowed = allowed

    def _lookup(self, host: str, port: int) -> list:
        key = (host, port)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit and hit[0] > now:
            if isinstance(hit[1], Exception):
                raise hit[1]
            return hit[1]
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            value: list | Exception = [i[4][0] for i in infos]
            ttl = DNS_TTL
        except (socket.gaierror, UnicodeError) as e:
            value, ttl = DNSFailure(f"cannot resolve {host}: {e}"), DNS_FAIL_TTL
        with self._lock:
            if len(self._cache) > 100_000:  # bounded: a long run sees millions of hosts
                self._cache.clear()
            self._cache[key] = (now + ttl, value)
        if isinstance(value, Exception):
            raise value
        return value

    def resolve(self, host: str, port: int) -> str:
        """An IP address string for host to connect to; raises BlockedAddress or DNSFailure."""
        addrs = self._lookup(host.strip("[]"), port)
        for a in addrs:
            if self.allowed(ipaddress.ip_address(a.split("%", 1)[0])):
                return a
        raise BlockedAddress(f"{host} resolves to {', '.join(sorted(set(addrs))[:3])}: not a public address")


class _Watch:
    """One fetch under the watchdog: its deadline and the socket it is using now."""
    __slots__ = ("deadline", "sock", "expired", "cut")

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.sock: socket.socket | None = None
        self.expired = False  # the deadline passed while the fetch ran
        self.cut = False      # ... and the watchdog shut its socket down (the I/O in flight was interrupted)


class Watchdog:
    """Bounds whole fetches in time: one thread per Fetcher shuts down the socket of a fetch past its deadline.

    Per-read timeouts cannot bound a server that sends a byte per timeout (a dripped status line, headers or
    error body, endless 100 Continue or trailers); `shutdown()` makes the blocked read return at once, whatever
    it waits for. (A TLS handshake is bounded as a whole by the socket timeout: CPython's ssl module applies it
    to the handshake call, not to each read.) The thread sleeps until the earliest deadline of the fetches in
    flight (at most one per fetch thread), so a fetch costs a few lock round trips and nothing per chunk.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._active: set[_Watch] = set()
        self._local = threading.local()       # the calling thread's fetch, found by its connection
        self._running = False
        self._wake_at = math.inf

    def start(self, deadline: float) -> _Watch:
        """Watches the calling thread's fetch until end() (a plain pair, not a context manager: this is per request)."""
        w = _Watch(deadline)
        with self._cond:
            self._active.add(w)
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, daemon=True, name="fetch-watchdog").start()
            elif deadline < self._wake_at:
                self._cond.notify()
        self._local.watch = w
        return w

    def end(self, w: _Watch) -> None:
        self._local.watch = None
        with self._cond:
            self._active.discard(w)
            w.sock = None

    def attach(self, sock: socket.socket) -> None:
        """The calling thread's fetch now reads from `sock` (a new, or a pooled connection's socket)."""
        w = getattr(self._local, "watch", None)
        if w is not None:
            with self._cond:
                w.sock = sock
                if w.expired:  # connected after the deadline passed
                    self._cut(w)

    def detach(self) -> None:
        """The calling thread's fetch gave its connection back: the socket may serve another fetch now."""
        w = getattr(self._local, "watch", None)
        if w is not None:
            with self._cond:
                w.sock = None

    @staticmethod
    def _cut(w: _Watch) -> None:
        if w.sock is None:
            return
        try:  # the plain socket method: SSLSocket.shutdown would also drop its SSL object under the reader
            socket.socket.shutdown(w.sock, socket.SHUT_RDWR)
            w.cut = True
        except OSError:  # already closed: nothing is waiting on it
            pass

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for w in [w for w in self._active if w.deadline <= now]:
                    self._active.discard(w)
                    w.expired = True
                    self._cut(w)
                if self._active:
                    self._wake_at = min(w.deadline for w in self._active)
                    self._cond.wait(self._wake_at - now)
                    continue
                self._wake_at = math.inf
                self._cond.wait(WATCHDOG_IDLE_EXIT)
                if not self._active:  # idle: end; the next fetch starts a new thread
                    self._running = False
                    return


class _BoundedResponse(http.client.HTTPResponse):
    """http.client's response with the limits it lacks: it reads 1xx responses and trailer lines forever."""

    _status_lines = 0

    def _read_status(self):
        self._status_lines += 1
        if self._status_lines > MAX_INTERIM_RESPONSES + 1:
            raise http.client.HTTPException(f"more than {MAX_INTERIM_RESPONSES} interim (1xx) responses")
        return super()._read_status()

    def _read_and_discard_trailer(self) -> None:
        for _ in range(MAX_TRAILER_LINES):
            line = self.fp.readline(http.client._MAXLINE + 1)
            if len(line) > http.client._MAXLINE:
                raise http.client.LineTooLong("trailer line")
            if line in (b"\r\n", b"\n", b""):
                return
        raise http.client.HTTPException(f"more than {MAX_TRAILER_LINES} trailer lines")


def _guarded_conn(base: type, resolver: Resolver, watchdog: Watchdog) -> type:
    """A urllib3 connection class that connects to the guard-checked IP, keeping the host name for
    Host header, SNI and certificate checks (pinning the IP also closes the DNS-rebinding gap), and
    hands its socket to the watchdog."""

    class Guarded(base):
        response_class = _BoundedResponse

        def _new_conn(self) -> socket.socket:
            ip = resolver.resolve(self._dns_host, self.port)
            try:
                return u3conn.create_connection((ip, self.port), self.timeout, source_address=self.source_address,
                                                socket_options=self.socket_options)
            except socket.timeout as e:
                raise ConnectTimeoutError(self, f"connect to {self.host} ({ip}) timed out") from e
            except OSError as e:
                raise NewConnectionError(self, f"cannot connect to {self.host} ({ip}): {e}") from e

        def getresponse(self):
            # new or pooled, plain or TLS: from here the fetch reads this socket (connect, TLS handshake and
            # sending the request are bounded by the socket timeout, which is at most the time left)
            watchdog.attach(self.sock)
            return super().getresponse()

    return Guarded


class HostLimiter:
    """Per-host politeness: at most `concurrency` requests in flight and `rps` request starts a second.

    State is kept only for hosts with requests in flight or a rate reservation, so a worker that sees
    millions of hosts does not grow with them.
    """

    def __init__(self, concurrency: int, rps: float):
        self.concurrency = max(1, concurrency)
        self.rps = rps
        self._cond = threading.Condition()
        self._in_flight: dict[str, int] = {}
        self._next_start: dict[str, float] = {}   # token bucket as "earliest next start" (burst of 1)
        self.delays: dict[str, float] = {}        # host -> robots.txt Crawl-delay seconds (used when stricter)

    def set_delays(self, delays: dict[str, float]) -> None:
        """Adds per-host minimum intervals between request starts (robots.txt Crawl-delay, seconds)."""
        with self._cond:
            if len(self.delays) + len(delays) > HOST_DELAYS_MAX:  # bounded: a long run sees millions of hosts
                self.delays = {}
            self.delays.update(delays)

    @contextmanager
    def slot(self, host: str, deadline: float = math.inf):
        """Holds one of the host's request slots for the duration of the with-block; raises TimeoutError when
        the host's rate would start the request after `deadline` (waiting for it would only end in a timeout)."""
        with self._cond:
            while self._in_flight.get(host, 0) >= self.concurrency:
                self._cond.wait()
            self._in_flight[host] = self._in_flight.get(host, 0) + 1
        try:
            self._wait_rate(host, deadline)
            yield
        finally:
            with self._cond:
                left = self._in_flight[host] - 1
                if left:
                    self._in_flight[host] = left
                else:
                    del self._in_flight[host]
                self._cond.notify_all()

    def _wait_rate(self, host: str, deadline: float) -> None:
        interval = max(1.0 / self.rps if self.rps > 0 else 0.0, self.delays.get(host, 0.0))
        if interval <= 0:
            return
        with self._cond:
            now = time.monotonic()
            start = max(now, self._next_start.get(host, now))
            if start >= deadline:  # no reservation taken: the rows after this one are not pushed back for nothing
                raise TimeoutError(f"{host}: next request start allowed in {start - now:.1f} s, after the deadline")
            self._next_start[host] = start + interval
            if len(self._next_start) > 10_000:  # forget hosts whose reservation is in the past
                self._next_start = {h: t for h, t in self._next_start.items() if t > now}
        if start > now:
            time.sleep(start - now)


def _retry_after(headers, cap: float) -> float | None:
    """Seconds asked for by a Retry-After header (delta or HTTP date), capped; None when absent/bad."""
    raw = headers.get("Retry-After")
    if not raw:
        return None
    raw = raw.strip()
    try:
        secs = float(raw)
    except ValueError:
        try:
            secs = parsedate_to_datetime(raw).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, min(secs, cap))


class Fetcher:
    """Thread-safe HTTP fetcher for one worker process; share one instance between the worker's threads."""

    def __init__(self, dl: DownloadConfig, address_allowed=None):
        self.dl = dl
        allowed = address_allowed or (any_address if dl.allow_private_networks else is_public_address)
        self.resolver = Resolver(allowed)
        self.limiter = HostLimiter(dl.per_domain_concurrency, dl.per_domain_rps)
        self.agent_token = dl.user_agent.split("/", 1)[0].strip().lower()
        self.checks = HeaderChecks(dl.robots_disallow, self.agent_token, dl.optout.headers,
                                   dl.optout.accepted_tdm_policies)
        self.watchdog = Watchdog()
        self.pool = urllib3.PoolManager(
            num_pools=512, maxsize=max(dl.per_domain_concurrency, 1), block=False, retries=False,
            headers={"User-Agent": dl.user_agent, "Accept": "image/*,*/*;q=0.8"})
        http_pool = type("GuardedHTTPPool", (HTTPConnectionPool,),
                         {"ConnectionCls": _guarded_conn(HTTPConnection, self.resolver, self.watchdog)})
        https_pool = type("GuardedHTTPSPool", (HTTPSConnectionPool,),
                          {"ConnectionCls": _guarded_conn(HTTPSConnection, self.resolver, self.watchdog)})
        self.pool.pool_classes_by_scheme = {"http": http_pool, "https": https_pool}

    def close(self) -> None:
        self.pool.clear()

    def set_host_delays(self, delays: dict[str, float]) -> None:
        """Honours robots.txt Crawl-delay: {host: seconds} between request starts to that host, per process,
        where stricter than per_domain_rps (curate.optout.stage builds the map from the optout_hosts table)."""
        self.limiter.set_delays(delays)

    # -------------------------------------------------------------- public entry

    def fetch(self, url: str) -> FetchResult:
        """Fetches `url` within dl.deadline seconds from start to last byte, whatever the server sends
        (the watchdog cuts the socket at the deadline); never raises for network trouble."""
        try:
            url = normalize_url(url)
        except InvalidURL as e:
            return FetchResult(Status.INVALID_URL, e.detail, str(e))
        host = urlsplit(url).hostname
        deadline = time.monotonic() + self.dl.deadline
        watch = self.watchdog.start(deadline)
        try:
            res = self._fetch_mapped(url, host, deadline)
        finally:
            self.watchdog.end(watch)
        if watch.cut:  # a cut reads as EOF: a truncated head or body can look like an answer, so none is trusted
            res = FetchResult(Status.DOWNLOAD_ERROR, "timeout",
                              f"deadline of {self.dl.deadline:g} s passed: connection cut ({res.detail or 'ok'})",
                              http_status=res.http_status, content_type=res.content_type, url=res.url)
        res.host = host
        return res

    def _fetch_mapped(self, url: str, host: str | None, deadline: float) -> FetchResult:
        """_follow with every network failure mapped to a download_error detail."""
        try:
            with self.limiter.slot(host or "", deadline):  # the whole transfer (hops, retries, body) holds the host slot
                return self._follow(url, deadline)
        except BlockedAddress as e:
            return FetchResult(Status.DOWNLOAD_ERROR, "blocked_address", str(e))
        except DNSFailure as e:
            return FetchResult(Status.DOWNLOAD_ERROR, "connection", f"dns: {e}")
        except NewConnectionError as e:  # a subclass of ConnectTimeoutError in urllib3 2: caught first
            return FetchResult(Status.DOWNLOAD_ERROR, "connection", str(e))
        except (ReadTimeoutError, ConnectTimeoutError, TimeoutError, socket.timeout) as e:
            return FetchResult(Status.DOWNLOAD_ERROR, "timeout", str(e))
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as e:
            return FetchResult(Status.DOWNLOAD_ERROR, "connection", f"{type(e).__name__}: {e}")
        except Exception as e:  # noqa: BLE001 - the network boundary: anything unexpected is a row, not a crash
            return FetchResult(Status.DOWNLOAD_ERROR, "error", f"{type(e).__name__}: {e}")

    # -------------------------------------------------------------- internals

    def _follow(self, url: str, deadline: float) -> FetchResult:
        """Requests url, following up to max_redirects hops by hand so each hop is guard-checked."""
        seen = {url}
        for _ in range(self.dl.max_redirects + 1):
            resp = self._request_with_retries(url, deadline)
            if resp.status not in REDIRECTS or not resp.headers.get("Location"):
                return self._finish(resp, url, deadline)
            self._discard(resp)
            try:
                nxt = normalize_url(urljoin(url, resp.headers["Location"]))
            except InvalidURL as e:
                return FetchResult(Status.DOWNLOAD_ERROR, "bad_redirect", str(e), http_status=resp.status)
            if nxt in seen:
                return FetchResult(Status.DOWNLOAD_ERROR, "too_many_redirects", f"redirect loop at {nxt[:120]}",
                                   http_status=resp.status)
            seen.add(nxt)
            url = nxt
        return FetchResult(Status.DOWNLOAD_ERROR, "too_many_redirects",
                           f"more than {self.dl.max_redirects} redirects", http_status=resp.status)

    def _timeout(self, deadline: float) -> urllib3.Timeout:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        t = max(0.01, min(self.dl.timeout, left))
        return urllib3.Timeout(connect=t, read=t)

    def _request_with_retries(self, url: str, deadline: float):
        """One hop: retries connection errors, 429 and 5xx with backoff + jitter (Retry-After honoured)."""
        attempt = 0
        while True:
            try:
                resp = self.pool.request("GET", url, preload_content=False, redirect=False, retries=False,
                                         timeout=self._timeout(deadline))
            except (NewConnectionError, urllib3.exceptions.ProtocolError):
                if attempt >= self.dl.retries or not self._sleep_before_retry(attempt, None, deadline):
                    raise
                attempt += 1
                continue
            if (resp.status == 429 or resp.status >= 500) and attempt < self.dl.retries:
                wait = _retry_after(resp.headers, RETRY_AFTER_CAP)
                if self._sleep_before_retry(attempt, wait, deadline):
                    self._discard(resp)
                    attempt += 1
                    continue
            return resp

    def _sleep_before_retry(self, attempt: int, wait: float | None, deadline: float) -> bool:
        """Sleeps the backoff (or Retry-After); False when that would pass the deadline."""
        if wait is None:
            wait = self.dl.backoff * (2 ** attempt) * (0.5 + random.random())
        if time.monotonic() + wait >= deadline:
            return False
        time.sleep(wait)
        return True

    def _finish(self, resp, url: str, deadline: float) -> FetchResult:
        """Turns the final response into a result: status checks, header opt-outs (checked on the final 2xx
        response only), type, then the capped body."""
        ctype = resp.headers.get("Content-Type")
        base = dict(http_status=resp.status, content_type=ctype, url=url)
        if not 200 <= resp.status < 300:
            self._discard(resp)
            return FetchResult(Status.DOWNLOAD_ERROR, f"http_{resp.status}", resp.reason, **base)
        base["signals"], decided, why = header_signals(resp.headers, self.checks)
        if decided:  # an opt-out: the body is not read
            self._discard(resp)
            return FetchResult(Status.ROBOTS, decided, why, **base)
        if ctype and ctype.strip().lower().startswith(_REFUSED_TYPES):
            self._discard(resp)
            return FetchResult(Status.DOWNLOAD_ERROR, "content_type", f"not an image: {ctype}", **base)
        length = resp.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > self.dl.max_bytes:
            self._discard(resp)
            return FetchResult(Status.DOWNLOAD_ERROR, "too_large", f"Content-Length {length} > {self.dl.max_bytes}",
                               **base)
        body = self._read_capped(resp, deadline)
        if body is None:
            return FetchResult(Status.DOWNLOAD_ERROR, "too_large", f"body over {self.dl.max_bytes} bytes", **base)
        return FetchResult(Status.OK, None, None, body=body, **base)

    def _read_capped(self, resp, deadline: float, cut: bool = False) -> bytes | None:
        """Streams the (decoded) body; past max_bytes: None, or with `cut` its first max_bytes bytes (a policy
        file is read up to the cap and parsed). Raises TimeoutError past the deadline (a silent or dripping
        server is cut by the watchdog; the check here ends a steady one early)."""
        cap, chunks, n, complete = self.dl.max_bytes, [], 0, False
        limit = cap if cut else cap + 1  # without `cut`, one byte past the cap proves the body too large
        try:
            while n < limit:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"deadline of {self.dl.deadline:g} s passed while reading the body")
                data = resp.read1(min(READ_CHUNK, limit - n))  # what has arrived; decoded output capped too
                if not data:
                    complete = True
                    break
                n += len(data)
                chunks.append(data)
        finally:
            self.watchdog.detach()  # before the connection can serve another fetch
            if not complete:  # unread bytes left on the socket: it cannot go back to the pool
                resp.close()
            resp.release_conn()
        return b"".join(chunks) if complete or cut else None

    def _discard(self, resp) -> None:
        """Frees the connection without ever decoding the body (a 600-byte gzip-of-gzip error body inflates to
        gigabytes): a known-length body up to ERROR_BODY_DRAIN bytes is drained raw so the connection can be
        reused; anything else (chunked, longer, broken) closes it. The watchdog bounds a dripped drain."""
        left, drained = resp.length_remaining, False  # None when chunked or without Content-Length
        try:
            if left is not None and left <= ERROR_BODY_DRAIN:
                resp.read(decode_content=False)  # exactly Content-Length bytes (short: IncompleteRead)
                drained = True
        except Exception:  # noqa: BLE001 - the network boundary: a broken error body only costs the connection
            pass
        self.watchdog.detach()  # before the connection can serve another fetch
        if not drained:
            resp.close()
        resp.release_conn()
