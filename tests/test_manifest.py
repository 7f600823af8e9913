"""manifest.json: canonical bytes, the layout it records, counts that must add up, read back from disk."""
import pyarrow as pa
import pytest

from curate.config import RunConfig
from curate.manifest import build_manifest, canonical_json, read_manifest, write_manifest
from curate.schema import COL, Status

MIX = {"max_lang_deviation": 0.0, "max_concept_deviation": None, "per_shard": {}}


def _ledger() -> pa.Table:
    """The columns the manifest counts (status, reason); three rows, two of them duplicates."""
    return pa.table({COL.UID: ["a", "b", "c"], COL.STATUS: [Status.KEPT, Status.DUPLICATE, Status.DUPLICATE],
                     COL.REASON: [None, "duplicate:duplicate_of:ab12", "duplicate:duplicate_of:cd34"]})


def test_canonical_json_is_sorted_utf8_and_stable():
    assert canonical_json({"b": 1, "a": "☃"}) == '{"a":"☃","b":1}'.encode()
    assert canonical_json({"b": [1], "a": 2}, indent=1) == b'{\n "a": 2,\n "b": [\n  1\n ]\n}'


def test_build_manifest_groups_duplicate_of_and_records_the_layout(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    shards = [{"name": "shards/0.tar", "count": 1, "bytes": 10, "sha256": "0" * 64}]
    m = build_manifest(_ledger(), RunConfig(), [{"path": "in.parquet", "rows": 3}], shards, MIX)
    assert m["created"] == "1970-01-01T00:00:00Z"
    assert m["counts"] == {Status.DUPLICATE: 2, Status.KEPT: 1}
    assert m["reasons"] == {"duplicate:duplicate_of": 2}
    assert m["layout"] == {"shards": "shards", "samples": "metadata/samples", "ledger": "metadata/ledger",
                           "stage": "stage", "config": "config.yaml", "manifest": "manifest.json",
                           "report": "report.html"}
    with pytest.raises(ValueError, match="inputs hold 4 rows but the ledger has 3"):
        build_manifest(_ledger(), RunConfig(), [{"path": "in.parquet", "rows": 4}], shards, MIX)
    with pytest.raises(ValueError, match="counts do not add up"):
        build_manifest(_ledger(), RunConfig(), [], [], MIX)


def test_write_then_read_back(tmp_path):
    out = str(tmp_path / "run")
    assert read_manifest(out) is None
    write_manifest(out, {"b": 1, "a": {"z": 2}})
    assert (tmp_path / "run" / "manifest.json").read_bytes() == b'{\n "a": {\n  "z": 2\n },\n "b": 1\n}'
    assert read_manifest(out) == {"a": {"z": 2}, "b": 1}
