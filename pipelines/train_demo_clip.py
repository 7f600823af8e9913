"""Reproduces the demo's CLIP scorer: trains a small CLIP with curate.train on generated shapes x colours,
then calibrates a score threshold that separates matching from mismatching captions on held-out pairs.

    python -m pipelines.train_demo_clip            # writes pipelines/demo_assets/clip_demo/
"""
from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate import synth
from curate.checkpoint_files import CONFIG_FILE, WEIGHTS_FILE
from curate.democorpus import _caption, _other  # the demo's own caption wording
from curate.layout import RunLayout
from curate.tario import tar_bytes

OUT = Path(__file__).resolve().parent / "demo_assets" / "clip_demo"
MODEL_CFG = {  # small enough to train in minutes on 2 CPU cores, big enough to tell 8 colours x 6 shapes apart
    "embed_dim": 64,
    "vision_cfg": {"image_size": 48, "layers": 3, "width": 96, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def _jpeg(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _pairs(n: int, seed: int, size: int):
    """(image, caption in the demo's wording, label) for the training set."""
    rng = random.Random(seed)
    for img, _cap, label in synth.make_captioned_set(n, seed, size=size):
        shape = synth.SHAPES[label // len(synth.COLORS)]
        color = list(synth.COLORS)[label % len(synth.COLORS)]
        yield img, (_caption(rng, color, shape) if rng.random() < 0.7 else _cap), label


def write_shards(folder: Path, n: int, seed: int, size: int, per_shard: int = 1000) -> Path:
    """Webdataset shards (KEY.jpg/.txt/.json, img2dataset-style keys) + sizes.json under folder/shards, named
    as a run output names them (RunLayout), so that curate.train reads the folder as a run output."""
    layout = RunLayout(str(folder))
    Path(layout.shards).mkdir(parents=True, exist_ok=True)
    samples = list(_pairs(n, seed, size))
    sizes = {}
    for s in range(0, n, per_shard):
        members = []
        for i, (img, cap, label) in enumerate(samples[s:s + per_shard]):
            key = f"{s // per_shard:05d}{i:04d}"
            members += [(f"{key}.jpg", _jpeg(img)), (f"{key}.txt", cap.encode()),
                        (f"{key}.json", json.dumps({"label": label}).encode())]
        tar = Path(layout.shard(f"{s // per_shard:05d}").tar)
        tar.write_bytes(tar_bytes(members))
        sizes[tar.name] = len(members) // 3
    Path(layout.sizes).write_text(json.dumps(sizes))
    return folder


def calibrate(ckpt: Path, n: int = 600, seed: int = 999) -> dict:
    """Scores matched and mismatched held-out pairs; the threshold maximises balanced accuracy."""
    from curate.clip.scorer import score_table
    from curate.config import ClipConfig
    from curate.schema import COL

    rng = random.Random(seed)
    rows, match = [], []
    for k in range(n):
        color, shape = rng.choice(list(synth.COLORS)), rng.choice(synth.SHAPES)
        img = synth.draw_sample(shape, color, rng, size=rng.choice((96, 128, 192)))
        ok = k % 2 == 0
        cap = _caption(rng, color, shape) if ok else _caption(rng, *_other(rng, color, shape))
        rows.append({COL.UID: f"{k:032x}", COL.IMAGE: _jpeg(img), COL.CAPTION_CLEAN: cap})
        match.append(ok)
    cfg = ClipConfig(model=str(ckpt / CONFIG_FILE), pretrained=str(ckpt), batch_size=128)
    scores = np.array(score_table(pa.Table.from_pylist(rows), cfg)[COL.CLIP_SCORE].to_pylist())
    match = np.array(match)
    cands = np.unique(scores)
    acc = [(scores[match] >= t).mean() + (scores[~match] < t).mean() for t in cands]
    i = int(np.argmax(acc))
    best = (cands[i - 1] + cands[i]) / 2 if i > 0 else cands[i]  # the middle of the gap, not its edge
    return {"threshold": round(float(best), 4), "matched_kept": float((scores[match] >= best).mean()),
            "mismatched_dropped": float((scores[~match] < best).mean()), "pairs": n,
            "matched_mean": float(scores[match].mean()), "mismatched_mean": float(scores[~match].mean())}


def _save_half(src: Path, dst: Path) -> None:
    """fp16 copy of the weights: half the size in the repository; open_clip casts them back on load."""
    from safetensors.torch import load_file, save_file
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(str(src)).items()}
    save_file(sd, str(dst))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.train_demo_clip", description=__doc__)
    ap.add_argument("--samples", type=int, default=6000)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--output", default=str(OUT))
    ap.add_argument("--calibrate-only", action="store_true", help="recompute demo_calibration.json only")
    args = ap.parse_args(argv)
    if args.calibrate_only:
        path = Path(args.output) / "demo_calibration.json"
        meta = {**json.loads(path.read_text()), **calibrate(Path(args.output))}
        path.write_text(json.dumps(meta, indent=1))
        print(json.dumps(meta, indent=1))
        return 0
    from curate.train import TrainConfig
    from curate.train.checkpoint import list_checkpoints
    from curate.train.trainer import train

    work = Path(tempfile.mkdtemp(prefix="curate-demo-clip-"))
    try:
        model = work / "curate-demo-clip.json"
        model.write_text(json.dumps(MODEL_CFG))
        write_shards(work / "train", args.samples, seed=7, size=64)
        write_shards(work / "heldout", 500, seed=8, size=64, per_shard=500)
        cfg = TrainConfig(data=str(work / "train"), model=str(model), output=str(work / "out"), batch_size=96,
                          steps=args.steps, lr=2e-3, warmup=40, weight_decay=0.1, workers=1, threads=2,
                          log_every=50, shuffle_buffer=2000, resampled=True,
                          zeroshot_data=str(work / "heldout"), zeroshot_classes=tuple(synth.class_names()),
                          zeroshot_templates=tuple(synth.prompt_templates()))
        summary = train(cfg)
        final = Path(summary["checkpoint"]) if "checkpoint" in summary else list_checkpoints(cfg.output)[-1]
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(final / CONFIG_FILE, out / CONFIG_FILE)
        _save_half(final / WEIGHTS_FILE, out / WEIGHTS_FILE)
        meta = {**calibrate(out), "zeroshot_top1": summary.get("metrics", {}).get("zeroshot_top1"),
                "train_samples": args.samples, "steps": args.steps, "model_cfg": MODEL_CFG}
        (out / "demo_calibration.json").write_text(json.dumps(meta, indent=1))
        print(json.dumps(meta, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
