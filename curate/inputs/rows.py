"""Makes a unit's first ledger rows from its planned input: uid, then status ok, invalid_url:<detail>, or the
caption_rule found while reading."""
from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate import fsutil
from curate.inputs import InputError
from curate.inputs.plan import run_layout
from curate.schema import COL, Status, set_status
from curate.urls import InvalidURL, normalize_url


def make_uid(url, caption, where: str | None = None) -> str:
    """Stable row id: 32 hex chars of blake2b-128 over url + NUL + caption (None counts as ""), and + NUL +
    `where` (the row's source_file, relative to the input root, and index) for a repeat of an earlier row's
    URL: identical input rows must not share a uid, and the first occurrence keeps the id that depends on
    content alone. A moved or copied input folder gives the same uids."""
    text = f"{'' if url is None else url}\x00{'' if caption is None else caption}"
    if where is not None:
        text += f"\x00{where}"
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _uids(src: pa.Table) -> pa.Array:
    """make_uid per planned row; rows flagged dup_url are salted with their source file and row index."""
    rows = zip(src[COL.URL].to_pylist(), src[COL.CAPTION].to_pylist(), src[COL.DUP_URL].to_pylist(),
               src[COL.SOURCE_FILE].to_pylist(), src[COL.ROW_INDEX].to_pylist())
    return pa.array([make_uid(u, c, f"{f}:{i}" if dup else None) for u, c, dup, f, i in rows], pa.string())


def read_unit(output: str, unit_id: int) -> pa.Table:
    """One unit's rows as a phase-A table: uid, unit_id, source_file, row_index, url, caption, status
    ('ok', 'invalid_url:<detail>', or caption_rule:not_text / too_long from reading), reason, error_message,
    dup_url, dup_phash, (input_phash), src_*."""
    fs, layout = run_layout(output)
    path = layout.input_unit(unit_id)
    if not fsutil.exists(fs, path):
        raise InputError(f"unit {unit_id} has no input file {path}: plan the run first (plan_units)")
    src = pq.read_table(pa.BufferReader(fsutil.read_bytes(fs, path)))
    urls = src[COL.URL].to_pylist()
    n = len(urls)
    table = pa.table({
        COL.UID: _uids(src),
        COL.UNIT_ID: pa.array([unit_id] * n, pa.int32()),
        COL.SOURCE_FILE: src[COL.SOURCE_FILE], COL.ROW_INDEX: src[COL.ROW_INDEX],
        COL.URL: src[COL.URL], COL.CAPTION: src[COL.CAPTION],
        COL.STATUS: pa.array([Status.OK] * n, pa.string()),
        COL.REASON: pa.nulls(n, pa.string()), COL.ERROR_MESSAGE: pa.nulls(n, pa.string())})
    table = _mark_invalid(table, urls)
    if COL.REASON in src.column_names:  # caption problems found while reading (absent in older plans)
        table = _mark_read_problems(table, src)
    for name in src.column_names:
        if name not in table.column_names:
            table = table.append_column(name, src[name])
    return table


def _mark_read_problems(table: pa.Table, src: pa.Table) -> pa.Table:
    """Rows whose caption was not text or was cut while reading -> caption_rule:not_text / too_long."""
    found = pc.is_valid(src[COL.REASON])
    if not pc.any(found).as_py():
        return table
    details = [r.split(":", 1)[1] if r else None for r in src[COL.REASON].to_pylist()]
    return set_status(table, found, Status.CAPTION_RULE, details, src[COL.ERROR_MESSAGE].to_pylist())


def _mark_invalid(table: pa.Table, urls: list) -> pa.Table:
    """Rows whose URL cannot be fetched -> invalid_url:<detail> with the reason in error_message."""
    errors: list[InvalidURL | None] = []
    for u in urls:
        try:
            normalize_url(u)
            errors.append(None)
        except InvalidURL as e:
            errors.append(e)
    if not any(errors):
        return table
    return set_status(table, pa.array([e is not None for e in errors]), Status.INVALID_URL,
                      [e.detail if e else None for e in errors], [str(e) if e else None for e in errors])
