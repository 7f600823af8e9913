"""What every input reader shares: the run's source columns (preset, overrides), their lookup in a file,
their conversion to string columns with output names, and the batch bounds."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa

from curate.config import InputConfig
from curate.inputs import InputError
from curate.schema import COL, EXTRA_PREFIX, url_presets
from curate.urls import MAX_URL_LENGTH

BATCH_ROWS = 65_536         # rows per record batch while streaming an input file (bounds memory)
BATCH_BYTES = 64 << 20      # JSON/text line bytes per batch: rows of long captions make smaller batches
# A URL cut here still has more than MAX_URL_LENGTH characters (at most 4 bytes each), so a cut URL is
# always invalid_url:too_long and never fetched as a different, shorter URL.
URL_MAX_BYTES = 4 * (MAX_URL_LENGTH + 2)


@dataclass(frozen=True)
class Columns:
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


def columns_of(cfg: InputConfig) -> Columns:
    """The source columns a run reads; raises InputError for an unknown preset."""
    presets = url_presets()
    if cfg.preset not in presets:
        raise InputError(f"unknown input preset {cfg.preset!r}; known: {', '.join(presets)}")
    p = presets[cfg.preset]
    from_preset = tuple(cfg.keep_columns) == ("preset",)
    keep = tuple(p.get("keep", ())) if from_preset else tuple(cfg.keep_columns)
    return Columns(url=cfg.url_col or p["url"], caption=cfg.caption_col or p["caption"],
                   caption_required=bool(cfg.caption_col) or cfg.preset != "default",
                   phash=p.get("phash"), keep=keep, keep_required=not from_preset, preset=cfg.preset,
                   max_caption=cfg.max_caption_bytes)


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
        return pa.array([text_value(v) for v in arr.to_pylist()], pa.string())


def text_value(v) -> str | None:
    """A Python value from a text format as a string column value (None stays null)."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return json.dumps(v, ensure_ascii=False, default=str)


def is_text_type(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return any(f(t) for f in (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary,
                              pa.types.is_large_binary, pa.types.is_null)) or str(t) in ("string_view", "binary_view")


def find_column(name: str, present) -> str | None:
    """The column called `name`, or its only case-insensitive match (LAION dumps differ in case)."""
    if name in present:
        return name
    alike = [c for c in present if c.lower() == name.lower()]
    return alike[0] if len(alike) == 1 else None


def wanted_columns(cols: Columns) -> list[tuple[str, str, bool, str]]:
    """(output column, source column, required, role) of every column a run reads."""
    wanted = [(COL.URL, cols.url, True, "url"), (COL.CAPTION, cols.caption, cols.caption_required, "caption")]
    if cols.phash:
        wanted.append((COL.INPUT_PHASH, cols.phash, False, "phash"))
    return wanted + [(EXTRA_PREFIX + k, k, cols.keep_required, "keep") for k in cols.keep]


def missing_error(path: str, missing: list[str], present: list[str], cols: Columns) -> InputError:
    shown = ", ".join(present[:50]) + (f", ... ({len(present)} in all)" if len(present) > 50 else "")
    return InputError(f"{path}: missing column {', '.join(missing)} for preset {cols.preset!r}; "
                      f"columns present: {shown or '(none)'}. "
                      "Choose another preset or set --url-col/--caption-col/--keep-columns.")


def source_names(path: str, present: list[str], cols: Columns) -> dict[str, str | None]:
    """{output column: source column or None}; raises InputError naming the missing columns and those present."""
    names, missing = {}, []
    for out, src, required, role in wanted_columns(cols):
        names[out] = find_column(src, present)
        if names[out] is None and required:
            missing.append(f"{src!r} ({role} column)")
    if missing:
        raise missing_error(path, missing, present, cols)
    return names


def select_columns(batch, names: dict[str, str | None], text: bool) -> pa.Table:
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
