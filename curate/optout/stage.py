"""The opt-out stage: robots.txt and TDMRep decisions per row from the run's host-policy table, before any image request."""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate import fsutil
from curate.config import DownloadConfig
from curate.schema import COL, Status, ok_rows, set_column, set_status, table_schema
from curate.stage import StageStats

POLICY_SIGNALS = ("robots_txt", "tdmrep")  # evaluated in this order; the first that opts a row out decides
_POLICIES: dict[tuple, tuple] = {}  # (path, mtime, size) -> (table, origins, HostPolicies, {host: delay s})
_LOCK = threading.Lock()


def signals_on(dl: DownloadConfig) -> tuple[str, ...]:
    """The policy-file signals switched on in download.optout, in evaluation order."""
    return tuple(s for s in POLICY_SIGNALS if getattr(dl.optout, s))


def read_hosts(path: str) -> pa.Table | None:
    """The optout_hosts table at `path` (stage/ or metadata/); None when the file does not exist."""
    fs, p = fsutil.get_fs(path)
    if not fsutil.exists(fs, p):
        return None
    return pq.read_table(pa.BufferReader(fsutil.read_bytes(fs, p)))


def _version(path: str) -> tuple:
    """What identifies one written version of the host table (a rerun rewrites it under the same path)."""
    fs, p = fsutil.get_fs(path)
    info = fs.get_file_info(p)
    return (path, info.mtime_ns, info.size) if info.type.name == "File" else (path, None, None)


def policies_for(path: str, origins: set[str], dl: DownloadConfig, stats: StageStats):
    """(HostPolicies, {host: Crawl-delay s}) of the table at `path`, loaded once per worker process (cached
    by path and version).

    Origins the table lacks (a unit run without the driver's pre-pass, as in the unit tests) are fetched
    here, once per process, and counted as optout_origins_fetched_in_unit: opt-outs are honoured whoever
    runs the stage, and the count shows where the run's evidence table is incomplete."""
    from curate.optout.hosts import HostPolicies, fetch_host_policies

    key = _version(path)
    with _LOCK:
        table, known, policies, delays = _POLICIES.get(key) or (None, None, None, None)
    if table is None:
        table = read_hosts(path)
        table = table if table is not None else table_schema("optout_hosts").empty_table()
        known = set(table["origin"].to_pylist())
    missing = sorted(origins - known)
    stats.count("optout_origins_fetched_in_unit", len(missing))
    if policies is None or missing:
        if missing:
            table = pa.concat_tables([table, fetch_host_policies(missing, dl).cast(table.schema)])
            known = known | set(missing)
        policies, delays = HostPolicies.from_table(table), _host_delays(table)
        with _LOCK:
            _POLICIES[key] = (table, known, policies, delays)
    return policies, delays


def _host_delays(table: pa.Table) -> dict[str, float]:
    """{host: seconds} of the table's robots.txt Crawl-delay column (read for the honoured agents at fetch
    time); the strictest when origins share a host, as the download limiter keys hosts by name."""
    from urllib.parse import urlsplit

    out: dict[str, float] = {}
    rows = table.filter(pc.is_valid(table["crawl_delay"])).select(["origin", "crawl_delay"]).to_pylist()
    for r in rows:
        host = urlsplit(r["origin"]).hostname
        if host and r["crawl_delay"] > 0:
            out[host] = max(r["crawl_delay"], out.get(host, 0.0))
    return out


def _decide_row(url: str, signals: tuple[str, ...], policies, agents, accepted) -> tuple[list[str], str | None]:
    """(optout_signals entries, the deciding signal or None) of one row: signals in order, stopping at the
    first that opts out (a row dropped by robots.txt never reaches the TDMRep check)."""
    from curate.optout.hosts import robots_decision, tdmrep_decision

    entries = []
    for sig in signals:
        out = robots_decision(url, policies, agents) if sig == "robots_txt" else \
            tdmrep_decision(url, policies, accepted)
        if out is None:  # no policy row for the origin: not checked
            continue
        entries.append(f"{sig}:{out}")
        if out != "allow":  # disallow, or unreachable (RFC 9309: disallow all for the run)
            return entries, sig
    return entries, None


@dataclass(frozen=True)
class OptOutStage:
    """optout_signals for every row still ok (a list: '<signal>:<outcome>' per policy file checked; null for
    rows dropped before); robots:robots_txt / robots:tdmrep for rows a policy opts out. hosts_path is the
    run's stage/optout_hosts.parquet (pipelines/optout_hosts.py writes it before phase A)."""
    download: DownloadConfig
    hosts_path: str
    name: ClassVar[str] = "optout"

    def __call__(self, table: pa.Table, stats: StageStats | None = None) -> pa.Table:
        from curate.optout.hosts import honoured_agents, origin_of

        stats = stats if stats is not None else StageStats()
        signals, ok = signals_on(self.download), ok_rows(table)
        urls = table[COL.URL].to_pylist()
        origins = [origin_of(u) if k and u else None for u, k in zip(urls, ok)]
        policies, delays = (policies_for(self.hosts_path, set(origins) - {None}, self.download, stats)
                            if signals else (None, {}))
        agents, accepted = honoured_agents(self.download), self.download.optout.accepted_tdm_policies
        old = table[COL.OPTOUT_SIGNALS].to_pylist() if COL.OPTOUT_SIGNALS in table.column_names else [None] * len(ok)
        lists, deciding, checked = list(old), [None] * len(ok), Counter()
        for i in map(int, ok.nonzero()[0]):
            entries, deciding[i] = (_decide_row(urls[i], signals, policies, agents, accepted)
                                    if origins[i] else ([], None))
            lists[i] = (old[i] or []) + entries
            checked.update(e.split(":", 1)[0] for e in entries)
        table = set_column(table, COL.OPTOUT_SIGNALS, lists)
        for sig in signals:
            drop = [d == sig for d in deciding]
            table = set_status(table, drop, Status.ROBOTS, sig)
            stats.count(f"optout_{sig}_checked", checked[sig])
            stats.count(f"optout_{sig}_dropped", sum(drop))
        if delays:
            _apply_crawl_delays(self.download, set(origins) - {None}, delays)
        return table


def _apply_crawl_delays(dl: DownloadConfig, origins: set[str], delays: dict[str, float]) -> None:
    """Hands the robots.txt Crawl-delay of this batch's hosts to the process's download fetcher (the one
    DownloadStage uses for the same config), whose per-host limiter keeps it where stricter than
    per_domain_rps."""
    from urllib.parse import urlsplit

    from curate.download import get_fetcher

    mine = {h: delays[h] for h in {urlsplit(o).hostname for o in origins} if h in delays}
    if mine:
        get_fetcher(dl).set_host_delays(mine)
