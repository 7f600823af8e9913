"""Benchmark (dedup.json): batched hashing vs imagehash.phash per image (bench_hashing), and near-duplicate
clustering at 1M-16M hashes vs brute force. --parts runs a subset and merges it into the existing dedup.json."""
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


def _meta(h: np.ndarray):
    import pyarrow as pa

    n = len(h)
    return pa.table({"uid": pa.array(np.char.mod("%012d", np.arange(n))), "sha256": pa.nulls(n, pa.string()),
                     "phash": pa.array(h, pa.uint64()), "dhash": pa.nulls(n, pa.uint64()),
                     "clip_score": pa.nulls(n, pa.float32()), "width": pa.nulls(n, pa.int32()),
                     "height": pa.nulls(n, pa.int32())})


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

    meta = _meta(planted(n, k))
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


def _scaling(sizes: str, k: int, max_bucket: int) -> list[dict]:
    """cluster_one per size, each in a fresh process so that its peak RSS is its own."""
    runs = []
    for n in [int(x) for x in sizes.split(",") if x]:
        cmd = [sys.executable, "-m", "tests.bench.bench_dedup", "--cluster-one", str(n), "--k", str(k),
               "--max-bucket", str(max_bucket)]
        runs.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
        print(runs[-1], flush=True)
    for prev, cur in zip(runs, runs[1:]):
        cur["time_growth_vs_previous"] = round(cur["seconds"] / prev["seconds"], 2)
        cur["compared_growth_vs_previous"] = round(cur["pairs_compared"] / max(1, prev["pairs_compared"]), 2)
        cur["size_growth_vs_previous"] = round(cur["n"] / prev["n"], 2)
    return runs


PARTS = ("hashing", "brute", "scaling", "scaling_default_k")


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
                            "find_duplicates (not the Ray version), each size in a fresh process"})
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
    _ratios(result, args.k, default_k)
    write_result("dedup", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
