"""Phase-A model pass: CLIP scores (curate.clip's ClipScore: its CPU half in tasks, its model half in an actor
pool) and, on GPU clusters, the reinforce teachers on the same actors, for completed stage units through Ray Data;
and on CPU-only clusters the shared scorer actors that the unit tasks call."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from curate import fsutil, stage_io
from curate.clip.identity import scorer_identity  # torch-free: the driver imports this module
from curate.config import ClipConfig, ReinforceConfig
from curate.reinforce import identity as reinforce_identity  # torch-free too
from curate.reinforce.store import NPZ, TABLE_SCHEMA
from curate.schema import COL, Status, set_column

ROW = "clip_row"  # transient: position of a row among its unit's ok rows, to write scores in ledger order
SCORE = "pass_score"  # transient: the row's unit needs its scores file
TEACH = "pass_teach"  # transient: the row's unit needs its reinforce file (teacher embeddings)
MAX_CPU_ACTORS = 8  # on a CPU-only cluster: one single-threaded actor per core up to this, then wider actors


@dataclass(frozen=True)
class PassModels:
    """What the pass runs on its actors: the CLIP scorer when score is true, the reinforce teachers when teach
    is given (seed: the run's, which draws the views). clip's device, num_actors and batch_size place the
    actors and size their batches, teachers included (a teachers-only pass uses reinforce.batch_size)."""
    clip: ClipConfig
    score: bool = True
    teach: ReinforceConfig | None = None
    seed: int = 0

    @property
    def batch_size(self) -> int:
        return self.clip.batch_size if self.score else self.teach.batch_size


def _ok_uids(output: str, unit_id: int) -> pa.Array:
    """uids of a unit's rows still ok (the ones with an image in the stage tar), in ledger order."""
    led = stage_io.read_unit_ledger(output, unit_id).select([COL.UID, COL.STATUS])
    return led.filter(pc.equal(led[COL.STATUS], Status.OK))[COL.UID].combine_chunks()


def read_units(batch: pa.Table, output: str, score: frozenset | None = None,
               teach: frozenset = frozenset()) -> pa.Table:
    """Units (a unit_id column) -> one row per ok ledger row: uid, unit_id, clip_row, image, caption_clean,
    and the flags SCORE (the unit is in `score`; None: every unit) and TEACH (the unit is in `teach`)."""
    parts = []
    for unit_id in batch["unit_id"].to_pylist():
        led = stage_io.read_unit_ledger(output, unit_id)
        led = led.filter(pc.equal(led[COL.STATUS], Status.OK))
        images = stage_io.read_unit_images(output, unit_id) if led.num_rows else {}
        uids, n = led[COL.UID].to_pylist(), led.num_rows
        parts.append(pa.table({
            COL.UID: pa.array(uids, pa.string()),
            COL.UNIT_ID: pa.array([unit_id] * n, pa.int32()),
            ROW: pa.array(range(n), pa.int64()),
            COL.IMAGE: pa.array([images.get(u) for u in uids], pa.binary()),  # missing member -> null score
            COL.CAPTION_CLEAN: led[COL.CAPTION_CLEAN].cast(pa.string()),
            SCORE: pa.array([score is None or unit_id in score] * n, pa.bool_()),
            TEACH: pa.array([unit_id in teach] * n, pa.bool_())}))
    return pa.concat_tables(parts)


def preprocess_batch(batch: pa.Table, cfg: ClipConfig, keep_images: bool = False) -> pa.Table:
    """ClipScore's CPU half as a stateless Ray task function (the transforms load once per worker). Rows of
    units already scored (SCORE false) are not decoded; keep_images passes the image bytes and captions on
    for the teachers on the actors."""
    from curate.clip.scorer import worker_stage  # torch and open_clip: in the workers only
    src = batch
    if not pc.all(batch[SCORE]).as_py():  # a blank row for the actor to leave out: no decode
        src = set_column(batch, COL.IMAGE, pc.if_else(batch[SCORE], batch[COL.IMAGE], pa.scalar(None, pa.binary())))
    out = worker_stage(cfg).preprocess(src)
    if keep_images:
        out = out.append_column(COL.IMAGE, batch[COL.IMAGE]).append_column(COL.CAPTION_CLEAN,
                                                                           batch[COL.CAPTION_CLEAN])
    return out


def _on_rows(batch: pa.Table, mask: pa.ChunkedArray, fn) -> pa.Table:
    """The columns fn adds, computed on the rows of `batch` where mask is true and null in the others, so the
    result is row-aligned with `batch` (fn keeps its input's rows and order)."""
    idx = np.flatnonzero(np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool))
    if len(idx) == batch.num_rows:  # every row (a scoring-only pass): no copy of the batch's pixels
        done = fn(batch)
        return done.select([c for c in done.column_names if c not in batch.column_names])
    done = fn(batch.take(pa.array(idx, pa.int64())))
    pos = np.full(batch.num_rows, -1, np.int64)
    pos[idx] = np.arange(len(idx))
    new = [c for c in done.column_names if c not in batch.column_names]
    return done.select(new).take(pa.array(pos, mask=pos < 0))


class ModelActor:
    """The pass's models as a Ray Data actor, each loaded once when the actor starts: ClipScore's model half
    (rows with SCORE) and the reinforce teachers (rows with TEACH and an image: curate.reinforce's
    reinforce_table, the same computation as the download task's ReinforceStage). Returns uid, unit_id,
    clip_row, the flags, the score columns and NPZ, VIEWS (null where not computed)."""

    def __init__(self, models: PassModels):
        self.models, self.stage = models, None
        if models.score:
            from curate.clip.scorer import ClipScore
            self.stage = ClipScore(models.clip)
            self.stage.load("model")
        if models.teach is not None:
            import torch

            from curate.reinforce.teachers import load_teacher
            gpu = models.clip.device != "cpu" and torch.cuda.is_available()
            self.device = "cuda" if gpu else "cpu"  # clip.device cpu: the teachers too, as the scorer
            for entry in models.teach.teachers:
                load_teacher(entry, self.device)

    def _teach(self, rows: pa.Table) -> pa.Table:
        from curate.reinforce.teachers import reinforce_table
        src = rows.select([COL.UID, COL.IMAGE, COL.CAPTION_CLEAN])
        return reinforce_table(src, self.models.teach, self.models.seed, self.device).drop_columns([COL.UID])

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = batch.select([COL.UID, COL.UNIT_ID, ROW, SCORE, TEACH])
        if self.stage is not None:
            scored = _on_rows(batch, batch[SCORE], self.stage.score)
            out = pa.Table.from_arrays(out.columns + scored.columns, out.column_names + scored.column_names)
        if self.models.teach is not None:
            taught = _on_rows(batch, pc.and_(batch[TEACH], pc.is_valid(batch[COL.IMAGE])), self._teach)
            out = pa.Table.from_arrays(out.columns + taught.columns, out.column_names + taught.column_names)
        return out


def actor_options(cfg: ClipConfig) -> dict:
    """map_batches resources for the pass's actors (scorer, teachers): one actor per GPU, else CPU actors (and
    says so)."""
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
    print(f"scoring pass: no GPU in the Ray cluster; {n} CPU actor(s) x {cpus} CPU(s), fp32", file=sys.stderr)
    return {"concurrency": n, "num_cpus": cpus}


def write_unit_scores(output: str, unit_id: int, rows: pa.Table, cfg: ClipConfig) -> None:
    """stage/NNNNNN.scores.parquet (+ .emb.parquet) for one unit, each atomically, rows in ledger order."""
    fs, out = fsutil.get_fs(output)
    paths = stage_io.unit_paths(out, unit_id)
    if rows.num_rows:
        rows = rows.take(pc.sort_indices(rows[ROW]))
    if cfg.save_embeddings:
        from curate.clip.identity import IMAGE_EMB, TEXT_EMB  # torch-free: this runs in the driver
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


def _build_dataset(output: str, units: list[int], cfg: ClipConfig, models: PassModels | None = None,
                   score: frozenset | None = None, teach: frozenset = frozenset()):
    """read_units -> (scoring on) preprocess tasks -> ModelActor, over `units`; models defaults to scoring only."""
    models = models or PassModels(cfg)
    ds = ray.data.from_items([{"unit_id": u} for u in units], override_num_blocks=len(units))
    ds = ds.map_batches(read_units, fn_kwargs={"output": output, "score": score, "teach": teach}, batch_size=1,
                        batch_format="pyarrow")
    if models.score:
        ds = ds.map_batches(preprocess_batch, fn_kwargs={"cfg": cfg, "keep_images": models.teach is not None},
                            batch_size=cfg.batch_size, batch_format="pyarrow", num_cpus=1)
    return ds.map_batches(ModelActor, fn_constructor_kwargs={"models": models}, batch_size=models.batch_size,
                          batch_format="pyarrow", **actor_options(cfg))


def _write_unit(output: str, unit_id: int, rows: pa.Table, models: PassModels, jobs: tuple[bool, bool]) -> None:
    """The unit's scores file (jobs[0]) and reinforce file (jobs[1]: its rows with teacher embeddings, in ledger
    order, under the same record as ReinforceStage's, so curate.reinforce.identity.pending_units sees it)."""
    if jobs[0]:
        write_unit_scores(output, unit_id, rows, models.clip)
    if jobs[1]:
        rows = rows.take(pc.sort_indices(rows[ROW])) if rows.num_rows else rows
        table = rows.filter(pc.is_valid(rows[NPZ])).select(TABLE_SCHEMA.names) if rows.num_rows else \
            TABLE_SCHEMA.empty_table()
        stage_io.write_reinforce(output, unit_id, table.cast(TABLE_SCHEMA).combine_chunks(),
                                 reinforce_identity.reinforcer_identity(models.teach, models.seed))


def _collect(ds, expected: dict[int, int], write) -> None:
    """Gathers the pass's rows per unit; write(unit_id, rows) as soon as a unit has all its rows."""
    got: dict[int, list[pa.Table]] = {u: [] for u in expected}
    counts = dict.fromkeys(expected, 0)
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        for u in pc.unique(batch[COL.UNIT_ID]).to_pylist():
            part = batch.filter(pc.equal(batch[COL.UNIT_ID], u))
            got[u].append(part)
            counts[u] += part.num_rows
            if counts[u] == expected[u]:
                write(u, pa.concat_tables(got.pop(u)))
    if got:
        raise RuntimeError(f"model pass: units {sorted(got)[:5]} did not receive all rows "
                           f"({[(u, counts[u], expected[u]) for u in sorted(got)[:5]]})")


def run_pass(output: str, unit_ids: list[int], models: PassModels) -> dict:
    """Scores (models.score) and reinforces (models.teach) the ok rows of the completed units that lack their
    scores or reinforce file, each unit's images read once; writes each unit's files as it completes (a rerun
    resumes). Returns counts, wall seconds and images/s."""
    t0 = time.time()
    score = pending_units(output, unit_ids, models.clip) if models.score else []
    teach = [] if models.teach is None else reinforce_identity.pending_units(output, unit_ids, models.teach,
                                                                             models.seed)
    todo = sorted(set(score) | set(teach))
    jobs = {u: (u in score, u in teach) for u in todo}
    expected = {u: len(_ok_uids(output, u)) for u in todo}
    for u in [u for u in todo if expected[u] == 0]:  # all rows failed earlier: empty files, unit done
        _write_unit(output, u, _empty_rows(models.clip), models, jobs[u])
    busy = [u for u in todo if expected[u] > 0]
    if busy:
        ds = _build_dataset(output, busy, models.clip, models, frozenset(score), frozenset(teach))
        _collect(ds, {u: expected[u] for u in busy}, lambda u, rows: _write_unit(output, u, rows, models, jobs[u]))
    rows = sum(expected.values())
    secs = time.time() - t0
    return {"units_scored": len(score), "units_reinforced": len(teach), "units_skipped": len(unit_ids) - len(todo),
            "empty_units": len(todo) - len(busy), "rows": rows, "seconds": round(secs, 2),
            "images_per_s": round(rows / secs, 1) if secs > 0 else 0.0}


def read_scores(output: str, unit_id: int) -> pa.Table:
    """A unit's scores table (uid, clip_score, clip_model, clip_pretrained)."""
    fs, out = fsutil.get_fs(output)
    return pq.read_table(pa.BufferReader(fsutil.read_bytes(fs, stage_io.unit_paths(out, unit_id)["scores"])))


# ---- the in-unit route's shared scorers (CPU-only clusters, clip.cpu_in_units)

CPUS_PER_UNIT_SCORER = 4  # unit tasks per shared scorer on a node: scoring is ~1/5 of a unit's CPU on the demo
                          # model, so one single-threaded scorer keeps up with about four download tasks


class UnitScorer:
    """ClipScore whole (decode, tokenize, model) as a Ray actor that the unit tasks of its node call: torch and
    the model live in one process per CPUS_PER_UNIT_SCORER CPUs, not in every worker (each worker that imports
    torch, timm and open_clip holds ~0.75 GB more for the rest of the run)."""

    def __init__(self, cfg: ClipConfig):
        from curate.clip.scorer import ClipScore
        self.stage = ClipScore(cfg)

    def score(self, table: pa.Table) -> pa.Table:
        return self.stage(table)


def start_unit_scorers(cfg: ClipConfig) -> dict[str, list]:
    """{node id: [UnitScorer handles]}: ceil(CPUs / CPUS_PER_UNIT_SCORER) actors pinned to each alive node with
    CPUs. They hold no CPU of their own (they serve the node's tasks, which do), so OMP gives them one thread,
    as a unit task has: the same scores as a model loaded inside the task."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    actor = ray.remote(num_cpus=0, max_restarts=3, max_task_retries=3)(UnitScorer)
    out = {}
    for node in ray.nodes():
        cpus = int(node.get("Resources", {}).get("CPU", 0))
        if node.get("Alive") and cpus:
            pin = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            out[node["NodeID"]] = [actor.options(scheduling_strategy=pin).remote(cfg)
                                   for _ in range(-(-cpus // CPUS_PER_UNIT_SCORER))]
    return out


def unit_scorer(scorers: dict[str, list], unit_id: int):
    """The Scorer (table -> table) a unit task calls: one of its own node's shared actors, by unit id."""
    node = ray.get_runtime_context().get_node_id()
    handles = scorers.get(node) or [h for hs in scorers.values() for h in hs]
    actor = handles[unit_id % len(handles)]
    return lambda table: ray.get(actor.score.remote(table))


def stop_unit_scorers(scorers: dict[str, list]) -> None:
    """Ends the shared scorers: their torch and model memory goes before phases B and C."""
    for handles in scorers.values():
        for h in handles:
            ray.kill(h)
