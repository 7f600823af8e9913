"""Benchmark: semantic dedup (dedup.semantic) on the quality pool: what it removes per ε, judged by the planted
labels, and its effect on zero-shot top-1 of the small CLIP trained on curate's output with and without it.

Reuses tests/bench/bench_quality.py's pool, builds and training runs: one bootstrap round (build without CLIP,
train a scorer on its output, calibrate a threshold, rebuild with the scorer storing its image embeddings:
`curated`), an ε sweep of curate.dedup.semantic over those stored embeddings (on the rows pHash dedup left, as
phase B runs it), a rebuild with dedup.semantic at the chosen ε (`curated_semantic`), and the same small CLIP
trained on both (same steps and seeds). Adds a `semantic_dedup` entry to tests/bench/results/quality.json.

    python -m tests.bench.bench_semantic_dedup      # ~15-25 min on 2 cores
    python -m tests.bench.bench_semantic_dedup --kmeans-child numpy 1000000   # one k-means timing (or faiss)
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tests.bench import bench_quality as bq
from tests.bench.common import RESULTS, ratio, versions

EPS_SWEEP = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2)
MIN_PRECISION = 0.9  # the chosen ε: the largest in the sweep whose dropped rows are planted copies of their
                     # representative at least this often (the rest are distinct crops of the same photo)


def sweep(out: Path, ctx: dict, seed: int) -> list[dict]:
    """Per ε: rows semantic dedup drops among those pHash dedup left, and how many are planted copies of
    their representative (same group), other crops of the same subject, or of another subject."""
    from curate.config import DedupConfig
    from curate.dedup.semantic import find_semantic_duplicates, load_embeddings, phash_representatives
    from curate.schema import COL

    led = pq.read_table(out / "metadata" / "ledger")
    labels = {r["uid"]: r["label"] for r in bq.read_ledger(out, ctx["base_url"], ctx["rows"])}
    left = led.filter(pc.is_in(led[COL.STATUS], value_set=pa.array(list(bq.REACHED_CLIP))))
    phash = led.filter(pc.equal(led[COL.STATUS], "duplicate"))
    emb, has = load_embeddings(str(out), sorted(pc.unique(left[COL.UNIT_ID]).to_pylist()),
                               left[COL.UID].combine_chunks())
    protected = phash_representatives(left, phash)
    surplus = _surplus(left, labels)
    rows = []
    for eps in EPS_SWEEP:
        cfg = DedupConfig(semantic=True, semantic_eps=eps)
        t0 = time.perf_counter()
        drops = find_semantic_duplicates(left, emb, has, cfg, seed, protected)
        secs = time.perf_counter() - t0
        pairs = [(labels[u], labels[r.split("semantic_of:", 1)[1]])
                 for u, r in zip(drops[COL.UID].to_pylist(), drops[COL.REASON].to_pylist())]
        kind = Counter("copy" if a.group >= 0 and a.group == b.group else
                       "same_subject" if a.subject == b.subject else "other_subject" for a, b in pairs)
        n = max(len(pairs), 1)
        rows.append({"eps": eps, "rows": left.num_rows, "dropped": len(pairs),
                     "removal_rate": round(len(pairs) / max(left.num_rows, 1), 4),
                     "planted_copy_precision": round(kind["copy"] / n, 4),
                     "same_subject_share": round((kind["copy"] + kind["same_subject"]) / n, 4),
                     "other_subject_share": round(kind["other_subject"] / n, 4),
                     "surplus_copies_left_by_phash": surplus,
                     "surplus_copies_found": kind["copy"], "seconds": round(secs, 2)})
        print(f"eps {eps}: {json.dumps(rows[-1])}", flush=True)
    return rows


def _surplus(left: pa.Table, labels: dict) -> int:
    """Planted copies pHash dedup left: members of a planted group beyond one, among the rows left."""
    groups = Counter(labels[u].group for u in left["uid"].to_pylist() if labels[u].group >= 0)
    return sum(n - 1 for n in groups.values())


def choose_eps(rows: list[dict]) -> float:
    """The largest swept ε whose drops are planted copies at least MIN_PRECISION of the time."""
    good = [r["eps"] for r in rows if r["dropped"] and r["planted_copy_precision"] >= MIN_PRECISION]
    return max(good) if good else min(r["eps"] for r in rows)


def bootstrap_round(ctx: dict, args) -> tuple[Path, dict]:
    """Round 0 without CLIP, a scorer trained on it, then the CLIP round storing embeddings; (output, figures)."""
    work, urls = ctx["work"], ctx["urls"]
    out = work / "run"
    fig = {"round0_build_s": bq.build(urls, out, ctx["build_args"], ["--no-clip"])}
    scorer = bq.train_clip(out, work / "scorer", args.seed, args.steps, ctx["assets"])
    cal = bq.calibrate(scorer["checkpoint"], out, 0.9, args.seed, ctx["mismatch"])
    ck = scorer["checkpoint"]
    ctx["clip"] = ["--clip-model", str(ck / "open_clip_config.json"), "--clip-pretrained", str(ck),
                   "--clip-threshold", str(cal["threshold"]), "--set", "clip.save_embeddings=true"]
    fig.update(scorer_train_s=scorer["seconds"], scorer_top1=scorer["top1"], threshold=cal["threshold"],
               clip_build_s=bq.build(urls, out, ctx["build_args"], ctx["clip"]))
    shutil.copytree(out / "shards", work / "curated" / "shards")
    fig["curated"] = bq.decisions(bq.read_ledger(out, ctx["base_url"], ctx["rows"]))["output"]
    return out, fig


def semantic_build(ctx: dict, out: Path, eps: float) -> dict:
    """Rebuilds the same output with dedup.semantic at eps (scores and embeddings are reused)."""
    extra = ["--set", "dedup.semantic=true", "--set", f"dedup.semantic_eps={eps}"]
    secs = bq.build(ctx["urls"], out, ctx["build_args"], ctx["clip"] + extra)
    led = bq.read_ledger(out, ctx["base_url"], ctx["rows"])
    reasons = Counter(r["reason"].split(":")[1] for r in led if r["status"] == "duplicate")
    return {"build_s": secs, "eps": eps, "duplicate_reasons": dict(reasons), **bq.decisions(led)["output"]}


def train_both(ctx: dict, out: Path, args) -> dict:
    """The small CLIP on curate's output without and with semantic dedup: top-1 per seed, median."""
    sets = {"curated": ctx["work"] / "curated", "curated_semantic": out}
    res = {}
    for name, data in sets.items():
        runs = [bq.train_clip(data, ctx["work"] / f"train_{name}_{s}", s, args.steps, ctx["assets"])
                for s in range(args.seeds)]
        top1 = [r["top1"] for r in runs]
        res[name] = {"samples": sum(json.loads((data / "shards" / "sizes.json").read_text()).values()),
                     "top1": top1, "top1_median": statistics.median(top1), "top1_min": min(top1),
                     "top1_max": max(top1), "train_s_median": statistics.median(r["seconds"] for r in runs)}
        print(f"train {name}: {json.dumps(res[name])}", flush=True)
    return res


def run(args) -> dict:
    from tests.fault_server import ImageServer

    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="curate-bench-semdedup-"))
    ctx = {"args": args, **bq.prepare(work, args)}
    try:
        with ImageServer() as srv:
            bq.serve_pool(ctx, srv, work / "urls.parquet")
            out, boot = bootstrap_round(ctx, args)
            rows = sweep(out, ctx, args.seed)
            eps = args.eps if args.eps is not None else choose_eps(rows)
            final = semantic_build(ctx, out, eps)
        training = train_both(ctx, out, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: v["top1_median"] for k, v in training.items()}
    return {"pairs": args.pairs, "steps": args.steps, "seeds": list(range(args.seeds)), "bootstrap_round": boot,
            "sweep": rows, "chosen_eps": eps, "semantic_build": final, "training": training,
            "top1_ratio_semantic_vs_curated": ratio(med["curated_semantic"], med["curated"]),
            "samples_ratio_semantic_vs_curated": ratio(training["curated_semantic"]["samples"],
                                                       training["curated"]["samples"]),
            "total_s": round(time.perf_counter() - t0, 1),
            "versions": versions("open_clip_torch", "torch", "numpy"),
            "notes": ("Sweep rows: the rows pHash dedup left (statuses kept/low_clip_score/balanced_out of the CLIP "
                      "round), semantic dedup as phase B runs it, on the scorer's stored image embeddings (the "
                      "benchmark's small CLIP trained on the pool: 12 subjects, so distinct crops of one photo lie "
                      "close). planted_copy_precision: the dropped row and its representative are one planted group "
                      "(downscale, JPEG, 2-6 % crop copies); same_subject_share adds other crops of the same photo. "
                      f"chosen_eps: the largest swept eps with planted_copy_precision >= {MIN_PRECISION}.")}


def kmeans_child(impl: str, n: int, d: int = 512) -> dict:
    """One k-means timing (numpy or faiss-cpu) on n random unit float16 vectors: train on at most 256 rows per
    centroid (10 iterations), then assign every row; seconds and peak memory of this process."""
    import resource

    import numpy as np

    from curate.dedup import semantic as sm

    rng = np.random.default_rng(0)
    x = np.empty((n, d), np.float16)
    for s in range(0, n, 100_000):
        b = rng.standard_normal((min(100_000, n - s), d), dtype=np.float32)
        x[s:s + len(b)] = b / np.linalg.norm(b, axis=1, keepdims=True)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    k, t0 = sm.n_clusters(n), time.perf_counter()
    if impl == "numpy":
        cent = sm.kmeans(x, k, 0)
        t1 = time.perf_counter()
        sm.assign(x, cent)
    else:
        import faiss  # optional: only this comparison uses it

        sample = np.sort(rng.choice(n, size=min(n, k * sm.TRAIN_PER_CENTROID), replace=False))
        km = faiss.Kmeans(d, k, niter=sm.ITERS, spherical=True, seed=0,
                          max_points_per_centroid=sm.TRAIN_PER_CENTROID)
        km.train(sm.normalised(x[sample]))
        t1 = time.perf_counter()
        for s in range(0, n, 4 * sm.BLOCK):
            km.index.search(sm.normalised(x[s:s + 4 * sm.BLOCK]), 1)
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"impl": impl, "n": n, "d": d, "k": k, "train_s": round(t1 - t0, 1), "assign_s": round(t2 - t1, 1),
            "total_s": round(t2 - t0, 1), "extra_mb": round(peak - base)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.bench_semantic_dedup", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=5000)
    ap.add_argument("--heldout", type=int, default=40)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--eps", type=float, default=None, help="semantic_eps of the rebuild (default: chosen by the sweep)")
    ap.add_argument("--unit-size", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kmeans-child", nargs=2, metavar=("IMPL", "N"), help="internal: one k-means timing (numpy or "
                    "faiss), run in its own process by the comparison in the notes")
    args = ap.parse_args(argv)
    if args.kmeans_child:
        res = kmeans_child(args.kmeans_child[0], int(args.kmeans_child[1]))
        print(json.dumps(res))
        return res
    result = run(args)
    path = RESULTS / "quality.json"
    doc = json.loads(path.read_text())
    doc["semantic_dedup"] = result  # beside the existing figures, which stay as they are
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"wrote {path} (semantic_dedup)")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
