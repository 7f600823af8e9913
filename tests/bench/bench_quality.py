"""Benchmark: curation quality on a labelled pool (tests/bench/quality_pool.py) served on 127.0.0.1.

Runs `python -m pipelines.build_shards` as a user would (--languages en, dedup on, no downloadable CLIP weights),
scores each decision (lang, duplicate, low_clip_score) against the labels, bootstraps a CLIP scorer with
curate.train (build without CLIP -> train on the kept set -> rebuild with the checkpoint and a threshold), then
trains the same small CLIP on the raw pool, curate's output, the clean subset by label (oracle) and a random
subset of curate's size, and compares zero-shot top-1 on held-out crops (median and range over seeds).

    python -m tests.bench.bench_quality            # ~20-30 min on 2 cores -> tests/bench/results/quality.json
    python -m tests.bench.bench_quality --quick    # smoke run, a few minutes
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tests.bench import quality_pool as qp
from tests.bench.common import ratio, versions, write_result

REPO = Path(__file__).resolve().parents[2]
# The small CLIP every training run uses (tests/test_train_data.py's TINY_MODEL_CFG): 32 px, 2 layers; learns
# the 12 subjects in a few hundred steps on 2 CPU cores.
MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TRAIN = {"batch_size": 64, "lr": 2e-3, "warmup": 20, "weight_decay": 0.1, "workers": 1, "threads": 2,
         "shuffle_buffer": 1000, "resampled": "true", "device": "cpu", "precision": "fp32", "log_every": 50}
TEMPLATES = ("{}", "a photo of a {}.", "{} photo")  # alt-text-like prompts: what the captions look like
REACHED_DEDUP = ("kept", "duplicate", "low_clip_score", "balanced_out", "eval_overlap")  # rows with an image
REACHED_CLIP = ("kept", "low_clip_score", "balanced_out")
LEDGER_COLS = ["uid", "url", "status", "reason", "lang", "lang_prob", "clip_score", "phash"]
_UID = re.compile(r"[0-9a-f]{32}")
_UID_OF = re.compile(r"duplicate_of:([0-9a-f]{32})")
DEDUP_K = 8  # the default dedup.k the runs use: the share of planted copies within it bounds dedup's recall


# ---------------------------------------------------------------- subprocesses

def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0",
            "NO_ALBUMENTATIONS_UPDATE": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}


def _call(cmd: list[str], log: Path, timeout: int) -> tuple[float, str]:
    """Runs cmd in the repository; (seconds, stdout). Output goes to `log`; a failure raises with its tail."""
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=f, text=True,
                              timeout=timeout)
    f_tail = log.read_text()[-3000:]
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}:\n{f_tail}")
    return time.perf_counter() - t0, proc.stdout


def build(urls: Path, out: Path, build_args: list[str], clip: list[str]) -> float:
    """`python -m pipelines.build_shards` on the pool; returns seconds."""
    cmd = [sys.executable, "-m", "pipelines.build_shards", "--input", str(urls), "--output", str(out),
           *build_args, *clip]
    secs, _ = _call(cmd, out.parent / f"{out.name}.log", timeout=1800)
    return round(secs, 1)


def train_clip(data: Path, out: Path, seed: int, steps: int, assets: dict) -> dict:
    """`python -m curate.train` with the benchmark's fixed recipe; {top1, top5, seconds, checkpoint}."""
    cmd = [sys.executable, "-m", "curate.train", "--data", str(data), "--output", str(out),
           "--model", str(assets["model"]), "--steps", str(steps), "--seed", str(seed),
           "--zeroshot-data", str(assets["heldout"]), "--zeroshot-classes", str(assets["classes"]),
           "--zeroshot-templates", str(assets["templates"]), "--eval-samples", "100000"]
    cmd += [a for k, v in TRAIN.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    secs, stdout = _call(cmd, out.parent / f"{out.name}.log", timeout=1800)
    summary = json.loads(stdout.strip().splitlines()[-1])
    ckpt = sorted((out / "checkpoints").iterdir())[-1]
    m = summary["metrics"]
    return {"top1": round(m["zeroshot_top1"], 4), "top5": round(m["zeroshot_top5"], 4),
            "seconds": round(secs, 1), "checkpoint": ckpt}


# ---------------------------------------------------------------- labels vs ledger

def read_ledger(out: Path, base_url: str, rows: list[qp.PoolRow]) -> list[dict]:
    """The run's ledger rows joined with each pool row's labels (by URL), in pool order."""
    t = pq.read_table(out / "metadata" / "ledger", columns=LEDGER_COLS).to_pylist()
    by_path = {r["url"][len(base_url):]: r for r in t}
    missing = [r.path for r in rows if r.path not in by_path]
    if missing:
        raise RuntimeError(f"{out}: ledger has no row for {len(missing)} pool URLs, e.g. {missing[0]}")
    return [{**by_path[r.path], "label": r} for r in rows]


def prf(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Precision, recall and counts of a boolean decision against boolean labels."""
    tp, fp, fn = int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum())
    return {"precision": round(tp / max(tp + fp, 1), 4), "recall": round(tp / max(tp + fn, 1), 4),
            "tp": tp, "fp": fp, "fn": fn, "n": int(len(pred))}


def lang_metrics(led: list[dict]) -> dict:
    """lang: positives are captions generated in another language; evaluated on every row that reached it."""
    rows = [r for r in led if r["status"] not in ("caption_rule", "invalid_url")]
    pred = np.array([r["status"] == "lang" for r in rows])
    truth = np.array([r["label"].lang != "en" for r in rows])
    by_lang = defaultdict(lambda: [0, 0])
    for r, p in zip(rows, pred):
        by_lang[r["label"].lang][0] += int(p)
        by_lang[r["label"].lang][1] += 1
    wrong = Counter(r["lang"] for r, p in zip(rows, pred) if p and r["label"].lang == "en")
    return {**prf(pred, truth), "en_recall": round(1 - pred[~truth].mean(), 4) if (~truth).any() else None,
            "other_rejected": round(pred[truth].mean(), 4) if truth.any() else None,
            "dropped_share_by_label_lang": {k: round(a / b, 4) for k, (a, b) in sorted(by_lang.items())},
            "english_dropped_as": dict(wrong.most_common(10))}


def _groups(rows: list[dict]) -> dict[int, list[dict]]:
    out = defaultdict(list)
    for r in rows:
        if r["label"].group >= 0:
            out[r["label"].group].append(r)
    return out


def dup_metrics(led: list[dict]) -> dict:
    """duplicate: over rows that reached dedup (downloaded, not dropped before). A drop is correct up to
    members-1 per planted group; pairwise precision checks that duplicate_of:<uid> names a group mate."""
    rows = [r for r in led if r["status"] in REACHED_DEDUP]
    dup = [r for r in rows if r["status"] == "duplicate"]
    groups = {g: m for g, m in _groups(rows).items() if len(m) >= 2}
    n_dup = {g: sum(r["status"] == "duplicate" for r in m) for g, m in groups.items()}
    correct = sum(min(n_dup[g], len(m) - 1) for g, m in groups.items())
    surplus = sum(len(m) - 1 for m in groups.values())
    singles = [r for r in rows if r["label"].group < 0]
    kept_per_group = [len(m) - n_dup[g] for g, m in groups.items()]
    group_of = {r["uid"]: r["label"].group for r in rows}
    targets = [(r["label"].group, _UID_OF.search(r["reason"] or "")) for r in dup]
    pairs = [(g, group_of.get(m.group(1))) for g, m in targets if m]
    share = lambda k, n: round(k / max(n, 1), 4)  # noqa: E731
    return {"precision": share(correct, len(dup)), "recall": share(correct, surplus), "dropped": len(dup),
            "surplus_copies": surplus, "n": len(rows), "pairwise_precision": share(
                sum(a == b and a >= 0 for a, b in pairs), len(pairs)),
            "no_copy_dropped": share(sum(r["status"] == "duplicate" for r in singles), len(singles)),
            "no_copy_images": len(singles), "planted_groups": len(groups),
            "groups_keep_exactly_one": share(kept_per_group.count(1), len(groups)),
            "groups_keep_none": share(kept_per_group.count(0), len(groups)),
            "groups_keep_two_plus": share(sum(k >= 2 for k in kept_per_group), len(groups)),
            "copies_within_k_of_original": _within_k(groups.values()),
            "reasons": dict(Counter(_UID.sub("<uid>", r["reason"] or "") for r in dup))}


def _within_k(groups) -> float | None:
    """Share of planted copies whose stored image's pHash is within DEDUP_K of their original's: the most
    that a pHash rule at that k can find (2-6% crops move pHash bits more than downscales or JPEG do)."""
    near = []
    for members in groups:
        orig = [r["phash"] for r in members if r["label"].role == "original"]
        near += [bin(orig[0] ^ r["phash"]).count("1") <= DEDUP_K for r in members
                 if orig and r["label"].role == "copy" and orig[0] is not None and r["phash"] is not None]
    return round(sum(near) / len(near), 4) if near else None


def clip_metrics(led: list[dict]) -> dict:
    """low_clip_score: positives are captions describing another subject; over rows that reached the filter."""
    rows = [r for r in led if r["status"] in REACHED_CLIP]
    pred = np.array([r["status"] == "low_clip_score" for r in rows])
    truth = np.array([r["label"].mismatch for r in rows])
    return {**prf(pred, truth), "clean_dropped": round(pred[~truth].mean(), 4) if (~truth).any() else None}


def kept_metrics(led: list[dict]) -> dict:
    """What the output holds: size, mismatched and other-language shares, surplus copies, clean pairs lost."""
    kept = [r for r in led if r["status"] == "kept"]
    n = max(len(kept), 1)
    groups = _groups(kept)
    clean = [r for r in led if r["label"].lang == "en" and not r["label"].mismatch and r["label"].group < 0]
    lost = Counter(r["status"] for r in clean if r["status"] != "kept")
    mism = [r for r in led if r["label"].mismatch]
    return {"kept": len(kept), "mismatched_share": round(sum(r["label"].mismatch for r in kept) / n, 4),
            "other_lang_share": round(sum(r["label"].lang != "en" for r in kept) / n, 4),
            "surplus_copies_kept": sum(len(m) - 1 for m in groups.values()),
            "mismatched_removed": round(sum(r["status"] != "kept" for r in mism) / max(len(mism), 1), 4),
            "clean_no_copy_pairs": len(clean),
            "clean_no_copy_lost": round(sum(lost.values()) / max(len(clean), 1), 4),
            "clean_no_copy_lost_by_status": dict(lost)}


def decisions(led: list[dict]) -> dict:
    return {"lang": lang_metrics(led), "duplicate": dup_metrics(led), "low_clip_score": clip_metrics(led),
            "output": kept_metrics(led), "statuses": dict(Counter(r["status"] for r in led))}


# ---------------------------------------------------------------- the CLIP bootstrap

def read_kept(out: Path) -> list[tuple[bytes, str, str]]:
    """(image bytes, caption, url) of every sample in a run's shards."""
    from curate.train.data import iter_tar_samples
    samples = []
    for tar in sorted((out / "shards").glob("*.tar")):
        for s in iter_tar_samples(str(tar), on_error=print):
            img = next(s[e] for e in ("jpg", "png", "webp") if e in s)
            samples.append((img, s["txt"].decode(), json.loads(s["json"])["url"]))
    return samples


def calibrate(ckpt: Path, out: Path, quantile: float, seed: int, mismatch: dict[str, bool]) -> dict:
    """A threshold without labels: scores the kept pairs and the same images with other rows' captions
    (a seeded derangement); the threshold is the `quantile` of those shuffled-pair scores. For the record
    only, `mismatch` (url -> label) gives the scorer's AUC: P(a matching kept pair outscores a mismatched one)."""
    from curate.clip.scorer import score_table
    from curate.config import ClipConfig

    samples = read_kept(out)
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    other = {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}  # row -> whose caption it gets
    shuffled_caps = [samples[other[i]][1] for i in range(len(samples))]
    table = pa.table({"uid": [f"{i:032x}" for i in range(2 * len(samples))], "image": [s[0] for s in samples] * 2,
                      "caption_clean": [s[1] for s in samples] + shuffled_caps})
    cfg = ClipConfig(model=str(ckpt / "open_clip_config.json"), pretrained=str(ckpt), batch_size=128,
                     device="cpu")
    scores = np.asarray(score_table(table, cfg)["clip_score"].to_pylist(), np.float64)
    matched, shuffled = scores[:len(samples)], scores[len(samples):]
    thr = float(np.quantile(shuffled, quantile))
    return {"threshold": round(thr, 4), "quantile": quantile, "pairs": len(samples),
            "kept_pairs_mean": round(float(matched.mean()), 4), "shuffled_mean": round(float(shuffled.mean()), 4),
            "kept_pairs_above": round(float((matched >= thr).mean()), 4),
            "scorer_auc_on_kept": auc(matched, ~np.array([mismatch[s[2]] for s in samples], bool))}


def auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Probability that a random positive scores above a random negative (ties count half)."""
    pos, neg = scores[positive], scores[~positive]
    if not len(pos) or not len(neg):
        return None
    ranks = np.argsort(np.argsort(np.concatenate([pos, neg]), kind="stable"), kind="stable") + 1.0
    return round(float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))), 4)


def bootstrap(ctx: dict, rounds: int) -> tuple[Path, list[dict]]:
    """Round 0 builds without CLIP; each later round trains a scorer on the previous output, sets a threshold
    from shuffled captions and rebuilds the same output with it (the supported recipe: completed stage
    outputs are reused, so a round fetches nothing again and runs only scoring and the global phases).
    Round 0's shards are kept aside (work/round0) for the training comparison. Returns (the output,
    per-round figures)."""
    work, urls, a = ctx["work"], ctx["urls"], ctx["args"]
    out = work / "run"
    secs = build(urls, out, ctx["build_args"], ["--no-clip"])
    shutil.copytree(out / "shards", work / "round0" / "shards")
    led = read_ledger(out, ctx["base_url"], ctx["rows"])
    report = [{"round": 0, "clip": None, "build_s": secs, **decisions(led)}]
    print(f"round 0: build {secs} s, {report[0]['output']}", flush=True)
    for r in range(1, rounds + 1):
        scorer = train_clip(out, work / f"scorer{r}", a.seed, a.steps, ctx["assets"])
        t0 = time.perf_counter()
        cal = calibrate(scorer["checkpoint"], out, a.null_quantile, a.seed, ctx["mismatch"])
        cal_s = round(time.perf_counter() - t0, 1)
        ck = scorer["checkpoint"]
        clip = ["--clip-model", str(ck / "open_clip_config.json"), "--clip-pretrained", str(ck),
                "--clip-threshold", str(cal["threshold"])]
        secs = build(urls, out, ctx["build_args"], clip)
        led = read_ledger(out, ctx["base_url"], ctx["rows"])
        report.append({"round": r, "build_s": secs, "scorer_train_s": scorer["seconds"], "calibrate_s": cal_s,
                       "round_s": round(secs + scorer["seconds"] + cal_s, 1),
                       "scorer_top1": scorer["top1"], "calibration": cal, **decisions(led)})
        brief = {k: report[-1][k] for k in ("round_s", "scorer_top1", "calibration", "output")}
        print(f"round {r}: {json.dumps(brief)}", flush=True)
    return out, report


# ---------------------------------------------------------------- training comparison

def training_sets(ctx: dict, curated: Path) -> dict[str, Path]:
    """raw pool, curate's output, oracle (clean by label), a random subset of curate's size and, when CLIP
    rounds ran, round 0's output (no CLIP), as shard folders."""
    rows, files, work = ctx["rows"], ctx["files"], ctx["work"]
    n_cur = sum(json.loads((curated / "shards" / "sizes.json").read_text()).values())
    sample = lambda rs: [(files[r.path], r.caption, r.subject) for r in rs]  # noqa: E731
    rand = random.Random(ctx["args"].seed).sample(rows, min(n_cur, len(rows)))
    oracle = [r for r, keep in zip(rows, qp.oracle_mask(rows)) if keep]
    sets = {"raw": qp.write_shards(work / "set_raw", sample(rows)), "curated": curated,
            "oracle": qp.write_shards(work / "set_oracle", sample(oracle)),
            "random": qp.write_shards(work / "set_random", sample(rand))}
    if ctx["args"].rounds > 0:
        sets["curated_no_clip"] = work / "round0"  # what the bootstrap's CLIP rounds add
    return sets


def compare_training(ctx: dict, sets: dict[str, Path]) -> dict:
    """Zero-shot top-1 of the same small CLIP trained on each set, per seed; median and range."""
    a, out = ctx["args"], {}
    for name, data in sets.items():
        runs = [train_clip(data, ctx["work"] / f"train_{name}_{s}", s, a.steps, ctx["assets"]) for s in range(a.seeds)]
        top1 = [r["top1"] for r in runs]
        out[name] = {"samples": sum(json.loads((data / "shards" / "sizes.json").read_text()).values()),
                     "top1": top1, "top1_median": statistics.median(top1), "top1_min": min(top1),
                     "top1_max": max(top1), "top5_median": statistics.median(r["top5"] for r in runs),
                     "train_s_median": statistics.median(r["seconds"] for r in runs)}
        print(f"train {name}: {json.dumps(out[name])}", flush=True)
    return out


# ---------------------------------------------------------------- setup and main

def prepare(work: Path, args) -> dict:
    """Pool, URL list, held-out shards, model config, class and template files."""
    rows, files = qp.make_pool(args.pairs, args.seed)
    held = qp.heldout_crops(args.heldout, args.seed)
    index = {s: i for i, s in enumerate(qp.SUBJECTS)}  # labels by index into classes.txt
    qp.write_shards(work / "heldout", [(b, s, index[s]) for s, b in held])
    (work / "classes.txt").write_text("\n".join(qp.class_names()) + "\n")
    (work / "templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    (work / "model.json").write_text(json.dumps(MODEL_CFG))
    assets = {"model": work / "model.json", "heldout": work / "heldout", "classes": work / "classes.txt",
              "templates": work / "templates.txt"}
    return {"work": work, "rows": rows, "files": files, "assets": assets, "heldout": len(held)}


def pool_stats(rows: list[qp.PoolRow]) -> dict:
    n = len(rows)
    return {"pairs": n, "subjects": list(qp.SUBJECTS), "mismatched": round(sum(r.mismatch for r in rows) / n, 4),
            "other_lang": round(sum(r.lang != "en" for r in rows) / n, 4),
            "copies": round(sum(r.role == "copy" for r in rows) / n, 4),
            "planted_groups": len({r.group for r in rows if r.group >= 0}),
            "no_copy_images": sum(r.role == "single" for r in rows),
            "oracle_pairs": sum(qp.oracle_mask(rows)), "langs": dict(Counter(r.lang for r in rows))}


def parse(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.bench_quality", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: pool 600, 30 steps, 1 seed, 1 round")
    ap.add_argument("--pairs", type=int, default=5000)
    ap.add_argument("--heldout", type=int, default=40, help="held-out test crops per subject")
    ap.add_argument("--steps", type=int, default=300, help="training steps of every CLIP run (batch 64)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="bootstrap rounds with a trained scorer")
    ap.add_argument("--null-quantile", type=float, default=0.9,
                    help="CLIP threshold = this quantile of the scorer's scores on shuffled captions")
    ap.add_argument("--unit-size", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the work folder (printed) for inspection")
    args = ap.parse_args(argv)
    if args.quick:
        args.pairs, args.heldout, args.steps, args.seeds, args.rounds = 600, 6, 30, 1, 1
    return args


def serve_pool(ctx: dict, srv, urls: Path) -> None:
    """Puts the pool's files on the running server and its URL list in `urls`; ctx gains urls, base_url,
    build_args (the settings a user would pick: English, 2 CPUs) and mismatch (url -> planted mismatch)."""
    args = ctx["args"]
    for path, body in ctx["files"].items():
        srv.add(path, body)
    pq.write_table(pa.table({"url": [srv.url(r.path) for r in ctx["rows"]],
                             "caption": [r.caption for r in ctx["rows"]]}), urls)
    ctx.update(urls=urls, base_url=srv.base_url, mismatch={srv.url(r.path): r.mismatch for r in ctx["rows"]},
               build_args=["--allow-private-networks", "--languages", "en", "--unit-size", str(args.unit_size),
                           "--num-cpus", "2", "--no-progress", "--samples-per-shard", "1000",
                           "--seed", str(args.seed)])


POOL_PORT = 18347  # the pool's URLs, hence its row uids (blake2b of url and caption), hence the representative
                  # that breaks a tie of two equal copies, depend on the port: a fixed one makes a rerun decide alike


def _server(image_server):
    """The pool's ImageServer on POOL_PORT; on an ephemeral port, with a warning, when that one is taken
    (the uids, and the copies kept on ties, then differ from other runs)."""
    try:
        return image_server(port=POOL_PORT)
    except OSError as e:
        print(f"bench_quality: port {POOL_PORT} unavailable ({e}); serving on an ephemeral port, so ties between "
              f"equal copies may resolve unlike other runs", file=sys.stderr)
        return image_server()


def main(argv=None) -> dict:
    args = parse(argv)
    from tests.fault_server import ImageServer

    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="curate-bench-quality-"))
    ctx = {"args": args, **prepare(work, args)}
    try:
        with _server(ImageServer) as srv:
            serve_pool(ctx, srv, work / "urls.parquet")
            curated, rounds = bootstrap(ctx, args.rounds)
        training = compare_training(ctx, training_sets(ctx, curated))
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    result = summarise(args, ctx, rounds, training, ctx["build_args"], time.perf_counter() - t_start)
    write_result("quality", result, keep=("semantic_dedup",))  # bench_semantic_dedup's entry stays
    return result


def summarise(args, ctx: dict, rounds: list[dict], training: dict, build_args: list[str], total_s: float) -> dict:
    med = {k: v["top1_median"] for k, v in training.items()}
    final = rounds[-1]
    return {
        "mode": "quick" if args.quick else "full",
        "pool": pool_stats(ctx["rows"]), "heldout_crops": ctx["heldout"],
        "decisions": {k: final[k] for k in ("lang", "duplicate", "low_clip_score", "output")},
        "bootstrap": rounds, "training": training,
        "top1_ratio_curated_vs_oracle": ratio(med["curated"], med["oracle"]),
        "top1_ratio_curated_vs_raw": ratio(med["curated"], med["raw"]),
        "top1_ratio_curated_vs_random": ratio(med["curated"], med["random"]),
        "top1_ratio_curated_no_clip_vs_oracle": (ratio(med["curated_no_clip"], med["oracle"])
                                                 if "curated_no_clip" in med else None),
        "total_s": round(total_s, 1), "pool_url": ctx["base_url"],  # POOL_PORT: the uids of every run alike
        "settings": {"build_shards": build_args + [("(round 0: --no-clip; later rounds: --clip-model, "
                                                    "--clip-pretrained <checkpoint>, --clip-threshold <calibrated>)")],
                     "pairs": args.pairs, "heldout_per_subject": args.heldout, "steps": args.steps,
                     "seeds": list(range(args.seeds)), "rounds": args.rounds, "null_quantile": args.null_quantile,
                     "seed": args.seed, "model_cfg": MODEL_CFG, "train": TRAIN, "zeroshot_templates": TEMPLATES,
                     "pool_fractions": {"mismatched": 0.35, "other_lang": 0.15, "copies": 0.20}},
        "versions": versions("ray", "open_clip_torch", "torch", "pillow", "langdetect", "scikit-image"),
        "notes": ("Decisions are those of the last bootstrap round's build (lang and duplicate are the same in "
                  "every round). lang: positive = caption generated in another language. duplicate: over rows "
                  "that were downloaded; a drop is correct up to members-1 per planted group; pairwise precision "
                  "= duplicate_of names a member of the same planted group. low_clip_score: positive = caption "
                  "describes another subject. Oracle = English, matching captions, one pair per planted group. "
                  "Each round rebuilds the same output with its scorer: completed stage outputs are reused (nothing is fetched again; only scoring and the global phases run)."),
    }


if __name__ == "__main__":
    main(sys.argv[1:])
