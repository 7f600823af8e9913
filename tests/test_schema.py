"""schemas/ is the one source of truth: loading, conforming, validation errors, status updates."""
from __future__ import annotations

import pyarrow as pa
import pytest

from curate.schema import (COL, STATUSES, SchemaError, Status, cap_message, conform, is_retryable,
                           ledger_schema, reason, samples_schema, set_status, validate)


def test_tables_load_with_types():
    assert ledger_schema().field(COL.PHASH).type == pa.uint64()
    assert samples_schema().field(COL.SHARD).type == pa.int32()
    assert ledger_schema().field(COL.CONCEPTS).type == pa.list_(pa.string())
    assert "kept" in STATUSES and Status.LOW_CLIP_SCORE == "low_clip_score"


def test_conform_fills_missing_columns_keeps_extras_and_validates():
    t = pa.table({COL.UID: ["a"], COL.UNIT_ID: [0], COL.SOURCE_FILE: ["f"], COL.ROW_INDEX: [3],
                  COL.STATUS: ["ok"], "src_width": [10], "junk": [1]})
    out = conform(t, "ledger")
    assert out.column_names[: len(ledger_schema())] == ledger_schema().names
    assert "src_width" in out.column_names and "junk" not in out.column_names
    assert out[COL.UNIT_ID].type == pa.int32() and out[COL.CLIP_SCORE].null_count == 1


def test_validate_names_the_bad_column():
    t = conform(pa.table({COL.UID: ["a"], COL.UNIT_ID: [0], COL.SOURCE_FILE: ["f"], COL.ROW_INDEX: [0],
                          COL.STATUS: ["ok"]}))
    with pytest.raises(SchemaError, match="ledger.status: unknown values"):
        validate(t.set_column(t.column_names.index(COL.STATUS), COL.STATUS, pa.array(["bogus"])))
    with pytest.raises(SchemaError, match="missing column 'uid'"):
        validate(t.drop_columns([COL.UID]))
    with pytest.raises(SchemaError, match="non-null"):
        conform(pa.table({COL.UID: [None], COL.UNIT_ID: [0], COL.SOURCE_FILE: ["f"], COL.ROW_INDEX: [0],
                          COL.STATUS: ["ok"]}))


def test_set_status_drops_a_row_once_and_keeps_the_first_reason():
    t = pa.table({COL.UID: ["a", "b", "c"], COL.STATUS: ["ok", "ok", "lang"], COL.REASON: [None, None, "lang"]})
    t = set_status(t, [True, False, True], Status.DOWNLOAD_ERROR, "timeout", "x" * 500)
    assert t[COL.STATUS].to_pylist() == ["download_error", "ok", "lang"]
    assert t[COL.REASON].to_pylist() == ["download_error:timeout", None, "lang"]
    assert len(t[COL.ERROR_MESSAGE][0].as_py()) == 200


def test_reason_helpers():
    with pytest.raises(SchemaError, match="unknown status"):
        reason("nope")
    assert reason(Status.DUPLICATE, "duplicate_of:abc") == "duplicate:duplicate_of:abc"
    assert is_retryable("download_error:timeout") and is_retryable("download_error:http_503")
    assert not is_retryable("download_error:http_404") and not is_retryable("decode_error:truncated")
    assert cap_message(None) is None
