"""The near-duplicate pair search as a Ray Data job over the cluster's CPUs (same pairs as curate.dedup's)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from curate.config import DedupConfig
from curate.dedup.cluster import OUT_SCHEMA, find_duplicates
from curate.dedup.mih import build, plan, table_pairs, unique_pairs
from curate.schema import COL, Status, ledger_schema

TASKS_PER_CPU = 4  # work items per CPU of the cluster: small enough to balance, large enough to amortise a task
META_COLUMNS = [COL.UID, COL.SHA256, COL.PHASH, COL.DHASH, COL.CLIP_SCORE, COL.WIDTH, COL.HEIGHT, COL.RGB_GRID,
                COL.DETAIL]


def _read_meta(paths: list[str], columns: list[str]) -> pa.Table:
    """The 'ok' rows of the stage ledgers, only the columns clustering needs (a stage ledger written before a
    column existed gets it as nulls: rgb_grid, which the colour check then skips, and detail: not plain)."""
    tables = []
    for p in paths:
        present = [c for c in columns if c in pq.read_schema(p).names]
        t = pq.read_table(p, columns=present + [COL.STATUS], filters=[(COL.STATUS, "=", Status.OK)])
        for c in columns:
            if c not in present:
                t = t.append_column(c, pa.nulls(t.num_rows, ledger_schema().field(c).type))
        tables.append(t.select(columns))
    return pa.concat_tables(tables)


def _pairs_batch(batch: dict, tables: list, k: int) -> dict:
    """map_batches over work items (table, lo, hi): the pairs of one chunk of one table's buckets."""
    out_a, out_b = [], []
    for t, lo, hi in zip(batch["table"], batch["lo"], batch["hi"]):
        a, b, _ = table_pairs(ray.get(tables[int(t)]), k, int(lo), int(hi))
        out_a.append(np.minimum(a, b))
        out_b.append(np.maximum(a, b))
    return {"a": np.concatenate(out_a), "b": np.concatenate(out_b)}


def ray_pairs(uniq: np.ndarray, k: int, max_bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """The Ray Data job: every pair of `uniq` within distance k, as sorted distinct index pairs (a pair
    search for curate.dedup.find_duplicates, in place of its in-process near_pairs).

    The tables (hashes sorted by substring key, ~24 bytes per hash each) are built once on the driver and put
    in the object store; each task probes one chunk of one table's buckets against the whole table, read
    zero-copy from its node's store."""
    refs, items = [], []
    per_task = max(1024, -(-len(uniq) // (TASKS_PER_CPU * max(1, int(ray.cluster_resources().get("CPU", 1))))))
    for sub in plan(k, len(uniq), len(uniq)):
        table = build(uniq, sub, max_bucket)
        items += [{"table": len(refs), "lo": lo, "hi": min(len(table.distinct), lo + per_task)}
                  for lo in range(0, len(table.distinct), per_task)]
        refs.append(ray.put(table))
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
        _pairs_batch, batch_size=1, batch_format="numpy",
        fn_kwargs={"tables": refs, "k": k})
    found = list(ds.iter_batches(batch_format="numpy"))
    if not found:
        return unique_pairs(np.zeros(0, np.int64), np.zeros(0, np.int64))
    return unique_pairs(np.concatenate([f["a"] for f in found]), np.concatenate([f["b"] for f in found]))


def find_duplicates_ray(paths: list[str], cfg: DedupConfig = DedupConfig()) -> pa.Table:
    """find_duplicates over stage ledgers `paths`, with the pair search run as a Ray Data job spread over the
    cluster's CPUs (chunks of each table's buckets); reading and clustering on the driver, whose input is only the
    ~90 bytes per image clustering needs and whose pair list is near-duplicates only."""
    if not cfg.enabled or not paths:
        return OUT_SCHEMA.empty_table()
    return find_duplicates(_read_meta(paths, META_COLUMNS), cfg, pair_search=ray_pairs)
