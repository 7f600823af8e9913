"""What identifies a CLIP scorer (model config and weights files, by digest), without importing torch."""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
# Optional scorer outputs (stage/<unit>.emb.parquet), named here so the driver (semantic dedup, the scoring
# pass's writer) reads them without importing torch
IMAGE_EMB = "clip_image_emb"  # fixed_size_list<float16>[embed_dim], L2-normalised
TEXT_EMB = "clip_text_emb"    # fixed_size_list<float16>[embed_dim], L2-normalised


def _looks_like_path(s: str) -> bool:
    return s.endswith(WEIGHT_SUFFIXES) or s.startswith((".", "~", "/")) or os.sep in s


def _fingerprint(path: Path) -> list:
    """(name, bytes, sha256) of a local file, or of every weights/config file of a checkpoint folder."""
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file()
                                                 and p.suffix in (*WEIGHT_SUFFIXES, ".json"))
    out = []
    for f in files:
        with open(f, "rb") as fh:
            out.append([f.name, f.stat().st_size, hashlib.file_digest(fh, "sha256").hexdigest()])
    return out


@lru_cache(maxsize=8)
def scorer_identity(model: str, pretrained: str) -> dict:
    """What decides a CLIP score: the model name or config and the weights. A local config, weights file or
    checkpoint folder is identified by its files' digests, so retraining into the same folder is a new
    scorer; an open_clip tag by its name. Stored in each unit's scores record: a rerun whose scorer differs
    rescores the unit (the bootstrap recipe: build without CLIP, train a scorer, rebuild with it)."""
    ident: dict = {"model": model, "pretrained": pretrained}
    for key, value in (("model_files", model), ("pretrained_files", pretrained)):
        if value and _looks_like_path(value) and Path(value).exists():
            ident[key] = _fingerprint(Path(value))
    return ident
