"""Phase C: gathers kept images from stage tars into webdataset shards, writes metadata and manifest.json."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from curate import fsutil, stage_io, tario
from curate.config import RunConfig
from curate.layout import RunLayout
from curate.manifest import build_manifest, write_manifest
from curate.manifest import canonical_json as _json
from curate.manifest import value_counts as _counts
from curate.schema import COL, Status, conform
from curate.select.selection import key_widths, shard_mix

EXT_ALIASES = {"jpeg": "jpg"}


@dataclass(frozen=True)
class ShardTask:
    """Everything one shard writer needs: its samples rows and where each image lies in the stage tars."""
    output: str
    shard: int
    name: str                 # "00000": file stem of the shard
    samples: pa.Table         # samples schema, in key order
    unit: np.ndarray          # per sample: stage unit id
    offset: np.ndarray        # per sample: byte offset of the image in that unit's tar
    size: np.ndarray          # per sample: bytes
    ext: tuple[str, ...]      # per sample: image extension
    mix: dict                 # this shard's language/concept deviation (selection.shard_mix)
    teachers: tuple[str, ...] = ()  # reinforce on: the teachers named in each KEY.json (KEY.npz from the stage)


def write_outputs(output: str, ledger: pa.Table, cfg: RunConfig, inputs: list[dict], map_fn=None,
                  selection: dict | None = None) -> dict:
    """Writes shards/, metadata/ and manifest.json for a selected ledger (every row kept or dropped);
    returns the manifest. Every file is written atomically and is byte-identical for the same inputs
    (manifest 'created' comes from SOURCE_DATE_EPOCH when set). map_fn(fn, items) runs the per-unit
    index and per-shard write tasks (default curate.parallel.parallel_map: Ray tasks when Ray is up).
    selection: select()'s stats; its effective CLIP threshold and per-step counts go into the manifest."""
    if map_fn is None:
        from curate.parallel import parallel_map as map_fn
    fs, out = fsutil.get_fs(output)
    ledger = _check_final(conform(ledger, "ledger"))
    kept = ledger.filter(pc.equal(ledger[COL.STATUS], Status.KEPT)).sort_by([(COL.SHARD, "ascending"),
                                                                             (COL.KEY, "ascending")])
    units = sorted(pc.unique(kept[COL.UNIT_ID]).to_pylist())
    index = _concat_index(map_fn(index_unit, [(output, u) for u in units]))
    mix = shard_mix(ledger)
    tasks = _shard_tasks(output, kept, index, cfg, mix)
    shards = map_fn(write_shard, tasks)
    _write_ledger_parts(fs, out, ledger)
    lay = RunLayout(out)
    shard_files = [p for t in tasks for p in lay.shard(t.name).files()]
    _remove_stale(fs, lay.shards, {_base(p) for p in shard_files + [lay.sizes]})
    _remove_stale(fs, lay.samples, {_base(lay.sample_part(t.name)) for t in tasks})
    sizes = {_base(lay.shard(t.name).tar): s["count"] for t, s in zip(tasks, shards)}
    fsutil.atomic_write(fs, lay.sizes, _json(sizes, indent=1))
    manifest = build_manifest(ledger, cfg, inputs, shards, mix)
    if selection is not None:
        manifest["selection"] = {k: selection.get(k) for k in ("clip_threshold", "steps")}
    write_manifest(output, manifest)
    return manifest


def _base(path: str) -> str:
    return path.rsplit("/", 1)[1]


def _check_final(ledger: pa.Table) -> pa.Table:
    """Raises unless every row is decided and every kept row has a shard and key."""
    n_ok = pc.sum(pc.equal(ledger[COL.STATUS], Status.OK)).as_py() or 0
    if n_ok:
        raise ValueError(f"write_outputs: {n_ok} rows are still 'ok'; run curate.select.select first")
    kept = pc.equal(ledger[COL.STATUS], Status.KEPT)
    missing = pc.sum(pc.and_(kept, pc.or_(pc.is_null(ledger[COL.KEY]), pc.is_null(ledger[COL.SHARD])))).as_py()
    if missing:
        raise ValueError(f"write_outputs: {missing} kept rows have no key/shard")
    return ledger


# ---------------------------------------------------------------- stage tar index (headers only)
def index_unit(item: tuple[str, int]) -> pa.Table:
    """(uid, unit_id, offset, size, ext) of every image in one unit's stage tar (tario.index_file: only
    the headers are read)."""
    output, unit_id = item
    fs, out = fsutil.get_fs(output)
    entries = tario.index_file(fs, stage_io.unit_paths(out, unit_id)["tar"])
    names = [e[0] for e in entries]
    offsets = [e[1] for e in entries]
    sizes = [e[2] for e in entries]
    stem = [n.rsplit(".", 1) for n in names]
    exts = [EXT_ALIASES.get(s[1].lower(), s[1].lower()) if len(s) > 1 else "jpg" for s in stem]
    return pa.table({"uid": pa.array([s[0] for s in stem], pa.string()),
                     "unit_id": pa.array([unit_id] * len(names), pa.int32()),
                     "offset": pa.array(offsets, pa.int64()), "size": pa.array(sizes, pa.int64()),
                     "ext": pa.array(exts, pa.string())})


def _concat_index(parts: list[pa.Table]) -> pa.Table:
    if not parts:
        return pa.table({"uid": pa.array([], pa.string()), "unit_id": pa.array([], pa.int32()),
                         "offset": pa.array([], pa.int64()), "size": pa.array([], pa.int64()),
                         "ext": pa.array([], pa.string())})
    return pa.concat_tables(parts)


def _join_key(unit_id, uid) -> pa.ChunkedArray:
    return pc.binary_join_element_wise(pc.cast(unit_id, pa.string()), uid, ":")


# ---------------------------------------------------------------- shard tasks
def to_samples(kept: pa.Table) -> pa.Table:
    """The samples table of kept ledger rows: caption is the cleaned caption (what KEY.txt holds)."""
    t = kept.drop_columns([COL.CAPTION]).rename_columns(
        [COL.CAPTION if c == COL.CAPTION_CLEAN else c for c in kept.drop_columns([COL.CAPTION]).column_names])
    return conform(t, "samples")


def _shard_tasks(output: str, kept: pa.Table, index: pa.Table, cfg: RunConfig, mix: dict) -> list[ShardTask]:
    pos = pc.index_in(_join_key(kept[COL.UNIT_ID], kept[COL.UID]),
                      value_set=_join_key(index["unit_id"], index["uid"]))
    if pos.null_count:
        first = kept.filter(pc.is_null(pos))[COL.UID][0].as_py()
        raise ValueError(f"write_outputs: {pos.null_count} kept rows have no image in their stage tar "
                         f"(first uid {first})")
    loc = index.take(pos)
    samples = to_samples(kept)
    shard = kept[COL.SHARD].to_numpy(zero_copy_only=False)
    bounds = np.flatnonzero(np.diff(shard)) + 1
    starts, ends = np.concatenate([[0], bounds]), np.concatenate([bounds, [len(shard)]])
    sw, _ = key_widths(kept.num_rows, cfg.shards.samples_per_shard)
    teachers = tuple(cfg.reinforce.teachers) if cfg.reinforce.enabled else ()
    unit, off, size = (loc[c].to_numpy() for c in ("unit_id", "offset", "size"))
    ext = loc["ext"].to_pylist()
    tasks = []
    for a, b in zip(starts, ends) if len(shard) else []:
        s = int(shard[a])
        rows = pa.array(np.arange(a, b))  # take copies: a pickled slice would carry the whole table to Ray
        tasks.append(ShardTask(output, s, f"{s:0{sw}d}", samples.take(rows), unit[a:b], off[a:b],
                               size[a:b], tuple(ext[a:b]), mix["per_shard"].get(s, {}), teachers))
    return tasks


def write_shard(task: ShardTask) -> dict:
    """Writes shards/NAME.tar (KEY.ext, KEY.json, KEY.txt per sample, fixed mtimes), shards/NAME.parquet,
    shards/NAME_stats.json and metadata/samples/part-NAME.parquet; returns the manifest entry. The tar is
    streamed to its file (size and sha256 on the way): the shard is never whole in memory."""
    fs, out = fsutil.get_fs(task.output)
    images = read_images(fs, out, task.unit, task.offset, task.size)
    rows = task.samples.to_pylist()
    lay = RunLayout(out)
    paths = lay.shard(task.name)
    with fsutil.atomic_stream(fs, paths.tar) as f:
        n_bytes, sha256 = tario.write_tar(f, _shard_members(rows, images, task.ext, task.teachers,
                                                            _reinforced(task) if task.teachers else {}))
    pq_bytes = stage_io.parquet_bytes(task.samples)
    fsutil.atomic_write(fs, paths.samples, pq_bytes)
    fsutil.atomic_write(fs, lay.sample_part(task.name), pq_bytes)
    entry = {"name": lay.relative(paths.tar), "count": len(rows), "bytes": n_bytes, "sha256": sha256}
    fsutil.atomic_write(fs, paths.stats, _json({**entry, **_shard_stats(task, images)}))
    return entry


def _shard_members(rows: list[dict], images: list[bytes], exts: tuple[str, ...], teachers: tuple[str, ...] = (),
                   reinforced: dict | None = None):
    """(name, bytes) of a shard's members, sample by sample: KEY.ext, KEY.json, KEY.txt; reinforce on
    (teachers given), KEY.npz too and KEY.json's reinforce object (the teachers, the views' parameters)."""
    for row, img, ext in zip(rows, images, exts):
        key = row[COL.KEY]
        yield f"{key}.{ext}", img
        if not teachers:
            yield f"{key}.json", _json(row)
        else:
            npz, views = reinforced[row[COL.UID]]
            yield f"{key}.json", _json({**row, "reinforce": {"teachers": list(teachers), "views": json.loads(views)}})
            yield f"{key}.npz", npz
        yield f"{key}.txt", (row[COL.CAPTION] or "").encode("utf-8")


def _reinforced(task: ShardTask) -> dict[str, tuple[bytes, str]]:
    """{uid: (KEY.npz bytes, views JSON)} of the shard's samples, from their units' reinforce files; raises,
    naming the shard, the sample and the file, when one lacks them."""
    from curate.reinforce.store import NPZ, VIEWS

    want, got = set(task.samples[COL.UID].to_pylist()), {}
    for u in np.unique(task.unit):
        t = stage_io.read_reinforce(task.output, int(u))
        t = t.filter(pc.is_in(t[COL.UID], value_set=pa.array(sorted(want), pa.string())))
        got.update(zip(t[COL.UID].to_pylist(), zip(t[NPZ].to_pylist(), t[VIEWS].to_pylist())))
    missing = sorted(want - set(got))
    if missing:
        raise ValueError(f"write_outputs: shard {task.name}: sample {missing[0]} (and {len(missing) - 1} more) "
                         f"has no teacher embeddings in its unit's stage reinforce file; rerun to compute them")
    return got


def _shard_stats(task: ShardTask, images: list[bytes]) -> dict:
    t = task.samples
    score = pc.mean(t[COL.CLIP_SCORE]).as_py()
    return {"shard": task.shard, "image_bytes": sum(len(i) for i in images),
            "langs": _counts(pc.fill_null(t[COL.LANG], "und")), "image_formats": _counts(pa.array(task.ext)),
            "clip_score_mean": None if score is None else round(score, 6),
            "lang_deviation": task.mix.get("lang"), "concept_deviation": task.mix.get("concept")}


def read_images(fs: pafs.FileSystem, out: str, unit: np.ndarray, offset: np.ndarray,
                size: np.ndarray) -> list[bytes]:
    """The images at (unit, offset, size), in the given order: each unit tar is opened once
    (tario.read_ranges: offset order, neighbouring ranges coalesced into one read)."""
    result: list[bytes | None] = [None] * len(unit)
    for u in np.unique(unit):
        idx = np.flatnonzero(unit == u)
        path = stage_io.unit_paths(out, int(u))["tar"]
        got = tario.read_ranges(fs, path, offset[idx].tolist(), size[idx].tolist())
        for i, data in zip(idx.tolist(), got):
            result[i] = data
    return result


# ---------------------------------------------------------------- ledger parts
def _write_ledger_parts(fs: pafs.FileSystem, out: str, ledger: pa.Table) -> None:
    """metadata/ledger/part-<unit>.parquet: each unit's final rows, ordered by (source_file, row_index)."""
    keys = [(COL.UNIT_ID, "ascending"), (COL.SOURCE_FILE, "ascending"), (COL.ROW_INDEX, "ascending")]
    order = pc.sort_indices(ledger.select([k for k, _ in keys]), sort_keys=keys).to_numpy()
    # the pipeline's ledger is usually in this order already: skip the (wide) take then
    ordered = ledger if np.array_equal(order, np.arange(len(order))) else ledger.take(pa.array(order))
    unit = ordered[COL.UNIT_ID].to_numpy()
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(unit)) + 1, [len(unit)]]) if len(unit) else [0]
    lay, names = RunLayout(out), set()
    for a, b in zip(bounds[:-1], bounds[1:]):
        path = lay.ledger_part(int(unit[a]))
        names.add(_base(path))
        fsutil.atomic_write(fs, path, stage_io.parquet_bytes(ordered.slice(a, b - a)))
    _remove_stale(fs, lay.ledger, names)


def _remove_stale(fs: pafs.FileSystem, folder: str, keep: set[str]) -> None:
    """Deletes files in `folder` that this run did not write (a previous, larger run's shards), so that
    globs over the folder agree with the manifest."""
    sel = pafs.FileSelector(folder, allow_not_found=True)
    for info in fs.get_file_info(sel):
        if info.type == pafs.FileType.File and info.base_name not in keep:
            fs.delete_file(info.path)
