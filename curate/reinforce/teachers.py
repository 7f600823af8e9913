"""Teacher embeddings per sample (ReinforceStage): each teacher's embeddings of the seeded views and of the caption."""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from curate import stage_io
from curate.clip.encode import encode_image
from curate.config import ReinforceConfig
from curate.manifest import canonical_json
from curate.reinforce.identity import parse_teacher, reinforcer_identity
from curate.reinforce.store import NPZ, VIEWS, image_key, text_key, write_npz
from curate.reinforce.views import apply_view, view_params
from curate.schema import COL, Status, ok_mask
from curate.stage import StageStats


class Teacher:
    """One loaded teacher (curate.clip.model.load_clip): L2-normalised float32 image and caption embeddings."""

    def __init__(self, entry: str, device: str):
        from curate.clip.model import load_clip
        self.device = device
        self.model, self.preprocess, self.tokenizer = load_clip(*parse_teacher(entry), device)

    def images(self, views: list, batch_size: int) -> np.ndarray:
        """[len(views), D] embeddings of PIL views (the teacher's own preprocess resizes them)."""
        out = []
        with torch.inference_mode():
            for s in range(0, len(views), batch_size):
                x = torch.stack([self.preprocess(v) for v in views[s:s + batch_size]]).to(self.device)
                emb = encode_image(self.model, x).float()  # open_clip's output, the last block for the class token
                out.append(torch.nn.functional.normalize(emb, dim=-1).cpu())
        return torch.cat(out).numpy()

    def texts(self, captions: list[str], batch_size: int) -> np.ndarray:
        """[len(captions), D] embeddings of the captions."""
        out = []
        with torch.inference_mode():
            for s in range(0, len(captions), batch_size):
                tok = self.tokenizer(captions[s:s + batch_size]).to(self.device)
                out.append(torch.nn.functional.normalize(self.model.encode_text(tok).float(), dim=-1).cpu())
        return torch.cat(out).numpy()


@lru_cache(maxsize=4)
def load_teacher(entry: str, device: str = "") -> Teacher:
    """This process's teacher for `entry`, loaded once per worker (Ray reuses worker processes)."""
    return Teacher(entry, device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _decode(uid: str, data: bytes):
    from curate.imageproc import open_image
    try:
        img = open_image(data)
        img.load()
    except Exception as e:  # decode boundary: but a stored image was re-encoded by this pipeline, so say so
        raise ValueError(f"reinforce: the stored image of sample {uid} does not decode ({e})") from None
    return img


def _chunk(uids: list[str], images: list[bytes], captions: list[str], cfg: ReinforceConfig,
           seed: int, device: str) -> tuple[list[bytes], list[str]]:
    """(npz bytes, views JSON) per row of one batch of rows."""
    decoded = [_decode(u, b) for u, b in zip(uids, images)]
    params = [view_params(u, seed, cfg.views, im.width, im.height, cfg.min_scale) for u, im in zip(uids, decoded)]
    arrays: list[dict] = [{} for _ in uids]
    views = [apply_view(im, p) for im, ps in zip(decoded, params) for p in ps]  # the same views for every teacher
    for t, entry in enumerate(cfg.teachers):
        teacher = load_teacher(entry, device)
        img = teacher.images(views, cfg.batch_size).reshape(len(uids), cfg.views, -1).astype(np.float16)
        txt = teacher.texts(captions, cfg.batch_size).astype(np.float16)
        for r, a in enumerate(arrays):
            a[image_key(t)], a[text_key(t)] = img[r], txt[r:r + 1]
    return [write_npz(a) for a in arrays], [canonical_json(p).decode() for p in params]


def reinforce_table(rows: pa.Table, cfg: ReinforceConfig, seed: int, device: str = "") -> pa.Table:
    """rows (COL.UID, COL.IMAGE: stored image bytes, COL.CAPTION_CLEAN) -> (COL.UID, NPZ, VIEWS), same order.
    Both routes run it: ReinforceStage in the download task, the scoring pass's actors on their device
    ("": cuda when this process sees one, else cpu)."""
    uids = rows[COL.UID].to_pylist()
    images, captions = rows[COL.IMAGE].to_pylist(), [c or "" for c in rows[COL.CAPTION_CLEAN].to_pylist()]
    npz, views = [], []
    for s in range(0, len(uids), cfg.batch_size):  # a batch of rows at a time: decoded views stay bounded
        n, v = _chunk(uids[s:s + cfg.batch_size], images[s:s + cfg.batch_size],
                      captions[s:s + cfg.batch_size], cfg, seed, device)
        npz += n
        views += v
    return pa.table({COL.UID: pa.array(uids, pa.string()), NPZ: pa.array(npz, pa.binary()),
                     VIEWS: pa.array(views, pa.string())})


@dataclass(frozen=True)
class ReinforceStage:
    """Writes the unit's reinforce file (stage/<unit>.reinforce.parquet and its completion record) for the
    rows still ok that carry an image; the table passes unchanged."""
    reinforce: ReinforceConfig
    seed: int
    output: str
    unit_id: int
    name: ClassVar[str] = "reinforce"

    def __call__(self, table: pa.Table, stats: StageStats | None = None) -> pa.Table:
        t0 = time.time()
        src = table
        if COL.IMAGE not in src.column_names:  # no row reached the download: an empty file, the unit is done
            src = src.append_column(COL.IMAGE, pa.nulls(src.num_rows, pa.binary()))
        rows = src.filter(pc.and_(ok_mask(src), pc.is_valid(src[COL.IMAGE])))
        out = reinforce_table(rows.select([COL.UID, COL.IMAGE, COL.CAPTION_CLEAN]), self.reinforce, self.seed)
        stage_io.write_reinforce(self.output, self.unit_id, out, reinforcer_identity(self.reinforce, self.seed))
        if stats is not None:
            stats.count("reinforce_rows", out.num_rows)
            stats.record("reinforce_seconds", round(time.time() - t0, 3))
        return table


def reinforce_unit(output: str, unit_id: int, cfg: ReinforceConfig, seed: int) -> int:
    """Reinforces a completed unit from its stage files (a rerun with reinforce newly on, or a unit whose
    failures were retried); returns the rows done."""
    led = stage_io.read_unit_ledger(output, unit_id)
    led = led.filter(pc.equal(led[COL.STATUS], Status.OK)).select([COL.UID, COL.STATUS, COL.CAPTION_CLEAN])
    images = stage_io.read_unit_images(output, unit_id) if led.num_rows else {}
    table = led.append_column(COL.IMAGE, pa.array([images.get(u) for u in led[COL.UID].to_pylist()], pa.binary()))
    ReinforceStage(cfg, seed, output, unit_id)(table)
    return table.num_rows
