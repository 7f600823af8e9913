"""GPU benchmark (one GPU, < 5 min, no network): ViT-B-32 bf16 pure forward vs the scoring stage end to end on JPEGs.

python -m tests.bench.gpu_scoring            # needs CUDA; writes tests/bench/results/scoring_gpu.json
python -m tests.bench.gpu_scoring --dry-run  # plumbing check on CPU with a tiny model (no figures written)
python -m tests.bench.gpu_scoring --reinforce  # the same pass with a teacher (the scorer's model, 2 views) on the
                                               # actors too: scoring_gpu_reinforce.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor


from tests.bench.bench_scoring import make_inputs
from tests.bench.common import versions, write_result

TINY = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def pure_forward(model_name: str, batch: int, iters: int, device: str, precision: str) -> float:
    """Images/s of encode_image + encode_text (full context) on tensors already on the device."""
    import torch
    from curate.clip.model import load_clip
    from curate.clip.scorer import _autocast
    model, _, tok = load_clip(model_name, "", device)
    size = model.visual.preprocess_cfg["size"]
    h, w = size if isinstance(size, (tuple, list)) else (size, size)
    x = torch.randn(batch, 3, h, w, device=device)
    _, caps = make_inputs(batch, seed=1, short_side=8)
    t = tok(caps).to(device)

    def step():
        ie = model.encode_image(x)
        te = model.encode_text(t)
        return (torch.nn.functional.normalize(ie.float(), dim=-1) * torch.nn.functional.normalize(te.float(), dim=-1)).sum(-1)

    with torch.inference_mode(), _autocast(device, precision):
        for _ in range(5):
            step()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        _sync(device)
    return batch * iters / (time.perf_counter() - t0)


def _sync(device: str) -> None:
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _gen(args):
    n, seed = args
    return make_inputs(n, seed=seed)


def write_units(out: str, n: int, unit_size: int, unique: int, workers: int) -> list[int]:
    """Stage units of n rows whose images cycle through `unique` generated JPEGs (decode cost is per row)."""
    import pyarrow as pa
    from curate import stage_io
    from curate.schema import COL, Status
    per = max(1, unique // workers)
    with ProcessPoolExecutor(workers) as ex:
        parts = list(ex.map(_gen, [(per, s) for s in range(workers)]))
    imgs = [b for p in parts for b in p[0]]
    caps = [c for p in parts for c in p[1]]
    units = []
    for u, s in enumerate(range(0, n, unit_size)):
        rows = range(s, min(n, s + unit_size))
        uids = [f"{i:012d}" for i in rows]
        ledger = pa.table({COL.UID: uids, COL.UNIT_ID: pa.array([u] * len(uids), pa.int32()),
                           COL.SOURCE_FILE: ["bench"] * len(uids), COL.ROW_INDEX: pa.array(rows, pa.int64()),
                           COL.CAPTION_CLEAN: [caps[i % len(caps)] for i in rows],
                           COL.STATUS: [Status.OK] * len(uids)})
        stage_io.write_unit(out, u, ledger, [(f"{uid}.jpg", imgs[i % len(imgs)]) for uid, i in zip(uids, rows)], {})
        units.append(u)
    return units


def stage_end_to_end(out: str, units: list[int], cfg, teach=None) -> dict:
    """Runs the Ray Data scoring pipeline (with the reinforce teachers `teach` on the actors too, when given);
    images/s overall and in steady state (after the first batch)."""
    import pyarrow.compute as pc
    from pipelines.scoring import PassModels, _build_dataset
    from curate.reinforce.store import NPZ
    from curate.schema import COL
    t0 = time.perf_counter()
    stamps, rows = [], 0
    ds = _build_dataset(out, units, cfg, PassModels(cfg, teach=teach), teach=frozenset(units if teach else ()))
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        rows += batch.num_rows
        stamps.append((time.perf_counter(), rows))
        assert pc.sum(pc.is_null(batch[COL.CLIP_SCORE])).as_py() == 0
        assert teach is None or pc.sum(pc.is_null(batch[NPZ])).as_py() == 0
    total = time.perf_counter() - t0
    (t_first, r_first), (t_last, r_last) = stamps[0], stamps[-1]
    steady = (r_last - r_first) / (t_last - t_first) if t_last > t_first else float("nan")
    return {"rows": rows, "seconds": round(total, 2), "images_per_s_total": round(rows / total, 1),
            "images_per_s_steady": round(steady, 1), "first_batch_after_s": round(t_first - t0, 2)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=131_072, help="rows through the stage")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--iters", type=int, default=40, help="timed forward iterations")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny model, few rows: checks the plumbing only")
    ap.add_argument("--reinforce", action="store_true", help="a teacher (the scorer's model, 2 views) on the actors")
    args = ap.parse_args(argv)
    import torch
    if args.dry_run:
        device, precision = "cpu", "fp32"
        path = os.path.join(tempfile.mkdtemp(), "bench-tiny.json")
        with open(path, "w") as f:
            json.dump(TINY, f)
        model, args.n, args.iters = path, min(args.n, 600), 2
    elif not torch.cuda.is_available():
        sys.exit("gpu_scoring: CUDA is not available (torch.cuda.is_available() is False); this benchmark needs "
                 "one GPU. Use --dry-run to check the script on CPU, or tests/bench/bench_scoring.py for CPU figures.")
    else:
        device, precision, model = "cuda", "bf16", "ViT-B-32"
    import ray
    from curate.config import ClipConfig, ReinforceConfig
    t_start = time.perf_counter()
    pure = pure_forward(model, args.batch, args.iters, device, precision)
    print(f"pure forward: {pure:.0f} img/s", flush=True)
    cpus = os.cpu_count() or 2
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        units = write_units(out, args.n, 8192, unique=min(args.n, 2048), workers=min(cpus, 16))
        gen_s = time.perf_counter() - t0
        cfg = ClipConfig(model=model, device=device, precision=precision, batch_size=args.batch)
        teach = ReinforceConfig(enabled=True, teachers=(f"{model}|",), views=2) if args.reinforce else None
        e2e = stage_end_to_end(out, units, cfg, teach)
    ray.shutdown()
    print(f"stage end to end: {e2e}", flush=True)
    res = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (dry run)",
           "model": f"{model} random init, {precision}, batch {args.batch}", "n": args.n,
           "reinforce": f"teacher {model} (random init, fp32 under no autocast), 2 views" if args.reinforce else None,
           "pure_forward_images_per_s": round(pure, 1), "stage": e2e,
           "ratio_stage_steady_vs_pure_forward": round(e2e["images_per_s_steady"] / pure, 3),
           "ratio_stage_total_vs_pure_forward": round(e2e["images_per_s_total"] / pure, 3), "goal_ratio": 0.8,
           "input_generation_s": round(gen_s, 1), "wall_s": round(time.perf_counter() - t_start, 1),
           "ray_cpus": cpus, "versions": versions("torch", "open_clip_torch", "ray", "pillow"),
           "notes": "pure forward: encode_image + encode_text (77 tokens) on ready device tensors; stage: stage "
                    "tar JPEGs (short side 256) -> Ray Data CPU decode/tokenize tasks -> one GPU actor; text is "
                    "trimmed to the batch's longest caption in the stage."}
    print(f"ratio (steady) {res['ratio_stage_steady_vs_pure_forward']} (goal 0.8)")
    if not args.dry_run:
        write_result("scoring_gpu_reinforce" if args.reinforce else "scoring_gpu", res)
    return res


if __name__ == "__main__":
    main()
