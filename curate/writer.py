"""Phase C: gathers kept images from stage tars into webdataset shards, writes metadata and manifest.json."""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import json
import mmap
import os
import tarfile
from dataclasses import dataclass
from importlib import metadata as _md

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from curate import fsutil, stage_io
from curate.config import RunConfig, config_hash, to_dict
from curate.schema import COL, Status, conform
from curate.select.selection import key_widths, shard_mix

SHARDS_DIR, SAMPLES_DIR, LEDGER_DIR = "shards", "metadata/samples", "metadata/ledger"
LAYOUT = {"shards": SHARDS_DIR, "samples": SAMPLES_DIR, "ledger": LEDGER_DIR, "stage": stage_io.STAGE_DIR,
          "config": "config.yaml", "manifest": "manifest.json", "report": "report.html"}
COALESCE_GAP = 1 << 20  # bytes: neighbouring stage reads closer than this become one read (one S3 GET)
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
    _remove_stale(fs, fsutil.join(out, SHARDS_DIR), {f"{t.name}{s}" for t in tasks
                                                     for s in (".tar", ".parquet", "_stats.json")} | {"sizes.json"})
    _remove_stale(fs, fsutil.join(out, SAMPLES_DIR), {f"part-{t.name}.parquet" for t in tasks})
    sizes = {f"{t.name}.tar": s["count"] for t, s in zip(tasks, shards)}
    fsutil.atomic_write(fs, fsutil.join(out, SHARDS_DIR, "sizes.json"), _json(sizes, indent=1))
    manifest = build_manifest(ledger, cfg, inputs, shards, mix)
    if selection is not None:
        manifest["selection"] = {k: selection.get(k) for k in ("clip_threshold", "steps")}
    fsutil.atomic_write(fs, fsutil.join(out, "manifest.json"), _json(manifest, indent=1))
    return manifest


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
    """(uid, unit_id, offset, size, ext) of every image in one unit's stage tar. A local tar is
    memory-mapped (only header pages are touched); a remote one is fetched once."""
    output, unit_id = item
    fs, out = fsutil.get_fs(output)
    path = stage_io.unit_paths(out, unit_id)["tar"]
    with _open_tar_source(fs, path) as buf:
        entries = scan_ustar(buf)
        if entries is None:  # not plain USTAR (pax/GNU long names): let tarfile parse it
            with tarfile.open(fileobj=io.BytesIO(bytes(buf)), mode="r:") as tar:
                entries = [(m.name, m.offset_data, m.size) for m in tar if m.isfile()]
    names = [e[0] for e in entries]
    offsets = [e[1] for e in entries]
    sizes = [e[2] for e in entries]
    stem = [n.rsplit(".", 1) for n in names]
    exts = [EXT_ALIASES.get(s[1].lower(), s[1].lower()) if len(s) > 1 else "jpg" for s in stem]
    return pa.table({"uid": pa.array([s[0] for s in stem], pa.string()),
                     "unit_id": pa.array([unit_id] * len(names), pa.int32()),
                     "offset": pa.array(offsets, pa.int64()), "size": pa.array(sizes, pa.int64()),
                     "ext": pa.array(exts, pa.string())})


@contextlib.contextmanager
def _open_tar_source(fs: pafs.FileSystem, path: str):
    """The tar's bytes as a buffer: mmap for a local file, one GET for object storage."""
    if not fsutil.is_local(fs):
        yield memoryview(fsutil.read_bytes(fs, path))
        return
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            yield memoryview(b"")
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            yield mm


def scan_ustar(buf) -> list[tuple[str, int, int]] | None:
    """(name, data offset, size) of each regular file in a USTAR archive held in `buf`; None when a
    member needs tarfile (pax/GNU headers, links). ~50x faster than tarfile's member objects."""
    out, pos, n = [], 0, len(buf)
    while pos + 512 <= n:
        header = bytes(buf[pos:pos + 512])
        if header == _ZERO_BLOCK:
            break
        kind = header[156:157]
        if kind not in (b"0", b"\0") or header[345:500].strip(b"\0"):  # not a plain file, or a name prefix
            return None
        size = int(header[124:136].split(b"\0")[0].strip() or b"0", 8)
        name = header[:100].split(b"\0")[0].decode("utf-8")
        out.append((name, pos + 512, size))
        pos += 512 + -(-size // 512) * 512
    return out


_ZERO_BLOCK = bytes(512)


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
    unit, off, size = (loc[c].to_numpy() for c in ("unit_id", "offset", "size"))
    ext = loc["ext"].to_pylist()
    tasks = []
    for a, b in zip(starts, ends) if len(shard) else []:
        s = int(shard[a])
        rows = pa.array(np.arange(a, b))  # take copies: a pickled slice would carry the whole table to Ray
        tasks.append(ShardTask(output, s, f"{s:0{sw}d}", samples.take(rows), unit[a:b], off[a:b],
                               size[a:b], tuple(ext[a:b]), mix["per_shard"].get(s, {})))
    return tasks


def write_shard(task: ShardTask) -> dict:
    """Writes shards/NAME.tar (KEY.ext, KEY.json, KEY.txt per sample, fixed mtimes), shards/NAME.parquet,
    shards/NAME_stats.json and metadata/samples/part-NAME.parquet; returns the manifest entry."""
    fs, out = fsutil.get_fs(task.output)
    images = read_images(fs, out, task.unit, task.offset, task.size)
    rows = task.samples.to_pylist()
    members = []
    for row, img, ext in zip(rows, images, task.ext):
        key = row[COL.KEY]
        members += [(f"{key}.{ext}", img), (f"{key}.json", _json(row)),
                    (f"{key}.txt", (row[COL.CAPTION] or "").encode("utf-8"))]
    tar = ustar_bytes(members)
    pq_bytes = stage_io.parquet_bytes(task.samples)
    base = fsutil.join(out, SHARDS_DIR, task.name)
    fsutil.atomic_write(fs, base + ".tar", tar)
    fsutil.atomic_write(fs, base + ".parquet", pq_bytes)
    fsutil.atomic_write(fs, fsutil.join(out, SAMPLES_DIR, f"part-{task.name}.parquet"), pq_bytes)
    entry = {"name": f"{SHARDS_DIR}/{task.name}.tar", "count": len(rows), "bytes": len(tar),
             "sha256": hashlib.sha256(tar).hexdigest()}
    fsutil.atomic_write(fs, base + "_stats.json", _json({**entry, **_shard_stats(task, images)}))
    return entry


def ustar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """The same bytes as curate.stage_io.tar_bytes (USTAR, mtime 0, mode 0644, no owner), built
    directly: tarfile spends ~100 us per member on header objects, which dominated shard writing."""
    if any(len(name.encode("utf-8")) > 100 for name, _ in members):
        return stage_io.tar_bytes(members)
    parts, total = [], 0
    for name, data in members:
        header = bytearray(_HEADER_TEMPLATE)
        raw, size = name.encode("utf-8"), b"%011o\0" % len(data)
        header[:len(raw)] = raw
        header[124:136] = size
        header[148:155] = b"%06o\0" % (_TEMPLATE_SUM + sum(raw) + sum(size))  # checksum field counted as spaces
        parts += [bytes(header), data, bytes(-len(data) % 512)]
        total += 512 + len(data) + (-len(data) % 512)
    total += 1024
    parts.append(bytes(1024 + (-total % _RECORD)))
    return b"".join(parts)


def _header_template() -> bytes:
    h = bytearray(512)
    h[100:108] = b"0000644\0"        # mode
    h[108:116] = b"0000000\0"        # uid
    h[116:124] = b"0000000\0"        # gid
    h[136:148] = b"00000000000\0"    # mtime 0: byte-stable archives
    h[148:156] = b" " * 8            # checksum placeholder
    h[156:157] = b"0"                # regular file
    h[257:265] = b"ustar\x0000"      # POSIX magic + version
    return bytes(h)


_HEADER_TEMPLATE = _header_template()
_TEMPLATE_SUM = sum(_HEADER_TEMPLATE)  # name and size fields are NUL in the template
_RECORD = 20 * 512  # tar pads the archive to a multiple of this record size


def _shard_stats(task: ShardTask, images: list[bytes]) -> dict:
    t = task.samples
    score = pc.mean(t[COL.CLIP_SCORE]).as_py()
    return {"shard": task.shard, "image_bytes": sum(len(i) for i in images),
            "langs": _counts(pc.fill_null(t[COL.LANG], "und")), "image_formats": _counts(pa.array(task.ext)),
            "clip_score_mean": None if score is None else round(score, 6),
            "lang_deviation": task.mix.get("lang"), "concept_deviation": task.mix.get("concept")}


def _counts(arr) -> dict:
    return {d["values"]: d["counts"] for d in sorted(pc.value_counts(arr).to_pylist(), key=lambda d: d["values"])}


def read_images(fs: pafs.FileSystem, out: str, unit: np.ndarray, offset: np.ndarray,
                size: np.ndarray) -> list[bytes]:
    """The images at (unit, offset, size), in the given order. Each unit tar is opened once and read in
    offset order, neighbouring ranges coalesced into one read (one GET on object storage)."""
    result: list[bytes | None] = [None] * len(unit)
    for u in np.unique(unit):
        idx = np.flatnonzero(unit == u)
        idx = idx[np.argsort(offset[idx], kind="stable")]
        path = stage_io.unit_paths(out, int(u))["tar"]
        with fs.open_input_file(path) as f:
            for group in _coalesce(offset[idx], size[idx]):
                lo = int(offset[idx[group[0]]])
                hi = int(max(offset[idx[g]] + size[idx[g]] for g in group))
                buf = f.read_at(hi - lo, lo)
                for g in group:
                    a = int(offset[idx[g]]) - lo
                    result[idx[g]] = buf[a:a + int(size[idx[g]])]
    return result


def _coalesce(offset: np.ndarray, size: np.ndarray) -> list[list[int]]:
    """Groups of positions (offset-sorted input) whose gaps are below COALESCE_GAP."""
    groups: list[list[int]] = []
    end = -1
    for i, (o, s) in enumerate(zip(offset.tolist(), size.tolist())):
        if groups and o - end <= COALESCE_GAP:
            groups[-1].append(i)
        else:
            groups.append([i])
        end = max(end, o + s)
    return groups


# ---------------------------------------------------------------- ledger, manifest
def _write_ledger_parts(fs: pafs.FileSystem, out: str, ledger: pa.Table) -> None:
    """metadata/ledger/part-<unit>.parquet: each unit's final rows, ordered by (source_file, row_index)."""
    keys = [(COL.UNIT_ID, "ascending"), (COL.SOURCE_FILE, "ascending"), (COL.ROW_INDEX, "ascending")]
    order = pc.sort_indices(ledger.select([k for k, _ in keys]), sort_keys=keys).to_numpy()
    # the pipeline's ledger is usually in this order already: skip the (wide) take then
    ordered = ledger if np.array_equal(order, np.arange(len(order))) else ledger.take(pa.array(order))
    unit = ordered[COL.UNIT_ID].to_numpy()
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(unit)) + 1, [len(unit)]]) if len(unit) else [0]
    names = set()
    for a, b in zip(bounds[:-1], bounds[1:]):
        name = f"part-{stage_io.unit_name(int(unit[a]))}.parquet"
        names.add(name)
        fsutil.atomic_write(fs, fsutil.join(out, LEDGER_DIR, name), stage_io.parquet_bytes(ordered.slice(a, b - a)))
    _remove_stale(fs, fsutil.join(out, LEDGER_DIR), names)


def _remove_stale(fs: pafs.FileSystem, folder: str, keep: set[str]) -> None:
    """Deletes files in `folder` that this run did not write (a previous, larger run's shards), so that
    globs over the folder agree with the manifest."""
    sel = pafs.FileSelector(folder, allow_not_found=True)
    for info in fs.get_file_info(sel):
        if info.type == pafs.FileType.File and info.base_name not in keep:
            fs.delete_file(info.path)


def build_manifest(ledger: pa.Table, cfg: RunConfig, inputs: list[dict], shards: list[dict], mix: dict) -> dict:
    """manifest.json's content (schemas/manifest.json); raises if the counts do not add up."""
    total = ledger.num_rows
    counts = _counts(ledger[COL.STATUS])
    dropped = ledger.filter(pc.not_equal(ledger[COL.STATUS], Status.KEPT))[COL.REASON]
    # one key per cluster representative would make the manifest grow with the run: group them
    reasons = _counts(pc.replace_substring_regex(dropped, r"duplicate_of:[0-9a-f]+", "duplicate_of"))
    written = sum(s["count"] for s in shards)
    in_rows = [i.get("rows") for i in inputs]
    if inputs and None not in in_rows and sum(in_rows) != total:
        raise ValueError(f"manifest: inputs hold {sum(in_rows)} rows but the ledger has {total}")
    if written != counts.get(Status.KEPT, 0) or sum(counts.values()) != total:
        raise ValueError(f"manifest: counts do not add up ({counts}, {written} written, {total} rows)")
    return {"curate_version": _version(), "created": _created(), "config": to_dict(cfg),
            "config_hash": config_hash(cfg), "inputs": list(inputs), "total_rows": total, "counts": counts,
            "reasons": reasons, "written_samples": written, "shards": shards, "layout": dict(LAYOUT),
            "shard_mix": {k: mix[k] for k in ("max_lang_deviation", "max_concept_deviation")}}


def _version() -> str:
    try:
        return _md.version("curate")
    except _md.PackageNotFoundError:
        return "0+unknown"


def _created() -> str:
    """ISO 8601 UTC; SOURCE_DATE_EPOCH (the reproducible-builds convention) pins it for byte-identical reruns."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    now = _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc) if epoch else _dt.datetime.now(_dt.timezone.utc)
    return now.isoformat(timespec="seconds").replace("+00:00", "Z")


def _json(obj, indent: int | None = None) -> bytes:
    """Canonical JSON (sorted keys, UTF-8): the same object always gives the same bytes."""
    seps = (",", ":") if indent is None else (",", ": ")
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=seps, indent=indent).encode("utf-8")

