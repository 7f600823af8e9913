"""Streams one input file of any format as bounded tables with output column names, long values cut while
reading (a caption over input.max_caption_bytes becomes caption_rule:too_long)."""
from __future__ import annotations

from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from curate import capped, fsutil
from curate.config import InputConfig
from curate.inputs import InputError
from curate.inputs.columns import URL_MAX_BYTES, Columns, columns_of
from curate.inputs.files import format_of
from curate.inputs.tabular import read_csv, read_parquet
from curate.inputs.textlines import read_jsonl, read_txt
from curate.schema import COL, Status, reason

TOO_LONG = reason(Status.CAPTION_RULE, "too_long")
_READ_ERRORS = (pa.ArrowException, OSError, EOFError, UnicodeDecodeError)  # gzip errors arrive as OSError


def _cut_column(arr: pa.Array, limit: int) -> tuple[pa.Array, pa.Array | None]:
    """(values cut to `limit` UTF-8 bytes at a character boundary, mask of the cut rows or None if none)."""
    over = pc.fill_null(pc.greater(pc.binary_length(arr), limit), False)
    if not pc.any(over).as_py():
        return arr, None
    cut = [capped.utf8_cut(v.encode("utf-8", "surrogatepass"), limit).decode("utf-8", "replace") if o else None
           for v, o in zip(arr.to_pylist(), over.to_pylist())]
    return pc.if_else(over, pa.array(cut, arr.type), arr), over


def _cap(table: pa.Table, cols: Columns) -> pa.Table:
    """Cuts long text values and adds the reading reason / error_message columns (null when fine).

    A caption over cols.max_caption bytes keeps its head and becomes caption_rule:too_long; a URL over
    URL_MAX_BYTES keeps its head (and is invalid_url:too_long later); other text values keep cols.max_value.
    """
    n = table.num_rows
    why = table[COL.REASON].combine_chunks() if COL.REASON in table.column_names else pa.nulls(n, pa.string())
    msg = (table[COL.ERROR_MESSAGE].combine_chunks() if COL.ERROR_MESSAGE in table.column_names
           else pa.nulls(n, pa.string()))
    table = table.drop_columns([c for c in (COL.REASON, COL.ERROR_MESSAGE) if c in table.column_names])
    for i, name in enumerate(table.column_names):
        t = table.schema.field(i).type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
            continue
        limit = cols.max_caption if name == COL.CAPTION else URL_MAX_BYTES if name == COL.URL else cols.max_value
        arr, over = _cut_column(table[name].combine_chunks(), limit)
        if over is None:
            continue
        table = table.set_column(i, name, arr)
        if name == COL.CAPTION:
            new = pc.and_(over, pc.is_null(why))
            why = pc.if_else(new, pa.scalar(TOO_LONG), why)
            msg = pc.if_else(new, pa.scalar(f"caption longer than {limit} bytes (input.max_caption_bytes): "
                                            f"cut to its first {limit} bytes while reading"), msg)
    return table.append_column(COL.REASON, why).append_column(COL.ERROR_MESSAGE, msg)


_READERS = {"parquet": read_parquet, "csv": read_csv, "jsonl": read_jsonl, "txt": read_txt,
            "tsv": lambda fs, path, gz, cols: read_csv(fs, path, gz, cols, delimiter="\t")}


def read_file(path: str, cfg: InputConfig) -> Iterator[pa.Table]:
    """Streams one input file as tables of bounded size (BATCH_ROWS rows, or one CSV block) with columns
    url, caption, (input_phash), src_<keep>, reason, error_message (reading problems: caption_rule:not_text,
    caption_rule:too_long). Raises InputError naming the file when it is unreadable or lacks a column."""
    fmt, gz = format_of(path, cfg.file_format)
    if fmt not in _READERS:
        raise InputError(f"{path}: unsupported format {fmt!r}")
    fs, inner = fsutil.get_fs(path)
    cols = columns_of(cfg)
    try:
        for table in _READERS[fmt](fs, inner, gz, cols):
            yield _cap(table, cols)
    except InputError:
        raise
    except _READ_ERRORS as e:
        raise InputError(f"{path}: cannot read as {fmt}{' (gzip)' if gz else ''}: {e}") from e
