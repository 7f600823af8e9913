"""Report statistics: the drop funnel from manifest counts (also as text) and one bounded-memory ledger scan."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from curate import fsutil, stage_io
from curate.layout import RunLayout
from curate.schema import COL, STATUSES, Status, ledger_schema

# Drop statuses in pipeline order (reasons.json lists them so): the funnel reads top to bottom.
FUNNEL_ORDER = tuple(s for s in STATUSES if s not in (Status.OK, Status.KEPT))
DUP_OF = "duplicate_of:"
_DUP_RE = r"duplicate_of:(?P<rep>[0-9A-Za-z_-]+)"
MAX_DETAILS = 8          # reason details listed per status; the rest are summed as "other"
MAX_MEMBERS = 5          # members kept per duplicate cluster (shown beside the representative)
PLOT_BARS = 40           # histogram bars after rebinning the fine accumulator bins
_SCAN_COLUMNS = (COL.UID, COL.UNIT_ID, COL.STATUS, COL.REASON, COL.LANG, COL.CLIP_SCORE, COL.CAPTION,
                 COL.CAPTION_CLEAN, COL.ORIG_WIDTH, COL.ORIG_HEIGHT, COL.CONCEPTS)


# ---------------------------------------------------------------- funnel (from the manifest) ---

def reason_status(reason: str) -> str:
    """The status a reason string belongs to ('duplicate_of:<uid>' alone counts as duplicate)."""
    head = reason.split(":", 1)[0]
    if head in STATUSES:
        return head
    return Status.DUPLICATE if reason.startswith(DUP_OF) else head


def reason_group(reason: str) -> str:
    """The reason with per-row details collapsed: duplicate[:]duplicate_of:<uid> -> duplicate:duplicate_of."""
    if DUP_OF in reason:
        return Status.DUPLICATE + ":" + DUP_OF.rstrip(":")
    return reason


def funnel(manifest: dict) -> list[dict]:
    """The drop steps of a run in pipeline order: [{status, dropped, share, remaining, details}].

    remaining = rows left after this step; share = dropped / total_rows; details = [(reason, rows)]
    with duplicate_of:<uid> collapsed. Statuses with no rows are left out; unknown ones come last.
    """
    total = int(manifest.get("total_rows", 0))
    counts = {k: int(v) for k, v in manifest.get("counts", {}).items()}
    details: dict[str, Counter] = {}
    for r, n in manifest.get("reasons", {}).items():
        details.setdefault(reason_status(r), Counter())[reason_group(r)] += int(n)
    order = list(FUNNEL_ORDER) + sorted(set(counts) - set(FUNNEL_ORDER) - {Status.KEPT})
    steps, remaining = [], total
    for status in order:
        n = counts.get(status, 0)
        if not n:
            continue
        remaining -= n
        top = sorted(details.get(status, Counter()).items(), key=lambda kv: (-kv[1], kv[0]))
        if len(top) > MAX_DETAILS:
            top = top[:MAX_DETAILS - 1] + [("other", sum(v for _, v in top[MAX_DETAILS - 1:]))]
        steps.append({"status": status, "dropped": n, "share": share(n, total),
                      "remaining": remaining, "details": top})
    return steps


def share(n: int, total: int) -> float:
    """n / total, 0 for an empty run."""
    return n / total if total else 0.0


def written(manifest: dict) -> int:
    """Samples written to shards (the kept count when the manifest lacks written_samples)."""
    return int(manifest.get("written_samples", manifest.get("counts", {}).get(Status.KEPT, 0)))


def funnel_problems(manifest: dict) -> list[str]:
    """Inconsistencies a reader must see: counts that do not add up, kept != written samples."""
    total, counts = int(manifest.get("total_rows", 0)), manifest.get("counts", {})
    problems = []
    if sum(counts.values()) != total:
        problems.append(f"counts add up to {sum(counts.values()):,}, not to total_rows {total:,}")
    if counts.get(Status.KEPT, 0) != written(manifest):
        problems.append(f"kept rows {counts.get(Status.KEPT, 0):,} != written_samples {written(manifest):,}")
    return problems


def summary_table(manifest: dict) -> str:
    """The plain-text funnel from input rows to written samples, a count and share for every drop reason."""
    total, n_written = int(manifest.get("total_rows", 0)), written(manifest)
    rows = [("input rows", total, 1.0 if total else 0.0, total)]
    for step in funnel(manifest):
        rows.append((f"- {step['status']}", step["dropped"], step["share"], step["remaining"]))
        if [d for d, _ in step["details"]] != [step["status"]]:
            rows += [(f"    {d}", n, share(n, total), None) for d, n in step["details"]]
    rows.append(("written samples", n_written, share(n_written, total), None))
    width = max(30, *(len(r[0]) + 2 for r in rows))
    lines = [f"{'funnel':<{width}}{'rows':>12}{'share':>9}{'remaining':>12}"]
    for label, n, frac, remaining in rows:
        rest = f"{remaining:>12,}" if remaining is not None else ""
        lines.append(f"{label:<{width}}{n:>12,}{frac:>9.1%}{rest}")
    lines += [f"WARNING: {p}" for p in funnel_problems(manifest)]
    return "\n".join(lines)


def effective_threshold(manifest: dict, threshold: float | None = None) -> float | None:
    """The CLIP threshold to draw: the argument, else the one selection recorded, else config clip.threshold."""
    if threshold is not None:
        return float(threshold)
    selected = (manifest.get("selection") or {}).get("clip_threshold")
    if selected is not None:
        return float(selected)
    configured = ((manifest.get("config") or {}).get("clip") or {}).get("threshold")
    return None if configured is None else float(configured)


# ---------------------------------------------------------------- ledger scan ---

class Histogram:
    """A streaming histogram on fixed fine bins, for all rows and kept rows; rebinned for plotting."""

    def __init__(self, lo: float, hi: float, bins: int):
        self.edges = np.linspace(lo, hi, bins + 1)
        self.all = np.zeros(bins, np.int64)
        self.kept = np.zeros(bins, np.int64)

    def add(self, values: np.ndarray, kept: np.ndarray) -> None:
        idx = np.clip(np.searchsorted(self.edges, values, side="right") - 1, 0, len(self.all) - 1)
        self.all += np.bincount(idx, minlength=len(self.all))
        self.kept += np.bincount(idx[kept], minlength=len(self.all))

    @property
    def total(self) -> int:
        return int(self.all.sum())

    def coarse(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(edges, all, kept) over the non-empty range, at most PLOT_BARS bars."""
        nz = np.nonzero(self.all)[0]
        i0, i1 = int(nz[0]), int(nz[-1]) + 1
        step = max(1, math.ceil((i1 - i0) / PLOT_BARS))
        i1 = min(len(self.all), i0 + step * math.ceil((i1 - i0) / step))
        cut = lambda a: np.add.reduceat(a[i0:i1], np.arange(0, i1 - i0, step))  # noqa: E731
        edges = np.append(self.edges[i0:i1:step], self.edges[i1])  # the last group may be narrower
        return edges, cut(self.all), cut(self.kept)


@dataclass
class LedgerStats:
    """What the report needs from the ledger, accumulated batch by batch in bounded memory."""
    counts: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)   # reason_group -> rows
    clip: Histogram = field(default_factory=lambda: Histogram(-1.0, 1.0, 800))
    caption_len: Histogram = field(default_factory=lambda: Histogram(0, 1000, 1000))   # chars; longer -> last bin
    width: Histogram = field(default_factory=lambda: Histogram(0, 4096, 256))          # pixels; larger -> last bin
    height: Histogram = field(default_factory=lambda: Histogram(0, 4096, 256))
    langs_in: Counter = field(default_factory=Counter)
    langs_kept: Counter = field(default_factory=Counter)
    concepts_before: Counter = field(default_factory=Counter)
    concepts_after: Counter = field(default_factory=Counter)
    dup_sizes: Counter = field(default_factory=Counter)            # representative uid -> members
    dup_members: dict = field(default_factory=dict)                # rep uid -> [(uid, unit)] capped


def _np(arr) -> np.ndarray:
    return arr.to_numpy(zero_copy_only=False)


def _add_counts(counter: Counter, arr) -> None:
    for item in pc.value_counts(arr).to_pylist():
        if item["values"] is not None:
            counter[item["values"]] += item["counts"]


def _add_numeric(hist: Histogram, values, kept) -> None:
    valid = pc.is_valid(values)
    if pc.any(valid).as_py():
        hist.add(_np(pc.filter(values, valid)).astype(np.float64), _np(pc.filter(kept, valid)).astype(bool))


def _add_duplicates(stats: LedgerStats, batch: pa.Table) -> None:
    reasons = pc.fill_null(batch[COL.REASON], "")
    dup = batch.filter(pc.match_substring(reasons, DUP_OF))
    if not dup.num_rows:
        return
    reps = pc.struct_field(pc.extract_regex(dup[COL.REASON], _DUP_RE), [0]).to_pylist()
    for rep, uid, unit in zip(reps, dup[COL.UID].to_pylist(), dup[COL.UNIT_ID].to_pylist()):
        stats.dup_sizes[rep] += 1
        members = stats.dup_members.setdefault(rep, [])
        if len(members) < MAX_MEMBERS:
            members.append((uid, unit))


def _add_batch(stats: LedgerStats, batch: pa.Table) -> None:
    status = batch[COL.STATUS]
    kept = pc.equal(status, Status.KEPT)
    _add_counts(stats.counts, status)
    reasons: Counter = Counter()
    _add_counts(reasons, batch[COL.REASON])
    for r, n in reasons.items():
        stats.reasons[reason_group(r)] += n
    _add_numeric(stats.clip, batch[COL.CLIP_SCORE], kept)
    captions = pc.coalesce(batch[COL.CAPTION_CLEAN], batch[COL.CAPTION])
    _add_numeric(stats.caption_len, pc.utf8_length(captions), kept)
    _add_numeric(stats.width, batch[COL.ORIG_WIDTH], kept)
    _add_numeric(stats.height, batch[COL.ORIG_HEIGHT], kept)
    langs = pc.fill_null(batch[COL.LANG], "n/a")
    _add_counts(stats.langs_in, langs)
    _add_counts(stats.langs_kept, pc.filter(langs, kept))
    # rows that reached balancing: those it kept plus those it dropped
    before = pc.or_(kept, pc.equal(status, Status.BALANCED_OUT))
    _add_counts(stats.concepts_before, pc.list_flatten(pc.filter(batch[COL.CONCEPTS], before)))
    _add_counts(stats.concepts_after, pc.list_flatten(pc.filter(batch[COL.CONCEPTS], kept)))
    _add_duplicates(stats, batch)


def _ledger_dataset(output: str):
    """The ledger parts as one dataset; None when there is none. Leftover temp files are not parts."""
    fs, out = fsutil.get_fs(output)
    path = RunLayout(out).ledger
    if not fsutil.exists(fs, path):
        return None
    infos = fs.get_file_info(pafs.FileSelector(path))
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))
    return pads.dataset(files, filesystem=fs, format="parquet") if files else None


def scan_ledger(output: str) -> LedgerStats:
    """Reads <output>/metadata/ledger/*.parquet batch by batch into LedgerStats (no image bytes)."""
    stats, dataset = LedgerStats(), _ledger_dataset(output)
    if dataset is None:
        return stats
    columns = [c for c in _SCAN_COLUMNS if c in dataset.schema.names]
    for batch in dataset.to_batches(columns=columns):
        table = pa.Table.from_batches([batch])
        for c in _SCAN_COLUMNS:  # an older ledger may lack a column: treat it as all-null
            if c not in table.column_names:
                table = table.append_column(c, pa.nulls(table.num_rows, ledger_schema().field(c).type))
        _add_batch(stats, table)
    return stats


def manifest_from_ledger(stats: LedgerStats) -> dict:
    """A stand-in manifest when the run has none yet (counts taken from the ledger)."""
    counts = dict(stats.counts)
    return {"total_rows": sum(counts.values()), "counts": counts, "reasons": dict(stats.reasons),
            "written_samples": counts.get(Status.KEPT, 0)}


# ---------------------------------------------------------------- duplicate clusters ---

def rep_rows(output: str, reps: list[str]) -> dict[str, tuple[int, str]]:
    """{representative uid: (unit_id, status)} from a filtered ledger read."""
    dataset = _ledger_dataset(output)
    table = dataset.to_table(columns=[COL.UID, COL.UNIT_ID, COL.STATUS], filter=pc.field(COL.UID).isin(reps))
    return {u: (unit, st) for u, unit, st in zip(*(table[c].to_pylist() for c in table.column_names))}


def stage_images(output: str, wanted: dict[int, set]) -> dict[str, bytes]:
    """Encoded images of the wanted uids, one stage tar at a time; a missing tar gives no images."""
    found: dict[str, bytes] = {}
    for unit in sorted(wanted):
        try:
            images = stage_io.read_unit_images(output, unit)
        except (FileNotFoundError, OSError):  # stage/ may have been cleaned after the run
            continue
        found.update({u: images[u] for u in wanted[unit] if u in images})
    return found
