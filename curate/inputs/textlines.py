"""Reads line-based inputs in bounded memory: JSON lines (columns from any object) and .txt URL lists."""
from __future__ import annotations

import json
from typing import Iterator

import pyarrow as pa

from curate import capped
from curate.inputs import InputError
from curate.inputs.columns import (BATCH_BYTES, BATCH_ROWS, URL_MAX_BYTES, Columns, find_column,
                                   missing_error, text_value, wanted_columns)
from curate.schema import COL, EXTRA_PREFIX, Status, reason

NOT_TEXT = reason(Status.CAPTION_RULE, "not_text")


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

    def __init__(self, path: str, cols: Columns):
        self.path, self.cols, self.wanted = path, cols, wanted_columns(cols)
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
            got = tuple(find_column(src, obj) for _, src, _, _ in self.wanted)
            if len(self.cache) < 4096:
                self.cache[shape] = got
            self.present.update((k, None) for k in shape[:1000] if len(self.present) < 1000)
            self.found = [f or k is not None for f, k in zip(self.found, got)]
        return got

    def check(self) -> None:
        missing = [f"{src!r} ({role} column)" for (_, src, req, role), f in zip(self.wanted, self.found)
                   if req and not f]
        if missing:
            raise missing_error(self.path, missing, list(self.present), self.cols)


_json_decode = json.JSONDecoder().decode  # skips json.loads' per-call type and encoding checks


def read_jsonl(fs, path, gz, cols) -> Iterator[pa.Table]:
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
        return _string_array([text_value(v) for v in values])
    except UnicodeEncodeError:
        return pa.array([v if v is None else v.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
                         for v in values], pa.string())


def read_txt(fs, path, gz, cols) -> Iterator[pa.Table]:
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
