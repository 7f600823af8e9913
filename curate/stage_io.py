"""Per-unit phase-A outputs: stage/<unit>.tar (images by uid), stage/<unit>.parquet (ledger), stats JSON,
and the completion records that say a unit (or its scores) was written whole."""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from curate import fsutil, tario
from curate.layout import NAMES, RunLayout, unit_name
from curate.schema import COL, conform, ledger_schema
from curate.tario import tar_bytes  # noqa: F401  (re-exported: the tests build stage tars with it)

STAGE_DIR = NAMES.stage  # completion problems name files as stage/<file>
VERIFY_THREADS = 8  # parallel completion checks: sha256 releases the GIL, S3 checks wait on requests


def unit_paths(output: str, unit_id: int) -> dict[str, str]:
    """{tar, ledger, stats, scores, embeddings, done, scores_done, reinforce, reinforce_done}: the unit's
    stage files (RunLayout.unit)."""
    return RunLayout(output).unit(unit_id).as_dict()


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def write_unit(output: str, unit_id: int, ledger: pa.Table, images: Iterable[tuple[str, bytes]],
               stats: dict) -> None:
    """Writes one unit's tar, stats and ledger, each atomically, then its completion record (size and
    sha256 of each file): the unit is complete only once that record is there and matches (unit_done).

    images: (member name "<uid>.<ext>", encoded bytes or a buffer) in ledger order; the tar is streamed to
    its file, so an iterator of views into the image column costs no copy of the unit's images.
    """
    fs, out = fsutil.get_fs(output)
    paths = unit_paths(out, unit_id)
    _delete(fs, paths["done"])  # a unit being rewritten is not complete, whatever an older record says
    with fsutil.atomic_stream(fs, paths["tar"]) as f:
        written = {paths["tar"]: tario.write_tar(f, images)}
    files = {paths["stats"]: json.dumps(stats, indent=1, sort_keys=True).encode(),
             paths["ledger"]: parquet_bytes(conform(ledger, "ledger"))}
    for path, data in files.items():
        fsutil.atomic_write(fs, path, data)
    _write_record(fs, paths["done"], {**written, **_digests(files)})


# ---------------------------------------------------------------- completion records
def _digests(files: dict[str, bytes]) -> dict[str, tuple[int, str]]:
    return {path: (len(data), hashlib.sha256(data).hexdigest()) for path, data in files.items()}


def _write_record(fs: pafs.FileSystem, record_path: str, files: dict[str, tuple[int, str]],
                  made_by: dict | None = None) -> None:
    """{"files": {name: {"bytes", "sha256"}}} from {path: (bytes, sha256 hex)}, names relative to the stage
    folder (+ "made_by": what produced them, e.g. the CLIP scorer's identity); written last."""
    entries = {path.rsplit("/", 1)[1]: {"bytes": n, "sha256": sha} for path, (n, sha) in files.items()}
    record = {"files": entries} if made_by is None else {"files": entries, "made_by": made_by}
    fsutil.atomic_write(fs, record_path, json.dumps(record, indent=1, sort_keys=True).encode())


def _file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _record_problem(fs: pafs.FileSystem, record_path: str, digests: bool, made_by: dict | None = None) -> str | None:
    """None when every file the record names has its recorded size (and, for a local output with
    digests=True, its sha256) and, when made_by is given, the record says the same maker; else what is
    wrong, naming the file. An object store publishes an object whole, so on S3 sizes are checked and
    digests (a full download of every tar) are not."""
    try:
        record = json.loads(fsutil.read_bytes(fs, record_path))
        wanted = [(name, int(e["bytes"]), e["sha256"]) for name, e in sorted(record["files"].items())]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"{STAGE_DIR}/{record_path.rsplit('/', 1)[1]} is unreadable ({type(e).__name__})"
    if made_by is not None and record.get("made_by") != made_by:
        return (f"{STAGE_DIR}/{record_path.rsplit('/', 1)[1]} was made by {_maker(record.get('made_by'))}, "
                f"this run asks for {_maker(made_by)}")
    folder = record_path.rsplit("/", 1)[0]
    for name, size, sha in wanted:
        path = f"{folder}/{name}"
        info = fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            return f"{STAGE_DIR}/{name} is missing"
        if info.size != size:
            return f"{STAGE_DIR}/{name} has {info.size} bytes, its completion record says {size}"
        if digests and fsutil.is_local(fs) and _file_sha256(path) != sha:
            return f"{STAGE_DIR}/{name} does not match the sha256 in its completion record"
    return None


def _maker(made_by: dict | None) -> str:
    if not made_by:
        return "an unrecorded scorer"
    if "teachers" in made_by:  # a reinforce record (curate.reinforce.teachers.reinforcer_identity)
        return (f"teachers {', '.join(_maker(t) for t in made_by['teachers'])} with {made_by.get('views')} "
                f"views, seed {made_by.get('seed')}")
    return f"{made_by.get('model')} / {made_by.get('pretrained') or 'random init'}" + (
        " (other weights)" if "pretrained_files" in made_by or "model_files" in made_by else "")


def _complete(fs: pafs.FileSystem, paths: dict, record: str, started: tuple[str, ...], what: str,
              unit_id: int, digests: bool, made_by: dict | None = None) -> bool:
    """True when paths[record] exists and matches its files. A started (a `started` file is there) but
    unmatched unit prints one line naming the unit and the file, so a redo is never silent."""
    if fsutil.exists(fs, paths[record]):
        problem = _record_problem(fs, paths[record], digests, made_by)
        if problem is None:
            return True
    else:
        problem = next((f"{STAGE_DIR}/{paths[k].rsplit('/', 1)[1]} has no completion record (interrupted "
                        "while being written)" for k in started if fsutil.exists(fs, paths[k])), None)
    if problem:
        print(f"unit {unit_name(unit_id)}: {problem}; redoing its {what}", file=sys.stderr)
    return False


def unit_done(output: str, unit_id: int, digests: bool = True) -> bool:
    """True when the unit's completion record exists and its tar, ledger and stats match it (sizes;
    sha256 too for a local output when digests=True). A partial, 0-byte or corrupt unit is not done:
    phase A redoes it, and one line on stderr names the unit and the file."""
    fs, out = fsutil.get_fs(output)
    return _complete(fs, unit_paths(out, unit_id), "done", ("ledger", "tar"), "download", unit_id, digests)


def scores_done(output: str, unit_id: int, digests: bool = True, scorer: dict | None = None) -> bool:
    """unit_done for the unit's scores file (and its embeddings file, when one was written): the scoring
    pass redoes a unit whose scores do not match their record, or (scorer given) were made by another
    scorer (clip.scorer_identity: model and weights)."""
    fs, out = fsutil.get_fs(output)
    return _complete(fs, unit_paths(out, unit_id), "scores_done", ("scores",), "scoring", unit_id, digests,
                     scorer)


def done_units(output: str, unit_ids: list[int]) -> set[int]:
    """The complete units among unit_ids (unit_done), checked in parallel: verifying digests reads
    every stage tar once (sha256: about 1 GB/s per core), and on S3 each check waits on a few requests."""
    if not unit_ids:
        return set()
    workers = max(1, min(VERIFY_THREADS, os.cpu_count() or 1, len(unit_ids)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        ok = list(pool.map(lambda u: unit_done(output, u), unit_ids))
    return {u for u, d in zip(unit_ids, ok) if d}


def _delete(fs: pafs.FileSystem, path: str) -> None:
    if fsutil.exists(fs, path):
        fs.delete_file(path)


# ---------------------------------------------------------------- reading a unit
def read_unit_ledger(output: str, unit_id: int) -> pa.Table:
    fs, out = fsutil.get_fs(output)
    path = unit_paths(out, unit_id)["ledger"]
    try:
        return pq.read_table(pa.BufferReader(fsutil.read_bytes(fs, path)))
    except pa.ArrowInvalid as e:
        raise ValueError(f"{path}: unreadable stage ledger ({e}); rerun the pipeline to redo the unit") from e


def read_unit_images(output: str, unit_id: int) -> dict[str, bytes]:
    """{uid: encoded bytes} of one unit's stage tar (the extension is dropped from the key)."""
    fs, out = fsutil.get_fs(output)
    path = unit_paths(out, unit_id)["tar"]
    try:
        members = tario.read_members(fsutil.read_bytes(fs, path), path)
    except tario.TarFormatError as e:
        raise ValueError(f"{e}; rerun the pipeline to redo the unit") from e
    return {name.rsplit(".", 1)[0]: data for name, data in members}


SCORE_COLUMNS = (COL.UID, COL.CLIP_SCORE, COL.CLIP_MODEL, COL.CLIP_PRETRAINED)


def write_scores(output: str, unit_id: int, rows: pa.Table, scorer: dict | None = None) -> None:
    """stage/<unit>.scores.parquet: the score columns of `rows` (ledger order), typed as the ledger says
    (a column `rows` lacks, e.g. in an empty unit, is null), written atomically, then its completion
    record (covering the embeddings file too when the scoring pass wrote one just before, and naming the
    scorer: clip.model.scorer_identity)."""
    led = ledger_schema()
    cols = {c: rows[c].cast(led.field(c).type) if c in rows.column_names else pa.nulls(rows.num_rows,
                                                                                       led.field(c).type)
            for c in SCORE_COLUMNS}
    fs, out = fsutil.get_fs(output)
    paths = unit_paths(out, unit_id)
    _delete(fs, paths["scores_done"])
    files = {paths["scores"]: parquet_bytes(pa.table(cols))}
    fsutil.atomic_write(fs, paths["scores"], files[paths["scores"]])
    if fsutil.exists(fs, paths["embeddings"]):
        files[paths["embeddings"]] = fsutil.read_bytes(fs, paths["embeddings"])
    _write_record(fs, paths["scores_done"], _digests(files), scorer)


def write_reinforce(output: str, unit_id: int, table: pa.Table, made_by: dict) -> None:
    """stage/<unit>.reinforce.parquet (curate.reinforce: uid, KEY.npz bytes, views), written atomically, then
    its completion record naming what made it (teachers, views, seed): a torn file is never trusted."""
    fs, out = fsutil.get_fs(output)
    paths = unit_paths(out, unit_id)
    _delete(fs, paths["reinforce_done"])
    files = {paths["reinforce"]: parquet_bytes(table)}
    fsutil.atomic_write(fs, paths["reinforce"], files[paths["reinforce"]])
    _write_record(fs, paths["reinforce_done"], _digests(files), made_by)


def reinforce_done(output: str, unit_id: int, digests: bool = True, made_by: dict | None = None) -> bool:
    """unit_done for the unit's reinforce file: redone when it does not match its record or (made_by given)
    was made by other teachers, views or seed."""
    fs, out = fsutil.get_fs(output)
    return _complete(fs, unit_paths(out, unit_id), "reinforce_done", ("reinforce",), "teacher embeddings",
                     unit_id, digests, made_by)


def read_reinforce(output: str, unit_id: int) -> pa.Table:
    """A unit's reinforce table (uid, npz bytes, views JSON)."""
    fs, out = fsutil.get_fs(output)
    path = unit_paths(out, unit_id)["reinforce"]
    try:
        return pq.read_table(pa.BufferReader(fsutil.read_bytes(fs, path)))
    except (OSError, pa.ArrowInvalid) as e:
        raise ValueError(f"{path}: unreadable reinforce file ({e}); rerun the pipeline to redo it") from e


def invalidate_reinforce(output: str, unit_id: int) -> None:
    """Removes a unit's reinforce file (its record first): a redone or retried unit is reinforced again."""
    fs, out = fsutil.get_fs(output)
    paths = unit_paths(out, unit_id)
    for key in ("reinforce_done", "reinforce"):
        _delete(fs, paths[key])


def invalidate_scores(output: str, unit_id: int) -> None:
    """Removes a unit's scores and embeddings (their record first) so the scoring pass redoes them,
    after a retry or a redo changed the unit."""
    fs, out = fsutil.get_fs(output)
    paths = unit_paths(out, unit_id)
    for key in ("scores_done", "scores", "embeddings"):
        _delete(fs, paths[key])
