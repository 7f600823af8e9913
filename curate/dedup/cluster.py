"""Global exact and near-duplicate clustering over hashes (phase B): multi-index banding, union-find, representatives.

How near-duplicates are found (no false negatives against brute force, up to the giant-bucket rule):
  * identical hash values are collapsed first, so a million blank images are one value, not a million;
  * the 64 bits are split into k+1 bands; two hashes within Hamming distance k agree exactly on at least
    one band (pigeonhole), so only hashes sharing a (band, value) bucket are compared;
  * giant buckets: in a bucket of more than `max_bucket` distinct hashes (sorted ascending), every member is
    compared with the first `max_bucket` members only, so work is bounded by n * max_bucket per band. A pair
    of two later members is then found only through another band or through the chain of an earlier member;
    the pairs skipped this way are the only difference from brute force (BucketStats counts the buckets);
  * the pairs become edges of a graph over rows (plus edges between rows of equal hash and of equal sha256);
    its connected components are the clusters (scipy's union-find-equivalent connected_components).
Cost: random hashes share a given b-bit band value with probability 2^-b, so the join compares about
(k+1) * n^2 / 2^(64/(k+1)+1) pairs until buckets reach max_bucket (then at most (k+1) * n * max_bucket).
Measured (tests/bench/results/dedup.json, 2 shared cores, numpy version): k=3 (16-bit bands) 1M in 6 s,
4M in 44 s, 16M in 7 min / 3 GB; the default k=8 (7-bit bands) 200k in 27 s, growing ~n^2 up to the cap.
k=8 is the smallest k whose pairwise F1 on the real-photo near-duplicate set (tests/test_cluster.py) stays
well above imagehash's; runs of many millions of images want a smaller k or a larger cluster.
Representative of a cluster: highest clip_score (nulls last), then largest width*height, then smallest uid.
Reasons: a row byte-identical (same sha256) to its representative gets `duplicate:sha256`; every other member
gets `duplicate:duplicate_of:<uid of representative>`. Rows within k of an evaluation hash get `eval_overlap`
and are removed before clustering, so a cluster's representative is never an evaluation image.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from curate.config import DedupConfig
from curate.schema import COL, Status, reason

OUT_SCHEMA = pa.schema([(COL.UID, pa.string()), (COL.STATUS, pa.string()), (COL.REASON, pa.string())])
_EMPTY_PAIRS = (np.zeros(0, np.int64), np.zeros(0, np.int64))


@dataclass
class BucketStats:
    """Counts of the banded join, for logs and the benchmark."""
    compared: int = 0          # hash pairs whose distance was computed
    giant_buckets: int = 0     # buckets above max_bucket (compared against their first members only)


def bands(k: int) -> list[tuple[int, int]]:
    """(shift, width) of the k+1 bands that split 64 bits as evenly as possible."""
    if not 0 <= k < 32:
        raise ValueError(f"dedup.k must be in [0, 31], got {k}")
    m = k + 1
    widths = [64 // m + (1 if i < 64 % m else 0) for i in range(m)]
    shifts = np.cumsum([0] + widths[:-1])
    return [(int(s), w) for s, w in zip(shifts, widths)]


def band_values(h: np.ndarray, shift: int, width: int) -> np.ndarray:
    """The `width` bits of each uint64 in `h` starting at bit `shift` (from the least significant)."""
    return (h >> np.uint64(shift)) & np.uint64((1 << width) - 1)


def bucket_pairs(h: np.ndarray, start: np.ndarray, end: np.ndarray, k: int, max_bucket: int,
                 stats: BucketStats | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j), i < j, within one bucket ([start[i], end[i]) holds i) and distance <= k.

    `h` is grouped by bucket and ascending within each; i is compared with j only when i is among the first
    `max_bucket` members of its bucket. Vectorised over all buckets at once: step d compares i with i+d."""
    idx = np.arange(len(h), dtype=np.int64)
    limit = np.where(idx - start < max_bucket, end, idx + 1)  # later members of giant buckets start nothing
    out_i, out_j = [], []
    active = idx[idx + 1 < limit]
    d = 1
    while active.size:
        j = active + d
        close = np.bitwise_count(h[active] ^ h[j]) <= k
        out_i.append(active[close])
        out_j.append(j[close])
        if stats is not None:
            stats.compared += int(active.size)
        d += 1
        active = active[active + d < limit[active]]
    if not out_i:
        return _EMPTY_PAIRS
    return np.concatenate(out_i), np.concatenate(out_j)


def _group_bounds(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For sorted `keys`: per element, the start and end of its run of equal keys."""
    n = len(keys)
    new = np.ones(n, bool)
    new[1:] = keys[1:] != keys[:-1]
    starts = np.flatnonzero(new)
    sizes = np.diff(np.append(starts, n))
    return np.repeat(starts, sizes), np.repeat(starts + sizes, sizes)


def near_pairs(uniq: np.ndarray, k: int, max_bucket: int, stats: BucketStats | None = None):
    """All index pairs (a, b), a < b, of sorted distinct hashes `uniq` within distance k (banded join)."""
    pa_, pb_ = [], []
    for shift, width in bands(k):
        vals = band_values(uniq, shift, width)
        order = np.argsort(vals, kind="stable")  # stable: ascending hash within a bucket, as uniq is sorted
        start, end = _group_bounds(vals[order])
        if stats is not None:
            sizes = end - start
            stats.giant_buckets += int(np.count_nonzero(sizes[start == np.arange(len(start))] > max_bucket))
        i, j = bucket_pairs(uniq[order], start, end, k, max_bucket, stats)
        a, b = order[i], order[j]
        pa_.append(np.minimum(a, b))
        pb_.append(np.maximum(a, b))
    return _unique_pairs(np.concatenate(pa_), np.concatenate(pb_))


def _unique_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if a.size == 0:
        return _EMPTY_PAIRS
    ab = np.unique(np.stack([a, b], axis=1), axis=0)
    return ab[:, 0].astype(np.int64), ab[:, 1].astype(np.int64)


def cross_pairs(data: np.ndarray, probe: np.ndarray, k: int) -> np.ndarray:
    """Indices into `data` of hashes within distance k of any hash in `probe` (exact banded join, no cap:
    the probe set, e.g. evaluation hashes, is small)."""
    hit = np.zeros(len(data), bool)
    if len(data) == 0 or len(probe) == 0:
        return np.flatnonzero(hit)
    for shift, width in bands(k):
        pvals = band_values(probe, shift, width)
        order = np.argsort(pvals, kind="stable")
        pvals, psorted = pvals[order], probe[order]
        dvals = band_values(data, shift, width)
        lo = np.searchsorted(pvals, dvals, "left")
        cnt = np.searchsorted(pvals, dvals, "right") - lo
        rows = np.repeat(np.arange(len(data)), cnt)
        offset = np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)  # 0.. within each row's range
        close = np.bitwise_count(data[rows] ^ psorted[np.repeat(lo, cnt) + offset]) <= k
        hit[rows[close]] = True
    return np.flatnonzero(hit)


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
    eval_hits = cross_pairs(uniq, load_eval_hashes(cfg.eval_hashes, _hash_col(cfg)), cfg.k)
    if eval_hits.size:
        banned = np.isin(inv, eval_hits)
    src, dst = _edges(meta, inv, pairs, banned, cfg)
    graph = coo_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    members = np.flatnonzero(np.bincount(comp, minlength=n)[comp] > 1)
    reps = _representatives(meta, comp, members) if members.size else members
    dup = members != reps
    return _output(meta, np.flatnonzero(banned), members[dup], reps[dup])


def find_duplicates(meta: pa.Table, cfg: DedupConfig = DedupConfig(), stats: BucketStats | None = None) -> pa.Table:
    """Rows of `meta` (uid, sha256, phash, dhash, clip_score, width, height; 'ok' rows only) to drop, as a
    table of uid, status, reason: eval_overlap, or duplicate with detail sha256 / duplicate_of:<uid>."""
    if not cfg.enabled or meta.num_rows == 0:
        return OUT_SCHEMA.empty_table()
    uniq, inv = _hashes(meta, cfg)
    return resolve(meta, cfg, uniq, inv, near_pairs(uniq, cfg.k, cfg.max_bucket, stats))


# ---------------------------------------------------------------- Ray Data version (same output, spread out)

_BAND, _PART, _BVAL, _A, _B = "band", "part", "band_value", "hash_a", "hash_b"
HASHES_PER_GROUP = 2_000_000  # band values are spread over parts so one map_groups call sees about this many


def _band_rows(batch: pa.Table, hcol: str, k: int, parts: int) -> dict:
    """flat_map, vectorised: each distinct hash of an 'ok' row becomes k+1 rows (band, part, band value, hash);
    `part` (band value mod parts) spreads a band over several groups without splitting any bucket."""
    keep = pc.and_(pc.equal(batch[COL.STATUS], Status.OK), pc.is_valid(batch[hcol]))
    h = np.unique(batch.filter(keep)[hcol].cast(pa.uint64()).to_numpy())
    spec = bands(k)
    vals = np.concatenate([band_values(h, s, w) for s, w in spec]) if len(h) else np.zeros(0, np.uint64)
    return {_BAND: np.repeat(np.arange(len(spec), dtype=np.int16), len(h)),
            _PART: (vals % np.uint64(parts)).astype(np.int32), _BVAL: vals, hcol: np.tile(h, len(spec))}


def _group_pairs(group: dict, hcol: str, k: int, max_bucket: int) -> dict:
    """map_groups over one (band, part): all its buckets at once, by the same rule as near_pairs."""
    vals = np.asarray(group[_BVAL], dtype=np.uint64)
    h = np.asarray(group[hcol], dtype=np.uint64)
    order = np.lexsort((h, vals))  # by bucket, ascending hash within it
    vals, h = vals[order], h[order]
    distinct = np.ones(len(h), bool)
    distinct[1:] = (vals[1:] != vals[:-1]) | (h[1:] != h[:-1])  # the same hash may come from several blocks
    vals, h = vals[distinct], h[distinct]
    start, end = _group_bounds(vals)
    i, j = bucket_pairs(h, start, end, k, max_bucket)
    return {_A: h[i], _B: h[j]}


def _read_meta(paths: list[str], columns: list[str]) -> pa.Table:
    """The 'ok' rows of the stage ledgers, only the columns clustering needs."""
    tables = [pq.read_table(p, columns=columns + [COL.STATUS], filters=[(COL.STATUS, "=", Status.OK)])
              for p in paths]
    return pa.concat_tables(tables).select(columns)


def find_duplicates_ray(paths: list[str], cfg: DedupConfig = DedupConfig()) -> pa.Table:
    """find_duplicates over stage ledgers `paths`, with the banded pair search run as Ray Data jobs
    (read_parquet -> band rows -> groupby(band, part).map_groups -> pairs); union-find on the driver.

    A group holds whole (band, value) buckets, so its pairs are exactly those of near_pairs; the pair list
    (small: near-duplicates only) comes back to the driver for the connected components."""
    import ray

    if not cfg.enabled or not paths:
        return OUT_SCHEMA.empty_table()
    hcol = _hash_col(cfg)
    meta = _read_meta(paths, [COL.UID, COL.SHA256, COL.PHASH, COL.DHASH, COL.CLIP_SCORE, COL.WIDTH, COL.HEIGHT])
    if meta.num_rows == 0:
        return OUT_SCHEMA.empty_table()
    parts = max(1, -(-meta.num_rows // HASHES_PER_GROUP))
    ctx = ray.data.DataContext.get_current()
    saved = ctx.shuffle_strategy
    # sort-based shuffle runs as plain tasks; the default hash shuffle starts aggregator actors, which
    # doubled this job's time on a small cluster (measured: 57 s -> 28 s in tests/test_cluster.py)
    ctx.shuffle_strategy = ray.data.context.ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        pairs = _ray_pairs(paths, hcol, cfg, parts)
    finally:
        ctx.shuffle_strategy = saved
    uniq, inv = _hashes(meta, cfg)
    ha, hb = (np.concatenate(x).astype(np.uint64) if x else np.zeros(0, np.uint64) for x in pairs)
    return resolve(meta, cfg, uniq, inv, _unique_pairs(np.searchsorted(uniq, ha), np.searchsorted(uniq, hb)))


def _ray_pairs(paths: list[str], hcol: str, cfg: DedupConfig, parts: int) -> tuple[list, list]:
    """The Ray Data job: (hash_a chunks, hash_b chunks) of every pair within distance k."""
    import ray

    ds = (ray.data.read_parquet(paths, columns=[hcol, COL.STATUS])
          .map_batches(_band_rows, fn_kwargs={"hcol": hcol, "k": cfg.k, "parts": parts}, batch_format="pyarrow")
          .groupby([_BAND, _PART], num_partitions=max(1, int(ray.cluster_resources().get("CPU", 1))))
          .map_groups(_group_pairs, fn_kwargs={"hcol": hcol, "k": cfg.k, "max_bucket": cfg.max_bucket},
                      batch_format="numpy"))
    found = [b for b in ds.iter_batches(batch_format="numpy") if len(b[_A])]
    return [b[_A] for b in found], [b[_B] for b in found]
