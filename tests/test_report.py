"""Tests of curate.report: report.html from a synthetic run (sections, funnel = manifest, thumbnails) and the text funnel."""
from __future__ import annotations

import copy
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from curate.report import (PLOT_BARS, REPORT_NAME, build_report, effective_threshold, funnel, manifest_from_ledger,
                           read_manifest, render_report, scan_ledger, summary_table)
from curate.report.stats import Histogram as _Hist
from curate.schema import Status
from tests.run_fixture import THRESHOLD, make_run

SECTIONS = ("funnel", "optout", "clip", "languages", "captions", "sizes", "concepts", "duplicates")


class _Report(HTMLParser):
    """Collects what the tests check: section texts, tagged table rows, images, cluster divs."""

    def __init__(self, text: str):
        super().__init__()
        self.sections: dict[str, str] = {}
        self.rows: list[dict] = []
        self.images: list[str] = []
        self.clusters: list[dict] = []
        self.external: list[str] = []
        self._section = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self._section = a["id"]
            self.sections[self._section] = ""
        elif tag == "tr" and any(k.startswith("data-") for k in a):
            self.rows.append({**a, "section": self._section})
        elif tag == "img":
            self.images.append(a["src"])
        elif tag == "div" and "data-rep" in a:
            self.clusters.append({**a, "images": len(self.images)})
        if tag in ("link", "script") or (a.get("src") or "").startswith(("http", "//", "/")):
            self.external.append(tag)

    def handle_data(self, data):
        if self._section:
            self.sections[self._section] += data

    def section_rows(self, section: str) -> list[dict]:
        return [r for r in self.rows if r["section"] == section]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run") / "out")


@pytest.fixture(scope="module")
def report(run):
    path = build_report(run.output)
    return path, Path(path).read_text()


def test_report_written_atomically_with_every_section(run, report):
    path, text = report
    assert path == f"{run.output}/{REPORT_NAME}"
    assert not [p for p in Path(run.output).iterdir() if ".tmp-" in p.name]
    parsed = _Report(text)
    assert list(parsed.sections) == list(SECTIONS)
    assert not parsed.external, "the report must be self-contained"
    for sid in SECTIONS:
        assert "none:" not in parsed.sections[sid], sid


def test_funnel_counts_equal_the_manifest(run, report):
    parsed = _Report(report[1])
    rows = parsed.section_rows("funnel")
    steps = {r["data-status"]: int(r["data-count"]) for r in rows if "data-status" in r}
    assert steps == {k: v for k, v in run.manifest["counts"].items() if k != Status.KEPT}
    ends = {r["data-step"]: int(r["data-count"]) for r in rows if "data-step" in r}
    assert ends == {"input": run.manifest["total_rows"], "written": run.manifest["written_samples"]}
    details = {r["data-reason"]: int(r["data-count"]) for r in rows if "data-reason" in r}
    assert details["download_error:timeout"] == 2 and details["download_error:http_404"] == 1
    assert details["duplicate:duplicate_of"] == 3 and details["duplicate:sha256"] == 1
    assert "WARNING" not in parsed.sections["funnel"]


def test_plots_and_views_carry_the_runs_numbers(run, report):
    parsed = _Report(report[1])
    pngs = [s for s in parsed.images if s.startswith("data:image/png;base64,")]
    assert len(pngs) == 6  # funnel, clip, languages, captions, sizes, concepts
    assert f"threshold {THRESHOLD:g}" in parsed.sections["clip"]
    assert "18 scored rows, 8 kept" in parsed.sections["clip"]
    langs = {r["data-lang"]: (int(r["data-input"]), int(r["data-kept"])) for r in parsed.section_rows("languages")}
    assert langs["de"] == (6, 3) and langs["en"] == (18, 4) and langs["n/a"] == (3, 0)
    concepts = {r["data-concept"]: (int(r["data-before"]), int(r["data-after"]))
                for r in parsed.section_rows("concepts")}
    assert concepts == {"dog": (5, 3), "cat": (2, 2), "car": (2, 2), "ball": (1, 1)}


def test_duplicate_clusters_show_representative_and_member_thumbnails(run, report):
    parsed = _Report(report[1])
    shown = {c["data-rep"]: int(c["data-size"]) for c in parsed.clusters}
    assert shown == {rep: len(members) for rep, members in run.dup_clusters.items()}
    thumbs = [s for s in parsed.images if s.startswith("data:image/jpeg;base64,")]
    assert len(thumbs) == sum(1 + len(m) for m in run.dup_clusters.values())  # every image found in stage/
    assert "no image" not in parsed.sections["duplicates"]


def test_report_is_byte_stable(run, report):
    assert render_report(run.output) == report[1]


def test_copes_with_missing_scores_concepts_duplicates_and_kept_rows(tmp_path):
    fx = make_run(tmp_path / "bare", clip_scores=False, concepts=False, duplicates=False, kept=False)
    parsed = _Report(Path(build_report(fx.output)).read_text())
    for sid in ("clip", "concepts", "duplicates"):
        assert "none:" in parsed.sections[sid], sid
    ends = {r["data-step"]: int(r["data-count"]) for r in parsed.section_rows("funnel") if "data-step" in r}
    assert ends == {"input": 34, "written": 0}
    assert "none:" not in parsed.sections["languages"]


def test_missing_stage_degrades_gracefully_and_selection_threshold_is_drawn(tmp_path):
    fx = make_run(tmp_path / "run", dup_style="bare", selection={"clip_threshold": 0.31})
    shutil.rmtree(Path(fx.output) / "stage")
    (Path(fx.output) / "metadata/ledger/part-000009.parquet.tmp-0badf00d").write_bytes(b"half a write")
    parsed = _Report(render_report(fx.output))
    assert "threshold 0.31" in parsed.sections["clip"]  # the threshold selection found, not config's 0.25
    assert {c["data-rep"] for c in parsed.clusters} == set(fx.dup_clusters)  # bare duplicate_of:<uid> reasons
    assert parsed.sections["duplicates"].count("no image") == 5


def test_without_manifest_counts_come_from_the_ledger(tmp_path):
    fx = make_run(tmp_path / "run")
    (Path(fx.output) / "manifest.json").unlink()
    assert read_manifest(fx.output) is None
    stand_in = manifest_from_ledger(scan_ledger(fx.output))  # what render_report uses then
    assert summary_table(stand_in) == summary_table(fx.manifest)


def test_threshold_precedence(run):
    m = copy.deepcopy(run.manifest)
    assert effective_threshold(m) == THRESHOLD
    m["selection"] = {"clip_threshold": 0.31}  # a keep_top_fraction run records the threshold it found
    assert effective_threshold(m) == 0.31
    assert effective_threshold(m, 0.2) == 0.2
    m["config"]["clip"]["threshold"] = None
    del m["selection"]
    assert effective_threshold(m) is None


def test_scan_matches_ledger(run):
    stats = scan_ledger(run.output)
    assert dict(stats.counts) == run.manifest["counts"]
    assert stats.clip.total == 18 and int(stats.clip.kept.sum()) == 8
    assert stats.caption_len.total == 34  # the empty caption counts, at length 0 (caption "", caption_clean null)
    assert stats.caption_len.all[0] == 1


def test_summary_table_lines(run):
    text = summary_table(run.manifest)
    lines = [re.sub(r"\s+", " ", ln.strip()) for ln in text.splitlines()]
    assert lines[0].split() == ["funnel", "rows", "share", "remaining"]
    assert lines[1] == "input rows 34 100.0% 34"
    assert "- download_error 3 8.8% 21" in lines
    assert "download_error:timeout 2 5.9%" in lines
    assert "duplicate:duplicate_of 3 8.8%" in lines  # per-uid reasons collapsed
    assert "- robots 1 2.9% 24" in lines and "robots 1 2.9%" not in lines  # no detail line without details
    assert lines[-1] == "written samples 8 23.5%"
    assert [s["status"] for s in funnel(run.manifest)][:2] == [Status.INVALID_URL, Status.CAPTION_RULE]


def test_summary_table_flags_counts_that_do_not_add_up(run):
    m = json.loads(json.dumps(run.manifest))
    m["counts"][Status.LANG] += 1
    text = summary_table(m)
    assert "WARNING: counts add up to 35, not to total_rows 34" in text
    m = json.loads(json.dumps(run.manifest))
    m["written_samples"] = 7
    assert "WARNING: kept rows 8 != written_samples 7" in summary_table(m)
    assert "WARNING" not in summary_table(run.manifest)


@pytest.mark.parametrize("lo,hi", [(0.5, 0.5), (-1.0, 1.0), (0.0, 0.3), (0.99, 5.0), (-0.13, 5.0)])
def test_histogram_rebinning_keeps_every_row(lo, hi):
    hist = _Hist(-1.0, 1.0, 800)  # the clip accumulator: 800 bins over [-1, 1], outliers in the end bins
    values = np.linspace(lo, hi, 1001)
    hist.add(values, values > 0.25)
    edges, all_, kept = hist.coarse()
    assert len(edges) == len(all_) + 1 <= PLOT_BARS + 1 and np.all(np.diff(edges) > 0)
    assert all_.sum() == 1001 and kept.sum() == int((values > 0.25).sum())
    assert edges[0] <= min(lo, 1.0) and edges[-1] >= min(hi, 1.0)
