"""Benchmark: batched hashing vs imagehash.phash per image, and banded clustering at 1M-16M hashes vs brute force."""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time

import numpy as np

from tests.bench.common import peak_rss_mb, versions, write_result


def _images(n: int) -> list:
    """n decoded ~256 px images: random crops and sizes of scikit-image's photos."""
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(0)
    photos = [Image.fromarray(getattr(skimage.data, p)()).convert("RGB") for p in
              ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")]
    out = []
    for i in range(n):
        im = photos[i % len(photos)]
        x, y = rng.integers(0, im.width // 4), rng.integers(0, im.height // 4)
        crop = im.crop((x, y, x + im.width * 3 // 4, y + im.height * 3 // 4))
        side = int(rng.integers(200, 257))
        out.append(crop.resize((side, max(1, crop.height * side // crop.width))))
    return out


def bench_hashing(n: int) -> dict:
    import imagehash
    from PIL import Image

    from curate.config import DedupConfig
    from curate.dedup.hashing import add_hashes, hash_images
    import pyarrow as pa

    images = _images(n)
    t = time.perf_counter()
    ref = np.array([int(str(imagehash.phash(im)), 16) for im in images], np.uint64)
    t_ref = time.perf_counter() - t
    t = time.perf_counter()
    [imagehash.dhash(im) for im in images]
    t_ref_both = t_ref + time.perf_counter() - t
    res = {"n_images": n, "imagehash_phash_images_per_s": round(n / t_ref, 1)}
    configs = {"exact": DedupConfig(trim_borders=False), "exact_trim": DedupConfig(),
               "fast": DedupConfig(trim_borders=False, fast_hash=True), "fast_trim": DedupConfig(fast_hash=True)}
    for name, cfg in configs.items():
        for both in (False, True):
            t = time.perf_counter()
            ours, _ = hash_images(images, cfg, dhash=both)
            dt = time.perf_counter() - t
            dist = np.bitwise_count(ours ^ ref)
            key = f"{name}_phash_dhash" if both else f"{name}_phash_only"
            res[key] = {"images_per_s": round(n / dt, 1),
                        "ratio_vs_imagehash": round((t_ref_both if both else t_ref) / dt, 2),
                        "agreement": round(float((dist == 0).mean()), 4),
                        "mean_hamming": round(float(dist.mean()), 3), "max_hamming": int(dist.max())}
    blobs = []
    for im in images:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=95)
        blobs.append(buf.getvalue())
    t = time.perf_counter()
    [imagehash.phash(Image.open(io.BytesIO(b))) for b in blobs]
    t_ref_bytes = time.perf_counter() - t
    table = pa.table({"image": pa.array(blobs, pa.binary())})
    for name, cfg in {"bytes_exact": DedupConfig(trim_borders=False), "bytes_fast": DedupConfig(fast_hash=True)}.items():
        t = time.perf_counter()
        add_hashes(table, cfg)
        dt = time.perf_counter() - t
        res[name] = {"images_per_s": round(n / dt, 1), "ratio_vs_decode_plus_imagehash_phash": round(t_ref_bytes / dt, 2),
                     "note": "add_hashes computes phash and dhash"}
    return res


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
    """One size in this (fresh) process: wall time and peak RSS of find_duplicates (pure numpy version)."""
    from curate.config import DedupConfig
    from curate.dedup.cluster import BucketStats, find_duplicates

    meta = _meta(planted(n, k))
    base = _high_water_mb()
    stats = BucketStats()
    t = time.perf_counter()
    out = find_duplicates(meta, DedupConfig(k=k, max_bucket=max_bucket), stats)
    dt = time.perf_counter() - t
    return {"n": n, "k": k, "seconds": round(dt, 2), "peak_rss_mb": _high_water_mb(), "peak_rss_before_clustering_mb": base,
            "dropped": out.num_rows, "pairs_compared": stats.compared, "giant_buckets": stats.giant_buckets}


def brute_vs_banded(n: int, k: int) -> dict:
    """Brute force all-pairs (numpy, blocked) against the banded join on the same n hashes."""
    from curate.dedup.cluster import near_pairs

    u = np.unique(planted(n, k, seed=1))
    t = time.perf_counter()
    found = 0
    for s in range(0, len(u), 2048):
        d = np.bitwise_count(u[s:s + 2048, None] ^ u[None, :]) <= k
        found += int(np.count_nonzero(np.triu(d, s + 1)))  # global j > global i
    t_brute = time.perf_counter() - t
    t = time.perf_counter()
    a, _ = near_pairs(u, k, 10**9)
    t_band = time.perf_counter() - t
    assert len(a) == found, (len(a), found)
    return {"n": n, "k": k, "brute_s": round(t_brute, 2), "banded_s": round(t_band, 3),
            "ratio": round(t_brute / t_band, 1), "pairs": found}


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
        cur["size_growth_vs_previous"] = round(cur["n"] / prev["n"], 2)
    return runs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="1000000,4000000,16000000", help="comma-separated cluster sizes at --k")
    ap.add_argument("--k", type=int, default=3, help="Hamming distance for the large scaling runs")
    ap.add_argument("--default-sizes", default="50000,100000,200000",
                    help="comma-separated cluster sizes at the default DedupConfig.k (its cost grows ~n^2)")
    ap.add_argument("--max-bucket", type=int, default=5000)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--brute-n", type=int, default=30000)
    ap.add_argument("--cluster-one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cluster_one:
        print(json.dumps(cluster_one(args.cluster_one, args.k, args.max_bucket)))
        return 0
    result = {"versions": versions("numpy", "scipy", "pillow", "imagehash", "pyarrow"),
              "notes": "one run on a 2-core machine shared with other jobs; clustering figures are the pure "
                       "numpy in-process find_duplicates (not the Ray version), each size in a fresh process"}
    result["hashing"] = bench_hashing(args.images)
    print(json.dumps(result["hashing"], indent=1))
    from curate.config import DedupConfig

    default_k = DedupConfig().k
    result["brute_force"] = {str(k): brute_vs_banded(args.brute_n, k) for k in sorted({args.k, default_k})}
    print(json.dumps(result["brute_force"], indent=1))
    result["clustering"] = _scaling(args.sizes, args.k, args.max_bucket)
    result["clustering_default_k"] = _scaling(args.default_sizes, default_k, args.max_bucket)
    result["hashing_exact_ratio"] = result["hashing"]["exact_phash_only"]["ratio_vs_imagehash"]
    result["hashing_fast_ratio"] = result["hashing"]["fast_phash_only"]["ratio_vs_imagehash"]
    result["brute_force_ratio"] = result["brute_force"][str(args.k)]["ratio"]
    result["brute_force_ratio_default_k"] = result["brute_force"][str(default_k)]["ratio"]
    write_result("dedup", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
