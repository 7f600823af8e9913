"""An end-to-end run with dedup.semantic on (tiny CLIP, stored embeddings) on local Ray against 127.0.0.1."""
from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.config import ConfigError
from curate.schema import COL, Status
from pipelines.build_shards import run
from tests.pipeline.helpers import (SEMANTIC_REASON, assert_duplicate_rule, assert_semantic_rule, run_config,
                                    served_corpus, tiny_clip_config)

EPS = 0.3  # wide: the tiny model's random weights map these generated images close together


def test_semantic_dedup_run_keeps_the_distance_rule(tmp_path):
    with served_corpus(tmp_path, n=60) as (srv, path, rows):
        out = tmp_path / "run"
        over = {"clip.save_embeddings": True, "dedup.semantic": False}
        run(run_config(path, out, clip_model=tiny_clip_config(tmp_path), **over))
        hits = srv.hits
        # turning semantic dedup on for a finished output redoes phases B and C only: nothing is fetched again
        over.update({"dedup.semantic": True, "dedup.semantic_eps": EPS})
        manifest = run(run_config(path, out, clip_model=tiny_clip_config(tmp_path), **over))
        assert srv.hits == hits
    ledger = pq.read_table(out / "metadata" / "ledger").to_pylist()
    semantic = [r for r in ledger if SEMANTIC_REASON.fullmatch(r[COL.REASON] or "")]
    assert semantic and all(r[COL.STATUS] == Status.DUPLICATE for r in semantic)
    assert assert_semantic_rule(out) == len(semantic)  # within eps of a representative no dedup decision dropped
    assert assert_duplicate_rule(out) >= len(semantic)
    # the manifest counts them under one key (not one per representative), and the counts add up
    assert manifest["reasons"]["duplicate:semantic_of"] == len(semantic)
    assert not [k for k in manifest["reasons"] if "semantic_of:" in k]
    assert sum(manifest["counts"].values()) == len(rows) == len(ledger)
    kept = {r[COL.UID] for r in ledger if r[COL.STATUS] == Status.KEPT}
    assert sum(json.loads((out / "shards" / "sizes.json").read_text()).values()) == len(kept)
    _the_check_catches_a_far_representative(out, semantic[0][COL.UID], tmp_path / "tampered")


def _the_check_catches_a_far_representative(out, uid: str, copy):
    """The rule check is not vacuous: a copy of the run where one semantic duplicate's stored embedding points
    away from its representative's fails it."""
    from curate.clip.scorer import IMAGE_EMB

    shutil.copytree(out, copy)
    for path in (copy / "stage").glob("*.emb.parquet"):
        t = pq.read_table(path)
        if uid in t[COL.UID].to_pylist():
            i = t[COL.UID].to_pylist().index(uid)
            vecs = [list(v) for v in t[IMAGE_EMB].to_pylist()]
            vecs[i] = [-x for x in vecs[i]]
            t = t.set_column(t.column_names.index(IMAGE_EMB), IMAGE_EMB, pa.array(vecs, t.schema.field(IMAGE_EMB).type))
            pq.write_table(t, path)
    with pytest.raises(AssertionError, match="cosine distance"):
        assert_semantic_rule(copy)
    shutil.rmtree(copy)  # the after-test check of every finished run (conftest.py) must not meet it


def test_semantic_dedup_without_stored_embeddings_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="clip.save_embeddings"):
        run_config(tmp_path / "urls.parquet", tmp_path / "run", clip_model=tiny_clip_config(tmp_path),
                   **{"dedup.semantic": True})
