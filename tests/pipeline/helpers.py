"""Shared pieces of the pipeline tests: a served generated corpus and a small run config."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curate.config import load_config
from curate.democorpus import make_corpus

TINY_CLIP = {  # an open_clip model config small enough to score on CPU in milliseconds
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def write_corpus(tmp: Path, base_url: str, n: int, seed: int = 0) -> tuple[Path, list, dict]:
    """Writes a url list (parquet: url, caption, kind) of `n` generated rows; returns (path, rows, files)."""
    rows, files = make_corpus(n, seed, base_url)
    path = tmp / "urls.parquet"
    pq.write_table(pa.table({"url": [r.url for r in rows], "caption": [r.caption for r in rows],
                             "kind": [r.kind for r in rows]}), path)
    return path, rows, files


def tiny_clip_config(tmp: Path) -> Path:
    p = tmp / "tiny-clip.json"
    p.write_text(json.dumps(TINY_CLIP))
    return p


def run_config(input_path: Path, output: Path, clip_model: Path | None = None, **over):
    """A run config for tests: private networks allowed, small units, English only, small shards."""
    o = {"input.paths": [str(input_path)], "output": str(output), "download.allow_private_networks": True,
         "download.timeout": 2, "download.retries": 0, "input.unit_size": 25, "language.languages": ["en"],
         "image.size": 64, "shards.samples_per_shard": 16, "num_cpus": 2, "progress": False,
         "clip.enabled": clip_model is not None, "clip.batch_size": 32}
    if clip_model is not None:
        o["clip.model"] = str(clip_model)
    o.update(over)
    return load_config(None, o)


def tree_digest(root: Path, subdirs=("shards", "metadata")) -> dict[str, str]:
    """sha256 of every file under the given subfolders (for byte-identity checks)."""
    out = {}
    for sub in subdirs:
        for p in sorted((root / sub).rglob("*")):
            if p.is_file():
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out
