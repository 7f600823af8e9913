"""Command-line flags of build_shards, each mapped onto one dotted key of the run config."""
from __future__ import annotations

import argparse

# flag -> (config key, type/action, help). Every option also exists in the YAML config; flags override it.
FLAGS = {
    "--input": ("input.paths", "append", "URL list: file, folder or glob (repeatable)"),
    "--output": ("output", str, "output folder or s3://bucket/prefix"),
    "--input-format": ("input.preset", str, "column preset: laion | coyo | datacomp | default (url, caption)"),
    "--file-format": ("input.file_format", str, "auto | parquet | csv | tsv | jsonl | txt"),
    "--url-col": ("input.url_col", str, "URL column (overrides the preset)"),
    "--caption-col": ("input.caption_col", str, "caption column (overrides the preset)"),
    "--keep-columns": ("input.keep_columns", "csv",
                       "input columns carried to the ledger as src_<name>, comma-separated"),
    "--unit-size": ("input.unit_size", int, "rows per work unit (default 10000)"),
    "--languages": ("language.languages", "csv", "ISO 639-1 codes to keep, comma-separated, or all"),
    "--lang-backend": ("language.backend", str, "langdetect | lingua"),
    "--min-lang-prob": ("language.min_lang_prob", float, "drop captions whose language probability is lower"),
    "--allow-private-networks": ("download.allow_private_networks", "true",
                                 "allow loopback/private addresses (tests, demo)"),
    "--retry-failed": ("download.retry_failed", "true", "refetch retryable failures of completed units"),
    "--threads": ("download.threads", int, "requests in flight per worker (default 32)"),
    "--timeout": ("download.timeout", float, "seconds per connect/read (default 10)"),
    "--image-size": ("image.size", int, "target image size in pixels (default 256)"),
    "--resize-mode": ("image.resize_mode", str, "no | keep_ratio | keep_ratio_largest | center_crop | border"),
    "--image-format": ("image.format", str, "jpg | png | webp"),
    "--encode-quality": ("image.quality", int, "jpg/webp quality (default 95)"),
    "--min-image-size": ("image.min_width", int, "minimum width and height in pixels"),
    "--no-dedup": ("dedup.enabled", "false", "skip perceptual-hash deduplication"),
    "--dedup-k": ("dedup.k", int, "Hamming distance for near-duplicates"),
    "--eval-hashes": ("dedup.eval_hashes", str, "file of evaluation-image hashes to exclude"),
    "--no-clip": ("clip.enabled", "false", "skip CLIP scoring"),
    "--clip-model": ("clip.model", str, "open_clip model name or model config JSON"),
    "--clip-pretrained": ("clip.pretrained", str, "open_clip tag, weights file or curate.train checkpoint dir"),
    "--clip-threshold": ("clip.threshold", float, "drop pairs with CLIP score below this"),
    "--clip-keep-top": ("clip.keep_top_fraction", float, "keep this top fraction of CLIP scores over the run"),
    "--clip-batch-size": ("clip.batch_size", int, "scoring batch size (default 256)"),
    "--reinforce": ("reinforce.enabled", "true", "store teacher embeddings of image views and captions (KEY.npz)"),
    "--reinforce-teacher": ("reinforce.teachers", "append", "teacher '<model>|<pretrained>' (repeatable: an ensemble)"),
    "--reinforce-views": ("reinforce.views", int, "augmented views per image (default 2)"),
    "--balance-concepts": ("balance.concepts", "true", "MetaCLIP concept balancing"),
    "--concept-t": ("balance.t", int, "per-concept cap t (default 20000)"),
    "--samples-per-shard": ("shards.samples_per_shard", int, "samples per output shard (default 10000)"),
    "--seed": ("seed", int, "seed for every random choice of the run"),
    "--num-cpus": ("num_cpus", int, "CPUs for the embedded local Ray (default: all)"),
    "--overwrite": ("overwrite", "true", "delete the output and start over"),
    "--no-progress": ("progress", "false", "no progress bar / log lines"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.build_shards",
        description="URL lists -> filtered, downloaded, deduplicated, CLIP-scored, balanced webdataset shards "
                    "+ Parquet metadata. Every option can also be set in --config YAML; flags win.")
    p.add_argument("--config", help="run config YAML (every key and default: pipelines/default.yaml)")
    p.add_argument("--print-config", action="store_true", help="print every option with its default and exit")
    for flag, (key, kind, help_) in FLAGS.items():
        if kind in ("true", "false"):
            p.add_argument(flag, action="store_const", const=(kind == "true"), default=None, help=help_)
        elif kind == "append":
            p.add_argument(flag, action="append", default=None, help=help_)
        else:
            p.add_argument(flag, default=None, help=help_ + f" [{key}]")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set download.per_domain_rps=5 (repeatable)")
    return p


def overrides_from_args(args: argparse.Namespace) -> dict:
    """{dotted config key: value} for every flag given on the command line."""
    out: dict = {}
    for flag, (key, kind, _) in FLAGS.items():
        val = getattr(args, flag.lstrip("-").replace("-", "_"))
        if val is None:
            continue
        if kind == "csv":
            val = [v.strip() for v in val.split(",") if v.strip()]
        out[key] = val
    for item in args.set:
        if "=" not in item:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out
