"""Reads URL lists (parquet, csv, tsv, jsonl, txt, optionally gzipped), plans work units, serves unit rows."""
from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from curate import capped, fsutil
from curate.config import InputConfig
from curate.schema import COL, EXTRA_PREFIX, Status, reason, set_status, url_presets
from curate.stage_io import parquet_bytes, unit_name
from curate.urls import MAX_URL_LENGTH, InvalidURL, normalize_url

FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".txt": "txt"}
INPUT_DIR = "_input"        # under the run output: one parquet of input rows per unit + plan.json
PLAN_FILE = "plan.json"
PLAN_VERSION = 1            # bump when the unit files' layout changes, so old plans are not reused
BATCH_ROWS = 65_536         # rows per record batch while streaming an input file (bounds memory)
# rows: a small input is cut into units of at least this many rows (unit_rows); below it a unit's fixed
# costs (a Ray task, its stage files, a few thread pools) outweigh what one more unit in flight gains
MIN_UNIT_ROWS = 500
UNITS_PER_CPU = 2           # a small input still gives every CPU this many units (no idle CPU at the tail)
BATCH_BYTES = 64 << 20      # JSON/text line bytes per batch: rows of long captions make smaller batches
CSV_BLOCK = 1 << 20         # bytes per CSV block; a longer row is read again by the capped reader.
# (pyarrow reads several blocks ahead: 1 MiB blocks bound that to tens of MB and read as fast as 4 MiB)
# A URL cut here still has more than MAX_URL_LENGTH characters (at most 4 bytes each), so a cut URL is
# always invalid_url:too_long and never fetched as a different, shorter URL.
URL_MAX_BYTES = 4 * (MAX_URL_LENGTH + 2)
NOT_TEXT = reason(Status.CAPTION_RULE, "not_text")
TOO_LONG = reason(Status.CAPTION_RULE, "too_long")
_GLOB_CHARS = "*?["
_READ_ERRORS = (pa.ArrowException, OSError, EOFError, UnicodeDecodeError)  # gzip errors arrive as OSError


class InputError(ValueError):
    """An input file cannot be used; the message names the file and what was found."""


@dataclass(frozen=True)
class UnitSpec:
    """One work unit: rows [start_row, start_row + num_rows) of source_file."""
    unit_id: int
    source_file: str
    start_row: int
    num_rows: int


@dataclass(frozen=True)
class _Columns:
    """Source column names of one run (from the preset, overridden by url_col/caption_col)."""
    url: str
    caption: str
    caption_required: bool     # False only for the default preset without an explicit caption_col
    phash: str | None          # precomputed image hash column (COYO image_phash), optional in a file
    keep: tuple[str, ...]
    keep_required: bool        # explicit keep columns must exist; the preset's keep list is best effort
    preset: str
    max_caption: int           # bytes: longer captions are cut while reading (caption_rule:too_long)

    @property
    def max_value(self) -> int:
        """Bytes of any other text value (URL, keep columns) kept while reading."""
        return max(self.max_caption, URL_MAX_BYTES)


def _columns(cfg: InputConfig) -> _Columns:
    presets = url_presets()
    if cfg.preset not in presets:
        raise InputError(f"unknown input preset {cfg.preset!r}; known: {', '.join(presets)}")
    p = presets[cfg.preset]
    from_preset = tuple(cfg.keep_columns) == ("preset",)
    keep = tuple(p.get("keep", ())) if from_preset else tuple(cfg.keep_columns)
    return _Columns(url=cfg.url_col or p["url"], caption=cfg.caption_col or p["caption"],
                    caption_required=bool(cfg.caption_col) or cfg.preset != "default",
                    phash=p.get("phash"), keep=keep, keep_required=not from_preset, preset=cfg.preset,
                    max_caption=cfg.max_caption_bytes)


# ---------------------------------------------------------------- resolving inputs

def _format_of(path: str, forced: str = "auto") -> tuple[str | None, bool]:
    """(format or None when unknown, gzipped) of a file, by extension unless forced."""
    gz = path.lower().endswith(".gz")
    stem = path[:-3] if gz else path
    if forced != "auto":
        return forced, gz
    return FORMATS.get(os.path.splitext(stem)[1].lower()), gz


def _hidden(rel: str) -> bool:
    """Names starting with '.' or '_' (.crc, _SUCCESS, our own _input/) are not input files."""
    return any(part.startswith((".", "_")) for part in rel.split("/") if part)


def _list_dir(fs: pafs.FileSystem, path: str, forced: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File
                  and not _hidden(i.path[len(path):]) and _format_of(i.path, forced)[0])


def _glob(fs: pafs.FileSystem, path: str) -> list[str]:
    if fsutil.is_local(fs):
        return sorted(glob.glob(path, recursive=True))
    cut = min(path.find(c) for c in _GLOB_CHARS if c in path)
    base = path[:cut].rsplit("/", 1)[0]
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return sorted(i.path for i in infos if fnmatch.fnmatchcase(i.path, path))


def _expand(pattern: str, forced: str) -> list[str]:
    """Files named by one path: itself, the supported files under a folder, or those a glob matches."""
    fs, path = fsutil.get_fs(pattern)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        if not _format_of(path, forced)[0]:
            raise InputError(f"{pattern}: cannot tell the format from the extension (supported: "
                             f"{', '.join(FORMATS)}, each optionally .gz); set input.file_format")
        found = [path]
    elif info.type == pafs.FileType.Directory:
        found = _list_dir(fs, path, forced)
    elif any(c in pattern for c in _GLOB_CHARS):
        found = []
        for m in _glob(fs, path):
            kind = fs.get_file_info(m).type
            found += _list_dir(fs, m, forced) if kind == pafs.FileType.Directory else (
                [m] if _format_of(m, forced)[0] else [])
    else:
        raise InputError(f"input not found: {pattern!r}")
    return [p if fsutil.is_local(fs) else f"s3://{p}" for p in found]


def resolve_inputs(paths, file_format: str = "auto") -> list[str]:
    """Sorted, de-duplicated input files of files, folders (searched recursively) and globs.

    Local files come back as absolute paths, so a plan resumes from any working directory.
    """
    files: set[str] = set()
    for pattern in ([paths] if isinstance(paths, str) else paths):
        found = _expand(pattern, file_format)
        if not found:
            raise InputError(f"no input files match {pattern!r} (supported: {', '.join(FORMATS)}, "
                             "each optionally .gz)")
        files.update(found)
    if not files:
        raise InputError("no input given")
    return sorted(files)


def _root_of(pattern: str) -> str:
    """The folder one input path points into: a folder itself, a file's folder, a glob's fixed part."""
    fs, path = fsutil.get_fs(pattern)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        root = path
    elif kind != pafs.FileType.File and any(c in path for c in _GLOB_CHARS):
        root = path[:min(path.find(c) for c in _GLOB_CHARS if c in path)].rsplit("/", 1)[0]
    else:
        root = path.rsplit("/", 1)[0]
    return root if fsutil.is_local(fs) else f"s3://{root}"


def input_root(paths) -> str:
    """The input root: the deepest folder that holds the folder of every input path ("" if none does)."""
    parts = [_root_of(p).split("/") for p in ([paths] if isinstance(paths, str) else paths)]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return "/".join(common)


def relative_name(path: str, root: str) -> str:
    """An input file's name relative to the input root (its full path when outside it): what rows carry as
    source_file, so KEY.json and the ledger do not reveal local paths and a moved input keeps its uids."""
    prefix = root.rstrip("/") + "/"
    return path[len(prefix):] if root and path.startswith(prefix) else path


# ---------------------------------------------------------------- reading one file

def _as_string(arr: pa.Array) -> pa.Array:
    """Any column as strings; values that do not convert (nested, invalid UTF-8) become text, never a crash."""
    t = arr.type
    if pa.types.is_string(t):
        return arr
    if pa.types.is_null(t):
        return pa.nulls(len(arr), pa.string())
    try:
        return arr.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.array([_text(v) for v in arr.to_pylist()], pa.string())


def _text(v) -> str | None:
    """A Python value from a text format as a string column value (None stays null)."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return json.dumps(v, ensure_ascii=False, default=str)


def _is_text_type(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return any(f(t) for f in (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary,
                              pa.types.is_large_binary, pa.types.is_null)) or str(t) in ("string_view", "binary_view")


def _find(name: str, present) -> str | None:
    """The column called `name`, or its only case-insensitive match (LAION dumps differ in case)."""
    if name in present:
        return name
    alike = [c for c in present if c.lower() == name.lower()]
    return alike[0] if len(alike) == 1 else None


def _wanted(cols: _Columns) -> list[tuple[str, str, bool, str]]:
    """(output column, source column, required, role) of every column a run reads."""
    wanted = [(COL.URL, cols.url, True, "url"), (COL.CAPTION, cols.caption, cols.caption_required, "caption")]
    if cols.phash:
        wanted.append((COL.INPUT_PHASH, cols.phash, False, "phash"))
    return wanted + [(EXTRA_PREFIX + k, k, cols.keep_required, "keep") for k in cols.keep]


def _missing_error(path: str, missing: list[str], present: list[str], cols: _Columns) -> InputError:
    shown = ", ".join(present[:50]) + (f", ... ({len(present)} in all)" if len(present) > 50 else "")
    return InputError(f"{path}: missing column {', '.join(missing)} for preset {cols.preset!r}; "
                      f"columns present: {shown or '(none)'}. "
                      "Choose another preset or set --url-col/--caption-col/--keep-columns.")


def _source_names(path: str, present: list[str], cols: _Columns) -> dict[str, str | None]:
    """{output column: source column or None}; raises InputError naming the missing columns and those present."""
    names, missing = {}, []
    for out, src, required, role in _wanted(cols):
        names[out] = _find(src, present)
        if names[out] is None and required:
            missing.append(f"{src!r} ({role} column)")
    if missing:
        raise _missing_error(path, missing, present, cols)
    return names


def _select(batch, names: dict[str, str | None], text: bool) -> pa.Table:
    """Renames source columns to output names; url/caption/phash as strings; absent optional columns null."""
    n = batch.num_rows
    cols = {}
    for out, src in names.items():
        if src is None:
            cols[out] = pa.nulls(n, pa.string() if out in (COL.CAPTION, COL.INPUT_PHASH) else pa.null())
            continue
        arr = batch.column(src)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        cols[out] = _as_string(arr) if (text or not out.startswith(EXTRA_PREFIX)) else arr
    return pa.table(cols)


def _cut_column(arr: pa.Array, limit: int) -> tuple[pa.Array, pa.Array | None]:
    """(values cut to `limit` UTF-8 bytes at a character boundary, mask of the cut rows or None if none)."""
    over = pc.fill_null(pc.greater(pc.binary_length(arr), limit), False)
    if not pc.any(over).as_py():
        return arr, None
    cut = [capped.utf8_cut(v.encode("utf-8", "surrogatepass"), limit).decode("utf-8", "replace") if o else None
           for v, o in zip(arr.to_pylist(), over.to_pylist())]
    return pc.if_else(over, pa.array(cut, arr.type), arr), over


def _cap(table: pa.Table, cols: _Columns) -> pa.Table:
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


def _read_parquet(fs, path, gz, cols) -> Iterator[pa.Table]:
    """Parquet batches; long text values are cut after a batch is read (a row group's pages load whole)."""
    if gz:  # parquet needs random access: a gzipped parquet file is decompressed in memory
        with fs.open_input_stream(path, compression="gzip") as f:
            src = pa.BufferReader(f.read())
    else:
        src = fs.open_input_file(path)
    with src:
        pf = pq.ParquetFile(src)
        names = _source_names(path, pf.schema_arrow.names, cols)
        caption = names[COL.CAPTION]
        if caption and not _is_text_type(pf.schema_arrow.field(caption).type):
            raise InputError(f"{path}: caption column {caption!r} holds {pf.schema_arrow.field(caption).type}, "
                             "not text; choose the caption column with --caption-col")
        wanted = sorted({s for s in names.values() if s})
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=wanted):
            yield _select(batch, names, text=False)


def _unquote(arr: pa.Array) -> pa.Array:
    """Undoes the quoting pandas and the csv module apply to a TSV field that holds a quote:
    a field wrapped in double quotes loses them and its doubled quotes become single ones."""
    quoted = pc.and_(pc.and_(pc.starts_with(arr, '"'), pc.ends_with(arr, '"')),
                     pc.greater_equal(pc.utf8_length(arr), 2))
    inner = pc.replace_substring(pc.utf8_slice_codeunits(arr, 1, -1), '""', '"')
    return pc.if_else(pc.fill_null(quoted, False), inner, arr)


def _read_csv(fs, path, gz, cols, delimiter=",") -> Iterator[pa.Table]:
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
    names = _source_names(path, present, cols)
    wanted = sorted({s for s in names.values() if s})
    # every column as text: inferring types from the first block fails on a later block that differs
    conv = pacsv.ConvertOptions(include_columns=wanted, column_types={c: pa.string() for c in wanted})
    with fs.open_input_stream(path, compression=comp) as f:
        for batch in pacsv.open_csv(f, read_options=read, parse_options=parse, convert_options=conv):
            yield _csv_table(batch, names, tsv)


def _csv_table(batch, names: dict[str, str | None], tsv: bool) -> pa.Table:
    if tsv:
        batch = pa.RecordBatch.from_arrays([_unquote(c) for c in batch.columns], schema=batch.schema)
    return _select(batch, names, text=True)


def _read_csv_capped(fs, path, gz, cols, delimiter, skip: int) -> Iterator[pa.Table]:
    """The rows after the first `skip` of a CSV/TSV file, every field cut to cols.max_value bytes while
    it is read, so one huge field costs no more memory than a short one."""
    tsv = delimiter == "\t"
    with fs.open_input_stream(path, compression="gzip" if gz else None) as raw:
        rows = capped.csv_rows(raw, delimiter, quoted=not tsv, keep=cols.max_value + 4)
        header = [h.decode("utf-8") for h in next(rows, [])]
        names = _source_names(path, header, cols)
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


def _lines(fs, path, gz, keep: int, json_lines: bool) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, stripped line) of the non-blank lines of a UTF-8 text file, in bounded memory.

    A line over LINE_LIMIT bytes is not held whole: a JSON line keeps every string's first `keep` bytes,
    any other line its first `keep` bytes.
    """
    with fs.open_input_stream(path, compression="gzip" if gz else None) as raw:
        for n, line, stream in capped.lines(raw, max(capped.CHUNK, 4 * keep)):
            if line is None and json_lines:
                try:
                    line = capped.capped_json_line(stream, keep, 16 * keep + capped.CHUNK)
                except capped.TooMuchStructure as e:
                    raise InputError(f"{path}:{n}: a JSON line too long to read ({e}); only long strings "
                                     "are cut while reading") from None
            elif line is None:
                line = capped.head_of_line(stream, keep)
            line = line.strip()
            if n == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")
            if line:
                yield n, line


def _json_kind(v) -> str:
    return ("a boolean" if isinstance(v, bool) else "a number" if isinstance(v, (int, float))
            else "a list" if isinstance(v, list) else "an object")


def _not_text(v) -> str | None:
    """None for a JSON string or null; for any other JSON value, the message a not_text row carries."""
    if v is None or isinstance(v, str):
        return None
    shown = json.dumps(v, ensure_ascii=False)  # NaN stays NaN: the ledger shows what the file held
    return f"caption is {_json_kind(v)}, not text: {shown[:160]}"


class _JsonColumns:
    """Resolves the wanted columns per JSON object (objects differ in keys) and checks, at the end of a
    file, that every required column occurred in at least one object."""

    def __init__(self, path: str, cols: _Columns):
        self.path, self.cols, self.wanted = path, cols, _wanted(cols)
        self.present: dict[str, None] = {}   # every key seen, in order of appearance (capped)
        self.found = [False] * len(self.wanted)
        self.cache: dict[tuple, tuple] = {}
        self.objects = 0

    def keys(self, obj: dict) -> tuple:
        """The source key of each wanted column in this object (None where absent)."""
        self.objects += 1
        shape = tuple(obj)
        got = self.cache.get(shape)
        if got is None:  # a new set of keys: resolve the wanted columns once for it
            got = tuple(_find(src, obj) for _, src, _, _ in self.wanted)
            if len(self.cache) < 4096:
                self.cache[shape] = got
            self.present.update((k, None) for k in shape[:1000] if len(self.present) < 1000)
            self.found = [f or k is not None for f, k in zip(self.found, got)]
        return got

    def check(self) -> None:
        missing = [f"{src!r} ({role} column)" for (_, src, req, role), f in zip(self.wanted, self.found)
                   if req and not f]
        if missing:
            raise _missing_error(self.path, missing, list(self.present), self.cols)


_json_decode = json.JSONDecoder().decode  # skips json.loads' per-call type and encoding checks


def _read_jsonl(fs, path, gz, cols) -> Iterator[pa.Table]:
    """JSON lines; columns are the keys of any object in the file (not only the first one)."""
    jc, rows, size = _JsonColumns(path, cols), [], 0
    for lineno, line in _lines(fs, path, gz, cols.max_value + 4, json_lines=True):
        try:
            obj = _json_decode(line.decode("utf-8"))
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{lineno}: not JSON lines ({e.msg}); .json files are read as one "
                             "JSON object per line") from None
        if not isinstance(obj, dict):
            raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        rows.append([None if k is None else obj[k] for k in jc.keys(obj)])  # only the wanted values
        size += len(line)
        if len(rows) == BATCH_ROWS or size > BATCH_BYTES:
            yield _json_table(rows, jc)
            rows, size = [], 0
    if rows:
        yield _json_table(rows, jc)
    if jc.objects:  # an empty file has no columns to check
        jc.check()


def _json_table(rows: list[list], jc: _JsonColumns) -> pa.Table:
    """Wanted columns as strings (other JSON values as JSON text), except that a caption that is not a
    string is null with reason caption_rule:not_text and the value shown in error_message."""
    cols, problems = {}, None
    for i, (out, _, _, _) in enumerate(jc.wanted):
        values = [r[i] for r in rows]
        if out == COL.CAPTION:
            try:
                cols[out] = _string_array(values, strict=True)
            except (pa.ArrowTypeError, pa.ArrowInvalid):  # some captions are numbers, lists, ...
                problems = [_not_text(v) for v in values]
                cols[out] = _string_array([None if p else v for v, p in zip(values, problems)])
        else:
            cols[out] = _string_array(values)
    problems = problems or [None] * len(rows)
    cols[COL.REASON] = pa.array([NOT_TEXT if p else None for p in problems], pa.string())
    cols[COL.ERROR_MESSAGE] = pa.array(problems, pa.string())
    return pa.table(cols)


def _string_array(values: list, strict: bool = False) -> pa.Array:
    """Strings as an Arrow column: other values as JSON text (or, strict, an Arrow error); a lone
    surrogate (valid in JSON, not in UTF-8) becomes U+FFFD."""
    try:
        return pa.array(values, pa.string())
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        if strict:
            raise
        return _string_array([_text(v) for v in values])
    except UnicodeEncodeError:
        return pa.array([v if v is None else v.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
                         for v in values], pa.string())


def _read_txt(fs, path, gz, cols) -> Iterator[pa.Table]:
    if cols.keep and cols.keep_required:
        raise InputError(f"{path}: a .txt URL list has no columns to keep ({', '.join(cols.keep)})")
    extra = {EXTRA_PREFIX + k: pa.null() for k in cols.keep}
    urls = []
    for _, line in _lines(fs, path, gz, URL_MAX_BYTES + 4, json_lines=False):
        url = line.decode("utf-8").strip()
        if not url:
            continue
        urls.append(url)
        if len(urls) == BATCH_ROWS:
            yield _txt_table(urls, extra)
            urls = []
    if urls:
        yield _txt_table(urls, extra)


def _txt_table(urls: list[str], extra: dict) -> pa.Table:
    n = len(urls)
    cols = {COL.URL: pa.array(urls, pa.string()), COL.CAPTION: pa.nulls(n, pa.string())}
    return pa.table({**cols, **{k: pa.nulls(n, t) for k, t in extra.items()}})


_READERS = {"parquet": _read_parquet, "csv": _read_csv, "jsonl": _read_jsonl, "txt": _read_txt,
            "tsv": lambda fs, path, gz, cols: _read_csv(fs, path, gz, cols, delimiter="\t")}


def read_file(path: str, cfg: InputConfig) -> Iterator[pa.Table]:
    """Streams one input file as tables of bounded size (BATCH_ROWS rows, or one CSV block) with columns
    url, caption, (input_phash), src_<keep>, reason, error_message (reading problems: caption_rule:not_text,
    caption_rule:too_long). Raises InputError naming the file when it is unreadable or lacks a column."""
    fmt, gz = _format_of(path, cfg.file_format)
    if fmt not in _READERS:
        raise InputError(f"{path}: unsupported format {fmt!r}")
    fs, inner = fsutil.get_fs(path)
    cols = _columns(cfg)
    try:
        for table in _READERS[fmt](fs, inner, gz, cols):
            yield _cap(table, cols)
    except InputError:
        raise
    except _READ_ERRORS as e:
        raise InputError(f"{path}: cannot read as {fmt}{' (gzip)' if gz else ''}: {e}") from e


# ---------------------------------------------------------------- uids, planning, units

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


def _h64(value: str) -> int:
    digest = hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _seen_before(values: list, seen: set[int]) -> list[bool]:
    """True where the value (non-null) occurred earlier in the run; updates `seen`.

    Memory: `seen` holds one 64-bit hash per distinct value, about 70 bytes each in CPython (a 32-byte
    int object plus a 16-byte set slot at <= 60 % load): ~7 GB per 100 M distinct URLs. False positives
    from 64-bit collisions are ~n^2/2^65 (about one row in a run of 6 billion).
    """
    out = []
    for v in values:
        if v is None:
            out.append(False)
            continue
        h = _h64(v)
        out.append(h in seen)
        seen.add(h)
    return out


def _input_dir(output: str) -> tuple[pafs.FileSystem, str]:
    fs, out = fsutil.get_fs(output)
    return fs, fsutil.join(out, INPUT_DIR)


def _file_stat(path: str) -> dict:
    fs, inner = fsutil.get_fs(path)
    info = fs.get_file_info(inner)
    return {"path": path, "size": info.size, "mtime_ns": info.mtime_ns}


def _plan_key(cfg: InputConfig, files: list[str]) -> dict:
    """What a plan depends on: same key, same units and unit files."""
    return {"version": PLAN_VERSION, "unit_size": cfg.unit_size, "preset": cfg.preset,
            "file_format": cfg.file_format, "url_col": cfg.url_col, "caption_col": cfg.caption_col,
            "keep_columns": list(cfg.keep_columns), "max_caption_bytes": cfg.max_caption_bytes,
            "files": [_file_stat(f) for f in files]}


def load_plan(output: str) -> dict | None:
    """The saved plan of a run output (key, files with row counts, units), or None."""
    fs, d = _input_dir(output)
    path = fsutil.join(d, PLAN_FILE)
    return json.loads(fsutil.read_bytes(fs, path)) if fsutil.exists(fs, path) else None


class _Planner:
    """Cuts streamed input rows into units, marks run-global duplicates and writes the unit input files."""

    def __init__(self, cfg: InputConfig, output: str):
        self.cfg, self.units = cfg, []
        self.fs, self.dir = _input_dir(output)
        self.seen_urls: set[int] = set()
        self.seen_phash: set[int] = set()

    def add_file(self, path: str, name: str) -> int:
        """Plans every row of one file (units never span files), with source_file `name`; returns its row
        count."""
        buf, buffered, start = [], 0, 0
        for batch in read_file(path, self.cfg):
            while batch.num_rows:
                take = min(self.cfg.unit_size - buffered, batch.num_rows)
                buf.append(batch.slice(0, take))
                buffered, batch = buffered + take, batch.slice(take)
                if buffered == self.cfg.unit_size:
                    self._emit(path, name, start, buf)
                    start, buf, buffered = start + buffered, [], 0
        if buffered:
            self._emit(path, name, start, buf)
        return start + buffered

    def _emit(self, path: str, name: str, start: int, parts: list[pa.Table]) -> None:
        table = pa.concat_tables(parts)
        n = table.num_rows
        phash = table[COL.INPUT_PHASH].to_pylist() if COL.INPUT_PHASH in table.column_names else [None] * n
        head = pa.table({COL.SOURCE_FILE: pa.array([name] * n, pa.string()),
                         COL.ROW_INDEX: pa.array(range(start, start + n), pa.int64()),
                         COL.DUP_URL: pa.array(_seen_before(table[COL.URL].to_pylist(), self.seen_urls)),
                         COL.DUP_PHASH: pa.array(_seen_before(phash, self.seen_phash))})
        for col in table.column_names:
            head = head.append_column(col, table[col])
        spec = UnitSpec(len(self.units), path, start, n)
        fsutil.atomic_write(self.fs, self._path(spec.unit_id), parquet_bytes(head))
        self.units.append(spec)

    def _path(self, unit_id: int) -> str:
        return fsutil.join(self.dir, unit_name(unit_id) + ".parquet")

    def split(self, rows: int) -> None:
        """Cuts every planned unit of more than `rows` rows into equal parts of at most `rows` (ids renumbered,
        row order kept). Runs from the last unit to the first: a unit's new ids are never below its old id
        and never reach the next unit's, so no unit file is overwritten before it is read."""
        parts = [-(-u.num_rows // rows) for u in self.units]
        if all(p == 1 for p in parts):
            return
        first = [sum(parts[:i]) for i in range(len(parts))]  # new id of each unit's first part
        new: list[UnitSpec] = []
        for u, n, at in reversed(list(zip(self.units, parts, first))):
            table = pq.read_table(pa.BufferReader(fsutil.read_bytes(self.fs, self._path(u.unit_id))))
            cuts = [u.num_rows * k // n for k in range(n + 1)]
            for k in reversed(range(n)):
                spec = UnitSpec(at + k, u.source_file, u.start_row + cuts[k], cuts[k + 1] - cuts[k])
                fsutil.atomic_write(self.fs, self._path(spec.unit_id),
                                    parquet_bytes(table.slice(cuts[k], spec.num_rows)))
                new.append(spec)
        self.units = new[::-1]


def unit_rows(total_rows: int, unit_size: int, cpus: int | None) -> int:
    """Rows per unit for an input of total_rows on `cpus` CPUs: unit_size, or less so that every CPU gets
    UNITS_PER_CPU units, but not below MIN_UNIT_ROWS (a smaller unit_size set by the user still wins).
    cpus=None: unit_size."""
    if not cpus:
        return unit_size
    share = -(-total_rows // (UNITS_PER_CPU * cpus))
    return max(1, min(unit_size, max(MIN_UNIT_ROWS, share)))


def _plan_diff(old: dict, new: dict) -> str:
    """A short description of what differs between two plan keys."""
    diff = [f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in new if k != "files" and old.get(k) != new[k]]
    before = {f["path"]: f for f in old.get("files", [])}
    after = {f["path"]: f for f in new["files"]}
    diff += [f"new file {p}" for p in after if p not in before]
    diff += [f"file gone {p}" for p in before if p not in after]
    diff += [f"file modified {p}" for p in after if p in before and before[p] != after[p]]
    return "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")


def plan_units(cfg: InputConfig, output: str, cpus: int | None = None) -> list[UnitSpec]:
    """Streams every input file once, cuts it into units of cfg.unit_size rows and writes
    <output>/_input/NNNNNN.parquet per unit and <output>/_input/plan.json (written last).

    With `cpus` (the cluster's CPUs) an input too small to give every CPU UNITS_PER_CPU units is cut
    finer (unit_rows). A saved plan whose inputs (path, size, mtime) and settings match is reused as it
    is, whatever `cpus` is now (its units may already be processed); a saved plan that does not match
    raises InputError.
    """
    key = _plan_key(cfg, resolve_inputs(cfg.paths, cfg.file_format))
    root = input_root(cfg.paths)
    old = load_plan(output)
    if old and old.get("key") == key:
        return [UnitSpec(**u) for u in old["units"]]
    if old:  # units already processed under the old plan would no longer match their unit ids
        raise InputError(f"{output}: the input changed since this output was planned "
                         f"({_plan_diff(old['key'], key)}); use a new output or --overwrite")
    planner = _Planner(cfg, output)
    files = []
    for f in key["files"]:
        name = relative_name(f["path"], root)
        files.append({**f, "name": name, "rows": planner.add_file(f["path"], name)})
    rows = unit_rows(sum(f["rows"] for f in files), cfg.unit_size, cpus)
    planner.split(rows)
    plan = {"key": key, "files": files, "unit_rows": rows, "cpus": cpus,
            "units": [asdict(u) for u in planner.units]}
    fsutil.atomic_write(planner.fs, fsutil.join(planner.dir, PLAN_FILE), json.dumps(plan, indent=1).encode())
    return planner.units


def read_unit(output: str, unit_id: int) -> pa.Table:
    """One unit's rows as a phase-A table: uid, unit_id, source_file, row_index, url, caption, status
    ('ok', 'invalid_url:<detail>', or caption_rule:not_text / too_long from reading), reason, error_message,
    dup_url, dup_phash, (input_phash), src_*."""
    fs, d = _input_dir(output)
    path = fsutil.join(d, unit_name(unit_id) + ".parquet")
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
