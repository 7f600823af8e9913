"""Phase A for one work unit: read rows, prefilter, download, hash, write stage outputs. No Ray here."""
from __future__ import annotations

import time
from functools import lru_cache

import pyarrow as pa
import pyarrow.compute as pc

from curate import stage_io
from curate.config import ClipConfig, RunConfig
from curate.schema import COL, TRANSIENT, Status, is_retryable, ok_mask, set_column, set_status
from curate.timing import Phases


def _prefetch_duplicates(table: pa.Table, cfg: RunConfig) -> pa.Table:
    """Rows whose precomputed input hash was seen earlier in the run are dropped before any fetch."""
    if not (cfg.dedup.enabled and cfg.dedup.prefetch) or COL.DUP_PHASH not in table.column_names:
        return table
    return set_status(table, table[COL.DUP_PHASH], Status.DUPLICATE_PREFETCH, "input_phash")


def _images_of(table: pa.Table) -> list[tuple[str, bytes]]:
    """(member name, bytes) of rows that carry an encoded image, in ledger order."""
    if COL.IMAGE not in table.column_names:
        return []
    out = []
    for uid, fmt, img in zip(table[COL.UID].to_pylist(), table[COL.IMAGE_FORMAT].to_pylist(),
                             table[COL.IMAGE].to_pylist()):
        if img is not None:
            out.append((f"{uid}.{fmt or 'jpg'}", img))
    return out


def _fetch_and_hash(table: pa.Table, cfg: RunConfig, ph: Phases | None = None) -> tuple[pa.Table, dict]:
    from curate.download import download_stage  # heavy imports stay inside the worker

    ph = ph or Phases()
    with ph("download"):
        table, stats = download_stage(table, cfg.download, cfg.image)
    if cfg.dedup.enabled:
        from curate.dedup import add_hashes
        with ph("hashing"):
            table = add_hashes(table, cfg.dedup)
    # a row that failed after download must not carry an image into the stage tar
    if COL.IMAGE in table.column_names:
        keep = ok_mask(table)
        table = set_column(table, COL.IMAGE, pc.if_else(keep, table[COL.IMAGE], pa.scalar(None, pa.binary())))
    return table, stats


@lru_cache(maxsize=1)
def _clip_stages(clip: ClipConfig):
    """The CLIP preprocess and scorer, loaded once per worker process (ClipConfig is frozen, so hashable)."""
    from curate.clip.scorer import ClipPreprocess, ClipScorer
    return ClipPreprocess(clip), ClipScorer(clip)


def _score_in_unit(table: pa.Table, unit_id: int, cfg: RunConfig) -> dict:
    """Scores the unit's ok rows in this task (CPU-only clusters) and writes its scores file, so the
    scoring pass skips it: no second read and decode of the stage tar, and the model's CPU work overlaps
    the other units' network waits. Returns timing stats."""
    from curate.clip.model import scorer_identity  # heavy imports stay inside the worker

    t0 = time.time()
    rows = table.filter(ok_mask(table)).select([COL.UID, COL.IMAGE, COL.CAPTION_CLEAN])
    preprocess, scorer = _clip_stages(cfg.clip)
    stage_io.write_scores(cfg.output, unit_id, scorer(preprocess(rows)) if rows.num_rows else rows,
                          scorer_identity(cfg.clip.model, cfg.clip.pretrained))
    return {"clip_scored": rows.num_rows, "clip_seconds": round(time.time() - t0, 3)}


def _finish(table: pa.Table, unit_id: int, output: str, stats: dict, t0: float) -> dict:
    images = _images_of(table)
    ledger = table.drop_columns([c for c in TRANSIENT if c in table.column_names])
    counts = pc.value_counts(ledger[COL.STATUS]).to_pylist()
    stats = {**stats, "unit_id": unit_id, "rows": ledger.num_rows, "images": len(images),
             "status_counts": {d["values"]: d["counts"] for d in counts},
             "unit_seconds": round(time.time() - t0, 3)}
    ph = Phases()
    with ph("stage_write"):
        stage_io.write_unit(output, unit_id, ledger, images, stats)
    stats.setdefault("timings", {}).update(ph.as_dict())  # in the returned stats only: the file is written
    return stats


def process_unit(unit_id: int, cfg: RunConfig, extra_stats: dict | None = None, score: bool = False) -> dict:
    """Runs phase A on one unit and writes stage/<unit>.{tar,parquet,_stats.json} and, last, its completion
    record (stage/<unit>.done.json); returns its stats.

    extra_stats (e.g. the worker's node id) is recorded in the unit's stats file. score=True also writes
    the unit's CLIP scores here (the driver asks for it on CPU-only clusters, see clip.cpu_in_units).
    """
    from curate.reader import read_unit
    from curate.language import prefilter

    t0, ph = time.time(), Phases()  # the unit's time breakdown, recorded in its stats as "timings"
    if cfg.clip.enabled:  # scores of an earlier, partial or corrupt attempt must not outlive the redo
        stage_io.invalidate_scores(cfg.output, unit_id)
    with ph("read"):
        table = read_unit(cfg.output, unit_id)
    with ph("prefilter"):
        table = prefilter(table, cfg.text, cfg.language)
        table = _prefetch_duplicates(table, cfg)
    table, stats = _fetch_and_hash(table, cfg, ph)
    if score:
        with ph("scoring"):
            stats.update(_score_in_unit(table, unit_id, cfg))  # before the unit: it is done only after
    return _finish(table, unit_id, cfg.output, {**stats, **(extra_stats or {}), "timings": ph.as_dict()}, t0)


def retry_unit(unit_id: int, cfg: RunConfig, extra_stats: dict | None = None) -> dict | None:
    """Refetches the retryable failures (timeouts, 5xx, connection errors) of a completed unit.

    Every other row is left exactly as it was. Returns the new stats, or None when nothing to retry.
    """
    ledger = stage_io.read_unit_ledger(cfg.output, unit_id)
    retry = [is_retryable(r) for r in ledger[COL.REASON].to_pylist()]
    if not any(retry):
        return None
    t0 = time.time()
    old_images = stage_io.read_unit_images(cfg.output, unit_id)
    mask = pa.array(retry)
    todo = ledger.filter(mask)
    todo = set_column(todo, COL.STATUS, pa.array([Status.OK] * todo.num_rows, pa.string()))
    for col in (COL.REASON, COL.ERROR_MESSAGE):
        todo = set_column(todo, col, pa.nulls(todo.num_rows, pa.string()))
    todo, stats = _fetch_and_hash(todo, cfg)
    merged = _merge_retried(ledger, todo, old_images)
    stage_io.invalidate_scores(cfg.output, unit_id)
    return _finish(merged, unit_id, cfg.output,
                   {**stats, **(extra_stats or {}), "retried_rows": todo.num_rows}, t0)


def _merge_retried(ledger: pa.Table, retried: pa.Table, old_images: dict[str, bytes]) -> pa.Table:
    """The unit's ledger with retried rows replaced in place and images re-attached, order kept."""
    new_rows = {r[COL.UID]: r for r in retried.to_pylist()}
    rows = []
    for r in ledger.to_pylist():
        if r[COL.UID] in new_rows:
            rows.append(new_rows[r[COL.UID]])
        else:
            r[COL.IMAGE] = old_images.get(r[COL.UID])
            rows.append(r)
    schema = retried.schema
    for f in ledger.schema:
        if f.name not in schema.names:
            schema = schema.append(f)
    return pa.Table.from_pylist(rows, schema=schema)
