"""Report HTML: one section per view of the run, assembled into a self-contained report.html."""
from __future__ import annotations

import html

from curate import fsutil
from curate.layout import NAMES, RunLayout
from curate.manifest import read_manifest
from curate.optout.evidence import signal_order
from curate.report import figures
from curate.report.stats import (LedgerStats, effective_threshold, funnel, funnel_problems, manifest_from_ledger,
                                 rep_rows, scan_ledger, share, stage_images, written)

REPORT_NAME = NAMES.report
TOP_LANGS = 15
TOP_CONCEPTS = 20
MAX_CLUSTERS = 4         # duplicate clusters shown as thumbnails

_CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}tr.detail{color:#666;font-size:90%}
.warn{color:#b00;font-weight:bold}.none{color:#666;font-style:italic}
figure{display:inline-block;margin:4px;text-align:center;font-size:75%}
.missing{width:96px;height:96px;background:#eee;line-height:96px}img.plot{max-width:100%}"""


# ---------------------------------------------------------------- building blocks ---

def _img(uri: str, alt: str) -> str:
    return f'<img class="plot" alt="{html.escape(alt)}" src="{uri}">'


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


def _figure(uri: str | None, caption: str) -> str:
    missing = '<div class="missing">no image</div>'
    img = f'<img class="thumb" alt="{html.escape(caption)}" src="{uri}">' if uri else missing
    return f"<figure>{img}<figcaption>{html.escape(caption)}</figcaption></figure>"


# ---------------------------------------------------------------- sections ---

def _funnel_section(manifest: dict, stats: LedgerStats) -> str:
    total, n_written = int(manifest.get("total_rows", 0)), written(manifest)
    rows, attrs = [["input rows", total, 1.0 if total else 0.0, total]], [f'data-step="input" data-count="{total}"']
    for s in funnel(manifest):
        rows.append([s["status"], s["dropped"], s["share"], s["remaining"]])
        attrs.append(f'class="step" data-status="{html.escape(s["status"])}" data-count="{s["dropped"]}"')
        for d, n in s["details"]:
            if d != s["status"]:
                rows.append([f"\u2003{d}", n, share(n, total), ""])
                attrs.append(f'class="detail" data-reason="{html.escape(d)}" data-count="{n}"')
    rows.append(["written samples", n_written, share(n_written, total), ""])
    attrs.append(f'data-step="written" data-count="{n_written}"')
    problems = funnel_problems(manifest)
    ledger_counts = {k: v for k, v in stats.counts.items()}
    if stats.counts and ledger_counts != {k: int(v) for k, v in manifest.get("counts", {}).items() if v}:
        problems.append(f"ledger status counts {dict(sorted(ledger_counts.items()))} differ from manifest counts")
    warn = "".join(f'<p class="warn">WARNING: {html.escape(p)}</p>' for p in problems)
    body = warn + _table(["step", "rows", "share of input", "remaining"], rows, attrs)
    plot = _img(figures.plot_funnel(manifest), "funnel")
    return _section("funnel", "Funnel: input rows to written samples", body + plot)


def _clip_section(stats: LedgerStats, threshold: float | None) -> str:
    if not stats.clip.total:
        return _section("clip", "CLIP scores", _none("no row has a CLIP score"))
    fig = figures.plot_hist(stats.clip, "CLIP score (cosine similarity)", "score", ("scored rows", "kept"), threshold)
    line = f"threshold {threshold:g}" if threshold is not None else "no absolute threshold recorded"
    text = f"<p>{stats.clip.total:,} scored rows, {int(stats.clip.kept.sum()):,} kept; {html.escape(line)}.</p>"
    return _section("clip", "CLIP scores", text + _img(figures.png(fig), "clip score histogram"))


def _lang_section(stats: LedgerStats) -> str:
    if not stats.langs_in:
        return _section("languages", "Languages", _none("no language recorded"))
    top = sorted(stats.langs_in.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_LANGS]
    rows = [[lang, n, stats.langs_kept.get(lang, 0), share(stats.langs_kept.get(lang, 0), n)] for lang, n in top]
    attrs = [f'data-lang="{html.escape(r[0])}" data-input="{r[1]}" data-kept="{r[2]}"' for r in rows]
    table = _table(["language", "input rows", "kept", "survival"], rows, attrs)
    names, xlabel = [r[0] for r in rows], "rows per language"
    plot = figures.plot_pairs(names, [r[1] for r in rows], [r[2] for r in rows], ("input", "kept"), xlabel)
    return _section("languages", "Languages (input vs kept)", table + _img(plot, xlabel))


def _distributions_section(stats: LedgerStats) -> str:
    if stats.caption_len.total:
        fig = figures.plot_hist(stats.caption_len, "caption length", "characters (1000 = 1000 or more)",
                                ("input captions", "kept"))
        captions = _img(figures.png(fig), "caption length histogram")
    else:
        captions = _none("no caption")
    if stats.width.total:
        sizes = _img(figures.plot_size_hists(stats.width, stats.height), "image size histograms")
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
    xlabel = "rows per concept"
    plot = figures.plot_pairs(names, [r[1] for r in rows], [r[2] for r in rows], ("before", "after"), xlabel)
    return _section("concepts", "Top concepts before and after balancing", table + _img(plot, xlabel))


def _duplicates_section(output: str, stats: LedgerStats) -> str:
    title = "Duplicate clusters (representative, then members)"
    if not stats.dup_sizes:
        return _section("duplicates", title, _none("no duplicate_of cluster"))
    reps = [r for r, _ in sorted(stats.dup_sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_CLUSTERS]]
    rows = rep_rows(output, reps)
    wanted: dict[int, set] = {}
    for rep in reps:
        if rep in rows:
            wanted.setdefault(rows[rep][0], set()).add(rep)
        for uid, unit in stats.dup_members[rep]:
            wanted.setdefault(unit, set()).add(uid)
    images = stage_images(output, wanted)
    total = sum(stats.dup_sizes.values())
    parts = [f"<p>{len(stats.dup_sizes):,} clusters, {total:,} rows dropped as duplicate_of; "
             f"the {len(reps)} largest:</p>"]
    for rep in reps:
        status = rows.get(rep, (None, "not in ledger"))[1]
        figs = [_figure(figures.thumbnail(images.get(rep)), f"rep {rep[:8]} ({status})")]
        figs += [_figure(figures.thumbnail(images.get(u)), f"dup {u[:8]}") for u, _ in stats.dup_members[rep]]
        parts.append(f'<div class="cluster" data-rep="{html.escape(rep)}" data-size="{stats.dup_sizes[rep]}">'
                     f"<h3>{stats.dup_sizes[rep]:,} duplicates of {html.escape(rep)}</h3>{''.join(figs)}</div>")
    return _section("duplicates", title, "".join(parts))


def _optout_section(manifest: dict) -> str:
    """Per opt-out signal: rows checked and dropped, hosts checked and hosts with a disallow (manifest "optout")."""
    title = "Opt-out signals (robots.txt, TDMRep, headers, image metadata)"
    opt = manifest.get("optout")
    if not opt:
        return _section("optout", title, _none("no opt-out evidence recorded"))
    warn = f'<p class="warn">WARNING: {html.escape(opt["warning"])}</p>' if opt.get("warning") else ""
    on = [k for k, v in opt.get("switches", {}).items() if v]
    facts = (f"<p>switched on: {html.escape(', '.join(on) or 'none')}; robots.txt agents: "
             f"{html.escape(', '.join(opt.get('agents', [])))}; {int(opt.get('origins_checked', 0)):,} origins' "
             f"policy files read (metadata/optout_hosts.parquet).</p>")
    keys = ("rows_checked", "rows_dropped", "hosts_checked", "hosts_disallowing")
    order = sorted(opt.get("signals", {}).items(), key=lambda kv: signal_order(kv[0]))  # evaluation order
    rows = [[k, *(int(v.get(c, 0)) for c in keys)] for k, v in order]
    attrs = [f'data-signal="{html.escape(r[0])}" data-checked="{r[1]}" data-dropped="{r[2]}" '
             f'data-hosts-disallowing="{r[4]}"' for r in rows]
    table = _table(["signal", "rows checked", "rows dropped", "hosts checked", "hosts with a disallow"], rows, attrs) \
        if rows else _none("no row reached an opt-out check")
    return _section("optout", title, warn + facts + table)


# ---------------------------------------------------------------- the report ---

def _header(output: str, manifest: dict) -> str:
    facts = [("output", output), ("created", manifest.get("created", "n/a")),
             ("curate version", manifest.get("curate_version", "n/a")),
             ("config hash", manifest.get("config_hash", "n/a")),
             ("input rows", f"{int(manifest.get('total_rows', 0)):,}"),
             ("written samples", f"{written(manifest):,}"), ("shards", f"{len(manifest.get('shards', [])):,}")]
    items = "".join(f"<li><b>{html.escape(k)}:</b> {html.escape(str(v))}</li>" for k, v in facts)
    return f"<h1>curate run report</h1><ul>{items}</ul>"


def render_report(output: str, threshold: float | None = None) -> str:
    """The report's HTML text (see build_report)."""
    stats = scan_ledger(output)
    manifest = read_manifest(output) or manifest_from_ledger(stats)
    body = [_header(output, manifest), _funnel_section(manifest, stats), _optout_section(manifest),
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
    path = RunLayout(out).report
    fsutil.atomic_write(fs, path, text.encode())
    return path
