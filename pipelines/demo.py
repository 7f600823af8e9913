"""`make demo`: the whole pipeline, offline, on a generated corpus served on 127.0.0.1, with a trained CLIP scorer."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curate.checkpoint_files import CONFIG_FILE, WEIGHTS_FILE
from curate.config import load_config
from curate.democorpus import CorpusServer, make_corpus
from curate.layout import RunLayout
from curate.schema import COL, Status

ASSETS = Path(__file__).resolve().parent / "demo_assets"
CHECKPOINT = ASSETS / "clip_demo"  # made by `python -m pipelines.train_demo_clip` (shipped, reproducible)


def ensure_checkpoint() -> tuple[Path, float]:
    """The demo's trained CLIP checkpoint and the score threshold calibrated on its held-out data."""
    if not (CHECKPOINT / WEIGHTS_FILE).is_file():
        print("no shipped demo checkpoint: training one now (python -m pipelines.train_demo_clip)")
        from pipelines.train_demo_clip import main as train
        train([])
    meta = json.loads((CHECKPOINT / "demo_calibration.json").read_text())
    return CHECKPOINT, float(meta["threshold"])


def write_url_list(out: Path, rows) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "urls.parquet"
    pq.write_table(pa.table({"url": [r.url for r in rows], "caption": [r.caption for r in rows],
                             "kind": [r.kind for r in rows]}), path)
    return path


def clip_rates(output: Path, rows) -> dict:
    """Shares of matched / mismatched captions dropped as low_clip_score, among the rows that reached the
    CLIP filter (rows dropped earlier, e.g. as near-duplicates of a better-captioned copy, never met it)."""
    ledger = pq.read_table(RunLayout(str(output)).ledger).sort_by(COL.ROW_INDEX).to_pylist()
    stats = {"match": [0, 0], "mismatch": [0, 0]}  # [reached the filter, dropped low_clip_score]
    reached = (Status.KEPT, Status.LOW_CLIP_SCORE, Status.BALANCED_OUT)
    for r, row in zip(rows, ledger):
        if r.kind in stats and row[COL.STATUS] in reached:
            stats[r.kind][0] += 1
            stats[r.kind][1] += row[COL.STATUS] == Status.LOW_CLIP_SCORE
    return {k: {"reached_filter": s, "dropped_low_clip": d, "drop_rate": round(d / s, 3) if s else None}
            for k, (s, d) in stats.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.demo", description=__doc__)
    ap.add_argument("--output", default="demo_output", help="folder for the corpus and the run")
    ap.add_argument("--rows", type=int, default=1500, help="rows in the generated URL list")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from pipelines.build_shards import run

    t0 = time.time()
    ckpt, threshold = ensure_checkpoint()
    out = Path(args.output).resolve()
    with CorpusServer() as srv:
        rows, files = make_corpus(args.rows, args.seed, srv.base_url)
        srv.set_files(files)
        urls = write_url_list(out / "corpus", rows)
        print(f"demo corpus: {len(rows)} rows, {len(files)} images served at {srv.base_url}")
        cfg = load_config(None, {
            "input.paths": [str(urls)], "output": str(out / "run"), "overwrite": True, "seed": args.seed,
            "download.allow_private_networks": True, "download.timeout": 5, "input.unit_size": 250,
            "language.languages": ["en"], "image.size": 128, "shards.samples_per_shard": 200,
            "clip.model": str(ckpt / CONFIG_FILE), "clip.pretrained": str(ckpt),
            "clip.threshold": threshold, "clip.batch_size": 128, "dedup.enabled": True})
        run(cfg)
    rates = clip_rates(out / "run", rows)
    mm, ma = rates["mismatch"], rates["match"]
    print(f"\nCLIP filter (threshold {threshold:.3f}), among rows that reached it: mismatched captions dropped "
          f"{mm['drop_rate']:.0%} ({mm['dropped_low_clip']}/{mm['reached_filter']}), matched captions kept "
          f"{1 - ma['drop_rate']:.0%} ({ma['reached_filter'] - ma['dropped_low_clip']}/{ma['reached_filter']})")
    print(f"demo finished in {time.time() - t0:.0f} s. Explore: notebooks/explore_metadata.ipynb "
          f"(CURATE_OUTPUT={out / 'run'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
