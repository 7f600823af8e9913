"""The stage protocol: StageStats (capped tallies), set_status (the one row-marking helper), run_stages, UnitStats."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pytest

from curate.schema import COL, ERROR_MESSAGE_MAX, SchemaError, Status
from curate.stage import CappedCounter, StageStats, UnitStats, run_stages, set_status
from curate.timing import Phases


def _table(statuses=("ok", "ok", "ok")) -> pa.Table:
    n = len(statuses)
    return pa.table({COL.UID: [f"u{i}" for i in range(n)], COL.STATUS: list(statuses),
                     COL.REASON: [None if s == Status.OK else s for s in statuses]})


# ---------------------------------------------------------------- the stats accumulator
def test_capped_counter_keeps_the_most_frequent_when_full():
    c = CappedCounter(cap=4)
    for key in ["a"] * 5 + ["b"] * 3 + ["c", "d"]:
        c.add(key)
    assert c.as_dict() == {"a": 5, "b": 3, "c": 1, "d": 1}  # at the cap, nothing forgotten yet
    c.add("d")  # a key already counted never prunes
    assert len(c.as_dict()) == 4
    c.add("e")  # a fifth distinct key: only the cap/2 most frequent survive, then it is counted
    assert c.as_dict() == {"a": 5, "b": 3, "e": 1}
    with pytest.raises(ValueError, match="cap"):
        CappedCounter(cap=1)


def test_stage_stats_bounds_free_text_errors():
    stats = StageStats(cap=10)
    stats.tally("errors", (f"download_error:host {i} said no" for i in range(1000)))
    assert len(stats.as_dict()["errors"]) <= 10


def test_stage_stats_counts_tallies_values_and_merges():
    a, b = StageStats(), StageStats()
    a.count("download_attempted", 0)  # a stage that did nothing still reports 0
    a.tally("download_status_counts")  # ... and an empty tally
    assert a.as_dict() == {"download_attempted": 0, "download_status_counts": {}}
    a.count("download_attempted", 3)
    a.tally("download_status_counts", [Status.OK, Status.OK, Status.DOWNLOAD_ERROR])
    a.record("download_seconds", 1.5)
    b.count("download_attempted", 2)
    b.tally("download_status_counts", {Status.OK: 2})
    b.record("download_seconds", 2.0)
    assert a.merge(b).as_dict() == {"download_attempted": 5, "download_seconds": 2.0,
                                    "download_status_counts": {Status.OK: 4, Status.DOWNLOAD_ERROR: 1}}
    with pytest.raises(ValueError, match="download_attempted"):
        a.record("download_attempted", 1)  # one name, one kind of statistic


# ---------------------------------------------------------------- the row-marking helper
def test_set_status_never_remarks_a_dropped_row():
    t = _table((Status.OK, Status.LANG, Status.OK))
    t = set_status(t, [True, True, False], Status.DOWNLOAD_ERROR, "timeout", "took too long")
    assert t[COL.STATUS].to_pylist() == [Status.DOWNLOAD_ERROR, Status.LANG, Status.OK]
    assert t[COL.REASON].to_pylist() == ["download_error:timeout", Status.LANG, None]
    assert t[COL.ERROR_MESSAGE].to_pylist() == ["took too long", None, None]
    again = set_status(t, [True, True, True], Status.DUPLICATE, "sha256")
    assert again[COL.REASON].to_pylist() == ["download_error:timeout", Status.LANG, "duplicate:sha256"]


def test_set_status_masks_details_and_messages_in_every_form():
    t = _table(("ok",) * 4)
    for mask in ([1, 0, 1, None], np.array([1, 0, 1, 0], bool), pa.array([True, False, True, None])):
        got = set_status(t, mask, Status.CAPTION_RULE, ["too_short", "x", None, "y"], "m" * 500)
        assert got[COL.STATUS].to_pylist() == [Status.CAPTION_RULE, "ok", Status.CAPTION_RULE, "ok"]
        assert got[COL.REASON].to_pylist() == ["caption_rule:too_short", None, "caption_rule", None]
        assert len(got[COL.ERROR_MESSAGE][0].as_py()) == ERROR_MESSAGE_MAX  # free text is capped
    arrow_detail = pa.array(["a", "", None, "b"])  # the vectorised form: empty and null mean no detail
    got = set_status(t, [1, 1, 1, 0], Status.DUPLICATE, arrow_detail)
    assert got[COL.REASON].to_pylist() == ["duplicate:a", Status.DUPLICATE, Status.DUPLICATE, None]
    kept = set_status(t, [1, 1, 0, 0], Status.KEPT, arrow_detail)
    assert kept[COL.REASON].to_pylist() == [None] * 4  # kept rows carry no reason
    with pytest.raises(SchemaError, match="gone"):
        set_status(t, [1, 0, 0, 0], "gone")
    with pytest.raises(ValueError, match="shape"):
        set_status(t, [True], Status.LANG)


# ---------------------------------------------------------------- running stages
@dataclass(frozen=True)
class _ShortCaptions:
    """A three-line stage: caption_rule:too_short for captions under min_chars, counted."""
    min_chars: int
    name: ClassVar[str] = "short_captions"

    def __call__(self, table, stats=None):
        short = [len(c) < self.min_chars for c in table[COL.CAPTION].to_pylist()]
        if stats is not None:
            stats.count("short_captions", sum(short))
        return set_status(table, short, Status.CAPTION_RULE, "too_short")


@dataclass(frozen=True)
class _LosesARow:
    name: ClassVar[str] = "loses_a_row"

    def __call__(self, table, stats=None):
        return table.slice(1)


def test_run_stages_times_counts_and_guards_the_row_count():
    t = _table().append_column(COL.CAPTION, pa.array(["a dog", "ok", "a cat on a mat"]))
    stats, phases = StageStats(), Phases()
    out = run_stages(t, [_ShortCaptions(3), _ShortCaptions(6)], stats, phases)
    assert out[COL.REASON].to_pylist() == ["caption_rule:too_short"] * 2 + [None]
    assert stats.as_dict() == {"short_captions": 3}  # counts what each call saw, marks only ok rows
    assert list(phases.as_dict()) == ["short_captions"]
    assert run_stages(t, [_ShortCaptions(3)]).num_rows == 3  # stats and phases are optional
    with pytest.raises(RuntimeError, match="loses_a_row"):
        run_stages(t, [_LosesARow()], stats)


# ---------------------------------------------------------------- the unit's record
def test_unit_stats_flattens_to_the_stats_file_keys():
    u = UnitStats(7, rows=10, images=4, status_counts={"ok": 4, "download_error": 5, "decode_error": 1},
                  unit_seconds=1.25, stages={"download_attempted": 10, "clip_scored": 4},
                  extra={"node_id": "n1"}, timings={"read": {"wall_s": 0.1, "cpu_s": 0.1}})
    assert u.as_json() == {"download_attempted": 10, "clip_scored": 4, "node_id": "n1",
                           "timings": {"read": {"wall_s": 0.1, "cpu_s": 0.1}}, "unit_id": 7, "rows": 10,
                           "images": 4, "status_counts": {"ok": 4, "download_error": 5, "decode_error": 1},
                           "unit_seconds": 1.25}
    assert u["clip_scored"] == 4 and u.failed == 6 and u.download_timings == {}
    retry = UnitStats(7, retried_rows=3)  # a retry measures no timings: the file has no such key
    assert "timings" not in retry.as_json() and retry["retried_rows"] == 3
    json.dumps(u.as_json(), sort_keys=True)  # what stage_io writes
