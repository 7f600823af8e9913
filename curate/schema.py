"""Loads the table definitions in schemas/ into pyarrow schemas, column-name constants and the status enum."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
if not SCHEMA_DIR.is_dir():  # installed as a wheel: schemas/ is shipped inside the package
    SCHEMA_DIR = Path(__file__).resolve().parent / "_schemas"

ERROR_MESSAGE_MAX = 200  # chars: free text is capped so one bad host cannot bloat the ledger
EXTRA_PREFIX = "src_"  # input columns carried with keep_columns are renamed src_<name>
IMAGE = "image"  # transient column (encoded image bytes) between phase-A stages; never in the ledger
# Transient booleans set by the planner over the whole run (first occurrence False); consumed in phase A.
DUP_URL = "dup_url"          # the same URL appeared earlier in the run
DUP_PHASH = "dup_phash"      # the same precomputed input image hash appeared earlier (COYO image_phash)
INPUT_PHASH = "input_phash"  # precomputed hash column of the input, as a string, when the preset has one
TRANSIENT = (IMAGE, DUP_URL, DUP_PHASH, INPUT_PHASH)

_TYPES = {
    "string": pa.string(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(),
    "uint64": pa.uint64(), "float32": pa.float32(), "float64": pa.float64(), "bool": pa.bool_(),
    "binary": pa.binary(), "list<string>": pa.list_(pa.string()),
}


class SchemaError(ValueError):
    """A table does not match its definition in schemas/."""


def _load(name: str) -> dict:
    return json.loads((SCHEMA_DIR / f"{name}.json").read_text())


@lru_cache(maxsize=None)
def table_schema(name: str) -> pa.Schema:
    """The pyarrow schema of table `name` (ledger, samples)."""
    spec = _load(name)
    return pa.schema([pa.field(c["name"], _TYPES[c["type"]], nullable=c.get("nullable", True))
                      for c in spec["columns"]])


def ledger_schema() -> pa.Schema:
    return table_schema("ledger")


def samples_schema() -> pa.Schema:
    return table_schema("samples")


@lru_cache(maxsize=None)
def _reasons() -> dict:
    return _load("reasons")


STATUSES: tuple[str, ...] = tuple(_reasons()["statuses"])
RETRYABLE_DETAILS: frozenset[str] = frozenset(_reasons()["retryable_details"])
Status = SimpleNamespace(**{s.upper(): s for s in STATUSES})  # Status.OK == "ok", Status.LANG == "lang", ...

# Column names: COL.UID == "uid" etc. Every module takes names from here, never literals.
COL = SimpleNamespace(**{f.name.upper(): f.name for t in ("samples", "ledger") for f in table_schema(t)},
                      IMAGE=IMAGE, DUP_URL=DUP_URL, DUP_PHASH=DUP_PHASH, INPUT_PHASH=INPUT_PHASH)


def url_presets() -> dict:
    """The url-list column presets (laion, coyo, datacomp, default)."""
    return _load("url_presets")["presets"]


def output_layout() -> dict:
    """The run output's file and folder names (schemas/layout.json; curate/layout.py builds the paths)."""
    return _load("layout")


def reason(status: str, detail: str | None = None) -> str:
    """Builds a reason string `status[:detail]`; raises on a status outside the closed set."""
    if status not in STATUSES:
        raise SchemaError(f"unknown status {status!r}; known: {', '.join(STATUSES)}")
    return status if not detail else f"{status}:{detail}"


def is_retryable(reason_str: str | None) -> bool:
    """True for download failures worth refetching (timeouts, connection errors, 429, 5xx)."""
    if not reason_str or not reason_str.startswith(Status.DOWNLOAD_ERROR + ":"):
        return False
    detail = reason_str.split(":", 1)[1]
    return detail in RETRYABLE_DETAILS or (detail.startswith("http_5"))


def cap_message(msg: object) -> str | None:
    """Caps a free-text error message at ERROR_MESSAGE_MAX chars."""
    if msg is None:
        return None
    s = str(msg)
    return s if len(s) <= ERROR_MESSAGE_MAX else s[: ERROR_MESSAGE_MAX - 3] + "..."


def ok_mask(table: pa.Table) -> pa.ChunkedArray:
    """Boolean mask of rows still 'ok' (not yet dropped)."""
    return pc.equal(table[COL.STATUS], Status.OK)


def ok_rows(table: pa.Table) -> np.ndarray:
    """ok_mask as a numpy bool array (what index arithmetic wants)."""
    return ok_mask(table).to_numpy(zero_copy_only=False).astype(bool)


def _mask_array(mask, n: int) -> np.ndarray:
    """A boolean numpy mask (nulls false) from a list, numpy array or (chunked) Arrow array."""
    if isinstance(mask, (pa.Array, pa.ChunkedArray)):
        return pc.fill_null(mask, False).to_numpy(zero_copy_only=False).astype(bool)
    out = np.asarray([bool(v) if v is not None else False for v in mask] if isinstance(mask, (list, tuple))
                     else mask, dtype=bool)
    if out.shape != (n,):
        raise ValueError(f"set_status: mask has shape {out.shape}, table has {n} rows")
    return out


def _per_row(value, m: np.ndarray, convert) -> pa.Array:
    """A string array that holds convert(value[i]) (or convert(value)) where m, null elsewhere."""
    if not isinstance(value, (list, tuple)):
        one = convert(value)
        return pa.array(np.where(m, one, None) if one is not None else [None] * len(m), pa.string())
    out = np.full(len(m), None, dtype=object)
    for i in np.flatnonzero(m):
        out[i] = convert(value[i])
    return pa.array(out, pa.string())


def _reason_array(status: str, detail, m: np.ndarray) -> pa.Array:
    """reason(status, detail) where m, null elsewhere; detail an Arrow string array is joined vectorised."""
    if not isinstance(detail, (pa.Array, pa.ChunkedArray)):
        return _per_row(detail, m, lambda d: None if status == Status.KEPT else reason(status, d))
    if len(detail) != len(m):
        raise ValueError(f"set_status: detail has {len(detail)} values, table has {len(m)} rows")
    reason(status)  # a status outside the closed set raises
    has = pc.fill_null(pc.not_equal(detail, ""), False)  # reason() treats an empty detail as none
    full = pc.if_else(has, pc.binary_join_element_wise(status, detail, ":"), status)
    return pc.if_else(pa.array(m), full if status != Status.KEPT else pa.nulls(len(m), pa.string()), None)


def set_status(table: pa.Table, mask, status: str, detail=None, message=None) -> pa.Table:
    """Sets status/reason (and error_message) where mask is true and the row is still ok: the one
    row-marking helper of every stage.

    mask: a bool list, numpy array or (chunked) Arrow array (nulls are false). detail / message may be a
    scalar or a per-row list (None entries allowed); detail may also be an Arrow string array (vectorised).
    Rows already dropped keep their first reason: a row is dropped once. Kept rows carry no reason.
    """
    n = table.num_rows
    m = _mask_array(mask, n) & ok_rows(table)
    old = {c: table[c] if c in table.column_names else pa.nulls(n, pa.string())
           for c in (COL.REASON, COL.ERROR_MESSAGE)}
    if m.any():
        where = pa.array(m)
        table = set_column(table, COL.STATUS, pc.if_else(where, pa.scalar(status), table[COL.STATUS]))
        old[COL.REASON] = pc.if_else(where, _reason_array(status, detail, m), old[COL.REASON])
        if message is not None:
            msg = _per_row(message, m, cap_message)
            old[COL.ERROR_MESSAGE] = pc.if_else(pc.is_valid(msg), msg, old[COL.ERROR_MESSAGE])
    table = set_column(table, COL.REASON, old[COL.REASON])
    return set_column(table, COL.ERROR_MESSAGE, old[COL.ERROR_MESSAGE])


def set_column(table: pa.Table, name: str, values) -> pa.Table:
    """Adds or replaces column `name`, typed as the ledger says when it is a ledger column."""
    ledger = ledger_schema()
    if not isinstance(values, (pa.Array, pa.ChunkedArray)):
        typ = ledger.field(name).type if name in ledger.names else None
        values = pa.array(values, type=typ)
    elif name in ledger.names and values.type != ledger.field(name).type:
        values = values.cast(ledger.field(name).type)
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, values)
    return table.append_column(name, values)


def conform(table: pa.Table, name: str = "ledger", extra_prefix: str = EXTRA_PREFIX) -> pa.Table:
    """Returns `table` with exactly the columns of schema `name` in order (missing ones null),
    plus any `src_*` extra columns at the end; casts types. Raises SchemaError on a bad cast."""
    schema = table_schema(name)
    cols, fields = [], []
    for f in schema:
        if f.name in table.column_names:
            col = table[f.name]
            if col.type != f.type:
                try:
                    col = col.cast(f.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                    raise SchemaError(f"{name}.{f.name}: cannot cast {col.type} to {f.type}: {e}") from e
        else:
            col = pa.nulls(table.num_rows, f.type)
        cols.append(col)
        fields.append(f)
    for c in table.column_names:
        if c.startswith(extra_prefix) and c not in schema.names:
            cols.append(table[c])
            fields.append(pa.field(c, table[c].type))
    out = pa.Table.from_arrays(cols, schema=pa.schema(fields))
    validate(out, name)
    return out


def validate(table: pa.Table, name: str = "ledger") -> None:
    """Raises SchemaError naming the column when `table` does not match schema `name`."""
    schema = table_schema(name)
    for f in schema:
        if f.name not in table.column_names:
            raise SchemaError(f"{name}: missing column {f.name!r} (have: {', '.join(table.column_names)})")
        got = table.schema.field(f.name).type
        if got != f.type:
            raise SchemaError(f"{name}.{f.name}: expected {f.type}, got {got}")
        if not f.nullable and table[f.name].null_count:
            raise SchemaError(f"{name}.{f.name}: {table[f.name].null_count} null values in a non-null column")
    if name == "ledger":
        bad = set(table[COL.STATUS].unique().to_pylist()) - set(STATUSES)
        if bad:
            raise SchemaError(f"ledger.status: unknown values {sorted(bad)}; known: {', '.join(STATUSES)}")
