"""Phase A for one work unit: read its rows, run the stage recipe (phase_a_stages), write stage outputs. No Ray."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate import stage_io
from curate.config import ClipConfig, LanguageConfig, RunConfig, TextConfig
from curate.heap import trim_heap
from curate.inputs.prefetch import PrefetchStage
from curate.layout import RunLayout
from curate.schema import COL, TRANSIENT, Status, is_retryable, ok_mask, ok_rows, set_column
from curate.stage import Stage, StageStats, UnitStats, run_stages
from curate.timing import Phases

SCORE_SLICE_BATCHES = 1  # clip.batch_size batches per in-unit scoring slice (one call to a shared scorer): one
                         # slice's image bytes and pixels held at a time, here and in the scorer (1: -60 MB there)
Scorer = Callable[[pa.Table], pa.Table]  # ClipScore's contract: uid, image, caption_clean -> uid + score columns
HEAP_HEAVY = ("download", "hashing")  # stages after which the worker's freed heap goes back to the OS


def phase_a_stages(cfg: RunConfig, unit_id: int, score: bool | Scorer = False, retry: bool = False,
                   teach: bool = False) -> list[Stage]:
    """Phase A's recipe, in order (the statuses each stage sets; a row keeps its first reason):
    text rules (caption_rule) -> prefetch urls (duplicate_url) -> language (lang) -> prefetch hashes
    (duplicate_prefetch) -> opt-out policies (robots:robots_txt, robots:tdmrep) -> download (robots,
    invalid_url, download_error, decode_error, too_small, bad_aspect) -> hashing (dedup on) -> scoring
    (score: the unit's scores file; True: the model loads in this process, or a Scorer that scores elsewhere)
    -> reinforce (reinforce on and teach=True: the unit's teacher-embeddings file; the driver asks for both on
    CPU-only clusters, else the scoring pass's actors do them). A retry refetches: download and hashing only
    (the driver reinforces retried units afterwards)."""
    from curate.dedup.hashing import HashingStage  # heavy imports stay inside the worker
    from curate.download import DownloadStage
    from curate.optout.stage import OptOutStage

    stages: list[Stage] = [] if retry else [TextRulesStage(cfg.text), PrefetchStage.urls(cfg.text),
                                            LanguageStage(cfg.language), PrefetchStage.hashes(cfg.dedup),
                                            OptOutStage(cfg.download, RunLayout(cfg.output).stage_optout_hosts)]
    stages.append(DownloadStage(cfg.download, cfg.image))
    if cfg.dedup.enabled:
        stages.append(HashingStage(cfg.dedup))
    if score:
        stages.append(ScoresFileStage(unit_id, cfg.output, cfg.clip, None if score is True else score))
    if cfg.reinforce.enabled and teach and not retry:
        from curate.reinforce.teachers import ReinforceStage
        stages.append(ReinforceStage(cfg.reinforce, cfg.seed, cfg.output, unit_id))
    return stages


@dataclass(frozen=True)
class TextRulesStage:
    """caption_clean for every row; caption_rule:<detail> (curate.text.caption_rules)."""
    text: TextConfig
    name: ClassVar[str] = "text_rules"
    phase: ClassVar[str] = "prefilter"

    def __call__(self, table: pa.Table, stats: StageStats | None = None) -> pa.Table:
        from curate.text import caption_rules
        return caption_rules(table, self.text)


@dataclass(frozen=True)
class LanguageStage:
    """lang, lang_prob for rows still ok; lang (curate.language.apply_language; the detector loads once)."""
    language: LanguageConfig
    name: ClassVar[str] = "language"
    phase: ClassVar[str] = "prefilter"

    def __call__(self, table: pa.Table, stats: StageStats | None = None) -> pa.Table:
        from curate.language import apply_language
        return apply_language(table, self.language)


@dataclass(frozen=True)
class ScoresFileStage:
    """Scores the unit's ok rows and writes its scores file (_score_in_unit); the table passes unchanged.
    scorer: ClipScore of `clip` running elsewhere (None: loaded in this process, see worker_stage)."""
    unit_id: int
    output: str
    clip: ClipConfig
    scorer: Scorer | None = field(default=None, compare=False)
    name: ClassVar[str] = "scoring"

    def __call__(self, table: pa.Table, stats: StageStats | None = None) -> pa.Table:
        done = _score_in_unit(table, self.unit_id, self.output, self.clip, self.scorer)
        if stats is not None:
            stats.count("clip_scored", done["clip_scored"])
            stats.record("clip_seconds", done["clip_seconds"])
        return table


def _images_of(table: pa.Table):
    """(member name, bytes-like) of rows still ok that carry an encoded image, in ledger order: a row that
    failed after download (any later stage) must not carry its image into the stage tar. Zero-copy views of
    the image column, yielded one at a time: the streamed tar never needs a second copy of the images."""
    if COL.IMAGE not in table.column_names:
        return
    for uid, fmt, img, ok in zip(table[COL.UID].to_pylist(), table[COL.IMAGE_FORMAT].to_pylist(),
                                 table[COL.IMAGE], ok_rows(table)):
        if ok and img.is_valid:
            yield f"{uid}.{fmt or 'jpg'}", img.as_buffer()


def _count_images(table: pa.Table) -> int:
    """How many members _images_of yields."""
    if COL.IMAGE not in table.column_names:
        return 0
    return pc.sum(pc.and_(ok_mask(table), pc.is_valid(table[COL.IMAGE]))).as_py() or 0


def _run_recipe(table: pa.Table, stages: list[Stage], counted: StageStats, ph: Phases | None = None) -> pa.Table:
    """run_stages, trimming the heap after the stages that leave much of it free (HEAP_HEAVY)."""
    for stage in stages:
        table = run_stages(table, [stage], counted, ph)
        if stage.name in HEAP_HEAVY:
            trim_heap()
    return table


def _score_in_unit(table: pa.Table, unit_id: int, output: str, clip: ClipConfig, scorer: Scorer | None) -> dict:
    """Scores the unit's ok rows from this task (CPU-only clusters; in this process, or through `scorer`)
    and writes its scores file, so the scoring pass skips it: no second read and decode of the stage tar,
    and the model's CPU work overlaps the other units' network waits. Returns timing stats."""
    from curate.clip.identity import scorer_identity

    t0 = time.time()
    cols = table.select([COL.UID, COL.IMAGE, COL.CAPTION_CLEAN])
    ok = pa.array(np.flatnonzero(ok_rows(table)), pa.int64())
    if scorer is None:
        from curate.clip.scorer import worker_stage  # heavy imports stay inside the worker
        scorer = worker_stage(clip)  # the scoring stage, loaded once per worker process
    # slices of whole scorer batches of the ok rows: the same batches as one call (same scores), but only
    # one slice's image bytes (taken, not a filtered copy of the column) and pixels are held at a time
    step = clip.batch_size * SCORE_SLICE_BATCHES
    scored = [scorer(cols.take(ok.slice(s, step))) for s in range(0, len(ok), step)]
    stage_io.write_scores(output, unit_id, pa.concat_tables(scored) if scored else cols.take(ok),
                          scorer_identity(clip.model, clip.pretrained))
    return {"clip_scored": len(ok), "clip_seconds": round(time.time() - t0, 3)}


def _finish(table: pa.Table, output: str, stats: UnitStats, t0: float) -> UnitStats:
    """Writes the unit's stage files from `table`; returns `stats` completed with the ledger's counts."""
    ledger = table.drop_columns([c for c in TRANSIENT if c in table.column_names])
    counts = pc.value_counts(ledger[COL.STATUS]).to_pylist()
    stats.rows, stats.images = ledger.num_rows, _count_images(table)
    stats.status_counts = {d["values"]: d["counts"] for d in counts}
    stats.unit_seconds = round(time.time() - t0, 3)
    ph = Phases()
    with ph("stage_write"):
        stage_io.write_unit(output, stats.unit_id, ledger, _images_of(table), stats.as_json())
    stats.timings = {**(stats.timings or {}), **ph.as_dict()}  # in the returned stats only: the file is written
    return stats


def process_unit(unit_id: int, cfg: RunConfig, extra_stats: dict | None = None, score: bool | Scorer = False,
                 teach: bool = False) -> UnitStats:
    """Runs phase A on one unit and writes stage/<unit>.{tar,parquet,_stats.json} and, last, its completion
    record (stage/<unit>.done.json); returns its stats.

    extra_stats (e.g. the worker's node id) is recorded in the unit's stats file. score=True also writes
    the unit's CLIP scores here (the driver asks for it on CPU-only clusters, see clip.cpu_in_units): it is
    the last stage, so the unit is done only after its scores are. A Scorer in place of True scores elsewhere
    (the driver's shared scoring actor: one model per node, not one per worker). teach=True (reinforce on)
    likewise writes its teacher embeddings here, after the scores.
    """
    from curate.inputs.rows import read_unit

    t0, ph = time.time(), Phases()  # the unit's time breakdown, recorded in its stats as "timings"
    if cfg.clip.enabled:  # scores of an earlier, partial or corrupt attempt must not outlive the redo
        stage_io.invalidate_scores(cfg.output, unit_id)
    stage_io.invalidate_reinforce(cfg.output, unit_id)  # likewise teacher embeddings, reinforce on or not
    with ph("read"):
        table = read_unit(cfg.output, unit_id)
    counted = StageStats()
    table = _run_recipe(table, phase_a_stages(cfg, unit_id, score=score, teach=teach), counted, ph)
    return _finish(table, cfg.output, UnitStats(unit_id, stages=counted.as_dict(), extra=dict(extra_stats or {}),
                                                timings=ph.as_dict()), t0)


def retry_unit(unit_id: int, cfg: RunConfig, extra_stats: dict | None = None) -> UnitStats | None:
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
    counted = StageStats()
    todo = _run_recipe(todo, phase_a_stages(cfg, unit_id, retry=True), counted)
    merged = _merge_retried(ledger, todo, old_images)
    stage_io.invalidate_scores(cfg.output, unit_id)
    stage_io.invalidate_reinforce(cfg.output, unit_id)  # the driver's reinforce pass redoes it
    return _finish(merged, cfg.output, UnitStats(unit_id, stages=counted.as_dict(), extra=dict(extra_stats or {}),
                                                 retried_rows=todo.num_rows), t0)


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
