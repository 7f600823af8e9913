"""Phases B and C wiring: union the unit ledgers and scores, dedup, select, write shards, metadata, report."""
from __future__ import annotations

import sys
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate import fsutil
from curate.config import RunConfig
from curate.layout import RunLayout
from curate.schema import COL, Status, conform, ok_mask
from curate.timing import Phases

SCORE_COLS = (COL.CLIP_SCORE, COL.CLIP_MODEL, COL.CLIP_PRETRAINED)


def _read_parquet(fs, path: str) -> pa.Table:
    return pq.read_table(pa.BufferReader(fsutil.read_bytes(fs, path)))


def load_ledger(cfg: RunConfig, units: list) -> pa.Table:
    """All units' stage ledgers, in unit order, with CLIP scores joined in by uid."""
    fs, out = fsutil.get_fs(cfg.output)
    parts = []
    for u in units:
        paths = RunLayout(out).unit(u.unit_id)
        t = _read_parquet(fs, paths.ledger)
        if cfg.clip.enabled and fsutil.exists(fs, paths.scores):
            t = _join_scores(t, _read_parquet(fs, paths.scores))
        parts.append(conform(t, "ledger"))
    return pa.concat_tables(parts, promote_options="permissive") if parts else _empty_ledger()


def _join_scores(ledger: pa.Table, scores: pa.Table) -> pa.Table:
    """Fills the score columns of `ledger` from `scores` (uid-keyed), keeping ledger order."""
    if scores.num_rows == 0:
        return ledger
    idx = pc.index_in(ledger[COL.UID], value_set=scores[COL.UID])
    for col in SCORE_COLS:
        if col in scores.column_names:
            vals = pc.take(scores[col], idx)
            ledger = ledger.set_column(ledger.column_names.index(col), col, vals.cast(ledger.schema.field(col).type)) \
                if col in ledger.column_names else ledger.append_column(col, vals)
    return ledger


def dedup_drops(cfg: RunConfig, ledger: pa.Table) -> pa.Table | None:
    """(uid, status, reason) of exact and near duplicates among rows still ok (and semantic ones, when on)."""
    if not cfg.dedup.enabled:
        return None
    from curate.dedup import find_duplicates
    from pipelines.dedup_ray import META_COLUMNS, ray_pairs  # ray_pairs: the Ray Data pair search, when spreading

    meta = ledger.filter(ok_mask(ledger)).select(META_COLUMNS)
    t0 = time.time()
    spread = meta.num_rows >= cfg.dedup.spread_min and _nodes() > 1
    drops = find_duplicates(meta, cfg.dedup, pair_search=ray_pairs if spread else None)
    print(f"phase B: dedup over {meta.num_rows} images -> {drops.num_rows} dropped "
          f"in {time.time() - t0:.1f} s{' (Ray Data job over the cluster)' if spread else ''}", file=sys.stderr)
    if cfg.dedup.semantic:
        drops = pa.concat_tables([drops, semantic_drops(cfg, ledger, drops)])
    return drops


def semantic_drops(cfg: RunConfig, ledger: pa.Table, drops: pa.Table) -> pa.Table:
    """(uid, status, reason) of semantic duplicates among the ok rows that pHash dedup's `drops` left."""
    from curate.dedup.semantic import semantic_drops as find

    ok = ledger.filter(ok_mask(ledger)).select([COL.UID, COL.UNIT_ID, COL.CLIP_SCORE, COL.WIDTH, COL.HEIGHT])
    t0 = time.time()
    out = find(cfg.output, ok, drops, cfg.dedup, cfg.seed)
    print(f"phase B: semantic dedup (eps {cfg.dedup.semantic_eps}) over {ok.num_rows - drops.num_rows} images "
          f"-> {out.num_rows} dropped in {time.time() - t0:.1f} s", file=sys.stderr)
    return out


def _nodes() -> int:
    """Alive nodes of the connected Ray cluster (1 without Ray): only other nodes' CPUs make spreading pay."""
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive")) if ray.is_initialized() else 1


def plan_inputs(output: str) -> list[dict]:
    """[{path, rows}] of the run's input files, from the saved plan."""
    from curate.inputs.plan import load_plan
    plan = load_plan(output) or {"files": []}
    return [{"path": f["path"], "rows": f["rows"]} for f in plan["files"]]


def phase_b_c(cfg: RunConfig, units: list, phases: Phases | None = None) -> dict:
    """Selection and final write; returns the manifest (and prints the funnel). `phases` times each step."""
    from curate.select import select
    from curate.writer import write_outputs

    phases = phases or Phases()
    with phases("phase_b_load"):
        ledger = load_ledger(cfg, units)
    with phases("phase_b_dedup"):
        drops = dedup_drops(cfg, ledger)
    t0 = time.time()
    with phases("phase_b_select"):
        final, stats = select(ledger, drops, cfg)
    kept = pc.sum(pc.equal(final[COL.STATUS], Status.KEPT)).as_py() or 0
    print(f"phase B: selection kept {kept} of {final.num_rows} rows in {time.time() - t0:.1f} s", file=sys.stderr)
    t0 = time.time()
    with phases("phase_c_write"):
        manifest = write_outputs(cfg.output, final, cfg, plan_inputs(cfg.output), selection=stats)
    print(f"phase C: wrote {len(manifest.get('shards', []))} shards in {time.time() - t0:.1f} s", file=sys.stderr)
    with phases("report"):
        _report(cfg, manifest)
    return manifest


def _report(cfg: RunConfig, manifest: dict) -> None:
    from curate.report import build_report, summary_table

    path = build_report(cfg.output)  # the threshold comes from the manifest (recorded by selection)
    print(summary_table(manifest))
    lay = RunLayout(cfg.output)
    print(f"\nshards:   {lay.shards}\nmetadata: {lay.metadata}\nreport:   {path}")


def _empty_ledger() -> pa.Table:
    from curate.schema import ledger_schema
    return ledger_schema().empty_table()
