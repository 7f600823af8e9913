"""Real photos for tests and benchmarks: random crops of the photos scikit-image ships (no download)."""
from __future__ import annotations

import numpy as np
from PIL import Image


def photo_crops(n: int, names: tuple[str, ...], seed: int = 0) -> list[Image.Image]:
    """n RGB crops (3/4 of each side, random offset) of the named skimage.data photos, resized 200-256 px wide:
    the size of image the pipeline stores and hashes."""
    import skimage.data

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in names]
    out = []
    for i in range(n):
        im = photos[i % len(photos)]
        x, y = rng.integers(0, im.width // 4), rng.integers(0, im.height // 4)
        crop = im.crop((x, y, x + im.width * 3 // 4, y + im.height * 3 // 4))
        side = int(rng.integers(200, 257))
        out.append(crop.resize((side, max(1, crop.height * side // crop.width))))
    return out
