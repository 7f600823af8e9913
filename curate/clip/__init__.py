"""CLIP scoring of image-caption pairs with any open_clip model: loading, CPU preprocessing, scoring."""
from __future__ import annotations

__all__ = ["ClipLoadError", "load_clip", "load_transforms", "resolve"]


def __getattr__(name: str):
    # lazy: importing curate.clip.identity (the driver) must not import torch and open_clip (~0.75 GB RSS)
    if name in __all__:
        from curate.clip import model
        return getattr(model, name)
    raise AttributeError(f"module 'curate.clip' has no attribute {name!r}")
