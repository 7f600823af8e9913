"""Run report: the plain-text funnel (summary_table) and a self-contained report.html with inline PNG plots."""
from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from curate import fsutil, stage_io
from curate.schema import COL, STATUSES, Status, ledger_schema

REPORT_NAME = "report.html"
LEDGER_DIR = "metadata/ledger"
# Drop statuses in pipeline order (reasons.json lists them so): the funnel reads top to bottom.
FUNNEL_ORDER = tuple(s for s in STATUSES if s not in (Status.OK, Status.KEPT))
DUP_OF = "duplicate_of:"
_DUP_RE = r"duplicate_of:(?P<rep>[0-9A-Za-z_-]+)"
MAX_DETAILS = 8          # reason details listed per status; the rest are summed as "other"
TOP_LANGS = 15
TOP_CONCEPTS = 20
MAX_CLUSTERS = 4         # duplicate clusters shown as thumbnails
MAX_MEMBERS = 5          # members shown per cluster, beside the representative
THUMB_PX = 96
PLOT_BARS = 40           # histogram bars after rebinning the fine accumulator bins
_SCAN_COLUMNS = (COL.UID, COL.UNIT_ID, COL.STATUS, COL.REASON, COL.LANG, COL.CLIP_SCORE, COL.CAPTION,
                 COL.CAPTION_CLEAN, COL.ORIG_WIDTH, COL.ORIG_HEIGHT, COL.CONCEPTS)


# ---------------------------------------------------------------- funnel (text) ---

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
        steps.append({"status": status, "dropped": n, "share": _share(n, total),
                      "remaining": remaining, "details": top})
    return steps


def _share(n: int, total: int) -> float:
    return n / total if total else 0.0


def _written(manifest: dict) -> int:
    return int(manifest.get("written_samples", manifest.get("counts", {}).get(Status.KEPT, 0)))


def funnel_problems(manifest: dict) -> list[str]:
    """Inconsistencies a reader must see: counts that do not add up, kept != written samples."""
    total, counts = int(manifest.get("total_rows", 0)), manifest.get("counts", {})
    problems = []
    if sum(counts.values()) != total:
        problems.append(f"counts add up to {sum(counts.values()):,}, not to total_rows {total:,}")
    if counts.get(Status.KEPT, 0) != _written(manifest):
        problems.append(f"kept rows {counts.get(Status.KEPT, 0):,} != written_samples {_written(manifest):,}")
    return problems


def summary_table(manifest: dict) -> str:
    """The plain-text funnel from input rows to written samples, a count and share for every drop reason."""
    total, written = int(manifest.get("total_rows", 0)), _written(manifest)
    rows = [("input rows", total, 1.0 if total else 0.0, total)]
    for step in funnel(manifest):
        rows.append((f"- {step['status']}", step["dropped"], step["share"], step["remaining"]))
        if [d for d, _ in step["details"]] != [step["status"]]:
            rows += [(f"    {d}", n, _share(n, total), None) for d, n in step["details"]]
    rows.append(("written samples", written, _share(written, total), None))
    width = max(30, *(len(r[0]) + 2 for r in rows))
    lines = [f"{'funnel':<{width}}{'rows':>12}{'share':>9}{'remaining':>12}"]
    for label, n, share, remaining in rows:
        rest = f"{remaining:>12,}" if remaining is not None else ""
        lines.append(f"{label:<{width}}{n:>12,}{share:>9.1%}{rest}")
    lines += [f"WARNING: {p}" for p in funnel_problems(manifest)]
    return "\n".join(lines)


# ---------------------------------------------------------------- ledger scan ---

class _Hist:
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
    clip: _Hist = field(default_factory=lambda: _Hist(-1.0, 1.0, 800))
    caption_len: _Hist = field(default_factory=lambda: _Hist(0, 1000, 1000))   # chars; longer -> last bin
    width: _Hist = field(default_factory=lambda: _Hist(0, 4096, 256))          # pixels; larger -> last bin
    height: _Hist = field(default_factory=lambda: _Hist(0, 4096, 256))
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


def _add_numeric(hist: _Hist, values, kept) -> None:
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
    path = fsutil.join(out, LEDGER_DIR)
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


# ---------------------------------------------------------------- plots ---

def _png(fig: Figure) -> str:
    """A data URI of the figure as PNG (no timestamp in its metadata, so reruns give the same bytes)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _img(uri: str, alt: str) -> str:
    return f'<img class="plot" alt="{html.escape(alt)}" src="{uri}">'


def _plot_funnel(manifest: dict) -> str:
    steps = funnel(manifest)
    total = int(manifest.get("total_rows", 0))
    labels = ["input rows"] + [s["status"] for s in steps] + ["written samples"]
    left = [total] + [s["remaining"] for s in steps] + [_written(manifest)]
    dropped = [0] + [s["dropped"] for s in steps] + [0]
    fig = Figure(figsize=(8, 0.35 * len(labels) + 1), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(labels))[::-1]
    ax.barh(y, left, color="#4c72b0", label="rows remaining")
    ax.barh(y, dropped, left=left, color="#dd8452", label="dropped at this step")
    for yi, d in zip(y, dropped):
        if d:
            ax.text(total, yi, f" -{d:,}", va="center", fontsize=8)
    ax.set_yticks(y, labels)
    ax.set_xlim(0, max(total, 1) * 1.12)  # room for the drop labels right of the bars
    ax.set_xlabel("rows")
    ax.legend(loc="lower right", fontsize=8)
    return _img(_png(fig), "funnel")


def _plot_hist(hist: _Hist, title: str, xlabel: str, labels=("all", "kept"), vline=None, ax=None) -> Figure:
    fig = None
    if ax is None:
        fig = Figure(figsize=(7, 3), layout="constrained")
        ax = fig.subplots()
    edges, all_, kept = hist.coarse()
    # stairs draws one patch per series (bar would draw one per bin): much faster to render
    ax.stairs(all_, edges, fill=True, color="#4c72b0", alpha=0.6, label=labels[0])
    ax.stairs(kept, edges, fill=True, color="#55a868", alpha=0.8, label=labels[1])
    if vline is not None:
        ax.axvline(vline, color="#c44e52", linestyle="--", label=f"threshold {vline:g}")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows")
    ax.legend(fontsize=8)
    return fig


def _plot_pairs(names: list[str], a: list[int], b: list[int], labels: tuple[str, str], xlabel: str) -> str:
    fig = Figure(figsize=(7, 0.3 * len(names) + 1), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(names))[::-1]
    ax.barh(y + 0.2, a, height=0.4, color="#4c72b0", label=labels[0])
    ax.barh(y - 0.2, b, height=0.4, color="#55a868", label=labels[1])
    ax.set_yticks(y, names)
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=8)
    return _img(_png(fig), xlabel)


# ---------------------------------------------------------------- HTML sections ---

def _table(header: list[str], rows: list[list], attrs: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(f"<td>{_cell(v)}</td>" for v in row)
        body.append(f"<tr{(' ' + attrs[i]) if attrs and attrs[i] else ''}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.1%}"
    if isinstance(v, int):
        return f"{v:,}"
    return html.escape(str(v))


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{html.escape(title)}</h2>{body}</section>'


def _none(what: str) -> str:
    return f'<p class="none">none: {html.escape(what)}</p>'


def _funnel_section(manifest: dict, stats: LedgerStats) -> str:
    total, written = int(manifest.get("total_rows", 0)), _written(manifest)
    rows, attrs = [["input rows", total, 1.0 if total else 0.0, total]], [f'data-step="input" data-count="{total}"']
    for s in funnel(manifest):
        rows.append([s["status"], s["dropped"], s["share"], s["remaining"]])
        attrs.append(f'class="step" data-status="{html.escape(s["status"])}" data-count="{s["dropped"]}"')
        for d, n in s["details"]:
            if d != s["status"]:
                rows.append([f"\u2003{d}", n, _share(n, total), ""])
                attrs.append(f'class="detail" data-reason="{html.escape(d)}" data-count="{n}"')
    rows.append(["written samples", written, _share(written, total), ""])
    attrs.append(f'data-step="written" data-count="{written}"')
    problems = funnel_problems(manifest)
    ledger_counts = {k: v for k, v in stats.counts.items()}
    if stats.counts and ledger_counts != {k: int(v) for k, v in manifest.get("counts", {}).items() if v}:
        problems.append(f"ledger status counts {dict(sorted(ledger_counts.items()))} differ from manifest counts")
    warn = "".join(f'<p class="warn">WARNING: {html.escape(p)}</p>' for p in problems)
    body = warn + _table(["step", "rows", "share of input", "remaining"], rows, attrs)
    return _section("funnel", "Funnel: input rows to written samples", body + _plot_funnel(manifest))


def _clip_section(stats: LedgerStats, threshold: float | None) -> str:
    if not stats.clip.total:
        return _section("clip", "CLIP scores", _none("no row has a CLIP score"))
    fig = _plot_hist(stats.clip, "CLIP score (cosine similarity)", "score", ("scored rows", "kept"), threshold)
    line = f"threshold {threshold:g}" if threshold is not None else "no absolute threshold recorded"
    text = f"<p>{stats.clip.total:,} scored rows, {int(stats.clip.kept.sum()):,} kept; {html.escape(line)}.</p>"
    return _section("clip", "CLIP scores", text + _img(_png(fig), "clip score histogram"))


def _lang_section(stats: LedgerStats) -> str:
    if not stats.langs_in:
        return _section("languages", "Languages", _none("no language recorded"))
    top = sorted(stats.langs_in.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_LANGS]
    rows = [[lang, n, stats.langs_kept.get(lang, 0), _share(stats.langs_kept.get(lang, 0), n)] for lang, n in top]
    attrs = [f'data-lang="{html.escape(r[0])}" data-input="{r[1]}" data-kept="{r[2]}"' for r in rows]
    table = _table(["language", "input rows", "kept", "survival"], rows, attrs)
    names = [r[0] for r in rows]
    plot = _plot_pairs(names, [r[1] for r in rows], [r[2] for r in rows], ("input", "kept"), "rows per language")
    return _section("languages", "Languages (input vs kept)", table + plot)


def _distributions_section(stats: LedgerStats) -> str:
    if stats.caption_len.total:
        fig = _plot_hist(stats.caption_len, "caption length", "characters (1000 = 1000 or more)",
                         ("input captions", "kept"))
        captions = _img(_png(fig), "caption length histogram")
    else:
        captions = _none("no caption")
    if stats.width.total:
        fig = Figure(figsize=(10, 3), layout="constrained")
        ax_w, ax_h = fig.subplots(1, 2)
        _plot_hist(stats.width, "original width", "pixels (4096 = 4096 or more)", ("decoded", "kept"), ax=ax_w)
        _plot_hist(stats.height, "original height", "pixels (4096 = 4096 or more)", ("decoded", "kept"), ax=ax_h)
        sizes = _img(_png(fig), "image size histograms")
    else:
        sizes = _none("no decoded image")
    return (_section("captions", "Caption lengths", captions)
            + _section("sizes", "Image sizes (original, after EXIF orientation)", sizes))


def _concepts_section(stats: LedgerStats) -> str:
    if not stats.concepts_before:
        return _section("concepts", "Top concepts before and after balancing", _none("no concept matched"))
    rank = lambda c: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_CONCEPTS]  # noqa: E731
    names = [k for k, _ in rank(stats.concepts_before)]
    names += [k for k, _ in rank(stats.concepts_after) if k not in names]
    rows = [[k, stats.concepts_before.get(k, 0), stats.concepts_after.get(k, 0)] for k in names]
    attrs = [f'data-concept="{html.escape(r[0])}" data-before="{r[1]}" data-after="{r[2]}"' for r in rows]
    table = _table(["concept", "before balancing", "kept"], rows, attrs)
    plot = _plot_pairs(names, [r[1] for r in rows], [r[2] for r in rows], ("before", "after"), "rows per concept")
    return _section("concepts", "Top concepts before and after balancing", table + plot)


# ---------------------------------------------------------------- duplicate clusters ---

def _thumb(data: bytes | None) -> str | None:
    """A small JPEG data URI of encoded image bytes; None when they do not decode."""
    if data is None:
        return None
    from PIL import UnidentifiedImageError

    from curate.imageproc import open_image
    try:
        with open_image(data) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMB_PX, THUMB_PX))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=70)
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _rep_rows(output: str, reps: list[str]) -> dict[str, tuple[int, str]]:
    """{representative uid: (unit_id, status)} from a filtered ledger read."""
    dataset = _ledger_dataset(output)
    table = dataset.to_table(columns=[COL.UID, COL.UNIT_ID, COL.STATUS], filter=pc.field(COL.UID).isin(reps))
    return {u: (unit, st) for u, unit, st in zip(*(table[c].to_pylist() for c in table.column_names))}


def _stage_images(output: str, wanted: dict[int, set]) -> dict[str, bytes]:
    """Encoded images of the wanted uids, one stage tar at a time; a missing tar gives no images."""
    found: dict[str, bytes] = {}
    for unit in sorted(wanted):
        try:
            images = stage_io.read_unit_images(output, unit)
        except (FileNotFoundError, OSError):  # stage/ may have been cleaned after the run
            continue
        found.update({u: images[u] for u in wanted[unit] if u in images})
    return found


def _figure(uri: str | None, caption: str) -> str:
    img = f'<img class="thumb" alt="{html.escape(caption)}" src="{uri}">' if uri else '<div class="missing">no image</div>'
    return f"<figure>{img}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _duplicates_section(output: str, stats: LedgerStats) -> str:
    title = "Duplicate clusters (representative, then members)"
    if not stats.dup_sizes:
        return _section("duplicates", title, _none("no duplicate_of cluster"))
    reps = [r for r, _ in sorted(stats.dup_sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_CLUSTERS]]
    rep_rows = _rep_rows(output, reps)
    wanted: dict[int, set] = {}
    for rep in reps:
        if rep in rep_rows:
            wanted.setdefault(rep_rows[rep][0], set()).add(rep)
        for uid, unit in stats.dup_members[rep]:
            wanted.setdefault(unit, set()).add(uid)
    images = _stage_images(output, wanted)
    total = sum(stats.dup_sizes.values())
    parts = [f"<p>{len(stats.dup_sizes):,} clusters, {total:,} rows dropped as duplicate_of; "
             f"the {len(reps)} largest:</p>"]
    for rep in reps:
        status = rep_rows.get(rep, (None, "not in ledger"))[1]
        figs = [_figure(_thumb(images.get(rep)), f"rep {rep[:8]} ({status})")]
        figs += [_figure(_thumb(images.get(u)), f"dup {u[:8]}") for u, _ in stats.dup_members[rep]]
        parts.append(f'<div class="cluster" data-rep="{html.escape(rep)}" data-size="{stats.dup_sizes[rep]}">'
                     f"<h3>{stats.dup_sizes[rep]:,} duplicates of {html.escape(rep)}</h3>{''.join(figs)}</div>")
    return _section("duplicates", title, "".join(parts))


# ---------------------------------------------------------------- the report ---

_CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}tr.detail{color:#666;font-size:90%}
.warn{color:#b00;font-weight:bold}.none{color:#666;font-style:italic}
figure{display:inline-block;margin:4px;text-align:center;font-size:75%}
.missing{width:96px;height:96px;background:#eee;line-height:96px}img.plot{max-width:100%}"""


def read_manifest(output: str) -> dict | None:
    fs, out = fsutil.get_fs(output)
    path = fsutil.join(out, "manifest.json")
    return json.loads(fsutil.read_bytes(fs, path)) if fsutil.exists(fs, path) else None


def effective_threshold(manifest: dict, threshold: float | None = None) -> float | None:
    """The CLIP threshold to draw: the argument, else the one selection recorded, else config clip.threshold."""
    if threshold is not None:
        return float(threshold)
    selected = (manifest.get("selection") or {}).get("clip_threshold")
    if selected is not None:
        return float(selected)
    configured = ((manifest.get("config") or {}).get("clip") or {}).get("threshold")
    return None if configured is None else float(configured)


def manifest_from_ledger(stats: LedgerStats) -> dict:
    """A stand-in manifest when the run has none yet (counts taken from the ledger)."""
    counts = dict(stats.counts)
    return {"total_rows": sum(counts.values()), "counts": counts, "reasons": dict(stats.reasons),
            "written_samples": counts.get(Status.KEPT, 0)}


def _header(output: str, manifest: dict) -> str:
    facts = [("output", output), ("created", manifest.get("created", "n/a")),
             ("curate version", manifest.get("curate_version", "n/a")),
             ("config hash", manifest.get("config_hash", "n/a")),
             ("input rows", f"{int(manifest.get('total_rows', 0)):,}"),
             ("written samples", f"{_written(manifest):,}"), ("shards", f"{len(manifest.get('shards', [])):,}")]
    items = "".join(f"<li><b>{html.escape(k)}:</b> {html.escape(str(v))}</li>" for k, v in facts)
    return f"<h1>curate run report</h1><ul>{items}</ul>"


def render_report(output: str, threshold: float | None = None) -> str:
    """The report's HTML text (see build_report)."""
    stats = scan_ledger(output)
    manifest = read_manifest(output) or manifest_from_ledger(stats)
    body = [_header(output, manifest), _funnel_section(manifest, stats),
            _clip_section(stats, effective_threshold(manifest, threshold)), _lang_section(stats),
            _distributions_section(stats), _concepts_section(stats), _duplicates_section(output, stats)]
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>curate run report</title>'
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")


def build_report(output: str, threshold: float | None = None) -> str:
    """Writes <output>/report.html atomically (self-contained: plots and thumbnails inline) and returns its path.

    Reads manifest.json (counts, threshold), metadata/ledger/*.parquet (scores, languages, captions, sizes,
    concepts, duplicate_of reasons) and stage/<unit>.tar for a few duplicate-cluster thumbnails.
    threshold overrides the CLIP threshold drawn on the score histogram.
    """
    text = render_report(output, threshold)
    fs, out = fsutil.get_fs(output)
    path = fsutil.join(out, REPORT_NAME)
    fsutil.atomic_write(fs, path, text.encode())
    return path
