"""Seeded image views of reinforced samples: RandomResizedCrop + flip parameters per uid, and applying them."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

RATIO = (3 / 4, 4 / 3)  # aspect-ratio range of a view (torchvision's RandomResizedCrop default)
ATTEMPTS = 10           # draws before the central-crop fallback, as torchvision


def view_rng(uid: str, seed: int, view: int) -> np.random.Generator:
    """The generator of one view: (run seed, first 64 bits of the uid, view index), so a view is reproducible
    from the sample alone, whatever the unit, worker or order."""
    return np.random.default_rng([seed, int(uid[:16], 16), view])


def _crop(rng: np.random.Generator, width: int, height: int, min_scale: float) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a crop whose area is a U(min_scale, 1) fraction of the image and whose
    aspect ratio is log-uniform in RATIO; after ATTEMPTS misses, the central crop with the ratio clamped."""
    area, log_lo, log_hi = width * height, math.log(RATIO[0]), math.log(RATIO[1])
    for _ in range(ATTEMPTS):
        target = area * rng.uniform(min_scale, 1.0)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    ratio = width / height
    if ratio < RATIO[0]:
        w, h = width, int(round(width / RATIO[0]))
    elif ratio > RATIO[1]:
        w, h = int(round(height * RATIO[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def view_params(uid: str, seed: int, n_views: int, width: int, height: int, min_scale: float) -> list[dict]:
    """n_views crop-and-flip parameters for the stored image (width x height pixels) of sample `uid`:
    [{"top", "left", "height", "width": int pixels, "flip": bool}, ...], each view seeded by
    (seed, uid, index) (view_rng). Every crop lies inside the image."""
    if width < 1 or height < 1:
        raise ValueError(f"view_params: image of sample {uid} is {width}x{height} pixels")
    out = []
    for i in range(n_views):
        rng = view_rng(uid, seed, i)
        top, left, h, w = _crop(rng, width, height, min_scale)
        out.append({"top": top, "left": left, "height": h, "width": w, "flip": bool(rng.random() < 0.5)})
    return out


def apply_view(img: Image.Image, params: dict) -> Image.Image:
    """The view `params` (view_params) of `img`: the crop, then the horizontal flip; the model's own preprocess
    resizes afterwards. Raises ValueError when the crop does not fit the image (parameters of another image)."""
    top, left, h, w = (int(params[k]) for k in ("top", "left", "height", "width"))
    if top < 0 or left < 0 or h < 1 or w < 1 or top + h > img.height or left + w > img.width:
        raise ValueError(f"apply_view: crop {params} does not fit a {img.width}x{img.height} image")
    view = img.crop((left, top, left + w, top + h))
    return view.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if params["flip"] else view
