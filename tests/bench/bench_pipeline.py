"""Benchmark: the whole build_shards pipeline (tiny CLIP scorer) vs img2dataset download-only, same URL list, one run."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from tests.bench.bench_download import make_pool, measure, run_img2dataset, start_server, write_url_list
from tests.bench.common import ratio, versions, write_result

TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
             "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def run_pipeline(urls_path: str, out_dir: str, processes: int, threads: int, size: int, quality: int,
                 timeout: int, unit_rows: int, result) -> None:
    """Child process: the full pipeline with local Ray of `processes` CPUs; sends its counts back."""
    from curate.config import load_config
    from curate.schema import COL
    from pipelines.build_shards import run

    model = Path(out_dir) / "tiny-clip.json"
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    model.write_text(json.dumps(TINY_CLIP))
    cfg = load_config(None, {
        "input.paths": [urls_path], "output": str(Path(out_dir) / "run"), "num_cpus": processes,
        "download.threads": threads, "download.timeout": timeout, "download.allow_private_networks": True,
        "download.per_domain_concurrency": threads, "input.unit_size": unit_rows, "image.size": size,
        "image.quality": quality, "clip.model": str(model), "shards.samples_per_shard": 1000,
        "language.enabled": False, "progress": False})
    manifest = run(cfg)
    import pyarrow.parquet as pq
    ledger = pq.read_table(Path(out_dir) / "run" / "metadata" / "ledger", columns=[COL.HTTP_STATUS, COL.WIDTH])
    processed = ledger.num_rows - ledger[COL.WIDTH].null_count
    result.send({"ok": int(processed), "written": manifest["written_samples"], "counts": manifest["counts"]})


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--pool", type=int, default=300)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--unit-rows", type=int, default=1000)
    args = ap.parse_args(argv)
    pool = make_pool(args.pool)
    server, port = start_server(pool)
    work = Path(tempfile.mkdtemp(prefix="curate-bench-pipe-"))
    common = (args.processes, args.threads, 256, 95, 10, args.unit_rows)
    try:
        rng = np.random.default_rng(2)
        ks = rng.integers(0, len(pool), args.rows)
        urls_path = work / "urls.parquet"
        write_url_list(urls_path, [f"http://127.0.0.1:{port}/pool/{i}/{k}.{pool[k][0]}" for i, k in enumerate(ks)])
        res = {}
        for tool, fn in (("curate_pipeline", run_pipeline), ("img2dataset", run_img2dataset)):
            out = work / tool
            out.mkdir()
            res[tool] = measure(fn, str(urls_path), str(out), *common)
            print(f"{tool}: {json.dumps(res[tool])}", flush=True)
    finally:
        server.kill()
        shutil.rmtree(work, ignore_errors=True)
    c, i = res["curate_pipeline"], res["img2dataset"]
    result = {
        "rows": args.rows, "distinct_images": len(pool), "processes": args.processes, "threads": args.threads,
        "image_size": 256, "curate_pipeline": c, "img2dataset": i,
        "images_per_s_ratio": ratio(c["images_per_s"], i["images_per_s"], 3),
        "peak_rss_ratio": ratio(c["peak_rss_mb"], i["peak_rss_mb"], 3),
        "versions": versions("img2dataset", "ray", "open_clip_torch", "torch", "pillow"),
        "notes": ("curate_pipeline = plan + prefilter (language off: captions are synthetic) + download/resize "
                  "+ phash + CLIP scoring (tiny ViT on CPU, inside the download tasks: clip.cpu_in_units) + dedup + selection + shard writing + "
                  "report; images_per_s counts images downloaded and processed (the URL list reuses "
                  f"{len(pool)} distinct images, so dedup writes only the distinct ones: see 'written'); "
                  "img2dataset = download + resize + webdataset write only; peak RSS summed over each "
                  "tool's process tree (Ray's raylet/GCS/workers included)"),
    }
    print(f"pipeline {c['images_per_s']} images/s vs img2dataset download-only {i['images_per_s']} "
          f"(ratio {result['images_per_s_ratio']}); peak RSS {c['peak_rss_mb']} vs {i['peak_rss_mb']} MB")
    write_result("pipeline", result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
