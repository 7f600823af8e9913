"""Reads tabular inputs: Parquet, and CSV/TSV through pyarrow (the capped reader takes over from a row
longer than a block)."""
from __future__ import annotations

from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from curate import capped
from curate.inputs import InputError
from curate.inputs.columns import BATCH_BYTES, BATCH_ROWS, is_text_type, select_columns, source_names
from curate.schema import COL

CSV_BLOCK = 1 << 20         # bytes per CSV block; a longer row is read again by the capped reader.
# (pyarrow reads several blocks ahead: 1 MiB blocks bound that to tens of MB and read as fast as 4 MiB)


def read_parquet(fs, path, gz, cols) -> Iterator[pa.Table]:
    """Parquet batches; long text values are cut after a batch is read (a row group's pages load whole)."""
    if gz:  # parquet needs random access: a gzipped parquet file is decompressed in memory
        with fs.open_input_stream(path, compression="gzip") as f:
            src = pa.BufferReader(f.read())
    else:
        src = fs.open_input_file(path)
    with src:
        pf = pq.ParquetFile(src)
        names = source_names(path, pf.schema_arrow.names, cols)
        caption = names[COL.CAPTION]
        if caption and not is_text_type(pf.schema_arrow.field(caption).type):
            raise InputError(f"{path}: caption column {caption!r} holds {pf.schema_arrow.field(caption).type}, "
                             "not text; choose the caption column with --caption-col")
        wanted = sorted({s for s in names.values() if s})
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=wanted):
            yield select_columns(batch, names, text=False)


def _unquote(arr: pa.Array) -> pa.Array:
    """Undoes the quoting pandas and the csv module apply to a TSV field that holds a quote:
    a field wrapped in double quotes loses them and its doubled quotes become single ones."""
    quoted = pc.and_(pc.and_(pc.starts_with(arr, '"'), pc.ends_with(arr, '"')),
                     pc.greater_equal(pc.utf8_length(arr), 2))
    inner = pc.replace_substring(pc.utf8_slice_codeunits(arr, 1, -1), '""', '"')
    return pc.if_else(pc.fill_null(quoted, False), inner, arr)


def read_csv(fs, path, gz, cols, delimiter=",") -> Iterator[pa.Table]:
    """CSV/TSV through pyarrow's reader; a row longer than a CSV block (pyarrow stops with 'straddling
    object') makes the capped Python reader take over from the first row not yet returned."""
    done = 0
    try:
        for table in _read_csv_arrow(fs, path, gz, cols, delimiter):
            done += table.num_rows
            yield table
    except pa.ArrowInvalid as e:
        if "straddling" not in str(e):
            raise
        yield from _read_csv_capped(fs, path, gz, cols, delimiter, skip=done)


def _read_csv_arrow(fs, path, gz, cols, delimiter) -> Iterator[pa.Table]:
    tsv = delimiter == "\t"
    # TSV: one line is one row, always. A quote parser would let one caption that starts with '"'
    # swallow the rest of the file; fully quoted fields are unquoted afterwards instead.
    parse = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=not tsv, quote_char=False if tsv else '"')
    read = pacsv.ReadOptions(block_size=max(CSV_BLOCK, 8 * cols.max_value))
    comp = "gzip" if gz else None
    with fs.open_input_stream(path, compression=comp) as f:  # first open only reads the header names
        present = pacsv.open_csv(f, read_options=read, parse_options=parse).schema.names
    names = source_names(path, present, cols)
    wanted = sorted({s for s in names.values() if s})
    # every column as text: inferring types from the first block fails on a later block that differs
    conv = pacsv.ConvertOptions(include_columns=wanted, column_types={c: pa.string() for c in wanted})
    with fs.open_input_stream(path, compression=comp) as f:
        for batch in pacsv.open_csv(f, read_options=read, parse_options=parse, convert_options=conv):
            yield _csv_table(batch, names, tsv)


def _csv_table(batch, names: dict[str, str | None], tsv: bool) -> pa.Table:
    if tsv:
        batch = pa.RecordBatch.from_arrays([_unquote(c) for c in batch.columns], schema=batch.schema)
    return select_columns(batch, names, text=True)


def _read_csv_capped(fs, path, gz, cols, delimiter, skip: int) -> Iterator[pa.Table]:
    """The rows after the first `skip` of a CSV/TSV file, every field cut to cols.max_value bytes while
    it is read, so one huge field costs no more memory than a short one."""
    tsv = delimiter == "\t"
    with fs.open_input_stream(path, compression="gzip" if gz else None) as raw:
        rows = capped.csv_rows(raw, delimiter, quoted=not tsv, keep=cols.max_value + 4)
        header = [h.decode("utf-8") for h in next(rows, [])]
        names = source_names(path, header, cols)
        at = {c: header.index(c) for c in sorted({s for s in names.values() if s})}
        batch, size = [], 0
        for i, row in enumerate(rows, 1):
            if len(row) != len(header):
                raise InputError(f"{path}: row {i}: expected {len(header)} fields, got {len(row)}")
            if i <= skip:
                continue
            batch.append(row)
            size += sum(map(len, row))
            if len(batch) == BATCH_ROWS or size > BATCH_BYTES:
                yield _csv_rows_table(batch, at, names, tsv)
                batch, size = [], 0
        if batch:
            yield _csv_rows_table(batch, at, names, tsv)


def _csv_rows_table(rows: list[list[bytes]], at: dict[str, int], names, tsv: bool) -> pa.Table:
    batch = pa.record_batch([pa.array([r[j].decode("utf-8") for r in rows], pa.string()) for j in at.values()],
                            names=list(at))
    return _csv_table(batch, names, tsv)
