"""Benchmark (dedup.json): batched hashing vs imagehash.phash per image (bench_hashing), near-duplicate
clustering at 1M-16M hashes vs brute force, decision quality on a labelled pool of real photo crops, low-detail
images and planted copies (pool), and, given --old-tree, both against the former code. --parts runs a subset and
merges it into the existing dedup.json."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

from tests.bench.common import peak_rss_mb, versions, write_result


def planted(n: int, k: int, dup_fraction: float = 0.1, seed: int = 0) -> np.ndarray:
    """n random 64-bit hashes of which dup_fraction are copies of others with 0..k random bits flipped."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
    m = int(n * dup_fraction)
    src = rng.integers(0, n - m, m)
    flips = np.zeros(m, np.uint64)
    nflip = rng.integers(0, k + 1, m)
    for b in range(k):  # set the b-th flip bit for rows needing more than b flips (collisions only lower it)
        pos = rng.integers(0, 64, m).astype(np.uint64)
        flips |= np.where(nflip > b, np.uint64(1) << pos, np.uint64(0))
    h[n - m:] = h[src] ^ flips
    return h


def _sources(n: int, dup_fraction: float, seed: int) -> np.ndarray:
    """The source row of each copy of planted(n, ..., dup_fraction, seed) (the last len(result) rows), replayed
    from its draws."""
    rng = np.random.default_rng(seed)
    rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
    m = int(n * dup_fraction)
    return rng.integers(0, n - m, m)


def second_hashes(n: int, k: int, dup_fraction: float = 0.1, seed: int = 0) -> np.ndarray:
    """dHashes for planted(n, k, dup_fraction, seed): random, the copies (same rows, same sources) within
    0..k bits of their source's, so the second search has real pairs to find and random ones to reject."""
    src = _sources(n, dup_fraction, seed)
    m = len(src)
    rng = np.random.default_rng(seed + 1)
    d = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
    flips = np.zeros(m, np.uint64)
    nflip = rng.integers(0, k + 1, m)
    for b in range(k):
        flips |= np.where(nflip > b, np.uint64(1) << rng.integers(0, 64, m).astype(np.uint64), np.uint64(0))
    d[n - m:] = d[src] ^ flips
    return d


PLAIN_SHARE = 0.02  # synthetic rows that are plain images (details()): half in 8 placeholder colours (white, black,
                    # greys, ...), half in random ones, so the plain sweep meets crowded brightness cells


def _plain_sources(n: int, dup_fraction: float, seed: int) -> np.ndarray:
    """Which non-copy rows of planted(n, ..., dup_fraction, seed) are plain (every 1/PLAIN_SHARE-th)."""
    return np.arange(0, n - int(n * dup_fraction), int(1 / PLAIN_SHARE))


def details(n: int, dup_fraction: float = 0.1, seed: int = 0) -> np.ndarray:
    """Ledger details for planted(n, ..., dup_fraction, seed): 0.1 (plain) for _plain_sources and their copies,
    20 (a photo) for the others."""
    d = np.full(n, 20.0, np.float32)
    d[_plain_sources(n, dup_fraction, seed)] = 0.1
    src = _sources(n, dup_fraction, seed)
    d[n - len(src):] = d[src]
    return d


def grids(n: int, dup_fraction: float = 0.1, seed: int = 0) -> "pa.Array":
    """rgb_grids for planted(n, ..., dup_fraction, seed): random colours, the plain rows (details) one colour
    with +-2 of noise, the copies their source's (the colour check passes them), as one binary array of n x 48
    bytes."""
    import pyarrow as pa

    src = _sources(n, dup_fraction, seed)
    rng = np.random.default_rng(seed + 2)
    g = rng.integers(0, 256, (n, 48), dtype=np.uint8)
    plain = _plain_sources(n, dup_fraction, seed)
    palette = np.array([[255, 255, 255], [0, 0, 0], [128, 128, 128], [240, 240, 240], [30, 30, 30],
                        [200, 200, 200], [250, 245, 235], [20, 40, 80]])
    colour = np.where(rng.random((len(plain), 1)) < 0.5, palette[rng.integers(0, 8, len(plain))],
                      rng.integers(0, 256, (len(plain), 3)))
    g[plain] = np.clip(np.tile(colour, 16) + rng.integers(-2, 3, (len(plain), 48)), 0, 255)
    g[n - len(src):] = g[src]
    offsets = pa.py_buffer((np.arange(n + 1, dtype=np.int64) * 48).astype(np.int32))
    return pa.Array.from_buffers(pa.binary(), n, [None, offsets, pa.py_buffer(g)])


def _meta(h: np.ndarray, d: np.ndarray | None = None, g: "pa.Array | None" = None, detail=None):
    import pyarrow as pa

    n = len(h)
    return pa.table({"uid": pa.array(np.char.mod("%012d", np.arange(n))), "sha256": pa.nulls(n, pa.string()),
                     "phash": pa.array(h, pa.uint64()),
                     "dhash": pa.nulls(n, pa.uint64()) if d is None else pa.array(d, pa.uint64()),
                     "clip_score": pa.nulls(n, pa.float32()), "width": pa.nulls(n, pa.int32()),
                     "height": pa.nulls(n, pa.int32()), "rgb_grid": pa.nulls(n, pa.binary()) if g is None else g,
                     "detail": pa.nulls(n, pa.float32()) if detail is None else pa.array(detail, pa.float32())})


def _high_water_mb() -> float:
    """Peak RSS of this process image: VmHWM resets at exec, unlike ru_maxrss (inherited from the parent)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return peak_rss_mb()


def cluster_one(n: int, k: int, max_bucket: int) -> dict:
    """One size in this (fresh) process: wall time and peak RSS of find_duplicates (in-process, all cores)."""
    from curate.config import DedupConfig
    from curate.dedup.cluster import SearchStats, find_duplicates

    meta = _meta(planted(n, k), second_hashes(n, k), grids(n), details(n))  # dHash, colours, plain rows: the
    # second search, the colour check and the plain sweep run as in a real run
    find_duplicates(meta.slice(0, 10_000), DedupConfig(k=k, max_bucket=max_bucket))  # numba's cache (compiled
    # again after any edit of cluster.py), outside the timing
    base = _high_water_mb()
    stats = SearchStats()
    t = time.perf_counter()
    out = find_duplicates(meta, DedupConfig(k=k, max_bucket=max_bucket), stats)
    dt = time.perf_counter() - t
    return {"n": n, "k": k, "seconds": round(dt, 2), "peak_rss_mb": _high_water_mb(), "peak_rss_before_clustering_mb": base,
            "dropped": out.num_rows, "pairs_compared": stats.compared, "giant_buckets": stats.giant_buckets,
            "tables": [f"bits {t.shift}-{t.shift + t.width - 1}, index {t.bits}, radius {t.radius}" for t in stats.tables]}


def brute_vs_index(n: int, k: int) -> dict:
    """Brute force all-pairs (numpy, blocked) against the multi-index search on the same n hashes."""
    from curate.dedup.cluster import near_pairs

    u = np.unique(planted(n, k, seed=1))
    near_pairs(u[:100], k, 10**9)  # load the compiled kernel (numba's cache) outside the timing
    t = time.perf_counter()
    found = 0
    for s in range(0, len(u), 2048):
        d = np.bitwise_count(u[s:s + 2048, None] ^ u[None, :]) <= k
        found += int(np.count_nonzero(np.triu(d, s + 1)))  # global j > global i
    t_brute = time.perf_counter() - t
    t = time.perf_counter()
    a, _ = near_pairs(u, k, 10**9)
    t_index = time.perf_counter() - t
    assert len(a) == found, (len(a), found)
    return {"n": n, "k": k, "brute_s": round(t_brute, 2), "multi_index_s": round(t_index, 3),
            "ratio": round(t_brute / t_index, 1), "pairs": found}


def _pool_meta(pool, cfg=None) -> "pa.Table":
    """The clustering input of a labelled pool: hashes, details and colour grids of the stored bytes (cfg's hashing path,
    default DedupConfig()), sha256, stored sizes, no CLIP."""
    import hashlib
    import io

    import pyarrow as pa
    from PIL import Image

    from curate.config import DedupConfig
    from curate.dedup.hashing import add_hashes

    sizes = [Image.open(io.BytesIO(p.data)).size for p in pool]
    hashed = add_hashes(pa.table({"image": [p.data for p in pool]}), cfg or DedupConfig())
    return pa.table({"uid": [f"{i:06d}" for i in range(len(pool))],
                     "sha256": [hashlib.sha256(p.data).hexdigest() for p in pool],
                     "phash": hashed["phash"], "dhash": hashed["dhash"],
                     "clip_score": pa.nulls(len(pool), pa.float32()),
                     "width": pa.array([w for w, _ in sizes], pa.int32()),
                     "height": pa.array([h for _, h in sizes], pa.int32()), "rgb_grid": hashed["rgb_grid"],
                     "detail": hashed["detail"]})


def hash_ceiling(pool, meta, k: int) -> dict:
    """What the hash allows on this pool: the share of copies within k of their original (pHash; pHash or
    dHash), and of planted groups whose copies all are, the most any rule that never chains can keep to one
    member when the original leads."""
    ph, dh = meta["phash"].to_numpy(), meta["dhash"].to_numpy()
    original = {p.group: i for i, p in enumerate(pool) if p.variant == "original"}
    near, either, by_group = [], [], {}
    for i, p in enumerate(pool):
        if p.variant != "original":
            o = original[p.group]
            near.append(int(np.bitwise_count(ph[i] ^ ph[o])) <= k)
            either.append(near[-1] or int(np.bitwise_count(dh[i] ^ dh[o])) <= k)
            by_group.setdefault(p.group, []).append(near[-1])
    variants = {}
    for p, ok in zip([p for p in pool if p.variant != "original"], near):
        variants.setdefault(p.variant, []).append(ok)
    return {"copies_within_k_of_original": _share(near), "copies_within_k_on_either_hash": _share(either),
            "groups_all_copies_within_k": _share([all(v) for v in by_group.values()]),
            "copies_within_k_by_variant": {v: _share(f) for v, f in sorted(variants.items())}}


def _share(flags: list) -> float:
    return round(sum(flags) / max(1, len(flags)), 4)


def _breaks_rule(ph: np.ndarray, dh: np.ndarray, i: int, j: int, detail: str, cfg, meta=None) -> bool:
    """Whether dropped row i and its representative j break the rule of their reason detail (pHash first; a
    plain pair: tests/pipeline/helpers.py plain_agrees on meta's rows)."""
    if detail == "plain":
        from tests.pipeline.helpers import plain_agrees

        rows = meta.select(["detail", "rgb_grid"]).take([i, j]).to_pylist()
        return not plain_agrees(*rows, cfg)
    dp, dd = int(np.bitwise_count(ph[i] ^ ph[j])), int(np.bitwise_count(dh[i] ^ dh[j]))
    if detail == "second_hash":
        return dp > cfg.loose_k or dd > cfg.second_k
    return dp > cfg.k or (detail == "low_detail" and dd > cfg.low_detail_k)


def pool_scores(pool, meta, drops, cfg=None) -> dict:
    """Decision quality against the planted groups: originals without a copy dropped, groups keeping exactly
    one member, pairwise precision/recall of 'same cluster', largest cluster, distance-rule violations."""
    from collections import Counter

    group = np.array([p.group for p in pool])
    uids = meta["uid"].to_pylist()
    row = {u: i for i, u in enumerate(uids)}
    label = np.arange(len(pool))
    dropped = np.zeros(len(pool), bool)
    violations = 0
    ph, dh = meta["phash"].to_numpy(), meta["dhash"].to_numpy()
    if cfg is None:
        from curate.config import DedupConfig
        cfg = DedupConfig()
    for d in drops.to_pylist():
        i = row[d["uid"]]
        dropped[i] = True
        if ":" in d["reason"][len("duplicate:"):]:
            label[i] = row[d["reason"].rsplit(":", 1)[1]]
            violations += _breaks_rule(ph, dh, i, label[i], d["reason"].split(":")[1], cfg, meta)
    size = Counter(group.tolist())
    single = np.array([size[g] == 1 for g in group])
    kept_per_group = Counter(group[~dropped].tolist())
    planted = [g for g, c in size.items() if c > 1]
    iu = np.triu_indices(len(pool), 1)
    truth, pred = (group[:, None] == group[None, :])[iu], (label[:, None] == label[None, :])[iu]
    tp = int((truth & pred).sum())
    low = np.array([p.kind.startswith("low:") for p in pool])
    low_group = dict(zip(group.tolist(), low.tolist()))
    return {"images": len(pool), "originals_without_copy": int(single.sum()), "planted_groups": len(planted),
            "without_copy_dropped": round(float(dropped[single].mean()), 4),
            "without_copy_dropped_low_detail": round(float(dropped[single & low].mean()), 4),
            "without_copy_dropped_photos": round(float(dropped[single & ~low].mean()), 4),
            "groups_keeping_exactly_one": round(sum(kept_per_group[g] == 1 for g in planted) / len(planted), 4),
            "photo_groups_keeping_exactly_one": _share([kept_per_group[g] == 1 for g in planted if not low_group[g]]),
            "low_detail_groups_keeping_exactly_one": _share([kept_per_group[g] == 1 for g in planted if low_group[g]]),
            "groups_keeping_none": round(sum(kept_per_group[g] == 0 for g in planted) / len(planted), 4),
            "groups_keeping_two_or_more": round(sum(kept_per_group[g] >= 2 for g in planted) / len(planted), 4),
            "pairwise_precision": round(tp / max(1, int(pred.sum())), 4),
            "pairwise_recall": round(tp / max(1, int(truth.sum())), 4),
            "largest_cluster": int(max(Counter(label.tolist()).values())),
            "rule_violations": violations}


OLD_CODE_SNIPPET = ("import sys, pyarrow.parquet as pq; from curate.config import DedupConfig; "
                    "from curate.dedup.cluster import find_duplicates; "
                    "pq.write_table(find_duplicates(pq.read_table(sys.argv[1]), DedupConfig()), sys.argv[2])")


def _old_drops(meta, old_tree: str):
    """find_duplicates of the code at `old_tree` (a checkout of the former version) on `meta`."""
    import tempfile
    from pathlib import Path

    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "meta.parquet", Path(tmp) / "drops.parquet"
        pq.write_table(meta, src)
        subprocess.run([sys.executable, "-c", OLD_CODE_SNIPPET, str(src), str(dst)], cwd=old_tree, check=True)
        return pq.read_table(dst)


SETTINGS = (  # the settings measured beside the default (rejected ones stay in dedup.json with their figures)
    dict(low_detail_bits=10, low_detail_k=8, second_k=-1),  # the former default: no second search
    *[dict(second_k=-1, low_detail_bits=b, low_detail_k=lk) for b in (10, 12, 14) for lk in (6, 7, 8)],
    *[dict(second_k=sk, loose_k=lk) for sk in (4, 5, 6, 8) for lk in (12, 16, 20)],
    *[dict(low_detail_bits=b, low_detail_k=lk) for b in (8, 10, 12, 14, 16, 33) for lk in (5, 6, 7, 8)],
    *[dict(second_k=6, low_detail_bits=b, low_detail_k=lk) for b in (10, 12, 14) for lk in (6, 7, 8)],
    dict(colour_check=False),  # the hash rule alone (the default before the colour check)
    *[dict(colour_chroma=c) for c in (0.1, 0.12, 0.2, 0.25)],
    dict(plain_detail=0.0),  # no plain rule (the default of the last landing)
    *[dict(plain_detail=d, plain_tol=t) for d in (0.25, 0.5, 1.0) for t in (1.0, 1.5, 2.0) if (d, t) != (0.5, 1.5)],
)
PLAIN_BRIGHTNESS = (0.03, 0.05, 0.1, 0.25)  # cluster.PLAIN_BRIGHTNESS values measured on every pool (plain_sweep)
SEEDS = (1, 2, 3, 4, 5)  # other pools: the colour check was picked looking at seeds 0-3 (and the quality pool)
GRID_OFFSETS = (8.0, 16.0, 32.0)  # cluster.GRID_OFFSET values measured (the default is one of them)
SETTING_KEYS = ("without_copy_dropped", "groups_keeping_exactly_one", "photo_groups_keeping_exactly_one",
                "low_detail_groups_keeping_exactly_one", "pairwise_precision", "pairwise_recall", "rule_violations")


def _setting_scores(pool, meta, cfg) -> dict:
    """The headline scores of one setting (its dedup fields that the rule reads, and SETTING_KEYS)."""
    from curate.dedup.cluster import find_duplicates

    scores = pool_scores(pool, meta, find_duplicates(meta, cfg), cfg)
    fields = ("low_detail_bits", "low_detail_k", "second_k", "loose_k", "colour_check", "colour_chroma",
              "plain_detail", "plain_tol")
    return {"setting": {f: getattr(cfg, f) for f in fields}, **{k: scores[k] for k in SETTING_KEYS}}


def pool_quality(n_bases: int, seed: int, old_tree: str | None) -> dict:
    """Decision quality on a labelled pool (tests/bench/dedup_pool.py): today's rule at the default and at the
    SETTINGS beside it and, when old_tree is given, the former connected-components code."""
    from dataclasses import replace

    from curate.config import DedupConfig
    from curate.dedup.cluster import find_duplicates
    from tests.bench.dedup_pool import make_pool

    pool = make_pool(n_bases, seed)
    meta = _pool_meta(pool)
    cfg = DedupConfig()
    out = {"n_bases": n_bases, "seed": seed, "k": cfg.k,
           "pool": "skimage photo crops (64-96 and 200-256 px, IoU < 0.5 between crops of one photo) and generated "
                   "low-detail images (plain, gradient, night sky, product on white, logo, text on white; 15 %); "
                   "25 % get 1-3 copies: downscale 0.5-0.8, JPEG q20-60, 2-6 % crop, brightness +-5-20 %",
           "after": pool_scores(pool, meta, find_duplicates(meta, cfg)),
           "hash_ceiling": hash_ceiling(pool, meta, cfg.k)}
    out["settings"] = [_setting_scores(pool, meta, replace(cfg, **kw)) for kw in SETTINGS]
    other = replace(cfg, fast_hash=not cfg.fast_hash)  # the other hashing path, same rule: what the default costs
    out["hashing_path"] = {"default_fast_hash": cfg.fast_hash, f"fast_hash_{other.fast_hash}".lower(): pool_scores(
        pool, (m := _pool_meta(pool, other)), find_duplicates(m, other))}
    if old_tree:
        out["before"] = pool_scores(pool, meta, _old_drops(meta, old_tree))
    out["grid_offset"] = grid_offsets(pool, meta)
    others = other_pools(n_bases)
    out["seeds"] = other_seeds(others)
    out["plain"] = plain_sweep([(seed, pool, meta)] + others)
    out["low_detail"] = low_detail_measures(pool, meta)
    out["options"] = _options(pool, meta, cfg.k)
    return out


def grid_offsets(pool, meta) -> list[dict]:
    """The default rule with the colour check's per-channel offset (cluster.GRID_OFFSET, a constant: the hue of
    a near-black cell is JPEG noise) at GRID_OFFSETS."""
    from curate.config import DedupConfig
    from curate.dedup import cluster

    out, default = [], cluster.GRID_OFFSET
    try:
        for off in GRID_OFFSETS:
            cluster.GRID_OFFSET = off
            scores = pool_scores(pool, meta, cluster.find_duplicates(meta, DedupConfig()))
            out.append({"grid_offset": off, **{key: scores[key] for key in SETTING_KEYS}})
    finally:
        cluster.GRID_OFFSET = default
    return out


def other_pools(n_bases: int) -> list[tuple]:
    """(seed, pool, its _pool_meta) for SEEDS."""
    from tests.bench.dedup_pool import make_pool

    return [(seed, pool, _pool_meta(pool)) for seed in SEEDS for pool in [make_pool(n_bases, seed)]]


def other_seeds(pools: list[tuple]) -> list[dict]:
    """The default, the hash rule alone (colour_check false) and no plain rule on the other_pools: how far one
    pool's figures carry."""
    from dataclasses import replace

    from curate.config import DedupConfig
    from curate.dedup.cluster import find_duplicates

    out = []
    for seed, pool, meta in pools:
        row = {"seed": seed}
        for name, cfg in (("default", DedupConfig()), ("colour_check_false", replace(DedupConfig(), colour_check=False)),
                          ("plain_detail_0", replace(DedupConfig(), plain_detail=0.0))):
            scores = pool_scores(pool, meta, find_duplicates(meta, cfg), cfg)
            row[name] = {key: scores[key] for key in SETTING_KEYS}
        out.append(row)
    keys = ("without_copy_dropped", "groups_keeping_exactly_one", "pairwise_precision")
    out.append({"mean": {name: {key: round(float(np.mean([r[name][key] for r in out])), 4) for key in keys}
                         for name in ("default", "colour_check_false", "plain_detail_0")}})
    return out


def plain_sweep(pools: list[tuple]) -> list[dict]:
    """The plain rule at PLAIN_BRIGHTNESS x plain_tol (plain_tol 1e-4: the rule off) on every pool (seed 0
    and the other_pools): mean headline figures, and precision and groups per pool in seed order."""
    from dataclasses import replace

    from curate.config import DedupConfig
    from curate.dedup import cluster

    out, default = [], cluster.PLAIN_BRIGHTNESS
    keys = ("without_copy_dropped", "groups_keeping_exactly_one", "low_detail_groups_keeping_exactly_one",
            "pairwise_precision")
    try:
        for bright in PLAIN_BRIGHTNESS:
            cluster.PLAIN_BRIGHTNESS = bright
            for tol in (1e-4, 1.0, 1.5, 2.0):
                cfg = replace(DedupConfig(), plain_tol=tol)
                scores = [pool_scores(p, m, cluster.find_duplicates(m, cfg), cfg) for _, p, m in pools]
                out.append({"plain_brightness": bright, "plain_tol": tol, "seeds": [s for s, _, _ in pools],
                            **{f"mean_{key}": round(float(np.mean([x[key] for x in scores])), 4) for key in keys},
                            "pairwise_precision": [x["pairwise_precision"] for x in scores],
                            "groups_keeping_exactly_one": [x["groups_keeping_exactly_one"] for x in scores]})
    finally:
        cluster.PLAIN_BRIGHTNESS = default
    return out


def _options(pool, meta, k: int) -> dict:
    """Other hashes and claim rules on the same pool, by brute force (tests/bench/dedup_options.py): what each
    would score, so the rejected ones stay beside the default with their figures."""
    from tests.bench.dedup_options import options

    keys = [key for key in SETTING_KEYS if key != "rule_violations"] + ["without_copy_dropped_low_detail"]
    return options(pool, meta, lambda drops: {key: pool_scores(pool, meta, drops)[key] for key in keys}, k)


def low_detail_measures(pool, meta, share: float = 0.3) -> dict:
    """Which per-image measure picks out the images whose pHash lies within k of an unrelated image
    ("crowded"): each measure flags the `share` of images most low-detail by it (low pixel variance, low DCT
    energy, high dHash bit imbalance); reported: the share of crowded images it flags, and quantiles."""
    import io

    import scipy.fftpack
    from PIL import Image

    from curate.config import DedupConfig
    from curate.dedup.hashing import trim_borders

    k = DedupConfig().k
    group = np.array([p.group for p in pool])
    ph, dh = meta["phash"].to_numpy(), meta["dhash"].to_numpy()
    crowded = ((np.bitwise_count(ph[:, None] ^ ph[None, :]) <= k) & (group[:, None] != group[None, :])).any(1)
    std, energy = [], []
    for p in pool:
        gray = np.asarray(trim_borders(Image.open(io.BytesIO(p.data)).convert("L")).resize((32, 32), Image.LANCZOS),
                          np.float64)
        low = scipy.fftpack.dct(scipy.fftpack.dct(gray, axis=0), axis=1)[:8, :8].ravel()
        std.append(gray.std())
        energy.append(np.sqrt(np.sum(low[1:] ** 2)) / max(1e-9, abs(low[0])))
    measures = {"pixel_std_32px": -np.array(std), "low_dct_ac_energy_vs_dc": -np.array(energy),
                "dhash_bit_imbalance": np.abs(np.bitwise_count(dh).astype(np.int64) - 32).astype(float)}
    out = {"crowded_images": int(crowded.sum()), "images": len(pool), "flagged_share": share}
    for name, m in measures.items():
        flag = m >= np.quantile(m, 1 - share)
        q = lambda sel: [round(float(abs(x)), 3) for x in np.quantile(m[sel], [0.1, 0.5, 0.9])]
        out[name] = {"crowded_flagged": round(float(flag[crowded].mean()), 3),
                     "crowded_q10_50_90": q(crowded), "others_q10_50_90": q(~crowded)}
    return out


def second_search_cost(n: int, rounds: int = 3) -> dict:
    """find_duplicates time at n planted hashes (with dHashes) per second_k, in one process, settings
    alternating round by round (the machine is shared): median seconds and the ratio to no second search."""
    from dataclasses import replace

    from curate.config import DedupConfig
    from curate.dedup.cluster import find_duplicates

    meta, cfg = _meta(planted(n, 8), second_hashes(n, 8)), DedupConfig()
    find_duplicates(meta.slice(0, 10_000), cfg)  # numba's cache, outside the timings
    wall: dict = {sk: [] for sk in (-1, 4, 5, 6)}
    cpu: dict = {sk: [] for sk in wall}
    for _ in range(rounds):
        for sk in wall:
            t, c = time.perf_counter(), time.process_time()
            find_duplicates(meta, replace(cfg, second_k=sk))
            wall[sk].append(time.perf_counter() - t)
            cpu[sk].append(time.process_time() - c)
    out = {"n": n, "rounds": rounds}
    for name, d in (("wall", wall), ("cpu", cpu)):  # CPU seconds (all threads): less swayed by other jobs
        med = {sk: float(np.median(v)) for sk, v in d.items()}
        out[f"median_{name}_seconds"] = {str(sk): round(v, 2) for sk, v in med.items()}
        out[f"{name}_ratio_vs_no_second_search"] = {str(sk): round(v / med[-1], 2) for sk, v in med.items()}
    return out


def _cluster_in_process(n: int, k: int, max_bucket: int, tree: str | None = None) -> dict:
    """cluster_one in a fresh process (its peak RSS is its own), of this code or of the checkout at `tree`."""
    cmd = [sys.executable, "-m", "tests.bench.bench_dedup", "--cluster-one", str(n), "--k", str(k),
           "--max-bucket", str(max_bucket)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=tree).stdout)


def _scaling(sizes: str, k: int, max_bucket: int) -> list[dict]:
    """cluster_one per size, each in a fresh process."""
    runs = []
    for n in [int(x) for x in sizes.split(",") if x]:
        runs.append(_cluster_in_process(n, k, max_bucket))
        print(runs[-1], flush=True)
    for prev, cur in zip(runs, runs[1:]):
        cur["time_growth_vs_previous"] = round(cur["seconds"] / prev["seconds"], 2)
        cur["compared_growth_vs_previous"] = round(cur["pairs_compared"] / max(1, prev["pairs_compared"]), 2)
        cur["size_growth_vs_previous"] = round(cur["n"] / prev["n"], 2)
    return runs


def versus_old(sizes: str, k: int, max_bucket: int, old_tree: str) -> list[dict]:
    """Clustering time of this code against the former code (connected components) at `old_tree`, at the same
    sizes in the same session, old and new alternating: the ratio holds on a shared, loaded machine."""
    runs = []
    for tree in (old_tree, None):  # numba compiles into its cache once, outside the timings
        _cluster_in_process(10_000, k, max_bucket, tree)
    for n in [int(x) for x in sizes.split(",") if x]:
        old = _cluster_in_process(n, k, max_bucket, old_tree)
        new = _cluster_in_process(n, k, max_bucket)
        runs.append({"n": n, "k": k, "old_seconds": old["seconds"], "new_seconds": new["seconds"],
                     "time_ratio_new_vs_old": round(new["seconds"] / max(old["seconds"], 1e-9), 2),
                     "old_dropped": old["dropped"], "new_dropped": new["dropped"],
                     "old_peak_rss_mb": old["peak_rss_mb"], "new_peak_rss_mb": new["peak_rss_mb"]})
        print(runs[-1], flush=True)
    return runs


PARTS = ("hashing", "brute", "scaling", "scaling_default_k", "pool", "versus_old", "second_search_cost")


def _previous() -> dict:
    """The figures already in results/dedup.json (kept for the parts not rerun)."""
    from tests.bench.common import RESULTS

    path = RESULTS / "dedup.json"
    if not path.exists():
        return {}
    doc = json.loads(path.read_text())
    return {k: v for k, v in doc.items() if k not in ("benchmark", "date", "machine")}


def _ratios(result: dict, k: int, default_k: int) -> None:
    """Top-level ratio keys, from whichever parts are present."""
    if "hashing" in result:
        result["hashing_exact_ratio"] = result["hashing"]["exact_phash_only"]["ratio_vs_imagehash"]
        result["hashing_fast_ratio"] = result["hashing"]["fast_phash_only"]["ratio_vs_imagehash"]
    brute = result.get("brute_force", {})
    if str(k) in brute:
        result["brute_force_ratio"] = brute[str(k)]["ratio"]
    if str(default_k) in brute:
        result["brute_force_ratio_default_k"] = brute[str(default_k)]["ratio"]
    pool = result.get("pool_quality", {})
    for when in ("before", "after"):
        for key in ("without_copy_dropped", "groups_keeping_exactly_one", "pairwise_precision"):
            if when in pool:
                result[f"pool_{key}_{when}"] = pool[when][key]
    if result.get("clustering_versus_old"):
        result["clustering_time_ratio_vs_old_max"] = max(r["time_ratio_new_vs_old"]
                                                         for r in result["clustering_versus_old"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--sizes", default="1000000,4000000,16000000", help="comma-separated cluster sizes at --k")
    ap.add_argument("--k", type=int, default=3, help="Hamming distance for the large scaling runs")
    ap.add_argument("--default-sizes", default="1000000,4000000,16000000",
                    help="comma-separated cluster sizes at the default DedupConfig.k")
    ap.add_argument("--max-bucket", type=int, default=5000)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--brute-n", type=int, default=30000)
    ap.add_argument("--pool-bases", type=int, default=2000, help="distinct images of the labelled pool")
    ap.add_argument("--old-tree", default=None,
                    help="a checkout of the former code: the pool and versus_old parts compare against it")
    ap.add_argument("--versus-sizes", default="1000000,4000000", help="sizes of versus_old, at the default k")
    ap.add_argument("--cluster-one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cluster_one:
        print(json.dumps(cluster_one(args.cluster_one, args.k, args.max_bucket)))
        return 0
    from curate.config import DedupConfig

    parts, default_k = set(args.parts.split(",")), DedupConfig().k
    result = _previous()
    result.update({"versions": versions("numpy", "scipy", "pillow", "imagehash", "pyarrow", "numba"),
                   "notes": "2-core machine, possibly shared with other jobs; clustering figures are the in-process "
                            "find_duplicates (not the Ray version), each size in a fresh process; "
                            "clustering_versus_old alternates the former code (connected components) and this one in one session on the "
                            "shared machine (load average 4-30 while it ran): read its ratios, not its times"})
    if "hashing" in parts:
        from tests.bench.bench_hashing import bench_hashing

        result["hashing"] = bench_hashing(args.images)
        print(json.dumps(result["hashing"], indent=1))
    if "brute" in parts:
        result["brute_force"] = {str(k): brute_vs_index(args.brute_n, k) for k in sorted({args.k, default_k})}
        print(json.dumps(result["brute_force"], indent=1))
    if "scaling" in parts:
        result["clustering"] = _scaling(args.sizes, args.k, args.max_bucket)
    if "scaling_default_k" in parts:
        result["clustering_default_k"] = _scaling(args.default_sizes, default_k, args.max_bucket)
    if "pool" in parts:
        before = result.get("pool_quality", {}).get("before")
        result["pool_quality"] = pool_quality(args.pool_bases, 0, args.old_tree)
        if before and "before" not in result["pool_quality"]:  # the former code's figures, from the run that had it
            result["pool_quality"]["before"] = before
        print(json.dumps(result["pool_quality"]["after"], indent=1))
    if "second_search_cost" in parts:
        result["second_search_cost"] = second_search_cost(2_000_000)
        print(result["second_search_cost"], flush=True)
    if "versus_old" in parts and args.old_tree:
        result["clustering_versus_old"] = versus_old(args.versus_sizes, default_k, args.max_bucket, args.old_tree)
    _ratios(result, args.k, default_k)
    write_result("dedup", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
