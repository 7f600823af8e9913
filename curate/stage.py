"""The stage protocol: a stage maps an Arrow table to an Arrow table, marks rows, counts what it did into StageStats.

A stage is a small frozen dataclass whose fields are its own sub-config (never the whole RunConfig), with a
class attribute `name` and a `__call__(table, stats=None) -> table`. Heavy resources (a model, a fetcher's
connection pool) load once per worker process, on first use, never per call. A stage never adds or loses a
row: it adds columns and marks rows with `set_status` (the one row-marking helper, re-exported here), which
gives a row its first reason only. What it did goes into the StageStats passed to it (None: not counted),
so `stage(table)` alone also fits Ray's `map_batches(batch_format="pyarrow")`.

One form for names: a stage class is `<Noun>Stage` and its `name` is the snake_case noun ("text_rules",
"prefetch", "language", "download", "hashing", "scoring"); `phase` (default: `name`) is the entry of the
unit's time breakdown its seconds go to (text_rules, prefetch and language share "prefilter"). The plain
function a stage wraps keeps its own name (caption_rules, apply_language, add_hashes, download_stage).
Phase A's recipe is `curate.unit.phase_a_stages`.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar, Iterable, Protocol, Sequence

import pyarrow as pa

from curate.schema import Status, set_status
from curate.timing import Phases

__all__ = ["Stage", "StageStats", "CappedCounter", "UnitStats", "run_stages", "set_status", "TALLY_KEYS_MAX"]

TALLY_KEYS_MAX = 1000  # distinct strings one tally keeps: free-text errors cannot grow a unit's stats file


class Stage(Protocol):
    """What phase A's recipe and Ray's map_batches call: table in, table out (same rows, same order)."""
    name: ClassVar[str]

    def __call__(self, table: pa.Table, stats: "StageStats | None" = None) -> pa.Table: ...


class CappedCounter:
    """Counts strings, keeping at most `cap` distinct ones: a new string past the cap first forgets all but
    the cap/2 most frequent (img2dataset's CappedCounter), so memory and output stay bounded."""

    def __init__(self, cap: int = TALLY_KEYS_MAX):
        if cap < 2:
            raise ValueError(f"CappedCounter: cap must be at least 2, got {cap}")
        self.cap, self.counts = cap, Counter()

    def add(self, key: str, n: int = 1) -> None:
        if key not in self.counts and len(self.counts) >= self.cap:
            self.counts = Counter(dict(self.counts.most_common(self.cap // 2)))
        self.counts[key] += n

    def update(self, keys: Iterable[str] | dict[str, int]) -> None:
        """Adds each key once (an iterable) or by its count (a mapping)."""
        for k, n in (keys.items() if isinstance(keys, dict) else ((k, 1) for k in keys)):
            self.add(k, n)

    def as_dict(self) -> dict[str, int]:
        return dict(self.counts)


class StageStats:
    """The one accumulator the stages of a unit count into, flattened by as_dict() into the unit's stats:
    counters (summed), tallies (string -> count, capped) and recorded values (last one wins)."""

    def __init__(self, cap: int = TALLY_KEYS_MAX):
        self.cap = cap
        self.counts: Counter = Counter()
        self.tallies: dict[str, CappedCounter] = {}
        self.values: dict[str, object] = {}

    def count(self, name: str, n: int = 1) -> None:
        """Adds n to counter `name` (created at 0, so a stage that did nothing still reports 0)."""
        self._check(name, self.counts)
        self.counts[name] += n

    def tally(self, name: str, keys: Iterable[str] | dict[str, int] = ()) -> None:
        """Counts strings (statuses, reasons, error texts) under `name`; created empty when keys is."""
        self._check(name, self.tallies)
        self.tallies.setdefault(name, CappedCounter(self.cap)).update(keys)

    def record(self, name: str, value) -> None:
        """Records a measured value (seconds, a rate, a nested summary); a later record replaces it."""
        self._check(name, self.values)
        self.values[name] = value

    def merge(self, other: "StageStats") -> "StageStats":
        """Adds another accumulator's counts and tallies and takes its values; returns self."""
        for k, n in other.counts.items():
            self.count(k, n)
        for k, t in other.tallies.items():
            self.tally(k, t.as_dict())
        for k, v in other.values.items():
            self.record(k, v)
        return self

    def as_dict(self) -> dict:
        return {**self.values, **dict(self.counts), **{k: t.as_dict() for k, t in self.tallies.items()}}

    def _check(self, name: str, kind: dict) -> None:
        for other in (self.counts, self.tallies, self.values):
            if other is not kind and name in other:
                raise ValueError(f"StageStats: {name!r} is already used as another kind of statistic")


def run_stages(table: pa.Table, stages: Sequence[Stage], stats: StageStats | None = None,
               phases: Phases | None = None) -> pa.Table:
    """Runs `stages` in order, each timed under its phase; raises when one changes the row count (a bug)."""
    phases = phases or Phases()
    for stage in stages:
        n = table.num_rows
        with phases(getattr(stage, "phase", stage.name)):
            table = stage(table, stats)
        if table.num_rows != n:
            raise RuntimeError(f"stage {stage.name!r} changed the row count: {n} in, {table.num_rows} out")
    return table


FAILED_DOWNLOAD = (Status.DOWNLOAD_ERROR, Status.DECODE_ERROR)  # the "failed" count of the driver's progress


@dataclass
class UnitStats:
    """One unit's phase-A record: stage/<unit>_stats.json (as_json()) and what process_unit returns.

    stages: what the stages counted (StageStats.as_dict(): download_*, clip_*, ...); extra: what the driver
    asked to record (the worker's node id); timings: the unit's time breakdown (None: not measured, as for a
    retry, and then absent from the file). Item access reads the file's keys: stats["clip_scored"]."""
    unit_id: int
    rows: int = 0
    images: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)
    unit_seconds: float = 0.0
    stages: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    timings: dict | None = None
    retried_rows: int | None = None

    def as_json(self) -> dict:
        """The flat mapping written to the unit's stats file (keys unchanged since stats were plain dicts)."""
        out = {**self.stages, **self.extra}
        if self.timings is not None:
            out["timings"] = self.timings
        if self.retried_rows is not None:
            out["retried_rows"] = self.retried_rows
        return {**out, "unit_id": self.unit_id, "rows": self.rows, "images": self.images,
                "status_counts": self.status_counts, "unit_seconds": self.unit_seconds}

    def __getitem__(self, key: str):
        return self.as_json()[key]

    @property
    def failed(self) -> int:
        """Rows whose download or decode failed."""
        return sum(self.status_counts.get(s, 0) for s in FAILED_DOWNLOAD)

    @property
    def download_timings(self) -> dict:
        """Per-row download work summed over the unit (see curate.download): {} when nothing was fetched."""
        return self.stages.get("download_timings", {})
