"""Phase-A scoring pass: CLIP scores for completed stage units through Ray Data: curate.clip's ClipScore stage, its
CPU half (decode, tokenize) in tasks and its model half in an actor pool."""
from __future__ import annotations

import sys
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from curate import fsutil, stage_io
from curate.clip.identity import scorer_identity  # torch-free: the driver imports this module
from curate.config import ClipConfig
from curate.schema import COL, Status

ROW = "clip_row"  # transient: position of a row among its unit's ok rows, to write scores in ledger order
MAX_CPU_ACTORS = 8  # on a CPU-only cluster: one single-threaded actor per core up to this, then wider actors


def _ok_uids(output: str, unit_id: int) -> pa.Array:
    """uids of a unit's rows still ok (the ones with an image in the stage tar), in ledger order."""
    led = stage_io.read_unit_ledger(output, unit_id).select([COL.UID, COL.STATUS])
    return led.filter(pc.equal(led[COL.STATUS], Status.OK))[COL.UID].combine_chunks()


def read_units(batch: pa.Table, output: str) -> pa.Table:
    """Units (a unit_id column) -> one row per ok ledger row: uid, unit_id, clip_row, image, caption_clean."""
    parts = []
    for unit_id in batch["unit_id"].to_pylist():
        led = stage_io.read_unit_ledger(output, unit_id)
        led = led.filter(pc.equal(led[COL.STATUS], Status.OK))
        images = stage_io.read_unit_images(output, unit_id) if led.num_rows else {}
        uids = led[COL.UID].to_pylist()
        parts.append(pa.table({
            COL.UID: pa.array(uids, pa.string()),
            COL.UNIT_ID: pa.array([unit_id] * len(uids), pa.int32()),
            ROW: pa.array(range(len(uids)), pa.int64()),
            COL.IMAGE: pa.array([images.get(u) for u in uids], pa.binary()),  # missing member -> null score
            COL.CAPTION_CLEAN: led[COL.CAPTION_CLEAN].cast(pa.string())}))
    return pa.concat_tables(parts)


def preprocess_batch(batch: pa.Table, cfg: ClipConfig) -> pa.Table:
    """ClipScore's CPU half as a stateless Ray task function (the transforms load once per worker)."""
    from curate.clip.scorer import worker_stage  # torch and open_clip: in the workers only
    return worker_stage(cfg).preprocess(batch)


class ClipModelActor:
    """ClipScore's model half as a Ray Data actor: the model loads when the actor starts, once."""

    def __init__(self, cfg: ClipConfig):
        from curate.clip.scorer import ClipScore
        self.stage = ClipScore(cfg)
        self.stage.load("model")

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage.score(batch)


def actor_options(cfg: ClipConfig) -> dict:
    """map_batches resources for the scorer: one actor per GPU, else CPU actors (and says so)."""
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    if gpus and cfg.device != "cpu":
        return {"concurrency": cfg.num_actors or gpus, "num_gpus": 1}
    if cfg.device == "cuda":
        raise RuntimeError("clip.device is cuda but the Ray cluster has no GPU (use auto or cpu)")
    # The scoring pass runs after the downloads, so it may take every core; decoding (~2% of the work)
    # is then fused into the actors by Ray Data. Several narrow actors beat one wide one on small batches.
    cpu = max(1, int(res.get("CPU", 1)))
    n = cfg.num_actors or min(MAX_CPU_ACTORS, cpu)
    cpus = max(1, cpu // n)
    print(f"clip scoring: no GPU in the Ray cluster; {n} CPU actor(s) x {cpus} CPU(s), fp32", file=sys.stderr)
    return {"concurrency": n, "num_cpus": cpus}


def write_unit_scores(output: str, unit_id: int, rows: pa.Table, cfg: ClipConfig) -> None:
    """stage/NNNNNN.scores.parquet (+ .emb.parquet) for one unit, each atomically, rows in ledger order."""
    fs, out = fsutil.get_fs(output)
    paths = stage_io.unit_paths(out, unit_id)
    if rows.num_rows:
        rows = rows.take(pc.sort_indices(rows[ROW]))
    if cfg.save_embeddings:
        from curate.clip.scorer import IMAGE_EMB, TEXT_EMB
        emb = rows.select([COL.UID, IMAGE_EMB, TEXT_EMB]) if rows.num_rows else pa.table(
            {COL.UID: pa.array([], pa.string())})
        fsutil.atomic_write(fs, paths["embeddings"], stage_io.parquet_bytes(emb))
    stage_io.write_scores(output, unit_id, rows, scorer_identity(cfg.model, cfg.pretrained))


def _empty_rows(cfg: ClipConfig) -> pa.Table:
    return pa.table({COL.UID: pa.array([], pa.string()), ROW: pa.array([], pa.int64()),
                     COL.CLIP_SCORE: pa.array([], pa.float32()), COL.CLIP_MODEL: pa.array([], pa.string()),
                     COL.CLIP_PRETRAINED: pa.array([], pa.string())})


def pending_units(output: str, unit_ids: list[int], cfg: ClipConfig) -> list[int]:
    """Completed units whose scores are missing, do not match their completion record, or were made by
    another scorer (a rebuild with new weights rescores). Phase A has just verified the units' digests,
    so sizes suffice here."""
    scorer = scorer_identity(cfg.model, cfg.pretrained)
    return [u for u in unit_ids if stage_io.unit_done(output, u, digests=False)
            and not stage_io.scores_done(output, u, scorer=scorer)]


def _build_dataset(output: str, units: list[int], cfg: ClipConfig):
    ds = ray.data.from_items([{"unit_id": u} for u in units], override_num_blocks=len(units))
    ds = ds.map_batches(read_units, fn_kwargs={"output": output}, batch_size=1, batch_format="pyarrow")
    ds = ds.map_batches(preprocess_batch, fn_kwargs={"cfg": cfg}, batch_size=cfg.batch_size,
                        batch_format="pyarrow", num_cpus=1)
    return ds.map_batches(ClipModelActor, fn_constructor_kwargs={"cfg": cfg}, batch_size=cfg.batch_size,
                          batch_format="pyarrow", **actor_options(cfg))


def score_units(output: str, unit_ids: list[int], cfg: ClipConfig) -> dict:
    """Scores every ok row of the completed units not yet scored; writes per-unit scores files as each
    unit completes (a rerun resumes). Returns counts, wall seconds and images/s."""
    t0 = time.time()
    todo = pending_units(output, unit_ids, cfg)
    expected = {u: len(_ok_uids(output, u)) for u in todo}
    for u in [u for u in todo if expected[u] == 0]:
        write_unit_scores(output, u, _empty_rows(cfg), cfg)  # all rows failed earlier: empty file, unit done
    busy = [u for u in todo if expected[u] > 0]
    got: dict[int, list[pa.Table]] = {u: [] for u in busy}
    counts = dict.fromkeys(busy, 0)
    if busy:
        for batch in _build_dataset(output, busy, cfg).iter_batches(batch_format="pyarrow", batch_size=None):
            for u in pc.unique(batch[COL.UNIT_ID]).to_pylist():
                part = batch.filter(pc.equal(batch[COL.UNIT_ID], u))
                got[u].append(part)
                counts[u] += part.num_rows
                if counts[u] == expected[u]:
                    write_unit_scores(output, u, pa.concat_tables(got.pop(u)), cfg)
    if got:
        raise RuntimeError(f"clip scoring: units {sorted(got)[:5]} did not receive all rows "
                           f"({[(u, counts[u], expected[u]) for u in sorted(got)[:5]]})")
    rows = sum(expected.values())
    secs = time.time() - t0
    return {"units_scored": len(todo), "units_skipped": len(unit_ids) - len(todo),
            "empty_units": len(todo) - len(busy), "rows": rows, "seconds": round(secs, 2),
            "images_per_s": round(rows / secs, 1) if secs > 0 else 0.0}


def read_scores(output: str, unit_id: int) -> pa.Table:
    """A unit's scores table (uid, clip_score, clip_model, clip_pretrained)."""
    fs, out = fsutil.get_fs(output)
    return pq.read_table(pa.BufferReader(fsutil.read_bytes(fs, stage_io.unit_paths(out, unit_id)["scores"])))
