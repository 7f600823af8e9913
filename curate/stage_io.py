"""Per-unit phase-A outputs: stage/<unit>.tar (images by uid), stage/<unit>.parquet (ledger), stats JSON."""
from __future__ import annotations

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq

from curate import fsutil
from curate.schema import COL, conform, ledger_schema

STAGE_DIR = "stage"


def unit_name(unit_id: int) -> str:
    """Zero-padded unit name used in file names."""
    return f"{unit_id:06d}"


def unit_paths(output: str, unit_id: int) -> dict[str, str]:
    base = fsutil.join(output, STAGE_DIR, unit_name(unit_id))
    return {"tar": base + ".tar", "ledger": base + ".parquet", "stats": base + "_stats.json",
            "scores": base + ".scores.parquet", "embeddings": base + ".emb.parquet"}


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """A tar archive (in memory) of (name, bytes) members with fixed mtime/owner, so it is byte-stable."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def write_unit(output: str, unit_id: int, ledger: pa.Table, images: list[tuple[str, bytes]],
               stats: dict) -> None:
    """Writes one unit's tar, stats and ledger atomically; the ledger goes last and marks completion.

    images: (member name "<uid>.<ext>", encoded bytes) in ledger order.
    """
    fs, out = fsutil.get_fs(output)
    paths = unit_paths(out, unit_id)
    fsutil.atomic_write(fs, paths["tar"], tar_bytes(images))
    fsutil.atomic_write(fs, paths["stats"], json.dumps(stats, indent=1, sort_keys=True).encode())
    fsutil.atomic_write(fs, paths["ledger"], parquet_bytes(conform(ledger, "ledger")))


def unit_done(output: str, unit_id: int) -> bool:
    fs, out = fsutil.get_fs(output)
    return fsutil.exists(fs, unit_paths(out, unit_id)["ledger"])


def read_unit_ledger(output: str, unit_id: int) -> pa.Table:
    fs, out = fsutil.get_fs(output)
    return pq.read_table(pa.BufferReader(fsutil.read_bytes(fs, unit_paths(out, unit_id)["ledger"])))


def read_unit_images(output: str, unit_id: int) -> dict[str, bytes]:
    """{uid: encoded bytes} of one unit's stage tar (the extension is dropped from the key)."""
    fs, out = fsutil.get_fs(output)
    data = fsutil.read_bytes(fs, unit_paths(out, unit_id)["tar"])
    images = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        for m in tar.getmembers():
            if m.isfile():
                images[m.name.rsplit(".", 1)[0]] = tar.extractfile(m).read()
    return images


SCORE_COLUMNS = (COL.UID, COL.CLIP_SCORE, COL.CLIP_MODEL, COL.CLIP_PRETRAINED)


def write_scores(output: str, unit_id: int, rows: pa.Table) -> None:
    """stage/<unit>.scores.parquet: the score columns of `rows` (ledger order), typed as the ledger says
    (a column `rows` lacks, e.g. in an empty unit, is null), written atomically."""
    led = ledger_schema()
    cols = {c: rows[c].cast(led.field(c).type) if c in rows.column_names else pa.nulls(rows.num_rows,
                                                                                       led.field(c).type)
            for c in SCORE_COLUMNS}
    fs, out = fsutil.get_fs(output)
    fsutil.atomic_write(fs, unit_paths(out, unit_id)["scores"], parquet_bytes(pa.table(cols)))


def invalidate_scores(output: str, unit_id: int) -> None:
    """Removes a unit's scores/embeddings so the scoring pass redoes them (after a retry changed the unit)."""
    fs, out = fsutil.get_fs(output)
    paths = unit_paths(out, unit_id)
    for key in ("scores", "embeddings"):
        if fsutil.exists(fs, paths[key]):
            fs.delete_file(paths[key])
