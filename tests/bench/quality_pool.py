"""A labelled, seeded image-caption pool for the curation-quality benchmark: crops of photos that ship inside
scikit-image, short alt-text captions (some describing another photo, some in other
languages), planted near-duplicate copies, and held-out test crops per subject. No download."""
from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from tests.bench import alttext

# alttext subject -> (scikit-image photo, zero-shot class name: the first English noun alttext writes for it).
# One photo per subject: distinct crops of it are distinct images; its held-out crops test zero-shot recognition.
SUBJECTS: dict[str, tuple[str, str]] = {
    "astronaut": ("astronaut", "astronaut"), "camera": ("camera", "camera"), "cat": ("chelsea", "cat"),
    "coffee": ("coffee", "coffee"), "rocket": ("rocket", "rocket"), "moon": ("moon", "moon"),
    "grass": ("grass", "grass"), "gravel": ("gravel", "gravel"), "brick": ("brick", "brick wall"),
    "horse": ("horse", "horse"), "galaxy": ("hubble_deep_field", "galaxy"), "coins": ("coins", "coins"),
}
MIN_STD = 6.0           # 0-255 grey levels: a flatter crop is redrawn (blank shows no subject; low detail stays)
CROP_SIDE = (0.25, 0.7)  # crop side as a share of the photo's short side
MAX_CROP_IOU = 0.7      # two crops of one photo overlap less than this (as tests/bench/dedup_pool.py, which
                        # measured pHash links under 0.2 % of pairs at IoU 0.5-0.7): distinct images
SIDE_PX = (64, 160)     # longest side of a pool image; most web thumbnails are 64-96 px (see _side)
MIN_COPY_PX = 48        # a downscaled copy keeps at least this longest side
COPIES = ((1, 0.85), (2, 0.10), (3, 0.05))  # copies per planted group: mostly pairs, never more than 4 members


@dataclass(frozen=True)
class PoolRow:
    """One image-caption pair and its labels. group = planted duplicate group (-1: no copy); role = original,
    copy or single; mismatch = the caption describes caption_subject, not subject."""
    index: int
    path: str
    subject: str
    caption: str
    caption_subject: str
    lang: str
    mismatch: bool
    group: int
    role: str
    copy_ops: str


def load_photo(subject: str) -> Image.Image:
    """The RGB photo of `subject` as scikit-image ships it."""
    import skimage.data

    arr = getattr(skimage.data, SUBJECTS[subject][0])()
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255                 # horse: a silhouette
    return Image.fromarray(arr).convert("RGB")


def jpeg_bytes(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _side(rng: random.Random) -> int:
    """Longest side in px: 75% thumbnails of 64-96 px, the rest up to SIDE_PX[1]."""
    return rng.randint(64, 96) if rng.random() < 0.75 else rng.randint(97, SIDE_PX[1])


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one (x0, y0, x1, y1) box with each row of `boxes`."""
    lo, hi = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(boxes) - inter)


def _box(photo: Image.Image, rng: random.Random, taken: list) -> tuple[int, int, int, int]:
    """A crop box (CROP_SIDE of the short side, aspect 3:4..4:3) that overlaps no box in `taken` by
    MAX_CROP_IOU or more, and is not flat; appended to `taken`."""
    for _ in range(500):
        s = rng.uniform(*CROP_SIDE) * min(photo.size)
        aspect = rng.uniform(0.75, 1.33)
        w, h = int(min(photo.width, s * aspect ** 0.5)), int(min(photo.height, s / aspect ** 0.5))
        x, y = rng.randint(0, photo.width - w), rng.randint(0, photo.height - h)
        box = np.array([x, y, x + w, y + h], np.float64)
        if taken and _iou(box, np.array(taken)).max() >= MAX_CROP_IOU:
            continue
        if np.asarray(photo.crop((x, y, x + w, y + h)).convert("L"), np.float32).std() >= MIN_STD:
            taken.append(box)
            return x, y, x + w, y + h
    raise ValueError(f"no crop of a {photo.size} photo overlaps its {len(taken)} earlier crops by less than "
                     f"{MAX_CROP_IOU}: ask for fewer pairs per subject")


def random_crop(photo: Image.Image, rng: random.Random, taken: list) -> Image.Image:
    """A distinct crop of `photo` (see _box), sometimes mirrored, resized to a web-thumbnail size."""
    crop = photo.crop(_box(photo, rng, taken))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    side = _side(rng)
    scale = side / max(crop.size)
    return crop.resize((max(8, round(crop.width * scale)), max(8, round(crop.height * scale))), Image.LANCZOS)


def near_copy(img: Image.Image, rng: random.Random) -> tuple[Image.Image, int, str]:
    """(copy, JPEG quality, ops): one or two of downscale (to 55-85%, not below MIN_COPY_PX), a crop of 2-6% of
    the area (split between the edges), brightness +-10-20%; then a JPEG re-compression."""
    ops = rng.sample(["downscale", "crop", "brightness"], rng.randint(1, 2))
    out = img
    for op in ops:
        if op == "downscale":
            f = max(rng.uniform(0.55, 0.85), MIN_COPY_PX / max(out.size))
            out = out.resize((max(8, round(out.width * f)), max(8, round(out.height * f))), Image.LANCZOS)
        elif op == "crop":
            keep = (1 - rng.uniform(0.02, 0.06)) ** 0.5  # per side, so that the area shrinks by 2-6%
            dx, dy = round(out.width * (1 - keep)), round(out.height * (1 - keep))
            ox, oy = rng.randint(0, dx), rng.randint(0, dy)
            out = out.crop((ox, oy, out.width - (dx - ox), out.height - (dy - oy)))
        else:
            out = ImageEnhance.Brightness(out).enhance(rng.choice([rng.uniform(0.8, 0.9), rng.uniform(1.1, 1.2)]))
    return out, rng.randint(35, 75), "+".join(ops + ["jpeg"])


def _caption(rng: random.Random, subject: str, p_mismatch: float, p_other_lang: float) -> tuple[str, str, str]:
    """(caption, the subject it describes, its language)."""
    others = [s for s in SUBJECTS if s != subject]
    said = rng.choice(others) if rng.random() < p_mismatch else subject
    langs = [lang for lang in alttext.LANGS if lang != "en"]
    lang = rng.choice(langs) if rng.random() < p_other_lang else "en"
    return alttext.caption(said, lang, rng, words=(1, 5)), said, lang


def _plan_groups(n: int, p_copy: float, rng: random.Random) -> list[int]:
    """Copies per distinct image (0 for most) so that about p_copy of the n rows are copies."""
    target, counts = round(n * p_copy), []
    while sum(counts) < target:
        k = rng.choices([c for c, _ in COPIES], [w for _, w in COPIES])[0]
        counts.append(min(k, target - sum(counts)))
    distinct = n - target
    return counts + [0] * (distinct - len(counts))


def make_pool(n: int, seed: int = 0, p_mismatch: float = 0.35, p_other_lang: float = 0.15,
              p_copy: float = 0.20) -> tuple[list[PoolRow], dict[str, bytes]]:
    """(rows in serving order, {path: JPEG bytes}): n pairs, subjects balanced, every choice from `seed`.
    Copies are shuffled among the rows so a group's members land in different work units."""
    rng = random.Random(seed)
    photos = {s: load_photo(s) for s in SUBJECTS}
    taken: dict[str, list] = {s: [] for s in SUBJECTS}
    subjects = list(SUBJECTS)
    plan = _plan_groups(n, p_copy, rng)
    items = []  # (subject, jpeg bytes, group, role, ops)
    for i, n_copies in enumerate(plan):
        subject = subjects[i % len(subjects)]
        img = random_crop(photos[subject], rng, taken[subject])
        group = i if n_copies else -1
        items.append((subject, jpeg_bytes(img, rng.randint(80, 95)), group, "original" if n_copies else "single", ""))
        for _ in range(n_copies):
            copy, quality, ops = near_copy(img, rng)
            items.append((subject, jpeg_bytes(copy, quality), group, "copy", ops))
    rng.shuffle(items)
    rows, files = [], {}
    for k, (subject, data, group, role, ops) in enumerate(items):
        cap, said, lang = _caption(rng, subject, p_mismatch, p_other_lang)
        path = f"/q/{k:06d}.jpg"
        files[path] = data
        rows.append(PoolRow(k, path, subject, cap, said, lang, said != subject, group, role, ops))
    return rows, files


def heldout_crops(per_subject: int, seed: int) -> list[tuple[str, bytes]]:
    """(subject, JPEG bytes) test crops drawn with their own seed: crops the pool does not contain (of the same
    photos: the test is whether a model learnt each subject's word from the captions)."""
    rng = random.Random(f"heldout-{seed}")
    out = []
    for subject in SUBJECTS:
        photo = load_photo(subject)
        taken: list = []  # distinct from each other; they may overlap pool crops (same photo)
        out += [(subject, jpeg_bytes(random_crop(photo, rng, taken), 90)) for _ in range(per_subject)]
    return out


def oracle_mask(rows: list[PoolRow]) -> list[bool]:
    """What a perfect curator keeps: English captions of their own image, one pair per planted group
    (its first clean member in serving order)."""
    seen, out = set(), []
    for r in rows:
        clean = r.lang == "en" and not r.mismatch
        keep = clean and (r.group < 0 or r.group not in seen)
        if keep and r.group >= 0:
            seen.add(r.group)
        out.append(keep)
    return out


def write_shards(folder: Path, samples: list[tuple[bytes, str, object]], per_shard: int = 1000) -> Path:
    """Webdataset shards folder/shards/NNNNN.tar (KEY.jpg, KEY.txt, KEY.json {label}) + sizes.json, the layout
    curate.train reads; samples are (JPEG bytes, caption, label)."""
    from tests.shards import write_webdataset

    return write_webdataset(folder, [(data, cap, {"label": label}) for data, cap, label in samples], per_shard)


def class_names() -> list[str]:
    """Zero-shot class names in SUBJECTS order."""
    return [name for _, name in SUBJECTS.values()]
