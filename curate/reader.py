"""Reads URL lists (parquet, csv, tsv, jsonl, txt, optionally gzipped), plans work units, serves unit rows."""
from __future__ import annotations

import fnmatch
import glob
import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from curate import fsutil
from curate.config import InputConfig
from curate.schema import COL, EXTRA_PREFIX, Status, set_status, url_presets
from curate.stage_io import parquet_bytes, unit_name
from curate.urls import InvalidURL, normalize_url

FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".txt": "txt"}
INPUT_DIR = "_input"        # under the run output: one parquet of input rows per unit + plan.json
PLAN_FILE = "plan.json"
PLAN_VERSION = 1            # bump when the unit files' layout changes, so old plans are not reused
BATCH_ROWS = 65_536         # rows per record batch while streaming an input file (bounds memory)
CSV_BLOCK = 1 << 22         # bytes per CSV block
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


def _columns(cfg: InputConfig) -> _Columns:
    presets = url_presets()
    if cfg.preset not in presets:
        raise InputError(f"unknown input preset {cfg.preset!r}; known: {', '.join(presets)}")
    p = presets[cfg.preset]
    from_preset = tuple(cfg.keep_columns) == ("preset",)
    keep = tuple(p.get("keep", ())) if from_preset else tuple(cfg.keep_columns)
    return _Columns(url=cfg.url_col or p["url"], caption=cfg.caption_col or p["caption"],
                    caption_required=bool(cfg.caption_col) or cfg.preset != "default",
                    phash=p.get("phash"), keep=keep, keep_required=not from_preset, preset=cfg.preset)


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


def _find(name: str, present: list[str]) -> str | None:
    """The column called `name`, or its only case-insensitive match (LAION dumps differ in case)."""
    if name in present:
        return name
    alike = [c for c in present if c.lower() == name.lower()]
    return alike[0] if len(alike) == 1 else None


def _source_names(path: str, present: list[str], cols: _Columns) -> dict[str, str | None]:
    """{output column: source column or None}; raises InputError naming the missing columns and those present."""
    wanted = [(COL.URL, cols.url, True, "url"), (COL.CAPTION, cols.caption, cols.caption_required, "caption")]
    if cols.phash:
        wanted.append((COL.INPUT_PHASH, cols.phash, False, "phash"))
    wanted += [(EXTRA_PREFIX + k, k, cols.keep_required, "keep") for k in cols.keep]
    names, missing = {}, []
    for out, src, required, role in wanted:
        names[out] = _find(src, present)
        if names[out] is None and required:
            missing.append(f"{src!r} ({role} column)")
    if missing:
        raise InputError(f"{path}: missing column {', '.join(missing)} for preset {cols.preset!r}; "
                         f"columns present: {', '.join(present) or '(none)'}. "
                         "Choose another preset or set --url-col/--caption-col/--keep-columns.")
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


def _read_parquet(fs, path, gz, cols) -> Iterator[pa.Table]:
    if gz:  # parquet needs random access: a gzipped parquet file is decompressed in memory
        with fs.open_input_stream(path, compression="gzip") as f:
            src = pa.BufferReader(f.read())
    else:
        src = fs.open_input_file(path)
    with src:
        pf = pq.ParquetFile(src)
        names = _source_names(path, pf.schema_arrow.names, cols)
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
    tsv = delimiter == "\t"
    # TSV: one line is one row, always. A quote parser would let one caption that starts with '"'
    # swallow the rest of the file; fully quoted fields are unquoted afterwards instead.
    parse = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=not tsv, quote_char=False if tsv else '"')
    read = pacsv.ReadOptions(block_size=CSV_BLOCK)
    comp = "gzip" if gz else None
    with fs.open_input_stream(path, compression=comp) as f:  # first open only reads the header names
        present = pacsv.open_csv(f, read_options=read, parse_options=parse).schema.names
    names = _source_names(path, present, cols)
    wanted = sorted({s for s in names.values() if s})
    # every column as text: inferring types from the first block fails on a later block that differs
    conv = pacsv.ConvertOptions(include_columns=wanted, column_types={c: pa.string() for c in wanted})
    with fs.open_input_stream(path, compression=comp) as f:
        for batch in pacsv.open_csv(f, read_options=read, parse_options=parse, convert_options=conv):
            if tsv:
                batch = pa.RecordBatch.from_arrays([_unquote(c) for c in batch.columns], schema=batch.schema)
            yield _select(batch, names, text=True)


def _lines(fs, path, gz) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped line) of the non-blank lines of a UTF-8 text file."""
    with fs.open_input_stream(path, compression="gzip" if gz else None) as raw:
        for i, line in enumerate(io.TextIOWrapper(raw, encoding="utf-8-sig"), 1):
            line = line.strip()
            if line:
                yield i, line


def _read_jsonl(fs, path, gz, cols) -> Iterator[pa.Table]:
    names, rows = None, []
    for lineno, line in _lines(fs, path, gz):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{lineno}: not JSON lines ({e.msg}); .json files are read as one "
                             "JSON object per line") from None
        if not isinstance(obj, dict):
            raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        if names is None:
            names = _source_names(path, list(obj), cols)  # the first object's keys are the columns
        rows.append([_text(obj.get(src)) if src else None for src in names.values()])  # only wanted values
        if len(rows) == BATCH_ROWS:
            yield _json_table(rows, names)
            rows = []
    if rows:
        yield _json_table(rows, names)


def _json_table(rows: list[list], names: dict[str, str | None]) -> pa.Table:
    return pa.table({out: pa.array([r[i] for r in rows],
                                   pa.string() if src or out in (COL.CAPTION, COL.INPUT_PHASH) else pa.null())
                     for i, (out, src) in enumerate(names.items())})


def _read_txt(fs, path, gz, cols) -> Iterator[pa.Table]:
    if cols.keep and cols.keep_required:
        raise InputError(f"{path}: a .txt URL list has no columns to keep ({', '.join(cols.keep)})")
    extra = {EXTRA_PREFIX + k: pa.null() for k in cols.keep}
    urls = []
    for _, line in _lines(fs, path, gz):
        urls.append(line)
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
    url, caption, (input_phash), src_<keep>. Raises InputError naming the file when it is unreadable or
    lacks a column."""
    fmt, gz = _format_of(path, cfg.file_format)
    if fmt not in _READERS:
        raise InputError(f"{path}: unsupported format {fmt!r}")
    fs, inner = fsutil.get_fs(path)
    try:
        yield from _READERS[fmt](fs, inner, gz, _columns(cfg))
    except InputError:
        raise
    except _READ_ERRORS as e:
        raise InputError(f"{path}: cannot read as {fmt}{' (gzip)' if gz else ''}: {e}") from e


# ---------------------------------------------------------------- uids, planning, units

def make_uid(url, caption, where: str | None = None) -> str:
    """Stable row id: 32 hex chars of blake2b-128 over url + NUL + caption (None counts as ""), and + NUL +
    `where` (the row's file and index) for a repeat of an earlier row's URL: identical input rows must not
    share a uid, and the first occurrence keeps the id that depends on content alone."""
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
            "keep_columns": list(cfg.keep_columns), "files": [_file_stat(f) for f in files]}


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

    def add_file(self, path: str) -> int:
        """Plans every row of one file (units never span files); returns its row count."""
        buf, buffered, start = [], 0, 0
        for batch in read_file(path, self.cfg):
            while batch.num_rows:
                take = min(self.cfg.unit_size - buffered, batch.num_rows)
                buf.append(batch.slice(0, take))
                buffered, batch = buffered + take, batch.slice(take)
                if buffered == self.cfg.unit_size:
                    self._emit(path, start, buf)
                    start, buf, buffered = start + buffered, [], 0
        if buffered:
            self._emit(path, start, buf)
        return start + buffered

    def _emit(self, path: str, start: int, parts: list[pa.Table]) -> None:
        table = pa.concat_tables(parts)
        n = table.num_rows
        phash = table[COL.INPUT_PHASH].to_pylist() if COL.INPUT_PHASH in table.column_names else [None] * n
        head = pa.table({COL.SOURCE_FILE: pa.array([path] * n, pa.string()),
                         COL.ROW_INDEX: pa.array(range(start, start + n), pa.int64()),
                         COL.DUP_URL: pa.array(_seen_before(table[COL.URL].to_pylist(), self.seen_urls)),
                         COL.DUP_PHASH: pa.array(_seen_before(phash, self.seen_phash))})
        for name in table.column_names:
            head = head.append_column(name, table[name])
        spec = UnitSpec(len(self.units), path, start, n)
        fsutil.atomic_write(self.fs, fsutil.join(self.dir, unit_name(spec.unit_id) + ".parquet"),
                            parquet_bytes(head))
        self.units.append(spec)


def _plan_diff(old: dict, new: dict) -> str:
    """A short description of what differs between two plan keys."""
    diff = [f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in new if k != "files" and old.get(k) != new[k]]
    before = {f["path"]: f for f in old.get("files", [])}
    after = {f["path"]: f for f in new["files"]}
    diff += [f"new file {p}" for p in after if p not in before]
    diff += [f"file gone {p}" for p in before if p not in after]
    diff += [f"file modified {p}" for p in after if p in before and before[p] != after[p]]
    return "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")


def plan_units(cfg: InputConfig, output: str) -> list[UnitSpec]:
    """Streams every input file once, cuts it into units of cfg.unit_size rows and writes
    <output>/_input/NNNNNN.parquet per unit and <output>/_input/plan.json (written last).

    A saved plan whose inputs (path, size, mtime) and settings match is reused without reading the inputs;
    a saved plan that does not match raises InputError (its units may already be processed).
    """
    key = _plan_key(cfg, resolve_inputs(cfg.paths, cfg.file_format))
    old = load_plan(output)
    if old and old.get("key") == key:
        return [UnitSpec(**u) for u in old["units"]]
    if old:  # units already processed under the old plan would no longer match their unit ids
        raise InputError(f"{output}: the input changed since this output was planned "
                         f"({_plan_diff(old['key'], key)}); use a new output or --overwrite")
    planner = _Planner(cfg, output)
    files = [{**f, "rows": planner.add_file(f["path"])} for f in key["files"]]
    plan = {"key": key, "files": files, "units": [asdict(u) for u in planner.units]}
    fsutil.atomic_write(planner.fs, fsutil.join(planner.dir, PLAN_FILE), json.dumps(plan, indent=1).encode())
    return planner.units


def read_unit(output: str, unit_id: int) -> pa.Table:
    """One unit's rows as a phase-A table: uid, unit_id, source_file, row_index, url, caption, status
    ('ok' or 'invalid_url:<detail>'), reason, error_message, dup_url, dup_phash, (input_phash), src_*."""
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
    for name in src.column_names:
        if name not in table.column_names:
            table = table.append_column(name, src[name])
    return table


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
