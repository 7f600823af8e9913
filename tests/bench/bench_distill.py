"""Benchmark: distillation from stored teacher embeddings (--loss clip+distill) against the same student without it.

A larger CLIP (the teacher) is trained by curate.train on the quality pool's clean pairs (tests/bench/quality_pool.py);
its embeddings of `views` seeded crops per sample (curate.reinforce.view_params / apply_view, the reinforced-shard
format: KEY.npz + the view parameters in KEY.json, written with write_npz) make reinforced shards of the same pairs.
The small student of bench_quality then trains on them for the same steps and seeds (3) three ways: plain CLIP
(its usual augmentation), CLIP on the stored views with distill_weight 0 (the augmentation alone), and clip+distill
(lambda 1). Zero-shot top-1 on held-out crops and retrieval recall@1 on held-out clean pairs: median and range.

    python -m tests.bench.bench_distill            # ~20 min on 2 cores (30 when shared) -> tests/bench/results/train.json
    python -m tests.bench.bench_distill --quick    # smoke run, a few minutes (writes nothing)
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tests.bench import quality_pool as qp
from tests.bench.bench_quality import MODEL_CFG, TEMPLATES, TRAIN, _call
from tests.bench.common import RESULTS, machine_info, ratio, versions

# The teacher: twice the student's width, one more layer per tower (same 32 px input, 16 patches); about 2x its
# compute per step, trained for more steps than the students get.
TEACHER_CFG = {
    "embed_dim": 96,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 128, "patch_size": 8, "head_width": 64},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 3},
}
ARMS = {  # name -> curate.train overrides; every arm reads the same reinforced shards
    "clip": {"loss": "clip"},
    "clip_stored_views": {"loss": "clip+distill", "distill_weight": 0.0},
    "clip_distill": {"loss": "clip+distill", "distill_weight": 1.0},
}


def train_run(data: Path, out: Path, model: Path, seed: int, steps: int, assets: dict, **over) -> dict:
    """`python -m curate.train` with bench_quality's recipe (+ overrides); final metrics and seconds."""
    cmd = [sys.executable, "-m", "curate.train", "--data", str(data), "--output", str(out), "--model", str(model),
           "--steps", str(steps), "--seed", str(seed), "--val-data", str(assets["val"]),
           "--zeroshot-data", str(assets["heldout"]), "--zeroshot-classes", str(assets["classes"]),
           "--zeroshot-templates", str(assets["templates"]), "--eval-samples", "100000"]
    cmd += [a for k, v in {**TRAIN, **over}.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    secs, stdout = _call(cmd, out.parent / f"{out.name}.log", timeout=1800)
    m = json.loads(stdout.strip().splitlines()[-1])["metrics"]
    return {"top1": round(m["zeroshot_top1"], 4), "i2t_R@1": round(m["retrieval_image_to_text_R@1"], 4),
            "t2i_R@1": round(m["retrieval_text_to_image_R@1"], 4), "seconds": round(secs, 1),
            "checkpoint": sorted((out / "checkpoints").iterdir())[-1]}


def uid_of(path: str) -> str:
    return hashlib.sha1(path.encode()).hexdigest()[:32]


@torch.no_grad()
def teacher_embeddings(ckpt: Path, images: list[bytes], captions: list[str], uids: list[str], args) -> list[dict]:
    """Per sample {'params': views, 'arrays': npz arrays}: the teacher's normalised embeddings of each stored
    view (curate's model loader and preprocess, as the reinforce stage computes them) and of the caption."""
    from curate.clip.model import load_clip
    from curate.reinforce import apply_view, view_params

    model, preprocess, tokenizer = load_clip(str(ckpt / "open_clip_config.json"), str(ckpt))
    out = []
    for s in range(0, len(images), 128):
        params, pixels = [], []
        for data, uid in zip(images[s:s + 128], uids[s:s + 128]):
            img = Image.open(io.BytesIO(data)).convert("RGB")
            params.append(view_params(uid, args.seed, args.views, img.width, img.height, args.min_scale))
            pixels += [preprocess(apply_view(img, p)) for p in params[-1]]
        img_emb = model.encode_image(torch.stack(pixels), normalize=True).numpy()
        txt_emb = model.encode_text(tokenizer(captions[s:s + 128]), normalize=True).numpy()
        for i, p in enumerate(params):
            v = img_emb[i * args.views:(i + 1) * args.views]
            out.append({"params": p, "arrays": {"image_emb_0": v.astype(np.float16),
                                                "text_emb_0": txt_emb[i:i + 1].astype(np.float16)}})
    return out


def reinforced_shards(folder: Path, pairs: list[tuple[bytes, str, int, str]], ckpt: Path, args) -> Path:
    """The pairs (JPEG, caption, label, path) as reinforced shards (KEY.npz + reinforce params in KEY.json)."""
    from curate.reinforce import write_npz
    from tests.shards import write_webdataset

    uids = [uid_of(p) for *_, p in pairs]
    emb = teacher_embeddings(ckpt, [d for d, *_ in pairs], [c for _, c, *_ in pairs], uids, args)
    teachers = [f"{ckpt / 'open_clip_config.json'}|{ckpt}"]
    samples = [(d, c, {"label": lab, "uid": u, "reinforce": {"teachers": teachers, "views": e["params"]}},
                {"npz": write_npz(e["arrays"])}) for (d, c, lab, _), u, e in zip(pairs, uids, emb)]
    return write_webdataset(folder, samples, per_shard=1000)


def prepare(work: Path, args) -> dict:
    """Clean training pairs of the pool, held-out crops (zero-shot), held-out clean pairs (retrieval), configs."""
    rows, files = qp.make_pool(args.pairs, args.seed)
    index = {s: i for i, s in enumerate(qp.SUBJECTS)}
    clean = [(files[r.path], r.caption, index[r.subject], r.path) for r, k in zip(rows, qp.oracle_mask(rows)) if k]
    qp.write_shards(work / "train_plain", [(d, c, lab) for d, c, lab, _ in clean])
    qp.write_shards(work / "heldout", [(b, s, index[s]) for s, b in qp.heldout_crops(args.heldout, args.seed)])
    vrows, vfiles = qp.make_pool(args.val_pairs, args.seed + 1000, p_mismatch=0.0, p_other_lang=0.0, p_copy=0.0)
    qp.write_shards(work / "val", [(vfiles[r.path], r.caption, index[r.subject]) for r in vrows])
    (work / "classes.txt").write_text("\n".join(qp.class_names()) + "\n")
    (work / "templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    (work / "student.json").write_text(json.dumps(MODEL_CFG))
    (work / "teacher.json").write_text(json.dumps(TEACHER_CFG))
    assets = {"val": work / "val", "heldout": work / "heldout", "classes": work / "classes.txt",
              "templates": work / "templates.txt"}
    return {"clean": clean, "assets": assets, "pool": len(rows)}


def summarise_arm(runs: list[dict]) -> dict:
    out = {}
    for key in ("top1", "i2t_R@1", "t2i_R@1"):
        vals = [r[key] for r in runs]
        out[key] = vals
        out[f"{key}_median"] = statistics.median(vals)
        out[f"{key}_range"] = [min(vals), max(vals)]
    out["train_s_median"] = statistics.median(r["seconds"] for r in runs)
    return out


def parse(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.bench_distill", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: small pool, few steps, 1 seed; writes nothing")
    ap.add_argument("--pairs", type=int, default=3000, help="pool size (its clean pairs are trained on)")
    ap.add_argument("--heldout", type=int, default=40, help="held-out test crops per subject (zero-shot)")
    ap.add_argument("--val-pairs", type=int, default=400, help="held-out clean pairs (retrieval)")
    ap.add_argument("--teacher-steps", type=int, default=600)
    ap.add_argument("--steps", type=int, default=200, help="student steps (batch 64)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--min-scale", type=float, default=0.35)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.quick:
        args.pairs, args.heldout, args.val_pairs, args.teacher_steps, args.steps, args.seeds = 400, 5, 60, 20, 10, 1
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    t0, load0 = time.perf_counter(), os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="curate-bench-distill-"))
    try:
        ctx = prepare(work, args)
        teacher = train_run(work / "train_plain", work / "teacher", work / "teacher.json", args.seed,
                            args.teacher_steps, ctx["assets"])
        print(f"teacher: {json.dumps({k: v for k, v in teacher.items() if k != 'checkpoint'})}", flush=True)
        t_emb = time.perf_counter()
        data = reinforced_shards(work / "train_reinforced", ctx["clean"], teacher["checkpoint"], args)
        emb_s = round(time.perf_counter() - t_emb, 1)
        runs: dict[str, list] = {name: [] for name in ARMS}
        for seed in range(args.seeds):  # seed by seed, so that a run cut short leaves paired, labelled figures
            for name, over in ARMS.items():
                r = train_run(data, work / f"{name}_{seed}", work / "student.json", seed, args.steps,
                              ctx["assets"], **over)
                runs[name].append(r)
                print(f"seed {seed} {name}: {json.dumps({k: v for k, v in r.items() if k != 'checkpoint'})}",
                      flush=True)
            arms = {name: summarise_arm(rs) for name, rs in runs.items()}
            result = summarise(args, ctx, teacher, arms, emb_s, time.perf_counter() - t0, (load0, os.getloadavg()))
            if not args.quick:
                write_entry(result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def summarise(args, ctx, teacher, arms, emb_s, total_s, loads) -> dict:
    med = lambda arm, k: arms[arm][f"{k}_median"]  # noqa: E731
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine_info(),
        "mode": "quick" if args.quick else "full", "seeds_done": len(arms["clip"]["top1"]),
        "distill_top1_ratio": ratio(med("clip_distill", "top1"), med("clip", "top1")),
        "distill_top1_ratio_vs_stored_views": ratio(med("clip_distill", "top1"), med("clip_stored_views", "top1")),
        "distill_i2t_R@1_ratio": ratio(med("clip_distill", "i2t_R@1"), med("clip", "i2t_R@1")),
        "distill_t2i_R@1_ratio": ratio(med("clip_distill", "t2i_R@1"), med("clip", "t2i_R@1")),
        "students": arms,
        "teacher": {k: v for k, v in teacher.items() if k != "checkpoint"},
        "data": {"pool_pairs": ctx["pool"], "train_pairs": len(ctx["clean"]), "heldout_per_subject": args.heldout,
                 "val_pairs": args.val_pairs},
        "reinforce": {"views": args.views, "min_scale": args.min_scale, "teachers": 1, "embed_s": emb_s},
        "settings": {"student_steps": args.steps, "teacher_steps": args.teacher_steps, "seeds": list(range(args.seeds)),
                     "student_cfg": MODEL_CFG, "teacher_cfg": TEACHER_CFG, "train": TRAIN, "arms": ARMS,
                     "zeroshot_templates": TEMPLATES},
        "total_s": round(total_s, 1), "load_avg_start_end": [round(x, 2) for x in (*loads[0][:1], *loads[1][:1])],
        "versions": versions("open_clip_torch", "torch"),
        "notes": ("Teacher and students train on the clean pairs (English, matching caption, one per planted copy "
                  "group) of the quality pool. Every student reads the same reinforced shards: plain CLIP ignores "
                  "KEY.npz and uses open_clip's training augmentation; the other two see one stored view per "
                  "sample draw (RandomResizedCrop scale min_scale..1 + flip, reapplied from KEY.json) through the "
                  "eval preprocess. Teacher logit scale 100 (no scale stored). Ratios compare medians over seeds."),
    }


def write_entry(result: dict) -> Path:
    """Adds (or replaces) the `distillation` entry of tests/bench/results/train.json, keeping the rest."""
    path = RESULTS / "train.json"
    doc = json.loads(path.read_text()) if path.exists() else {"benchmark": "train"}
    doc["distillation"] = result
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"wrote {path} (distillation)")
    return path


if __name__ == "__main__":
    main(sys.argv[1:])
