"""Global exact and near-duplicate clustering over hashes (phase B): multi-index search, union-find, representatives.

How near-duplicates are found (no false negatives against brute force, up to the giant-bucket rule):
  * identical hash values are collapsed first, so a million blank images are one value, not a million;
  * every pair of distinct hashes within Hamming distance k is found by multi-index hashing with neighbour
    probing (curate/dedup/mih.py): the 64 bits are split into a few substrings with small search radii whose
    sum guarantees that a pair within k is within the radius on at least one of them; each substring indexes
    the hashes by its top ~log2(n) bits and every bucket is compared with the buckets at those radii;
  * giant buckets: only the first `max_bucket` hashes of a bucket (ascending) take part in its comparisons, so
    work is bounded by probes * n * max_bucket; pairs of two later members are found only through another
    substring or through a chain of links, the only difference from brute force (SearchStats counts them);
  * the pairs become edges of a graph over rows (plus edges between rows of equal hash and of equal sha256);
    its connected components are the clusters (scipy's union-find-equivalent connected_components).
Measured (tests/bench/results/dedup.json, 2 shared cores): see that file; at the default k=8 16M hashes fit in
minutes, where the former k+1-band join (7-bit bands) already took 27 s at 200k and grew as n^2.
k=8 is the smallest k whose pairwise F1 on the real-photo near-duplicate set (tests/test_cluster.py) stays well
above imagehash's (pHash distances are even, so odd k add nothing).
Representative of a cluster: highest clip_score (nulls last), then largest width*height, then smallest uid.
Reasons: a row byte-identical (same sha256) to its representative gets `duplicate:sha256`; every other member
gets `duplicate:duplicate_of:<uid of representative>`. Rows within k of an evaluation hash get `eval_overlap`
and are removed before clustering, so a cluster's representative is never an evaluation image.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from curate.config import DedupConfig
from curate.dedup.mih import SearchStats, build, cross_hits, plan, near_pairs, table_pairs, unique_pairs
from curate.schema import COL, Status, reason

OUT_SCHEMA = pa.schema([(COL.UID, pa.string()), (COL.STATUS, pa.string()), (COL.REASON, pa.string())])


def load_eval_hashes(path: str | None, column: str = COL.PHASH) -> np.ndarray:
    """Evaluation-image hashes as uint64: a Parquet file with a `column` column (uint64/int64, or hex
    strings), or a text file with one hash a line: 16 hex digits (imagehash's str), 0x-hex, or a decimal
    integer of another length."""
    if not path:
        return np.zeros(0, np.uint64)
    p = Path(path)
    if p.suffix in (".parquet", ".pq"):
        col = pq.read_table(p, columns=[column])[column].drop_null()
        if pa.types.is_string(col.type):
            return np.array([int(x, 16) for x in col.to_pylist()], np.uint64)
        return col.cast(pa.uint64()).to_numpy()
    out = []
    for line in p.read_text().split():
        s = line.strip().lower()
        out.append(int(s, 16) if (len(s) == 16 or s.startswith("0x") or not s.isdigit()) else int(s))
    return np.array(out, np.uint64)


def _hash_col(cfg: DedupConfig) -> str:
    return COL.PHASH if cfg.hash == "phash" else COL.DHASH


def _hashes(meta: pa.Table, cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """(uniq, inv): sorted distinct hashes of the rows with a hash, and each row's index into uniq (-1: none)."""
    col = meta[_hash_col(cfg)]
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    inv = np.full(meta.num_rows, -1, np.int64)
    uniq, inv_valid = np.unique(col.drop_null().cast(pa.uint64()).to_numpy(), return_inverse=True)
    inv[valid] = inv_valid
    return uniq, inv


def _first_rows(groups: np.ndarray, n_groups: int) -> np.ndarray:
    """For each group id 0..n_groups-1, the first row (smallest index) carrying it; rows with -1 are ignored."""
    first = np.full(n_groups, -1, np.int64)
    rows = np.flatnonzero(groups >= 0)
    ids, at = np.unique(groups[rows], return_index=True)  # return_index: the first occurrence
    first[ids] = rows[at]
    return first


def _edges(meta: pa.Table, inv: np.ndarray, pairs, banned: np.ndarray, cfg: DedupConfig):
    """Graph edges between rows: equal hash, near pairs, equal sha256; rows in `banned` take no part."""
    first = _first_rows(inv, int(inv.max()) + 1 if inv.size else 0)
    rows = np.flatnonzero(inv >= 0)
    a, b = pairs
    src, dst = [rows, first[a]], [first[inv[rows]], first[b]]
    if cfg.exact_sha256 and COL.SHA256 in meta.column_names:
        sha = pc.dictionary_encode(meta[COL.SHA256]).combine_chunks()
        codes = sha.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        sfirst = _first_rows(codes, len(sha.dictionary))
        rows = np.flatnonzero(codes >= 0)
        src.append(rows)
        dst.append(sfirst[codes[rows]])
    src, dst = np.concatenate(src), np.concatenate(dst)
    keep = ~(banned[src] | banned[dst])
    return src[keep], dst[keep]


def _representatives(meta: pa.Table, comp: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Per row in `members`, the row of its cluster's representative (clip desc nulls last, area desc, uid)."""
    sub = meta.take(pa.array(members))
    area = pc.multiply(sub[COL.WIDTH].cast(pa.int64()), sub[COL.HEIGHT].cast(pa.int64()))
    clip = sub[COL.CLIP_SCORE].cast(pa.float64())
    clip = pc.if_else(pc.is_nan(clip), pa.scalar(None, pa.float64()), clip)
    t = pa.table({"comp": comp[members], "clip": clip, "area": area, "uid": sub[COL.UID], "row": members})
    keys = [("comp", "ascending"), ("clip", "descending"), ("area", "descending"), ("uid", "ascending")]
    order = pc.sort_indices(t, sort_keys=[(c, o, "at_end") for c, o in keys]).to_numpy()
    c_sorted = comp[members][order]
    head = np.ones(len(order), bool)
    head[1:] = c_sorted[1:] != c_sorted[:-1]
    rep_of_comp = np.full(int(comp.max()) + 1, -1, np.int64)
    rep_of_comp[c_sorted[head]] = members[order][head]
    return rep_of_comp[comp[members]]


def _output(meta: pa.Table, evals: np.ndarray, dups: np.ndarray, reps: np.ndarray) -> pa.Table:
    """The uid/status/reason table: eval overlaps first, then duplicates in row order."""
    uid = meta[COL.UID].combine_chunks()
    rep_uid = uid.take(pa.array(reps, pa.int64()))
    near = pc.binary_join_element_wise(reason(Status.DUPLICATE, "duplicate_of:"), rep_uid, "")
    if COL.SHA256 in meta.column_names:
        sha = meta[COL.SHA256].combine_chunks()
        same = pc.fill_null(pc.equal(sha.take(pa.array(dups, pa.int64())), sha.take(pa.array(reps, pa.int64()))), False)
        near = pc.if_else(same, reason(Status.DUPLICATE, "sha256"), near)
    n_eval, n_dup = len(evals), len(dups)
    return pa.table({
        COL.UID: pa.concat_arrays([uid.take(pa.array(evals, pa.int64())), uid.take(pa.array(dups, pa.int64()))]),
        COL.STATUS: pa.array([Status.EVAL_OVERLAP] * n_eval + [Status.DUPLICATE] * n_dup, pa.string()),
        COL.REASON: pa.concat_arrays([pa.array([reason(Status.EVAL_OVERLAP)] * n_eval, pa.string()),
                                      near.cast(pa.string())]),
    }, schema=OUT_SCHEMA)


def resolve(meta: pa.Table, cfg: DedupConfig, uniq: np.ndarray, inv: np.ndarray, pairs) -> pa.Table:
    """Turns near pairs (indices into `uniq`) into the rows to drop: eval overlaps, then duplicates."""
    n = meta.num_rows
    banned = np.zeros(n, bool)
    eval_hits = cross_hits(uniq, load_eval_hashes(cfg.eval_hashes, _hash_col(cfg)), cfg.k)
    if eval_hits.size:
        banned = np.isin(inv, eval_hits)
    src, dst = _edges(meta, inv, pairs, banned, cfg)
    graph = coo_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    members = np.flatnonzero(np.bincount(comp, minlength=n)[comp] > 1)
    reps = _representatives(meta, comp, members) if members.size else members
    dup = members != reps
    return _output(meta, np.flatnonzero(banned), members[dup], reps[dup])


def find_duplicates(meta: pa.Table, cfg: DedupConfig = DedupConfig(), stats: SearchStats | None = None,
                    spread: bool = False) -> pa.Table:
    """Rows of `meta` (uid, sha256, phash, dhash, clip_score, width, height; 'ok' rows only) to drop, as a
    table of uid, status, reason: eval_overlap, or duplicate with detail sha256 / duplicate_of:<uid>.
    spread: run the pair search as a Ray Data job over the connected cluster instead of this node's threads."""
    if not cfg.enabled or meta.num_rows == 0:
        return OUT_SCHEMA.empty_table()
    uniq, inv = _hashes(meta, cfg)
    pairs = _ray_pairs(uniq, cfg) if spread else near_pairs(uniq, cfg.k, cfg.max_bucket, stats)
    return resolve(meta, cfg, uniq, inv, pairs)


# ---------------------------------------------------------------- Ray Data version (same output, spread out)

TASKS_PER_CPU = 4  # work items per CPU of the cluster: small enough to balance, large enough to amortise a task


def _read_meta(paths: list[str], columns: list[str]) -> pa.Table:
    """The 'ok' rows of the stage ledgers, only the columns clustering needs."""
    tables = [pq.read_table(p, columns=columns + [COL.STATUS], filters=[(COL.STATUS, "=", Status.OK)])
              for p in paths]
    return pa.concat_tables(tables).select(columns)


def _pairs_batch(batch: dict, tables: list, k: int) -> dict:
    """map_batches over work items (table, lo, hi): the pairs of one chunk of one table's buckets."""
    import ray

    out_a, out_b = [], []
    for t, lo, hi in zip(batch["table"], batch["lo"], batch["hi"]):
        a, b, _ = table_pairs(ray.get(tables[int(t)]), k, int(lo), int(hi))
        out_a.append(np.minimum(a, b))
        out_b.append(np.maximum(a, b))
    return {"a": np.concatenate(out_a), "b": np.concatenate(out_b)}


def _ray_pairs(uniq: np.ndarray, cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """The Ray Data job: every pair of `uniq` within distance k, as sorted distinct index pairs.

    The tables (hashes sorted by substring key, ~24 bytes per hash each) are built once on the driver and put
    in the object store; each task probes one chunk of one table's buckets against the whole table, read
    zero-copy from its node's store."""
    import ray

    refs, items = [], []
    per_task = max(1024, -(-len(uniq) // (TASKS_PER_CPU * max(1, int(ray.cluster_resources().get("CPU", 1))))))
    for sub in plan(cfg.k, len(uniq), len(uniq)):
        table = build(uniq, sub, cfg.max_bucket)
        items += [{"table": len(refs), "lo": lo, "hi": min(len(table.distinct), lo + per_task)}
                  for lo in range(0, len(table.distinct), per_task)]
        refs.append(ray.put(table))
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
        _pairs_batch, batch_size=1, batch_format="numpy",
        fn_kwargs={"tables": refs, "k": cfg.k})
    found = list(ds.iter_batches(batch_format="numpy"))
    if not found:
        return unique_pairs(np.zeros(0, np.int64), np.zeros(0, np.int64))
    return unique_pairs(np.concatenate([f["a"] for f in found]), np.concatenate([f["b"] for f in found]))


def find_duplicates_ray(paths: list[str], cfg: DedupConfig = DedupConfig()) -> pa.Table:
    """find_duplicates over stage ledgers `paths`, with the pair search run as a Ray Data job spread over the
    cluster's CPUs (chunks of each table's buckets); reading and union-find on the driver, whose input is only the
    ~40 bytes per image clustering needs and whose pair list is near-duplicates only."""
    if not cfg.enabled or not paths:
        return OUT_SCHEMA.empty_table()
    meta = _read_meta(paths, [COL.UID, COL.SHA256, COL.PHASH, COL.DHASH, COL.CLIP_SCORE, COL.WIDTH, COL.HEIGHT])
    return find_duplicates(meta, cfg, spread=True)
