"""What identifies a unit's teacher embeddings (teachers, views, seed) and which units lack them, without torch."""
from __future__ import annotations

from curate import stage_io
from curate.clip.identity import scorer_identity
from curate.config import ReinforceConfig


def parse_teacher(entry: str) -> tuple[str, str]:
    """(model, pretrained) of a reinforce.teachers entry "<model>|<pretrained>" (pretrained may be empty)."""
    model, sep, pretrained = entry.partition("|")
    if not sep or not model.strip():
        raise ValueError(f"{entry!r} is not '<model>|<pretrained>' (open_clip name or config JSON, then a tag, "
                         f"weights file or checkpoint dir as clip.pretrained takes; it may be empty: 'model|')")
    return model.strip(), pretrained.strip()


def reinforcer_identity(cfg: ReinforceConfig, seed: int) -> dict:
    """What decides a unit's reinforce file: each teacher's model and weights (clip's scorer_identity: local
    files by digest), the number of views, the crop scale and the seed that draws the views."""
    return {"teachers": [scorer_identity(*parse_teacher(t)) for t in cfg.teachers], "views": cfg.views,
            "min_scale": cfg.min_scale, "seed": seed}


def pending_units(output: str, unit_ids: list[int], cfg: ReinforceConfig, seed: int) -> list[int]:
    """Completed units whose reinforce file is missing, does not match its record, or was made by other
    teachers, views or seed. Phase A has just verified the units' digests, so sizes suffice for them."""
    ident = reinforcer_identity(cfg, seed)
    return [u for u in unit_ids if stage_io.unit_done(output, u, digests=False)
            and not stage_io.reinforce_done(output, u, made_by=ident)]
