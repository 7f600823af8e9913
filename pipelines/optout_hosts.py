"""The driver's opt-out pre-pass: robots.txt and tdmrep.json per origin, once per run -> stage/optout_hosts.parquet."""
from __future__ import annotations

import sys

import pyarrow as pa
import pyarrow.parquet as pq

from curate import fsutil
from curate.config import DownloadConfig, RunConfig
from curate.layout import RunLayout
from curate.optout.evidence import ALL_OFF_WARNING, all_off
from curate.optout.stage import read_hosts, signals_on
from curate.schema import COL, conform, table_schema

ORIGINS_PER_TASK = 64    # origins one task fetches: enough to amortise a task's start, few enough to spread them
UNITS_PER_TASK = 32      # input files one task reads the url column of
FLUSH_TASKS = 64         # finished fetch tasks between two writes of the table: a killed pre-pass keeps its work


def warn_if_all_off(cfg: RunConfig) -> bool:
    """Prints the start warning when every opt-out signal is off (the manifest records it too); True then."""
    if all_off(cfg.download):
        print(f"WARNING: {ALL_OFF_WARNING}", file=sys.stderr)
        return True
    return False


def unit_origins(item: tuple[str, list[int]]) -> list[str]:
    """The distinct origins (curate.optout.hosts.origin_of) of the urls of some units' input files, sorted."""
    from curate.optout.hosts import origin_of

    output, unit_ids = item
    fs, out = fsutil.get_fs(output)
    lay, found = RunLayout(out), set()
    for u in unit_ids:
        urls = pq.read_table(lay.input_unit(u), columns=[COL.URL], filesystem=fs)[COL.URL]
        found.update(origin_of(url) for url in urls.unique().to_pylist() if url)
    return sorted(found - {None})


def fetch_origins(item: tuple[list[str], DownloadConfig]) -> pa.Table:
    """Ray task body: the optout_hosts rows of some origins (curate.optout.hosts.fetch_host_policies)."""
    from curate.optout.hosts import fetch_host_policies

    origins, dl = item
    return conform(fetch_host_policies(origins, dl), "optout_hosts")


def _chunks(items: list, n: int) -> list[list]:
    return [items[i:i + n] for i in range(0, len(items), n)]


def _write(fs, path: str, parts: list[pa.Table]) -> pa.Table:
    """The union of `parts`, one row per (origin, signal) (the later fetch wins), sorted, written atomically."""
    from curate.stage_io import parquet_bytes

    if not parts:
        parts = [table_schema("optout_hosts").empty_table()]
    table = pa.concat_tables([conform(p, "optout_hosts") for p in parts])
    seen, keep = set(), []
    for i, key in reversed(list(enumerate(zip(table["origin"].to_pylist(), table["signal"].to_pylist())))):
        if key not in seen:
            seen.add(key)
            keep.append(i)
    table = table.take(pa.array(sorted(keep), pa.int64())).sort_by([("origin", "ascending"), ("signal", "ascending")])
    fsutil.atomic_write(fs, path, parquet_bytes(table))
    return table


def optout_prepass(cfg: RunConfig, units: list, done: set[int]) -> dict | None:
    """Fetches the policies of every origin of the units not yet complete (not in `done`) that
    stage/optout_hosts.parquet lacks (a resumed run reuses the rows it has), in parallel tasks of ORIGINS_PER_TASK
    origins; writes the table atomically (every FLUSH_TASKS tasks and at the end). Skipped (None) when robots_txt and
    tdmrep are both off. Returns {origins, fetched, reused} and prints one line."""
    from curate.parallel import parallel_map

    if not signals_on(cfg.download):
        return None
    fs, out = fsutil.get_fs(cfg.output)
    path = RunLayout(out).stage_optout_hosts
    todo = [u.unit_id for u in units if u.unit_id not in done]
    found = parallel_map(unit_origins, [(cfg.output, c) for c in _chunks(todo, UNITS_PER_TASK)])
    origins = sorted(set().union(*found)) if found else []
    have = read_hosts(path)
    known = set(have["origin"].to_pylist()) if have is not None else set()
    missing = [o for o in origins if o not in known]
    parts = [have] if have is not None else []
    pending: list[pa.Table] = []

    def on_result(_i, rows: pa.Table) -> None:
        pending.append(rows)
        if len(pending) >= FLUSH_TASKS:
            parts[:] = [_write(fs, path, parts + pending)]
            pending.clear()

    parallel_map(fetch_origins, [(c, cfg.download) for c in _chunks(missing, ORIGINS_PER_TASK)],
                 on_result=on_result, spread=True)
    if pending or have is None:
        _write(fs, path, parts + pending)
    res = {"origins": len(origins), "fetched": len(missing), "reused": len(origins) - len(missing)}
    print(f"opt-out policies: {res['origins']} origins of {len(todo)} units to fetch, {res['fetched']} fetched, "
          f"{res['reused']} reused from {path}", file=sys.stderr)
    return res


def publish_hosts(cfg: RunConfig) -> int | None:
    """Phase C: metadata/optout_hosts.parquet, the stage table conformed to schemas/optout_hosts.json (for
    audits: what each origin's policy said and when it was read). Returns its rows; None without a table."""
    from curate.stage_io import parquet_bytes

    fs, out = fsutil.get_fs(cfg.output)
    lay = RunLayout(out)
    table = read_hosts(lay.stage_optout_hosts)
    if table is None:
        return None
    fsutil.atomic_write(fs, lay.optout_hosts, parquet_bytes(conform(table, "optout_hosts")))
    return table.num_rows
