"""Benchmark: curate.train vs open_clip_train (`python -m open_clip_train.main`) on the same shards, tiny model,
batch size and threads, CPU, one run each: samples/s ratio and both loss curves."""
from __future__ import annotations

import argparse
import csv
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.common import versions, write_result

REPO = Path(__file__).resolve().parents[2]

# open_clip_train 3.3 + webdataset 0.2.111 crash with KeyError 'fname' on the end-of-shard marker, and a tiny
# config must be registered before its factory runs: this wrapper does both, then calls open_clip_train.main.
OPEN_CLIP_WRAPPER = """
import functools, sys, torch
import open_clip, webdataset.tariterators as wt, open_clip_train.data as d
torch.set_num_threads(int(sys.argv[2]))
if sys.argv[1].endswith(".json"):
    open_clip.add_model_config(sys.argv[1])
d.tar_file_expander = functools.partial(wt.tar_file_expander, eof_value=None)
from open_clip_train.main import main
main(sys.argv[3:])
"""
LINE = re.compile(r"Batch \(t\): [\d.]+, ([\d.]+)/s.*?Contrastive_loss: ([\d.]+)")


def make_data(root: Path, n: int) -> tuple[Path, Path]:
    from tests.test_train_data import write_synth_shards, write_tiny_model
    write_synth_shards(root / "run", n, seed=1, per_shard=256, size=64)
    return root / "run", write_tiny_model(root)


def hyper(args) -> dict:
    return {"lr": 1e-3, "warmup": 5, "wd": 0.2, "beta1": 0.9, "beta2": 0.98, "eps": 1e-6, "clip": 1.0,
            "batch": args.batch_size, "steps": args.steps, "threads": args.threads, "workers": args.workers,
            "device": "cpu", "precision": "fp32"}


def run_curate(root: Path, data: Path, model: str, h: dict) -> dict:
    """Runs `python -m curate.train`; per-step samples/s and losses from its metrics.csv."""
    out = root / "curate_out"
    cmd = [sys.executable, "-m", "curate.train", "--data", str(data), "--model", str(model), "--output", str(out),
           "--batch-size", str(h["batch"]), "--steps", str(h["steps"]), "--lr", str(h["lr"]),
           "--warmup", str(h["warmup"]), "--weight-decay", str(h["wd"]), "--eps", str(h["eps"]),
           "--grad-clip", str(h["clip"]), "--workers", str(h["workers"]), "--threads", str(h["threads"]),
           "--precision", h["precision"], "--device", h["device"], "--log-every", "1", "--shuffle-buffer", "1000"]
    t0 = time.perf_counter()
    cpu = _call(cmd, REPO, h)
    wall = time.perf_counter() - t0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    return {"per_step_sps": [float(r["samples_per_s"]) for r in rows], "losses": [float(r["loss"]) for r in rows],
            "wall_s": wall, "cpu_s": cpu, "samples": h["steps"] * h["batch"]}


def run_open_clip(root: Path, data: Path, model: str, h: dict) -> dict:
    """Runs open_clip_train.main through the wrapper; per-step samples/s and losses from its out.log."""
    shards = sorted((data / "shards").glob("*.tar"))
    spec = str(data / "shards" / f"{{{shards[0].stem}..{shards[-1].stem}}}.tar")
    n = h["steps"] * h["batch"]
    cmd = [sys.executable, "-c", OPEN_CLIP_WRAPPER, str(model), str(h["threads"]),
           "--train-data", spec, "--train-num-samples", str(n), "--dataset-type", "webdataset",
           "--model", Path(model).stem if model.endswith(".json") else model, "--batch-size", str(h["batch"]), "--epochs", "1", "--lr", str(h["lr"]),
           "--warmup", str(h["warmup"]), "--wd", str(h["wd"]), "--beta1", str(h["beta1"]),
           "--beta2", str(h["beta2"]), "--eps", str(h["eps"]), "--grad-clip-norm", str(h["clip"]),
           "--workers", str(h["workers"]), "--precision", {"fp32": "fp32", "bf16": "amp_bf16"}[h["precision"]],
           "--device", h["device"], "--log-every-n-steps", "1",
           "--logs", str(root / "oc_logs"), "--name", "bench", "--save-frequency", "0", "--report-to", "",
           "--seed", "0"]
    t0 = time.perf_counter()
    cpu = _call(cmd, root, h)
    wall = time.perf_counter() - t0
    found = LINE.findall((root / "oc_logs" / "bench" / "out.log").read_text())
    return {"per_step_sps": [float(s) for s, _ in found], "losses": [float(loss) for _, loss in found], "wall_s": wall,
            "cpu_s": cpu, "samples": n}


def _call(cmd: list[str], cwd: Path, h: dict) -> float:
    """Runs cmd; returns the CPU seconds (user + sys) it and its loader workers used: unlike wall time,
    this hardly moves when other jobs share the machine."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, cwd=cwd, env=_env(h), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _env(h: dict) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(h["threads"])}


def summarise(r: dict, skip: int = 3) -> dict:
    """Median and mean samples/s over steps after the first `skip` (loader start-up)."""
    sps = r["per_step_sps"][skip:]
    return {"samples_per_s_median": statistics.median(sps), "samples_per_s_mean": len(sps) / sum(1 / s for s in sps),
            "wall_s": round(r["wall_s"], 1), "cpu_s": round(r["cpu_s"], 1),
            "samples_per_cpu_s": r["samples"] / r["cpu_s"], "steps_logged": len(r["losses"]),
            "loss_curve": r["losses"]}


def alternate(root: Path, data: Path, model: str, h: dict, rounds: int) -> tuple[dict, dict]:
    """Runs the two trainers in turn (A B B A ...) and keeps each one's least-disturbed round (highest
    median samples/s): on a machine shared with other jobs, one run each mostly measures the neighbours."""
    best: dict[str, dict] = {}
    seen: dict[str, list] = {"curate": [], "open_clip": []}
    order = [("curate", run_curate), ("open_clip", run_open_clip)]
    for r in range(rounds):
        for name, fn in (order if r % 2 == 0 else order[::-1]):
            for sub in ("curate_out", "oc_logs"):
                shutil.rmtree(root / sub, ignore_errors=True)
            res = summarise(fn(root, data, model, h))
            print(f"round {r + 1} {name}: {res['samples_per_s_median']:.1f} samples/s", flush=True)
            seen[name].append(round(res["samples_per_s_median"], 1))
            if name not in best or res["samples_per_s_median"] > best[name]["samples_per_s_median"]:
                best[name] = res
    for name in best:
        best[name]["rounds_samples_per_s_median"] = seen[name]
    return best["curate"], best["open_clip"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2, help="runs per trainer, alternating")
    args = p.parse_args(argv)
    h = hyper(args)
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        root = Path(tmp)
        data, model = make_data(root, max(2048, h["steps"] * h["batch"]))
        ours, theirs = alternate(root, data, str(model), h, args.rounds)
    n = min(len(ours["loss_curve"]), len(theirs["loss_curve"]))
    diffs = [abs(a - b) for a, b in zip(ours["loss_curve"][:n], theirs["loss_curve"][:n])]
    result = {
        "setup": {**h, "model": "tiny open_clip ViT (tests/test_train_data.py TINY_MODEL_CFG)", "images": "64 px synth",
                  "device": "cpu", "precision": "fp32"},
        "curate_train": ours, "open_clip_train": theirs,
        "samples_per_s_ratio": ours["samples_per_s_median"] / theirs["samples_per_s_median"],
        "samples_per_s_mean_ratio": ours["samples_per_s_mean"] / theirs["samples_per_s_mean"],
        "samples_per_cpu_s_ratio": ours["samples_per_cpu_s"] / theirs["samples_per_cpu_s"],
        "loss_curve_mean_abs_diff": sum(diffs) / max(1, n),
        "final_loss_ratio": ours["loss_curve"][-1] / theirs["loss_curve"][-1],
        "versions": versions("torch", "open_clip_torch", "webdataset"),
        "notes": "alternating runs (A B B A) on a 2-core machine shared with other jobs; for each trainer the round "
                 "with the highest median samples/s (per-step medians after 3 warm-up steps) is kept; samples_per_cpu_s "
                 "counts the CPU seconds of the whole process (start-up included) and its loader workers; sample "
                 "order differs (each trainer's own shuffling), so loss curves agree within noise",
    }
    print(f"curate.train {ours['samples_per_s_median']:.1f} samples/s vs open_clip_train "
          f"{theirs['samples_per_s_median']:.1f}: ratio {result['samples_per_s_ratio']:.2f}x; "
          f"final loss {ours['loss_curve'][-1]:.3f} vs {theirs['loss_curve'][-1]:.3f}")
    write_result("train", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
