"""Synthetic captioned images (coloured shapes drawn by code) for tests, the demo and benchmarks."""
from __future__ import annotations

import math
import random

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
COLORS = {  # name -> RGB; hues far apart so that a tiny model can tell them apart
    "red": (220, 30, 30), "orange": (245, 140, 20), "yellow": (240, 225, 40), "green": (40, 170, 60),
    "cyan": (40, 200, 210), "blue": (40, 70, 215), "purple": (140, 50, 190), "pink": (245, 120, 190),
}
BACKGROUNDS = {"white": (245, 245, 245), "light gray": (190, 190, 190), "gray": (128, 128, 128),
               "dark gray": (64, 64, 64), "black": (12, 12, 12)}
CAPTION_TEMPLATES = (
    "a photo of a {color} {shape}",
    "a {color} {shape} on a {background} background",
    "{color} {shape}",
    "a drawing of a {color} {shape}",
    "a {size} {color} {shape}",
    "an image showing a {color} {shape}",
)
PROMPT_TEMPLATES = ("a photo of a {}", "a drawing of a {}", "{}")


def class_names() -> list[str]:
    """The shape x colour class names ('red circle', ...); a sample's label indexes this list."""
    return [f"{c} {s}" for s in SHAPES for c in COLORS]


def prompt_templates() -> list[str]:
    """Zero-shot prompt templates, each with one '{}' for the class name."""
    return list(PROMPT_TEMPLATES)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        angles = [-90, 30, 150]
        return [(cx + r * math.cos(math.radians(a)), cy + r * math.sin(math.radians(a))) for a in angles]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)]
    if shape == "star":
        pts = []
        for i in range(10):
            rr = r if i % 2 == 0 else 0.42 * r
            a = math.radians(-90 + 36 * i)
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts
    if shape == "cross":
        w = 0.35 * r
        return [(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w), (cx + r, cy + w),
                (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r), (cx - w, cy + w), (cx - r, cy + w),
                (cx - r, cy - w), (cx - w, cy - w)]
    raise ValueError(f"unknown shape {shape!r}")


def _jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int) -> tuple[int, ...]:
    return tuple(max(0, min(255, v + rng.randint(-amount, amount))) for v in rgb)


def draw_sample(shape: str, color: str, rng: random.Random, size: int = 64,
                background: str | None = None) -> Image.Image:
    """One RGB image of `shape` in `color` at a random position and scale on a plain background."""
    bg = background or rng.choice(list(BACKGROUNDS))
    img = Image.new("RGB", (size, size), _jitter(BACKGROUNDS[bg], rng, 10))
    d = ImageDraw.Draw(img)
    r = rng.uniform(0.2, 0.42) * size  # radius in pixels
    cx = rng.uniform(r, size - r)
    cy = rng.uniform(r, size - r)
    fill = _jitter(COLORS[color], rng, 18)
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        h = 0.8 * r
        d.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    else:
        d.polygon(_polygon(shape, cx, cy, r), fill=fill)
    return img


def make_captioned_set(n: int, seed: int, size: int = 64) -> list[tuple[Image.Image, str, int]]:
    """`n` (image, caption, label) triples, label indexing class_names(); the same for the same seed."""
    rng = random.Random(seed)
    colors = list(COLORS)
    out = []
    for _ in range(n):
        shape, color = rng.choice(SHAPES), rng.choice(colors)
        bg = rng.choice(list(BACKGROUNDS))
        img = draw_sample(shape, color, rng, size, background=bg)
        size_word = rng.choice(("small", "big", "large", "little"))
        caption = rng.choice(CAPTION_TEMPLATES).format(color=color, shape=shape, background=bg, size=size_word)
        label = SHAPES.index(shape) * len(colors) + colors.index(color)
        out.append((img, caption, label))
    return out
