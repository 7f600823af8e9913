"""GPU benchmark (one GPU, < 5 min, no network): curate.train vs open_clip_train with ViT-B-32, batch 256, bf16,
on synthetic shards generated on the spot; samples/s and model FLOP utilisation -> results/train_gpu.json."""
from __future__ import annotations

import argparse
import sys
import tempfile
from multiprocessing import Pool
from pathlib import Path

from tests.bench.bench_train import run_curate, run_open_clip, summarise
from tests.bench.common import versions, write_result

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def _shard(args) -> None:
    from tests.test_train_data import write_shards
    from curate import synth
    folder, index, n, size = args
    samples = synth.make_captioned_set(n, seed=1000 + index, size=size)
    tmp = Path(folder) / f"part{index}"
    write_shards(tmp, samples, per_shard=n)
    (tmp / "shards" / "00000.tar").rename(Path(folder) / "shards" / f"{index:05d}.tar")


def make_shards(root: Path, n_shards: int, per_shard: int, size: int) -> Path:
    """n_shards x per_shard synthetic samples at `size` px, drawn in parallel; returns the run folder."""
    import json
    (root / "run" / "shards").mkdir(parents=True)
    with Pool() as pool:
        pool.map(_shard, [(str(root / "run"), i, per_shard, size) for i in range(n_shards)])
    sizes = {f"{i:05d}.tar": per_shard for i in range(n_shards)}
    (root / "run" / "shards" / "sizes.json").write_text(json.dumps(sizes))
    return root / "run"


def train_flops_per_sample(model_name: str) -> float:
    """Forward + backward FLOPs of one image-text pair, counted by torch's FlopCounterMode on the GPU."""
    import open_clip
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    model = open_clip.create_model(model_name, device="cuda")
    tok = open_clip.get_tokenizer(model_name)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = torch.randn(8, 3, size, size, device="cuda")
    texts = tok(["a photo of a red circle"] * 8).cuda()
    counter = FlopCounterMode(display=False)
    with counter, torch.autocast("cuda", dtype=torch.bfloat16):
        img, txt, scale = model(images, texts)
        (scale * img @ txt.T).sum().backward()
    return counter.get_total_flops() / 8


def peak_flops(name: str, override: float) -> float:
    if override:
        return override * 1e12
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    raise SystemExit(f"unknown GPU {name!r}: pass --peak-tflops (dense bf16)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--workers", type=int, default=12)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--peak-tflops", type=float, default=0.0)
    args = p.parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        print("gpu_train: CUDA is not available on this machine; this benchmark needs one GPU", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name(0)
    peak = peak_flops(gpu, args.peak_tflops)
    flops = train_flops_per_sample(args.model)
    h = {"lr": 5e-4, "warmup": 5, "wd": 0.2, "beta1": 0.9, "beta2": 0.98, "eps": 1e-6, "clip": 1.0,
         "batch": args.batch_size, "steps": args.steps, "threads": 4, "workers": args.workers,
         "device": "cuda", "precision": "bf16"}
    with tempfile.TemporaryDirectory(prefix="gpu_train_") as tmp:
        root = Path(tmp)
        per_shard = 512
        n_shards = -(-args.batch_size * args.steps // per_shard) + 1
        data = make_shards(root, n_shards, per_shard, args.image_size)
        ours = summarise(run_curate(root, data, args.model, h))
        theirs = summarise(run_open_clip(root, data, args.model, h))
    for r in (ours, theirs):
        r["mfu"] = r["samples_per_s_median"] * flops / peak
    result = {"setup": {**h, "model": args.model, "gpu": gpu, "peak_bf16_tflops": peak / 1e12,
                        "train_flops_per_sample": flops, "image_px": args.image_size},
              "curate_train": ours, "open_clip_train": theirs,
              "samples_per_s_ratio": ours["samples_per_s_median"] / theirs["samples_per_s_median"],
              "versions": versions("torch", "open_clip_torch", "webdataset")}
    print(f"{gpu}: curate.train {ours['samples_per_s_median']:.0f} samples/s (MFU {ours['mfu']:.1%}) vs "
          f"open_clip_train {theirs['samples_per_s_median']:.0f} (MFU {theirs['mfu']:.1%}): "
          f"{result['samples_per_s_ratio']:.2f}x")
    write_result("train_gpu", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
