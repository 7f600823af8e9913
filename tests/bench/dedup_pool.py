"""A labelled near-duplicate pool for the dedup benchmark and tests: real photo crops, generated low-detail
images, and planted groups of 2-4 copies (downscale, JPEG re-compression, 2-6 % crops, brightness)."""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "moon", "grass", "gravel", "brick", "text",
          "hubble_deep_field", "clock", "coins", "cell", "retina", "immunohistochemistry", "colorwheel", "logo")
LOW_DETAIL = ("plain", "gradient", "night_sky", "product_on_white", "logo", "text_on_white")
STORE_SIDE = 256          # the image stage stores at most this side (ImageConfig.size)
MAX_CROP_IOU = 0.5        # base crops of one photo overlap less: distinct images (measured: pHash within
                          # k=8 for 0.1 % of crop pairs at IoU 0.5-0.7, none below 0.5)
WORDS = "sale new red blue fresh summer cat city river photo logo shop best price green old tree".split()


@dataclass
class PoolImage:
    group: int        # planted group id: copies share their original's group
    kind: str         # photo:<name> | low:<kind>
    variant: str      # original | downscale | jpeg | crop | brightness
    data: bytes       # stored bytes (JPEG), as the image stage would store them


def _jpeg(img: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _stored(img: Image.Image, quality: int = 95) -> bytes:
    """Longest side at most STORE_SIDE, JPEG: what the image stage keeps."""
    img = img.convert("RGB")
    scale = STORE_SIDE / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)
    return _jpeg(img, quality)


def _iou(a: tuple, b: tuple) -> float:
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    def area(r):
        return (r[2] - r[0]) * (r[3] - r[1])
    return inter / max(1, area(a) + area(b) - inter)


def _photo_crop(rng, photo: Image.Image, taken: list, side: int) -> Image.Image | None:
    """A crop of 25-60 % of the photo's shorter side that overlaps no earlier crop by MAX_CROP_IOU, resized to
    `side` px wide (None when no such crop was found in a few tries)."""
    for _ in range(50):
        s = int(min(photo.size) * rng.uniform(0.25, 0.6))
        w, h = s, int(s * rng.uniform(0.75, 1.33))
        if h >= photo.height:
            continue
        x, y = int(rng.integers(0, photo.width - w)), int(rng.integers(0, photo.height - h))
        box = (x, y, x + w, y + h)
        if all(_iou(box, t) < MAX_CROP_IOU for t in taken):
            taken.append(box)
            crop = photo.crop(box)
            return crop.resize((side, max(8, crop.height * side // crop.width)), Image.LANCZOS)
    return None


def _colour(rng, lo=0, hi=256) -> tuple:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))


def _noise(rng, img: Image.Image, sigma: float) -> Image.Image:
    a = np.asarray(img, np.float32) + rng.normal(0, sigma, (img.height, img.width, 1))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def low_detail(rng, kind: str, side: int) -> Image.Image:
    """One generated low-detail image of `kind` (LOW_DETAIL), `side` px wide."""
    w, h = side, int(side * rng.uniform(0.66, 1.0))
    if kind == "plain":
        return _noise(rng, Image.new("RGB", (w, h), _colour(rng)), rng.uniform(0.5, 4))
    if kind == "gradient":  # sky: one colour fading into another along a random direction
        t = np.linspace(0, 1, w)[None, :] * np.cos(rng.uniform(0, np.pi)) + \
            np.linspace(0, 1, h)[:, None] * np.sin(rng.uniform(0, np.pi))
        t = (t - t.min()) / max(1e-9, np.ptp(t))
        a, b = np.array(_colour(rng)), np.array(_colour(rng))
        px = a[None, None] * (1 - t[..., None]) + b[None, None] * t[..., None]
        return _noise(rng, Image.fromarray(px.astype(np.uint8)), rng.uniform(0.5, 3))
    img = Image.new("RGB", (w, h), (255, 255, 255) if kind != "night_sky" else _colour(rng, 0, 25))
    draw = ImageDraw.Draw(img)
    if kind == "night_sky":
        for _ in range(int(rng.integers(3, 40))):
            x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(0, 2))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=_colour(rng, 180))
    elif kind == "product_on_white":  # one object, 15-45 % of the side, somewhere near the middle
        s = int(side * rng.uniform(0.15, 0.45))
        x, y = int(w / 2 + rng.uniform(-0.2, 0.2) * w - s / 2), int(h / 2 + rng.uniform(-0.2, 0.2) * h - s / 2)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x, y, x + s, y + int(s * rng.uniform(0.6, 1.6))), fill=_colour(rng, 0, 200))
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5)))
    elif kind == "logo":
        img.paste(_colour(rng, 150), (0, 0, w, h))
        for _ in range(int(rng.integers(1, 4))):
            x, y = int(rng.integers(0, w * 3 // 4)), int(rng.integers(0, h * 3 // 4))
            s = int(rng.integers(8, side // 3))
            draw.rectangle((x, y, x + s, y + s), fill=_colour(rng, 0, 150))
        draw.text((int(w * 0.1), int(h * rng.uniform(0.6, 0.85))), " ".join(rng.choice(WORDS, 2)), fill=(0, 0, 0))
    elif kind == "text_on_white":
        for line in range(int(rng.integers(1, 8))):
            draw.text((int(rng.integers(2, w // 4)), 4 + line * 12), " ".join(rng.choice(WORDS, 4)), fill=(0, 0, 0))
    return img


def _copy(rng, img: Image.Image) -> tuple[str, bytes]:
    """A near-duplicate of `img`: (variant, stored bytes)."""
    variant = str(rng.choice(["downscale", "jpeg", "crop", "brightness"]))
    if variant == "downscale":
        f = rng.uniform(0.5, 0.8)
        return variant, _stored(img.resize((max(8, int(img.width * f)), max(8, int(img.height * f))), Image.BILINEAR))
    if variant == "jpeg":
        return variant, _stored(img, int(rng.integers(20, 61)))
    if variant == "crop":  # 2-6 % of the area off, split between the sides at random
        cut = rng.uniform(0.02, 0.06) / 2
        left, t = rng.uniform(0, cut), rng.uniform(0, cut)
        w, h = img.size
        return variant, _stored(img.crop((int(w * left), int(h * t), int(w * (1 - cut + left)),
                                          int(h * (1 - cut + t)))))
    f = rng.choice([-1, 1]) * rng.uniform(0.05, 0.2) + 1
    return variant, _stored(ImageEnhance.Brightness(img).enhance(f))


def make_pool(n_bases: int, seed: int = 0, low_share: float = 0.15, copy_share: float = 0.25) -> list[PoolImage]:
    """n_bases distinct images (half 64-96 px, half 200-256 px wide; low_share generated low-detail ones),
    copy_share of which get 1-3 planted copies, all seeded."""
    import skimage.data

    rng = np.random.default_rng(seed)
    photos = {n: Image.fromarray(getattr(skimage.data, n)()).convert("RGB") for n in PHOTOS}
    taken: dict = {n: [] for n in PHOTOS}
    out: list[PoolImage] = []
    group = 0
    while group < n_bases:
        side = int(rng.integers(64, 97) if rng.random() < 0.5 else rng.integers(200, 257))
        if rng.random() < low_share:
            kind = str(rng.choice(LOW_DETAIL))
            img, label = low_detail(rng, kind, side), f"low:{kind}"
        else:
            name = str(rng.choice(PHOTOS))
            img, label = _photo_crop(rng, photos[name], taken[name], side), f"photo:{name}"
            if img is None:
                continue
        out.append(PoolImage(group, label, "original", _stored(img)))
        if rng.random() < copy_share:
            for _ in range(int(rng.integers(1, 4))):
                variant, data = _copy(rng, img)
                out.append(PoolImage(group, label, variant, data))
        group += 1
    return out
