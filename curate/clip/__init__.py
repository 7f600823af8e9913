"""CLIP scoring of image-caption pairs with any open_clip model: loading, CPU preprocessing, scoring."""
from curate.clip.model import ClipLoadError, load_clip, load_transforms, resolve

__all__ = ["ClipLoadError", "load_clip", "load_transforms", "resolve"]
