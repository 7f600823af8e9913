"""RunLayout: the output's paths come from schemas/layout.json, for local folders and s3:// URLs alike."""
import json
import pickle

import pytest

from curate import fsutil
from curate.layout import NAMES, RunLayout, unit_name
from curate.schema import SCHEMA_DIR


def _spec() -> dict:
    return json.loads((SCHEMA_DIR / "layout.json").read_text())


def test_names_are_the_schema_files_names():
    spec = _spec()
    for key, name in spec["names"].items():
        assert getattr(NAMES, key) == name
    assert NAMES.shard_files == spec["shard_files"] and NAMES.unit_files == spec["unit_files"]
    assert set(spec["docs"]) <= set(spec["names"])  # every documented entry is a name


def test_local_paths_are_real_paths_under_the_output(tmp_path):
    out = str(tmp_path / "run")
    lay = RunLayout(out)
    assert lay.config == f"{out}/config.yaml"
    assert lay.manifest == f"{out}/manifest.json"
    assert lay.report == f"{out}/report.html"
    assert lay.lock == f"{out}/.curate.lock"
    assert lay.sizes == f"{out}/shards/sizes.json"
    assert lay.sample_part("00003") == f"{out}/metadata/samples/part-00003.parquet"
    assert lay.ledger_part(7) == f"{out}/metadata/ledger/part-000007.parquet"
    assert lay.timings == f"{out}/stage/timings.json"
    assert lay.plan == f"{out}/_input/plan.json" and lay.input_unit(2) == f"{out}/_input/000002.parquet"
    shard = lay.shard("00003")
    assert (shard.tar, shard.samples, shard.stats) == (
        f"{out}/shards/00003.tar", f"{out}/shards/00003.parquet", f"{out}/shards/00003_stats.json")
    # the paths are usable: a file written at one is found in the folder the layout names
    fs, _ = fsutil.get_fs(out)
    fsutil.atomic_write(fs, lay.unit(1).tar, b"x")
    assert sorted(p.name for p in (tmp_path / "run" / "stage").iterdir()) == ["000001.tar"]
    assert lay.relative(shard.tar) == "shards/00003.tar"


def test_unit_paths_keep_the_stage_io_keys():
    paths = RunLayout("/o").unit(12).as_dict()
    assert paths == {"tar": "/o/stage/000012.tar", "ledger": "/o/stage/000012.parquet",
                     "stats": "/o/stage/000012_stats.json", "scores": "/o/stage/000012.scores.parquet",
                     "embeddings": "/o/stage/000012.emb.parquet", "done": "/o/stage/000012.done.json",
                     "scores_done": "/o/stage/000012.scores.done.json",
                     "reinforce": "/o/stage/000012.reinforce.parquet",
                     "reinforce_done": "/o/stage/000012.reinforce.done.json"}
    assert unit_name(12) == "000012" and unit_name(1234567) == "1234567"


def test_s3_urls_and_trailing_slashes():
    lay = RunLayout("s3://bucket/runs/a/")
    assert lay.manifest == "s3://bucket/runs/a/manifest.json"
    assert lay.unit(0).scores_done == "s3://bucket/runs/a/stage/000000.scores.done.json"
    assert lay.ledger == "s3://bucket/runs/a/metadata/ledger"
    assert lay.relative(lay.shard("00000").tar) == "shards/00000.tar"
    with pytest.raises(ValueError, match="not inside the output"):
        lay.relative("s3://bucket/runs/b/shards/00000.tar")


def test_layout_is_frozen_and_pickles():
    lay = RunLayout("/o")
    with pytest.raises(AttributeError):
        lay.output = "/p"
    assert pickle.loads(pickle.dumps(lay)).manifest == "/o/manifest.json"


def test_top_level_and_manifest_layout():
    assert NAMES.top_level() == {"config.yaml", "manifest.json", "report.html", ".curate.lock", "shards",
                                 "metadata", "stage", "_input"}
    # manifest.json's "layout" value: pinned, the manifest's bytes depend on it
    assert NAMES.manifest_layout() == {"shards": "shards", "samples": "metadata/samples",
                                       "ledger": "metadata/ledger", "stage": "stage", "config": "config.yaml",
                                       "manifest": "manifest.json", "report": "report.html"}
