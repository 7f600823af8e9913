"""A reinforced sample's stored teacher embeddings and view parameters (KEY.npz + KEY.json), and its view pick."""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from curate.reinforce import read_npz
from curate.reinforce.store import image_key, text_key

TEACHER_SCALE = 100.0  # every teacher's logit scale in the KL: CLIP's clamp, where trained teachers sit


class NotReinforcedError(RuntimeError):
    """A distillation loss met a sample without teacher embeddings: a configuration error, never skipped."""


@dataclass
class Teachers:
    """One sample's teacher targets: per teacher [views, D_t] image and [D_t] caption embeddings."""
    names: tuple[str, ...]
    views: list[dict]              # view parameters in stored-image pixels (curate.reinforce.view_params)
    image: list[np.ndarray]
    text: list[np.ndarray]


def _where(sample: dict) -> str:
    return f"shard {sample.get('__url__', '?')}, sample {sample.get('__key__', '?')}"


def read_teachers(sample: dict, meta: dict) -> Teachers:
    """The sample's Teachers. A missing KEY.npz or reinforce record raises NotReinforcedError naming the shard;
    an unreadable or inconsistent npz raises ValueError (a corrupt sample: the loader skips and counts it)."""
    info = meta.get("reinforce")
    if "npz" not in sample or not isinstance(info, dict):
        missing = "KEY.npz" if "npz" not in sample else "the 'reinforce' object in KEY.json"
        raise NotReinforcedError(f"{_where(sample)} has no {missing}: a distillation loss needs shards written "
                                 f"with reinforce.enabled (teacher embeddings and view parameters)")
    names, views = tuple(info.get("teachers") or ()), list(info.get("views") or ())
    try:
        arrays = read_npz(sample["npz"])
    except Exception as e:  # decode boundary: a damaged npz is a corrupt sample
        raise ValueError(f"npz decode: {type(e).__name__}") from None
    image, text = [], []
    for t in range(len(names)):
        img, txt = arrays.get(image_key(t)), arrays.get(text_key(t))
        if img is None or txt is None or img.ndim != 2 or img.shape[0] != len(views) or txt.shape[-1] != img.shape[1]:
            raise ValueError(f"npz: teacher {t} embeddings missing or not [views={len(views)}, D] + [1, D]")
        image.append(img)
        text.append(txt.reshape(-1, txt.shape[-1])[0])
    if not names or not views:
        raise ValueError("reinforce: no teachers or no views recorded")
    return Teachers(names, views, image, text)


def pick_view(seed: int, consumer: int, n: int, n_views: int) -> int:
    """The stored view a sample draw uses: seeded like the augmentation by (seed, consumer, sample number), so
    each pass over the data draws anew and a resumed run draws the same views."""
    return random.Random(f"{seed}-view-{consumer}-{n}").randrange(n_views)


def collate_teachers(rows: list[tuple[Teachers, int]]) -> dict:
    """{'image': [B, D_t] per teacher, 'text': [B, D_t] per teacher, 'scale': [T]} from (teachers, view) rows."""
    first = rows[0][0]
    n_teachers = len(first.names)
    return {"image": [torch.from_numpy(np.stack([t.image[k][v] for t, v in rows]).astype(np.float32))
                      for k in range(n_teachers)],
            "text": [torch.from_numpy(np.stack([t.text[k] for t, _ in rows]).astype(np.float32))
                     for k in range(n_teachers)],
            "scale": torch.full((n_teachers,), TEACHER_SCALE, dtype=torch.float32)}


def check_same_teachers(teachers: Teachers, expected: tuple[str, ...] | None, sample: dict) -> tuple[str, ...]:
    """The stream's teacher list (the first sample's); a sample with another list raises, naming its shard."""
    if expected is not None and teachers.names != expected:
        raise NotReinforcedError(f"{_where(sample)} was reinforced by teachers {list(teachers.names)}, earlier "
                                 f"samples by {list(expected)}: train on shards of one teacher set")
    return teachers.names
