"""Plans a run's work units: cuts the input rows into units, flags run-wide duplicates (dup_url, dup_phash)
and writes <output>/_input/ (one parquet per unit) and plan.json."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from curate import fsutil
from curate.config import InputConfig
from curate.inputs import InputError
from curate.inputs.files import input_root, relative_name, resolve_inputs
from curate.inputs.parse import read_file
from curate.layout import RunLayout
from curate.schema import COL
from curate.stage_io import parquet_bytes

PLAN_VERSION = 1            # bump when the unit files' layout changes, so old plans are not reused
# rows: a small input is cut into units of at least this many rows (unit_rows); below it a unit's fixed
# costs (a Ray task, its stage files, a few thread pools) outweigh what one more unit in flight gains
MIN_UNIT_ROWS = 500
UNITS_PER_CPU = 4           # a small input still gives every CPU this many units: no idle CPU at the tail, and a
                            # worker holds a quarter of its share of encoded images until its stage tar is written
                            # (20,000 rows on 2 CPUs, every stage on: 2 per CPU peaked at 3,779 MB, 4 at 3,518 MB
                            # at the same images/s; tests/bench/results/pipeline.json)


@dataclass(frozen=True)
class UnitSpec:
    """One work unit: rows [start_row, start_row + num_rows) of source_file."""
    unit_id: int
    source_file: str
    start_row: int
    num_rows: int


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


def run_layout(output: str) -> tuple[pafs.FileSystem, RunLayout]:
    """The filesystem of a run output and its layout, with paths inside that filesystem: the planned input is
    layout.input_dir (one file per unit, layout.input_unit(id)) and layout.plan."""
    fs, out = fsutil.get_fs(output)
    return fs, RunLayout(out)


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
    fs, layout = run_layout(output)
    path = layout.plan
    return json.loads(fsutil.read_bytes(fs, path)) if fsutil.exists(fs, path) else None


class _Planner:
    """Cuts streamed input rows into units, marks run-global duplicates and writes the unit input files."""

    def __init__(self, cfg: InputConfig, output: str):
        self.cfg, self.units = cfg, []
        self.fs, self.layout = run_layout(output)
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
        return self.layout.input_unit(unit_id)

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
    fsutil.atomic_write(planner.fs, planner.layout.plan, json.dumps(plan, indent=1).encode())
    return planner.units
