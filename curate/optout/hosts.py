"""Per-origin policy files (robots.txt, TDMRep): fetched once per run into the optout_hosts table, decided per row.

Usage (the driver's pre-pass, then each worker of the opt-out stage)::

    from curate.optout.hosts import (HostPolicies, crawl_delay, fetch_host_policies, honoured_agents,
                                     origin_of, robots_decision, tdmrep_decision)

    origins = sorted({origin_of(u) for u in urls} - {None})       # "scheme://host[:port]", lower case
    table = fetch_host_policies(origins, dl)                        # pa.Table, schemas/optout_hosts.json
    policies = HostPolicies.from_table(table)                       # once per worker: bodies parsed once, lazily
    agents = honoured_agents(dl)                                    # ("curate", "ccbot"): UA token + optout.agents
    robots_decision(url, policies, agents)      # "allow" | "disallow" | "unreachable"; None = no robots row
    tdmrep_decision(url, policies, dl.optout.accepted_tdm_policies)  # "allow" | "disallow"; None = no row
    crawl_delay(origin_of(url), policies, agents)                   # seconds or None

None means the signal was not checked for that origin (switched off, or the origin was not in the pre-pass):
write no optout_signals entry for it.
"""
from __future__ import annotations

import hashlib
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timezone
from urllib.parse import urlsplit

import pyarrow as pa

from curate.config import DownloadConfig
from curate.fetch import Fetcher, FetchResult
from curate.optout import robots as robots_txt
from curate.optout import tdmrep as tdm
from curate.schema import Status, conform, table_schema
from curate.urls import MAX_URL_LENGTH, InvalidURL, normalize_url

TABLE = "optout_hosts"
ROBOTS_TXT, TDMREP = "robots_txt", "tdmrep"               # signal names (schemas/reasons.json)
POLICY_PATHS = {ROBOTS_TXT: robots_txt.ROBOTS_PATH, TDMREP: "/.well-known/tdmrep.json"}
RULES, ALLOW_ALL, DISALLOW_ALL = "rules", "allow_all", "disallow_all"   # outcome column values
POLICY_REDIRECTS = 5          # RFC 9309 2.3.1.2: follow at least five consecutive redirects
POLICY_ACCEPT = "text/plain, application/json;q=0.9, */*;q=0.5"
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}
_SAFE = r"[A-Za-z0-9/:@!$&'()*+,;=._~-]"   # characters normalize_url leaves as they are (no %: a lone % changes)
_PLAIN = re.compile(rf"(https?)://((?:[a-z0-9_-]+\.)*[a-z0-9_-]+(?::([1-9][0-9]{{0,4}}))?)(/{_SAFE}*)?(\?(?:{_SAFE}|\?)*)?")


class _PolicyFetcher(Fetcher):
    """curate's Fetcher (SSRF guard per hop, watchdog deadline, host slots) whose final response is read as a
    policy file: any content type, no X-Robots-Tag check, and a body past the cap cut there, not refused."""

    def __init__(self, dl: DownloadConfig, address_allowed=None):
        super().__init__(dl, address_allowed)
        self.pool.headers["Accept"] = POLICY_ACCEPT

    def _finish(self, resp, url: str, deadline: float) -> FetchResult:
        base = dict(http_status=resp.status, content_type=resp.headers.get("Content-Type"), url=url)
        if not 200 <= resp.status < 300:
            self._discard(resp)
            return FetchResult(Status.DOWNLOAD_ERROR, f"http_{resp.status}", resp.reason, **base)
        return FetchResult(Status.OK, body=self._read_capped(resp, deadline, cut=True), **base)


def policy_config(dl: DownloadConfig) -> DownloadConfig:
    """The download config of policy fetches: their own timeout (redirects included), cap and redirect count."""
    opt = dl.optout
    return replace(dl, timeout=opt.policy_timeout, deadline=opt.policy_timeout, max_bytes=opt.policy_max_bytes,
                   max_redirects=POLICY_REDIRECTS)


def honoured_agents(dl: DownloadConfig) -> tuple[str, ...]:
    """robots.txt tokens honoured, lower case, in order: the product token of user_agent, then optout.agents."""
    tokens = [robots_txt.agent_token(dl.user_agent)] + [robots_txt.agent_token(a) for a in dl.optout.agents]
    return tuple(dict.fromkeys(t for t in tokens if t))


def _split_plain(url: str) -> tuple[str, str, str] | None:
    """(scheme, host[:port], path+query) of a URL normalize_url would leave as it is (lower-case ASCII host,
    no escapes, spaces, user or fragment): most URLs, split for a tenth of normalize_url's cost; else None."""
    m = _PLAIN.fullmatch(url) if len(url) <= MAX_URL_LENGTH else None
    if m is None or (m.group(3) and int(m.group(3)) > 65535):
        return None
    return m.group(1), m.group(2), (m.group(4) or "/") + (m.group(5) if m.group(5) and m.group(5) != "?" else "")


def split_url(url: str) -> tuple[str, str] | None:
    """(origin "scheme://host[:port]", path plus "?query") of a row URL as it will be fetched; None when invalid."""
    plain = _split_plain(url) if isinstance(url, str) else None
    if plain is not None:
        scheme, hostport, path = plain
    else:
        try:
            parts = urlsplit(normalize_url(url))
        except InvalidURL:
            return None
        scheme, hostport = parts.scheme, parts.netloc.rpartition("@")[2]
        path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    default = _DEFAULT_PORTS[scheme]
    if hostport.endswith(default):
        hostport = hostport[: -len(default)]
    return f"{scheme}://{hostport}", path


def origin_of(url: str) -> str | None:
    """The origin whose policy files apply to `url`; None for a URL that cannot be fetched at all."""
    split = split_url(url)
    return split[0] if split else None


def _outcome(res: FetchResult) -> str:
    """RFC 9309 2.3.1: a file read = rules; 4xx ("unavailable") and more than 5 redirects = allow all;
    5xx, timeout, connection error, blocked address ("unreachable") = disallow all for this run."""
    if res.status == Status.OK:
        return RULES
    if res.detail == "too_many_redirects" or (res.http_status is not None and 400 <= res.http_status < 500
                                              and res.detail != "timeout"):
        return ALLOW_ALL
    return DISALLOW_ALL


def _fetch_one(fetcher: Fetcher, origin: str, signal: str, agents: tuple[str, ...]) -> dict:
    """One optout_hosts row: fetch origin + the signal's path and record what came back."""
    res = fetcher.fetch(origin + POLICY_PATHS[signal])
    outcome = _outcome(res)
    body = res.body if outcome == RULES else None
    text = body.decode("utf-8", errors="replace") if body is not None else None
    delay = None
    if signal == ROBOTS_TXT and text is not None:
        delay = robots_txt.parse(text).crawl_delay(agents)
    return {"origin": origin, "signal": signal,
            "fetched_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "http_status": res.http_status, "outcome": outcome,
            "rules_digest": hashlib.sha256(body).hexdigest() if body is not None else None,
            "crawl_delay": delay, "body": text}


def fetch_host_policies(origins, dl: DownloadConfig, address_allowed=None) -> pa.Table:
    """Fetches /robots.txt and /.well-known/tdmrep.json (those switched on in dl.optout) once per origin, in
    dl.threads threads, with the Fetcher's SSRF guard (dl.allow_private_networks, or `address_allowed`), up to
    5 redirects, optout.policy_timeout per file and bodies cut at optout.policy_max_bytes. Never raises for
    network trouble: every (origin, signal) gets a row of the optout_hosts table."""
    opt = dl.optout
    signals = [s for s, on in ((ROBOTS_TXT, opt.robots_txt), (TDMREP, opt.tdmrep)) if on]
    jobs = [(o, s) for o in dict.fromkeys(origins) for s in signals]
    rows: list[dict] = []
    if jobs:
        agents = honoured_agents(dl)
        fetcher = _PolicyFetcher(policy_config(dl), address_allowed)
        try:
            with ThreadPoolExecutor(max(1, min(dl.threads, len(jobs))), thread_name_prefix="optout") as ex:
                rows = list(ex.map(lambda job: _fetch_one(fetcher, job[0], job[1], agents), jobs))
        finally:
            fetcher.close()
    return conform(pa.Table.from_pylist(rows, schema=table_schema(TABLE)), TABLE)


class HostPolicies:
    """The host table indexed for per-row decisions: (origin, signal) -> outcome and body; each body is parsed
    once, on first use, and kept (a worker sees each origin's rules many times)."""

    def __init__(self, entries: dict[tuple[str, str], tuple[str, str | None]]):
        self._entries = entries
        self._parsed: dict[tuple[str, str], object] = {}

    @classmethod
    def from_table(cls, table: pa.Table) -> "HostPolicies":
        cols = [table[c].to_pylist() for c in ("origin", "signal", "outcome", "body")]
        return cls({(o, s): (out, body) for o, s, out, body in zip(*cols)})

    def get(self, origin: str, signal: str):
        """None (no row: not checked), ALLOW_ALL, DISALLOW_ALL, or the parsed file (Robots / TdmRep)."""
        key = (origin, signal)
        hit = self._parsed.get(key)
        if hit is None:
            entry = self._entries.get(key)
            if entry is None:
                return None
            outcome, body = entry
            if outcome != RULES:
                hit = outcome
            else:
                hit = (robots_txt.parse if signal == ROBOTS_TXT else tdm.parse)(body or "")
            self._parsed[key] = hit
        return hit


def _policy_for(url: str, policies: HostPolicies, signal: str):
    """(the origin's parsed policy or its outcome string, the URL's path and query); (None, None) when the URL
    is invalid or its origin has no row for `signal`."""
    split = split_url(url)
    return (policies.get(split[0], signal), split[1]) if split else (None, None)


def robots_decision(url: str, policies: HostPolicies, agents: tuple[str, ...]) -> str | None:
    """"allow" | "disallow" | "unreachable" (robots.txt 5xx/timeout/error: disallow all, RFC 9309) for a row
    URL; None when its origin has no robots.txt row (signal off, or not fetched) or the URL is invalid."""
    pol, path = _policy_for(url, policies, ROBOTS_TXT)
    if pol is None:
        return None
    if isinstance(pol, str):
        return "allow" if pol == ALLOW_ALL else "unreachable"
    return "allow" if pol.allowed(path, agents) else "disallow"


def tdmrep_decision(url: str, policies: HostPolicies, accepted) -> str | None:
    """"allow" | "disallow" for a row URL: disallow when the first matching tdmrep.json rule reserves TDM rights
    and its tdm-policy is not in `accepted`, or when the file was unreachable (5xx, timeout: like robots.txt,
    a reservation that cannot be read is not assumed absent). None when the origin has no tdmrep row."""
    pol, path = _policy_for(url, policies, TDMREP)
    if pol is None:
        return None
    if isinstance(pol, str):
        return "allow" if pol == ALLOW_ALL else "disallow"
    reserved, policy = pol.reserved(path)
    return "disallow" if reserved and (policy is None or policy not in accepted) else "allow"


def crawl_delay(origin: str, policies: HostPolicies, agents: tuple[str, ...]) -> float | None:
    """The strictest Crawl-delay (seconds) robots.txt sets for the honoured agents at `origin`; None when none."""
    pol = policies.get(origin, ROBOTS_TXT)
    return pol.crawl_delay(agents) if isinstance(pol, robots_txt.Robots) else None
