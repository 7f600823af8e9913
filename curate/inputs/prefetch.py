"""The prefetch stage: the planner's run-wide flags become drop statuses before any fetch (dup_url ->
duplicate_url, dup_phash -> duplicate_prefetch:input_phash)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.config import DedupConfig, TextConfig
from curate.schema import COL, Status, set_status
from curate.stage import StageStats

# flag column set by the planner (curate.inputs.plan) -> (status, detail) a flagged row still ok gets
FLAGS = {COL.DUP_URL: (Status.DUPLICATE_URL, None), COL.DUP_PHASH: (Status.DUPLICATE_PREFETCH, "input_phash")}


def first_occurrence_duplicates(urls: pa.ChunkedArray) -> np.ndarray:
    """True where the URL already appeared earlier in `urls` (the first one is kept); null URLs are never dups."""
    seen: set[str] = set()
    dup = np.zeros(len(urls), dtype=bool)
    for i, u in enumerate(urls.to_pylist()):
        if u is None:
            continue
        if u in seen:
            dup[i] = True
        else:
            seen.add(u)
    return dup


def _flagged(table: pa.Table, flag: str) -> pa.Array | pa.ChunkedArray | None:
    """The planner's `flag` per row. A table that was not planned (no dup_url column) has its URLs
    deduplicated within itself, first kept; without a dup_phash column (no precomputed hash): None."""
    if flag in table.column_names:
        return pc.fill_null(table[flag], False)
    if flag == COL.DUP_URL:
        return pa.array(first_occurrence_duplicates(table[COL.URL]), pa.bool_())
    return None


def mark_duplicates(table: pa.Table, flags: tuple[str, ...]) -> pa.Table:
    """Rows still ok whose flag is set get its status (FLAGS); rows already dropped keep their first reason."""
    for flag in flags:
        status, detail = FLAGS[flag]
        flagged = _flagged(table, flag)
        if flagged is not None:
            table = set_status(table, flagged, status, detail)
    return table


@dataclass(frozen=True)
class PrefetchStage:
    """Drops the run-wide duplicates the planner flagged, before any fetch: `flags` (keys of FLAGS) are the
    duplicates this instance marks. Phase A runs it twice because the first reason wins and the order of
    reasons is fixed (caption_rule, then duplicate_url, then lang, then duplicate_prefetch): urls() after
    the text rules, hashes() after the language stage."""
    flags: tuple[str, ...]
    name: ClassVar[str] = "prefetch"
    phase: ClassVar[str] = "prefilter"

    @classmethod
    def urls(cls, text: TextConfig) -> "PrefetchStage":
        """duplicate_url for a URL seen earlier in the run (text.dedup_urls)."""
        return cls((COL.DUP_URL,) if text.dedup_urls else ())

    @classmethod
    def hashes(cls, dedup: DedupConfig) -> "PrefetchStage":
        """duplicate_prefetch:input_phash for a precomputed image hash seen earlier (dedup.prefetch)."""
        return cls((COL.DUP_PHASH,) if dedup.enabled and dedup.prefetch else ())

    def __call__(self, table: pa.Table, stats: StageStats | None = None) -> pa.Table:
        return mark_duplicates(table, self.flags)
